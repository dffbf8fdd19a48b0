package arbstr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// failureClass is what went wrong with one attempt (classNone: nothing).
type failureClass int

const (
	classNone         failureClass = iota
	classConnection                // refused, reset, EOF before the response
	classServer                    // 500, 502, 503, 504, 408, 529
	classRateLimited               // 429
	classAuth                      // 401, 402, 403
	classNotFound                  // 404
	classTimeout                   // the attempt got no answer in time
	classInBand                    // a stream's first event was an error
	classClient                    // other 4xx: the request itself is refused
	classClientGone                // the client went away
	classDeadline                  // the request's deadline passed
	classBrokenStream              // a committed stream broke
	classUnexpected                // a status that is neither success nor error
	classBadResponse               // a 2xx whose body is not a JSON object
)

func (c failureClass) String() string {
	return [...]string{"ok", "connection", "server_error", "rate_limited", "auth", "not_found",
		"timeout", "in_band_error", "client_error", "client_gone", "deadline", "broken_stream", "unexpected_status", "bad_response", "context_length"}[c]
}

// countsAgainstBreaker reports whether the failure says the provider is
// unhealthy (SPEC §7), as opposed to the request or the client.
func (c failureClass) countsAgainstBreaker() bool {
	switch c {
	case classConnection, classServer, classAuth, classNotFound, classTimeout, classInBand, classBrokenStream, classUnexpected, classBadResponse:
		return true
	}
	return false
}

// classifyStatus maps an upstream status that is not 2xx to a failure class.
func classifyStatus(status int) failureClass {
	switch status {
	case 408, 500, 502, 503, 504, 529:
		return classServer
	case 429:
		return classRateLimited
	case 401, 402, 403:
		return classAuth
	case 404:
		return classNotFound
	}
	if status < 400 {
		return classUnexpected // 1xx or a redirect: not an answer arbstr can use
	}
	if status >= 500 {
		return classServer
	}
	return classClient
}

// next is what the planner does after a failed attempt.
type next int

const (
	retrySame    next = iota // again on the same provider, after a wait
	nextProvider             // move on to the next candidate
	stopAndRelay             // give the provider's answer to the client
	stopSilently             // the client is gone
	stopDeadline             // the deadline passed: 504
)

// decide is SPEC §6's table. retryAfter is the 429's hint (0: none);
// remaining is the time left before the deadline.
func decide(c failureClass, retryAfter, retryAfterMax, remaining time.Duration) next {
	switch c {
	case classConnection, classServer:
		return retrySame
	case classRateLimited:
		if retryAfter > 0 && retryAfter <= retryAfterMax && retryAfter < remaining {
			return retrySame
		}
		return nextProvider
	case classClient:
		return stopAndRelay
	case classClientGone:
		return stopSilently
	case classDeadline:
		return stopDeadline
	}
	return nextProvider
}

// retrySettings are the provisioned retry options.
type retrySettings struct {
	attempts      int
	backoff       []time.Duration // nil: exponential with jitter
	fallbacks     int             // -1: all
	retryAfterMax time.Duration
}

func newRetrySettings(c *RetryConfig) retrySettings {
	s := retrySettings{attempts: defaultAttempts, fallbacks: -1, retryAfterMax: defaultRetryAfterMax}
	if c == nil {
		return s
	}
	if c.Attempts > 0 {
		s.attempts = c.Attempts
	}
	for _, b := range c.Backoff {
		s.backoff = append(s.backoff, time.Duration(b))
	}
	if c.Fallbacks != nil && !c.Fallbacks.All {
		s.fallbacks = c.Fallbacks.N
	}
	if c.RetryAfterMax > 0 {
		s.retryAfterMax = time.Duration(c.RetryAfterMax)
	}
	return s
}

// wait is the backoff before try number n+1 (n ≥ 1) on the same provider.
func (s retrySettings) wait(n int) time.Duration {
	if len(s.backoff) > 0 {
		return s.backoff[min(n, len(s.backoff))-1]
	}
	base := 100 * time.Millisecond << min(n-1, 5)
	base = min(base, 2*time.Second)
	// Half fixed, half random: spreads retries of concurrent requests.
	return base/2 + rand.N(base/2+1)
}

// Fallbacks is how many providers may be tried after the first: a number, or
// "all". In JSON it is a number or the string "all".
type Fallbacks struct {
	// N is the number of further providers, when All is false.
	N int
	// All lets every further candidate be tried.
	All bool
}

// MarshalJSON writes a number, or "all".
func (f Fallbacks) MarshalJSON() ([]byte, error) {
	if f.All {
		return []byte(`"all"`), nil
	}
	return []byte(strconv.Itoa(f.N)), nil
}

// UnmarshalJSON reads a number, or "all".
func (f *Fallbacks) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		return f.parse(s)
	}
	var n int
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("fallbacks must be a number or \"all\"")
	}
	*f = Fallbacks{N: n}
	return nil
}

func (f *Fallbacks) parse(s string) error {
	if strings.EqualFold(s, "all") {
		*f = Fallbacks{All: true}
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("fallbacks must be a number ≥ 0 or 'all', not %q", s)
	}
	*f = Fallbacks{N: n}
	return nil
}

// parseRetryAfter reads retry-after-ms, or Retry-After in seconds or as an
// HTTP date. It returns 0 when there is no usable hint.
func parseRetryAfter(h http.Header, now time.Time) time.Duration {
	if ms := strings.TrimSpace(h.Get("retry-after-ms")); ms != "" {
		if v, err := strconv.ParseFloat(ms, 64); err == nil && v > 0 && v < 1e12 {
			return time.Duration(v * float64(time.Millisecond))
		}
	}
	ra := strings.TrimSpace(h.Get("Retry-After"))
	if ra == "" {
		return 0
	}
	if v, err := strconv.ParseFloat(ra, 64); err == nil {
		if !(v > 0 && v <= 1e9) { // also refuses NaN, which ParseFloat accepts
			return 0
		}
		return time.Duration(v * float64(time.Second))
	}
	if t, err := http.ParseTime(ra); err == nil {
		// The same bound as a number of seconds: a date centuries ahead is
		// garbage, not a cooldown.
		if d := t.Sub(now); d > 0 && d <= 1e9*time.Second {
			return d
		}
	}
	return 0
}

// allRateLimited reports whether every failed attempt was a 429, and the
// shortest wait one of them asked for (1s when none gave a hint).
func allRateLimited(records []attemptRecord) (time.Duration, bool) {
	wait := time.Duration(0)
	for _, r := range records {
		if r.class != classRateLimited {
			return 0, false
		}
		if r.retryAfter > 0 && (wait == 0 || r.retryAfter < wait) {
			wait = r.retryAfter
		}
	}
	if wait == 0 {
		wait = time.Second
	}
	return wait, true
}

// attemptRecord is one failed attempt, for x-arbstr-retries and error bodies.
type attemptRecord struct {
	provider   string
	status     int // 0 when there was no HTTP response
	class      failureClass
	retryAfter time.Duration
	err        error
}

func (a attemptRecord) describe() string {
	if a.status != 0 {
		return fmt.Sprintf("answered HTTP %d (%s)", a.status, a.class)
	}
	return fmt.Sprintf("failed: %s", a.class)
}

// retriesHeader formats failed attempts per provider in order of first
// failure: "2/alpha, 1/beta".
func retriesHeader(records []attemptRecord) string {
	var order []string
	counts := map[string]int{}
	for _, r := range records {
		if counts[r.provider] == 0 {
			order = append(order, r.provider)
		}
		counts[r.provider]++
	}
	parts := make([]string, len(order))
	for i, name := range order {
		parts[i] = strconv.Itoa(counts[name]) + "/" + name
	}
	return strings.Join(parts, ", ")
}

// Causes that end an attempt's context, telling timeouts apart.
var (
	errAttemptTimeout    = errors.New("attempt timed out")
	errFirstEventTimeout = errors.New("no first event in time")
	errDeadlinePassed    = errors.New("request deadline passed")
	errStreamIdle        = errors.New("stream idle timeout")
)

// classifyError maps a transport or read error of an attempt to a class.
func classifyError(ctx context.Context, clientCtx context.Context, err error) failureClass {
	if clientCtx.Err() != nil {
		return classClientGone
	}
	switch context.Cause(ctx) {
	case errDeadlinePassed:
		return classDeadline
	case errAttemptTimeout, errFirstEventTimeout:
		return classTimeout
	case errStreamIdle:
		return classBrokenStream
	}
	if err == nil {
		return classNone
	}
	return classConnection
}

// attemptResult is what one attempt came to.
type attemptResult struct {
	class      failureClass
	status     int
	retryAfter time.Duration
	err        error
	// relay, for classClient: the provider's answer to pass to the client.
	relay *relayedResponse
	// committed: something was written to the client; no further attempt.
	committed bool
}

// relayedResponse is a provider's error answer passed through as it was.
type relayedResponse struct {
	status      int
	contentType string
	body        []byte
}

// delivery is the part of an attempt that differs between streaming and
// non-streaming: what to do with a 2xx response.
type delivery interface {
	// deliver reads resp and writes it to the client when it is good, or
	// reports the failure before anything was written.
	deliver(ex *exchange, at *attempt, resp *http.Response) attemptResult
}

// runPlan is the attempt planner, one for both paths: for each candidate,
// for each try, send, classify, then retry, move on or stop.
func (h *Handler) runPlan(ex *exchange, pl *plan, d delivery) {
	tried := 0
	for p := pl.next(); p != nil; p = pl.next() {
		if tried > 0 && h.retry.fallbacks >= 0 && tried > h.retry.fallbacks {
			break
		}
		t, ok := h.health.begin(p, ex.facts.model, pl.pastCooldown)
		if !ok {
			continue // open or being probed by another request: never wait on it
		}
		tried++
		if h.tryProvider(ex, p, t, d) != nextProvider {
			return
		}
	}
	if ex.relayContextRefusal() {
		return // no candidate could take the request: the first refusal, as it was
	}
	if ex.deadlinePassed() {
		ex.fail(errDeadline(time.Duration(h.Timeout), ex.records))
		return
	}
	if len(ex.records) == 0 {
		// Every candidate turned unavailable between choosing and trying
		// (another request took the probe, or a circuit just opened).
		// errAllUnhealthy rounds the wait up to at least 1s.
		ex.fail(errAllUnhealthy(ex.facts.model, time.Until(firstRetry(pl.providers(), ex.facts.model, h.health.snapshot()))))
		return
	}
	if wait, ok := allRateLimited(ex.records); ok {
		// Every provider asked to slow down: say so, with a time the SDK
		// honours, rather than a 502 that hides it. Not longer than
		// cooldown_max: arbstr tries them again by then.
		ex.fail(errRateLimited(min(wait, h.breaker.cooldownMax), ex.records))
		return
	}
	ex.fail(errAllFailed(ex.records))
}

// sendTracked sends one attempt and reports it to the breaker. A probe's
// stream closes the circuit as soon as it commits, not when a long answer
// ends; the stream's outcome then counts like any other.
func (h *Handler) sendTracked(ex *exchange, p *provider, t *ticket, body []byte, d delivery) (attemptResult, circuitState) {
	tel := h.beginAttempt(ex, p)
	res := h.sendAttempt(ex, p, body, d, func() { h.health.committed(t) })
	tel.end(ex, h.metrics, res)
	class := res.class
	if class == classDeadline {
		// The deadline ended the wait for this provider: it did not answer
		// in time, and must not stay first in line for every request.
		class = classTimeout
	}
	return res, h.health.finish(t, class)
}

// tryProvider runs the tries on one provider. It returns nextProvider to go
// on, or any other value when the request is finished.
func (h *Handler) tryProvider(ex *exchange, p *provider, t *ticket, d delivery) next {
	defer func() { h.health.abandon(t) }()
	body := upstreamBody(ex.body, ex.facts, p.upstreamModel(ex.facts.model), ex.facts.injectUsage)
	for try := 1; ; try++ {
		res, state := h.sendTracked(ex, p, t, body, d)
		h.metrics.observeAttempt(p, ex.facts.model, res.class, state)
		if res.class == classNone || res.committed {
			ex.succeeded(p, res)
			return stopSilently
		}
		ex.records = append(ex.records, attemptRecord{p.name, res.status, res.class, res.retryAfter, res.err})
		ex.noteContextRefusal(p, res)
		action := decide(res.class, res.retryAfter, h.retry.retryAfterMax, ex.remaining())
		if action == retrySame && (try >= h.retry.attempts || t.probe || t.pastCooldown || state != circuitClosed) {
			action = nextProvider
		}
		if res.class == classRateLimited && res.retryAfter > 0 && action != retrySame {
			// A 429 not waited out keeps this provider away for its hint.
			h.health.coolDown(p, ex.facts.model, time.Now().Add(res.retryAfter))
		}
		switch action {
		case stopAndRelay:
			ex.relay(p, res.relay)
			return stopAndRelay
		case stopSilently:
			ex.clientGone()
			return stopSilently
		case stopDeadline:
			ex.fail(errDeadline(time.Duration(h.Timeout), ex.records))
			return stopDeadline
		case nextProvider:
			return nextProvider
		}
		// retrySame
		wait := h.retry.wait(try)
		if res.class == classRateLimited {
			wait = res.retryAfter
		}
		if wait >= ex.remaining() {
			return nextProvider // a wait past the deadline is never started
		}
		if !ex.sleep(wait) {
			ex.clientGone()
			return stopSilently
		}
		if t2, ok := h.health.begin(p, ex.facts.model, false); ok {
			t = t2
		} else {
			return nextProvider
		}
	}
}
