package arbstr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// ---------------------------------------------------------------------------
// Helpers shared by retry_test.go and handler_test.go (prefix rt).

// rtReceived is one request an upstream received.
type rtReceived struct {
	at     time.Time
	method string
	path   string
	header http.Header
	body   []byte
}

// rtUpstream is an httptest provider that records every request it gets
// before handing it to serve (n is the 1-based number of the request).
type rtUpstream struct {
	srv     *httptest.Server
	mu      sync.Mutex
	got     []rtReceived
	closing chan struct{} // closed at cleanup, so hanging handlers let go
}

func rtNewUpstream(t *testing.T, serve func(n int, w http.ResponseWriter, r *http.Request)) *rtUpstream {
	t.Helper()
	u := &rtUpstream{closing: make(chan struct{})}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.got = append(u.got, rtReceived{time.Now(), r.Method, r.URL.Path, r.Header.Clone(), body})
		n := len(u.got)
		u.mu.Unlock()
		if serve == nil {
			rtWriteCompletion(w)
			return
		}
		serve(n, w, r)
	}))
	t.Cleanup(func() {
		close(u.closing)
		u.srv.Close()
	})
	return u
}

// url is the provider base URL for the Caddyfile.
func (u *rtUpstream) url() string { return u.srv.URL + "/v1" }

func (u *rtUpstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.got)
}

func (u *rtUpstream) received() []rtReceived {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]rtReceived(nil), u.got...)
}

// hang blocks until the request is cancelled (or the test ends) and reports
// whether it was the request's context that ended it.
func (u *rtUpstream) hang(r *http.Request) bool {
	select {
	case <-r.Context().Done():
		return true
	case <-u.closing:
		return false
	}
}

// delay waits d unless the request is cancelled first.
func (u *rtUpstream) delay(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	case <-u.closing:
		return false
	}
}

const rtCompletion = `{"id":"chatcmpl-rt","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}`

func rtWriteCompletion(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, rtCompletion)
}

// rtStatus answers every request with status and an OpenAI-style error body.
func rtStatus(status int) func(int, http.ResponseWriter, *http.Request) {
	return func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":{"message":"upstream says %d","type":"rt","code":"rt_%d"}}`, status, status)
	}
}

// rtProvider is a provider block named name at url; base_fee orders the
// candidates (cheapest first) when rates are equal.
func rtProvider(name, url string, baseFee float64, extra ...string) string {
	return fmt.Sprintf("provider %s {\n\turl %s\n\tapi_key key-%s\n\tbase_fee %g\n\t%s\n}\n",
		name, url, name, baseFee, strings.Join(extra, "\n\t"))
}

// rtFast keeps retries quick and keeps the breaker out of the way: these
// tests are about one request's retries, not about health.
const rtFast = "retry {\n\tattempts 2\n\tbackoff 10ms\n}\nbreaker {\n\tfailures 100\n}\ntimeout 2s\n"

func rtSite(body ...string) string {
	return "arbstr {\n" + strings.Join(body, "") + "\n}\n"
}

const rtChat = `{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}`

// rtAPIError is arbstr's error body.
type rtAPIError struct {
	Error struct {
		Message  string  `json:"message"`
		Type     string  `json:"type"`
		Param    *string `json:"param"`
		Code     string  `json:"code"`
		Attempts []struct {
			Provider string `json:"provider"`
			Status   int    `json:"status"`
			Error    string `json:"error"`
		} `json:"attempts"`
	} `json:"error"`
}

// rtDecodeError reads an OpenAI-style error body, failing unless it has all
// four members the SDKs read (param may be null but must be there).
func rtDecodeError(t *testing.T, resp *http.Response) rtAPIError {
	t.Helper()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading error body: %v", err)
	}
	var shape struct {
		Error map[string]json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(raw, &shape); err != nil || shape.Error == nil {
		t.Fatalf("error body is not {\"error\":{...}}: %v\n%s", err, raw)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := shape.Error[k]; !ok {
			t.Errorf("error body lacks %q: %s", k, raw)
		}
	}
	var e rtAPIError
	_ = json.Unmarshal(raw, &e)
	if e.Error.Message == "" || e.Error.Type == "" {
		t.Errorf("error body has an empty message or type: %s", raw)
	}
	return e
}

func rtReadBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return string(b)
}

// rtExpectOK checks a 200 served by provider, and returns its body.
func rtExpectOK(t *testing.T, resp *http.Response, provider string) string {
	t.Helper()
	body := rtReadBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", resp.StatusCode, body)
	}
	if got := resp.Header.Get("x-arbstr-provider"); got != provider {
		t.Errorf("x-arbstr-provider = %q, want %q", got, provider)
	}
	return body
}

func rtCounts(t *testing.T, want map[*rtUpstream]int, names map[*rtUpstream]string) {
	t.Helper()
	for u, n := range want {
		if got := u.count(); got != n {
			t.Errorf("upstream %s received %d request(s), want %d", names[u], got, n)
		}
	}
}

// rtStaysZero checks that u receives nothing for a while. Proving that
// something does not happen needs a window; it is kept short.
func rtStaysZero(t *testing.T, u *rtUpstream, name string, window time.Duration) {
	t.Helper()
	deadline := time.Now().Add(window)
	for time.Now().Before(deadline) {
		if n := u.count(); n != 0 {
			t.Errorf("upstream %s received %d request(s), want none", name, n)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rtRefusedURL is a base URL nobody listens on.
func rtRefusedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr + "/v1"
}

// ---------------------------------------------------------------------------
// Unit tests of the pure parts.

func TestRetryClassifyStatus(t *testing.T) {
	cases := map[int]failureClass{
		500: classServer, 502: classServer, 503: classServer, 504: classServer, 408: classServer, 529: classServer,
		501: classServer, 599: classServer,
		429: classRateLimited,
		401: classAuth, 402: classAuth, 403: classAuth,
		404: classNotFound,
		400: classClient, 413: classClient, 422: classClient, 409: classClient, 451: classClient,
		301: classUnexpected, 302: classUnexpected, 304: classUnexpected,
	}
	for status, want := range cases {
		if got := classifyStatus(status); got != want {
			t.Errorf("classifyStatus(%d) = %s, want %s", status, got, want)
		}
	}
}

func TestRetryDecideTable(t *testing.T) {
	const max, plenty = 5 * time.Second, 30 * time.Second
	cases := []struct {
		name       string
		class      failureClass
		retryAfter time.Duration
		remaining  time.Duration
		want       next
	}{
		{"connection", classConnection, 0, plenty, retrySame},
		{"server error", classServer, 0, plenty, retrySame},
		{"429 short hint", classRateLimited, 2 * time.Second, plenty, retrySame},
		{"429 hint equal to max", classRateLimited, max, plenty, retrySame},
		{"429 hint over max", classRateLimited, 6 * time.Second, plenty, nextProvider},
		{"429 no hint", classRateLimited, 0, plenty, nextProvider},
		{"429 hint past deadline", classRateLimited, 2 * time.Second, time.Second, nextProvider},
		{"auth", classAuth, 0, plenty, nextProvider},
		{"not found", classNotFound, 0, plenty, nextProvider},
		{"attempt timeout", classTimeout, 0, plenty, nextProvider},
		{"stream in-band error", classInBand, 0, plenty, nextProvider},
		{"other 4xx", classClient, 0, plenty, stopAndRelay},
		{"client gone", classClientGone, 0, plenty, stopSilently},
		{"deadline", classDeadline, 0, 0, stopDeadline},
	}
	for _, c := range cases {
		if got := decide(c.class, c.retryAfter, max, c.remaining); got != c.want {
			t.Errorf("%s: decide = %d, want %d", c.name, got, c.want)
		}
	}
}

func TestRetryParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	hdr := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i+1 < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	exact := []struct {
		name string
		h    http.Header
		want time.Duration
	}{
		{"none", hdr(), 0},
		{"seconds", hdr("Retry-After", "3"), 3 * time.Second},
		{"seconds with spaces", hdr("Retry-After", " 2 "), 2 * time.Second},
		{"fractional seconds", hdr("Retry-After", "1.5"), 1500 * time.Millisecond},
		{"HTTP date", hdr("Retry-After", now.Add(10*time.Second).Format(http.TimeFormat)), 10 * time.Second},
		{"HTTP date in the past", hdr("Retry-After", now.Add(-time.Minute).Format(http.TimeFormat)), 0},
		{"retry-after-ms", hdr("retry-after-ms", "250"), 250 * time.Millisecond},
		{"retry-after-ms wins", hdr("retry-after-ms", "300", "Retry-After", "7"), 300 * time.Millisecond},
		{"bad retry-after-ms falls back", hdr("retry-after-ms", "soon", "Retry-After", "4"), 4 * time.Second},
		{"garbage", hdr("Retry-After", "soon"), 0},
		{"zero", hdr("Retry-After", "0"), 0},
		{"negative", hdr("Retry-After", "-5"), 0},
		{"negative ms", hdr("retry-after-ms", "-5"), 0},
		{"NaN", hdr("Retry-After", "NaN"), 0},
	}
	for _, c := range exact {
		if got := parseRetryAfter(c.h, now); got != c.want {
			t.Errorf("%s: parseRetryAfter = %v, want %v", c.name, got, c.want)
		}
	}
	// A huge hint must never overflow into something short (or negative)
	// that would be waited out: either no hint, or a very long one.
	for _, h := range []http.Header{
		hdr("Retry-After", "99999999999999999999"),
		hdr("Retry-After", "1e300"),
		hdr("Retry-After", "+Inf"),
		hdr("retry-after-ms", "1e300"),
		hdr("retry-after-ms", "99999999999999999999"),
	} {
		if got := parseRetryAfter(h, now); got != 0 && got < time.Hour {
			t.Errorf("parseRetryAfter(%v) = %v: a huge hint became a short one", h, got)
		}
	}
}

func TestRetryRetriesHeaderFormat(t *testing.T) {
	rec := func(names ...string) []attemptRecord {
		var out []attemptRecord
		for _, n := range names {
			out = append(out, attemptRecord{provider: n, status: 500, class: classServer})
		}
		return out
	}
	cases := []struct {
		records []attemptRecord
		want    string
	}{
		{nil, ""},
		{rec("alpha"), "1/alpha"},
		{rec("alpha", "alpha", "beta"), "2/alpha, 1/beta"},
		{rec("beta", "alpha", "beta"), "2/beta, 1/alpha"},
		{rec("alpha", "beta", "gamma", "gamma", "gamma"), "1/alpha, 1/beta, 3/gamma"},
	}
	for _, c := range cases {
		if got := retriesHeader(c.records); got != c.want {
			t.Errorf("retriesHeader(%v) = %q, want %q", c.records, got, c.want)
		}
	}
}

func TestRetryBackoffConfigured(t *testing.T) {
	s := newRetrySettings(&RetryConfig{Backoff: []caddy.Duration{caddy.Duration(10 * time.Millisecond), caddy.Duration(250 * time.Millisecond)}})
	want := []time.Duration{10 * time.Millisecond, 250 * time.Millisecond, 250 * time.Millisecond, 250 * time.Millisecond}
	for i, w := range want {
		if got := s.wait(i + 1); got != w {
			t.Errorf("wait(%d) = %v, want %v (the last backoff repeats)", i+1, got, w)
		}
	}
	if got := s.wait(100); got != 250*time.Millisecond {
		t.Errorf("wait(100) = %v, want the last backoff", got)
	}
}

func TestRetryBackoffDefaultBounds(t *testing.T) {
	s := newRetrySettings(nil)
	if s.attempts != defaultAttempts || s.fallbacks != -1 || s.retryAfterMax != defaultRetryAfterMax {
		t.Errorf("defaults: attempts %d fallbacks %d retry_after_max %v", s.attempts, s.fallbacks, s.retryAfterMax)
	}
	for n := 1; n <= 12; n++ {
		// Documented: exponential from 100ms, doubling, up to 2s, with jitter.
		base := min(100*time.Millisecond<<min(n-1, 10), 2*time.Second)
		seen := map[time.Duration]bool{}
		for range 200 {
			w := s.wait(n)
			if w < base/2 || w > base {
				t.Fatalf("wait(%d) = %v, want within [%v, %v]", n, w, base/2, base)
			}
			seen[w] = true
		}
		if len(seen) < 2 {
			t.Errorf("wait(%d) gave the same value 200 times: no jitter", n)
		}
	}
}

func TestRetryFallbacksJSON(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Fallbacks
	}{
		{`0`, Fallbacks{N: 0}},
		{`2`, Fallbacks{N: 2}},
		{`"all"`, Fallbacks{All: true}},
		{`"ALL"`, Fallbacks{All: true}},
		{`"3"`, Fallbacks{N: 3}},
	} {
		var f Fallbacks
		if err := json.Unmarshal([]byte(c.in), &f); err != nil {
			t.Errorf("unmarshal %s: %v", c.in, err)
			continue
		}
		if f != c.want {
			t.Errorf("unmarshal %s = %+v, want %+v", c.in, f, c.want)
		}
		out, err := json.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		var back Fallbacks
		if err := json.Unmarshal(out, &back); err != nil || back != f {
			t.Errorf("round trip of %+v through %s gave %+v, %v", f, out, back, err)
		}
	}
	for _, bad := range []string{`"some"`, `true`, `1.5`, `{}`, `"-1"`} {
		var f Fallbacks
		if err := json.Unmarshal([]byte(bad), &f); err == nil {
			t.Errorf("unmarshal %s: no error, got %+v", bad, f)
		}
	}
	if out, _ := json.Marshal(RetryConfig{Fallbacks: &Fallbacks{All: true}}); !strings.Contains(string(out), `"fallbacks":"all"`) {
		t.Errorf(`"all" marshals as %s`, out)
	}
	if out, _ := json.Marshal(RetryConfig{Fallbacks: &Fallbacks{N: 0}}); !strings.Contains(string(out), `"fallbacks":0`) {
		t.Errorf(`0 marshals as %s (0 fallbacks must not vanish into the default "all")`, out)
	}
	// The Caddyfile and JSON agree.
	for word, want := range map[string]string{"all": `"fallbacks":"all"`, "1": `"fallbacks":1`, "0": `"fallbacks":0`} {
		cfg := adaptCaddyfile(t, ":80\n"+rtSite(rtProvider("alpha", "http://127.0.0.1:1/v1", 1), "retry {\n\tfallbacks "+word+"\n}\n"))
		if !strings.Contains(string(cfg), want) {
			t.Errorf("fallbacks %s adapts to JSON without %s:\n%s", word, want, cfg)
		}
	}
	// A negative number is refused at load.
	var h Handler
	if err := json.Unmarshal([]byte(`{"providers":[{"name":"a","url":"http://x/v1"}],"retry":{"fallbacks":-1}}`), &h); err == nil {
		if err := h.Validate(); err == nil {
			t.Error("fallbacks -1 passed validation")
		}
	}
}

// ---------------------------------------------------------------------------
// Integration: one test per row of SPEC §6 (non-streaming).

func TestRetryConnectionRefusedThenNext(t *testing.T) {
	beta := rtNewUpstream(t, nil)
	tc := startCaddy(t, rtSite(rtProvider("alpha", rtRefusedURL(t), 1), rtProvider("beta", beta.url(), 2), rtFast))
	resp := tc.Post("/v1/chat/completions", rtChat)
	if body := rtExpectOK(t, resp, "beta"); body != rtCompletion {
		t.Errorf("body %q", body)
	}
	if got := resp.Header.Get("x-arbstr-retries"); got != "2/alpha" {
		t.Errorf("x-arbstr-retries = %q, want 2/alpha (refused twice, attempts 2)", got)
	}
	rtCounts(t, map[*rtUpstream]int{beta: 1}, map[*rtUpstream]string{beta: "beta"})
}

func TestRetryConnectionDroppedBeforeResponse(t *testing.T) {
	for _, mode := range []string{"eof", "reset"} {
		t.Run(mode, func(t *testing.T) {
			alpha := rtNewUpstream(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
				conn, _, err := http.NewResponseController(w).Hijack()
				if err != nil {
					t.Errorf("hijack: %v", err)
					return
				}
				if tcp, ok := conn.(*net.TCPConn); ok && mode == "reset" {
					_ = tcp.SetLinger(0) // close with RST
				}
				conn.Close()
			})
			beta := rtNewUpstream(t, nil)
			tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast))
			resp := tc.Post("/v1/chat/completions", rtChat)
			rtExpectOK(t, resp, "beta")
			if got := resp.Header.Get("x-arbstr-retries"); got != "2/alpha" {
				t.Errorf("x-arbstr-retries = %q, want 2/alpha", got)
			}
			rtCounts(t, map[*rtUpstream]int{alpha: 2, beta: 1}, map[*rtUpstream]string{alpha: "alpha", beta: "beta"})
		})
	}
}

// SPEC §6, status rows: server errors are retried on the same provider up
// to attempts, key/account and missing-model answers are not; both move on.
func TestRetryFailoverByStatus(t *testing.T) {
	for _, c := range []struct {
		statuses   []int
		alphaCalls int
		retries    string
	}{
		{[]int{500, 502, 503, 504, 408, 529}, 2, "2/alpha"},
		{[]int{401, 402, 403, 404}, 1, "1/alpha"},
	} {
		for _, status := range c.statuses {
			t.Run(strconv.Itoa(status), func(t *testing.T) {
				alpha := rtNewUpstream(t, rtStatus(status))
				beta := rtNewUpstream(t, nil)
				tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast))
				resp := tc.Post("/v1/chat/completions", rtChat)
				if body := rtExpectOK(t, resp, "beta"); body != rtCompletion {
					t.Errorf("body %q", body)
				}
				if got := resp.Header.Get("x-arbstr-retries"); got != c.retries {
					t.Errorf("x-arbstr-retries = %q, want %s", got, c.retries)
				}
				rtCounts(t, map[*rtUpstream]int{alpha: c.alphaCalls, beta: 1}, map[*rtUpstream]string{alpha: "alpha", beta: "beta"})
			})
		}
	}
}

func TestRetryServerErrorThenSuccessOnSameProvider(t *testing.T) {
	alpha := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			rtStatus(503)(n, w, r)
			return
		}
		rtWriteCompletion(w)
	})
	beta := rtNewUpstream(t, nil)
	tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast))
	resp := tc.Post("/v1/chat/completions", rtChat)
	rtExpectOK(t, resp, "alpha")
	if got := resp.Header.Get("x-arbstr-retries"); got != "1/alpha" {
		t.Errorf("x-arbstr-retries = %q, want 1/alpha", got)
	}
	rtCounts(t, map[*rtUpstream]int{alpha: 2, beta: 0}, map[*rtUpstream]string{alpha: "alpha", beta: "beta"})
}

func TestRetry429WithinMaxWaitedOut(t *testing.T) {
	for _, c := range []struct {
		name, header, value string
		hint                time.Duration
	}{
		{"retry-after-ms", "retry-after-ms", "300", 300 * time.Millisecond},
		{"Retry-After seconds", "Retry-After", "1", time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			alpha := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					w.Header().Set(c.header, c.value)
					rtStatus(429)(n, w, r)
					return
				}
				rtWriteCompletion(w)
			})
			beta := rtNewUpstream(t, nil)
			tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast, "retry {\n\tretry_after_max 2s\n}\n"))
			start := time.Now()
			resp := tc.Post("/v1/chat/completions", rtChat)
			elapsed := time.Since(start)
			rtExpectOK(t, resp, "alpha")
			if got := resp.Header.Get("x-arbstr-retries"); got != "1/alpha" {
				t.Errorf("x-arbstr-retries = %q, want 1/alpha", got)
			}
			rtCounts(t, map[*rtUpstream]int{alpha: 2, beta: 0}, map[*rtUpstream]string{alpha: "alpha", beta: "beta"})
			if elapsed < c.hint-20*time.Millisecond {
				t.Errorf("answered after %v: the %v Retry-After was not waited out", elapsed, c.hint)
			}
			if got := alpha.received(); len(got) == 2 {
				if gap := got[1].at.Sub(got[0].at); gap < c.hint-20*time.Millisecond {
					t.Errorf("second attempt %v after the first, want ≥ %v", gap, c.hint)
				}
			}
		})
	}
}

func TestRetry429LongOrNoHintMovesOnAtOnce(t *testing.T) {
	t.Run("long hint cools the provider down", func(t *testing.T) {
		alpha := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "30")
			rtStatus(429)(n, w, r)
		})
		beta := rtNewUpstream(t, nil)
		names := map[*rtUpstream]string{alpha: "alpha", beta: "beta"}
		tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast, "retry {\n\tretry_after_max 1s\n}\n"))
		start := time.Now()
		resp := tc.Post("/v1/chat/completions", rtChat)
		if elapsed := time.Since(start); elapsed > 700*time.Millisecond {
			t.Errorf("took %v: a 429 with a long Retry-After must move on at once", elapsed)
		}
		rtExpectOK(t, resp, "beta")
		if got := resp.Header.Get("x-arbstr-retries"); got != "1/alpha" {
			t.Errorf("x-arbstr-retries = %q, want 1/alpha", got)
		}
		rtCounts(t, map[*rtUpstream]int{alpha: 1, beta: 1}, names)

		resp = tc.Post("/v1/chat/completions", rtChat)
		rtExpectOK(t, resp, "beta")
		rtCounts(t, map[*rtUpstream]int{alpha: 1, beta: 2}, names)
		if got := resp.Header.Get("x-arbstr-retries"); got != "" {
			t.Errorf("second request: x-arbstr-retries = %q, want none (alpha is cooling down, not failing)", got)
		}
	})
	t.Run("no hint", func(t *testing.T) {
		alpha := rtNewUpstream(t, rtStatus(429))
		beta := rtNewUpstream(t, nil)
		tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast))
		start := time.Now()
		resp := tc.Post("/v1/chat/completions", rtChat)
		if elapsed := time.Since(start); elapsed > 700*time.Millisecond {
			t.Errorf("took %v: a 429 without Retry-After must move on at once", elapsed)
		}
		rtExpectOK(t, resp, "beta")
		rtCounts(t, map[*rtUpstream]int{alpha: 1, beta: 1}, map[*rtUpstream]string{alpha: "alpha", beta: "beta"})
	})
	t.Run("hint within max but past the deadline", func(t *testing.T) {
		alpha := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "2")
			rtStatus(429)(n, w, r)
		})
		beta := rtNewUpstream(t, nil)
		tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast,
			"timeout 1s\nretry {\n\tretry_after_max 5s\n}\n"))
		start := time.Now()
		resp := tc.Post("/v1/chat/completions", rtChat)
		if elapsed := time.Since(start); elapsed > 700*time.Millisecond {
			t.Errorf("took %v: a wait past the deadline must not be started", elapsed)
		}
		rtExpectOK(t, resp, "beta")
		rtCounts(t, map[*rtUpstream]int{alpha: 1, beta: 1}, map[*rtUpstream]string{alpha: "alpha", beta: "beta"})
	})
}

func TestRetryAttemptTimeoutMovesOn(t *testing.T) {
	cancelled := make(chan struct{}, 4)
	var alpha *rtUpstream
	alpha = rtNewUpstream(t, func(_ int, _ http.ResponseWriter, r *http.Request) {
		if alpha.hang(r) {
			cancelled <- struct{}{}
		}
	})
	beta := rtNewUpstream(t, nil)
	tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast, "attempt_timeout 200ms\n"))
	start := time.Now()
	resp := tc.Post("/v1/chat/completions", rtChat)
	elapsed := time.Since(start)
	rtExpectOK(t, resp, "beta")
	if elapsed < 180*time.Millisecond || elapsed > 1500*time.Millisecond {
		t.Errorf("answered after %v, want about the 200ms attempt timeout", elapsed)
	}
	if got := resp.Header.Get("x-arbstr-retries"); got != "1/alpha" {
		t.Errorf("x-arbstr-retries = %q, want 1/alpha (a timed-out attempt is not retried)", got)
	}
	rtCounts(t, map[*rtUpstream]int{alpha: 1, beta: 1}, map[*rtUpstream]string{alpha: "alpha", beta: "beta"})
	select {
	case <-cancelled:
	case <-time.After(time.Second):
		t.Error("the timed-out attempt was never cancelled at the upstream")
	}
}

func TestRetryClientErrorsRelayedAsIs(t *testing.T) {
	for _, status := range []int{400, 413, 422} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			// Not a context-length refusal: those move on (SPEC §6 amendment).
			upstreamBody := fmt.Sprintf(`{"error": {"message": "invalid temperature %d", "type": "invalid_request_error", "param": "temperature", "code": "x"}}`+"\n", status)
			alpha := rtNewUpstream(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json; charset=utf-8")
				w.WriteHeader(status)
				_, _ = io.WriteString(w, upstreamBody)
			})
			beta := rtNewUpstream(t, nil)
			tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast))
			resp := tc.Post("/v1/chat/completions", rtChat)
			if resp.StatusCode != status {
				t.Errorf("status %d, want the provider's %d", resp.StatusCode, status)
			}
			if body := rtReadBody(t, resp); body != upstreamBody {
				t.Errorf("body %q, want the provider's %q", body, upstreamBody)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
				t.Errorf("Content-Type %q", ct)
			}
			if id := resp.Header.Get("x-arbstr-request-id"); id == "" {
				t.Error("no x-arbstr-request-id")
			}
			rtCounts(t, map[*rtUpstream]int{alpha: 1, beta: 0}, map[*rtUpstream]string{alpha: "alpha", beta: "beta"})
		})
	}
}

func TestRetryClientDisconnectCancelsUpstream(t *testing.T) {
	started := make(chan struct{}, 4)
	cancelled := make(chan struct{}, 4)
	var alpha *rtUpstream
	alpha = rtNewUpstream(t, func(_ int, _ http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		if alpha.hang(r) {
			cancelled <- struct{}{}
		}
	})
	beta := rtNewUpstream(t, nil)
	tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, tc.URL+"/v1/chat/completions", strings.NewReader(rtChat))
	req.Header.Set("Content-Type", "application/json")
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-started:
	case <-time.After(2 * time.Second):
		t.Fatal("the request never reached alpha")
	}
	cancel()
	gone := time.Now()
	select {
	case <-cancelled:
		if d := time.Since(gone); d > 500*time.Millisecond {
			t.Errorf("upstream request cancelled %v after the client left, want at once", d)
		}
	case <-time.After(time.Second):
		t.Fatal("the upstream request was not cancelled when the client went away")
	}
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("client: %v", err)
	}
	rtStaysZero(t, beta, "beta", 300*time.Millisecond)
	if n := alpha.count(); n != 1 {
		t.Errorf("alpha received %d requests, want 1 (no retry after the client left)", n)
	}
}

func TestRetryFallbacksLimit(t *testing.T) {
	t.Run("0", func(t *testing.T) {
		alpha := rtNewUpstream(t, rtStatus(500))
		beta := rtNewUpstream(t, nil)
		tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast, "retry {\n\tfallbacks 0\n}\n"))
		resp := tc.Post("/v1/chat/completions", rtChat)
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("status %d, want 502", resp.StatusCode)
		}
		rtDecodeError(t, resp)
		if got := resp.Header.Get("x-arbstr-retries"); got != "2/alpha" {
			t.Errorf("x-arbstr-retries = %q, want 2/alpha", got)
		}
		rtCounts(t, map[*rtUpstream]int{alpha: 2, beta: 0}, map[*rtUpstream]string{alpha: "alpha", beta: "beta"})
	})
	t.Run("1", func(t *testing.T) {
		alpha := rtNewUpstream(t, rtStatus(500))
		beta := rtNewUpstream(t, rtStatus(503))
		gamma := rtNewUpstream(t, nil)
		tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtProvider("gamma", gamma.url(), 3),
			rtFast, "retry {\n\tfallbacks 1\n}\n"))
		resp := tc.Post("/v1/chat/completions", rtChat)
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("status %d, want 502", resp.StatusCode)
		}
		rtDecodeError(t, resp)
		if got := resp.Header.Get("x-arbstr-retries"); got != "2/alpha, 2/beta" {
			t.Errorf("x-arbstr-retries = %q, want 2/alpha, 2/beta", got)
		}
		rtCounts(t, map[*rtUpstream]int{alpha: 2, beta: 2, gamma: 0}, map[*rtUpstream]string{alpha: "alpha", beta: "beta", gamma: "gamma"})
	})
	t.Run("1 with a skipped unhealthy candidate", func(t *testing.T) {
		// alpha cools down after its first 429; the second request may then
		// still use one fallback after beta, which is gamma.
		alpha := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "30")
			rtStatus(429)(n, w, r)
		})
		beta := rtNewUpstream(t, rtStatus(500))
		gamma := rtNewUpstream(t, nil)
		names := map[*rtUpstream]string{alpha: "alpha", beta: "beta", gamma: "gamma"}
		tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtProvider("gamma", gamma.url(), 3),
			rtFast, "retry {\n\tfallbacks 1\n\tretry_after_max 1s\n}\n"))
		resp := tc.Post("/v1/chat/completions", rtChat)
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("first request: status %d, want 502 (alpha then beta, no further fallback)", resp.StatusCode)
		}
		rtCounts(t, map[*rtUpstream]int{alpha: 1, beta: 2, gamma: 0}, names)
		resp = tc.Post("/v1/chat/completions", rtChat)
		rtExpectOK(t, resp, "gamma")
		rtCounts(t, map[*rtUpstream]int{alpha: 1, beta: 4, gamma: 1}, names)
	})
}

func TestRetryAllCandidatesFailed(t *testing.T) {
	alpha := rtNewUpstream(t, rtStatus(500))
	beta := rtNewUpstream(t, rtStatus(503))
	tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast))
	resp := tc.Post("/v1/chat/completions", rtChat)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
	e := rtDecodeError(t, resp)
	if !strings.Contains(e.Error.Message, "beta") || !strings.Contains(e.Error.Message, "503") {
		t.Errorf("message %q does not name the last provider (beta) and its status (503)", e.Error.Message)
	}
	if e.Error.Param != nil {
		t.Errorf("param = %q, want null", *e.Error.Param)
	}
	if got := resp.Header.Get("x-arbstr-retries"); got != "2/alpha, 2/beta" {
		t.Errorf("x-arbstr-retries = %q, want 2/alpha, 2/beta", got)
	}
	if got := resp.Header.Get("x-should-retry"); got != "false" {
		t.Errorf("x-should-retry = %q, want false", got)
	}
	if got := resp.Header.Get("x-arbstr-request-id"); got == "" {
		t.Error("no x-arbstr-request-id")
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	rtCounts(t, map[*rtUpstream]int{alpha: 2, beta: 2}, map[*rtUpstream]string{alpha: "alpha", beta: "beta"})
}

// When every provider answered 429, the client is told to slow down (429
// with the shortest hint), not that the providers are broken (502).
func TestRetryAllRateLimited429(t *testing.T) {
	alpha := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "40")
		rtStatus(429)(n, w, r)
	})
	beta := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "20")
		rtStatus(429)(n, w, r)
	})
	tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast))
	resp := tc.Post("/v1/chat/completions", rtChat)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429", resp.StatusCode)
	}
	if got := resp.Header.Get("Retry-After"); got != "20" {
		t.Errorf("Retry-After = %q, want the shortest hint, 20", got)
	}
	if got := resp.Header.Get("x-should-retry"); got != "" {
		t.Errorf("x-should-retry = %q: a rate limit is for the client to wait out and retry", got)
	}
	if e := rtDecodeError(t, resp); e.Error.Code != "rate_limit_exceeded" {
		t.Errorf("code %q", e.Error.Code)
	}
	rtCounts(t, map[*rtUpstream]int{alpha: 1, beta: 1}, map[*rtUpstream]string{alpha: "alpha", beta: "beta"})

	// A mix of 429 and other failures is a 502 as before.
	gamma := rtNewUpstream(t, rtStatus(429))
	delta := rtNewUpstream(t, rtStatus(500))
	tc.Load(rtSite(rtProvider("gamma", gamma.url(), 1), rtProvider("delta", delta.url(), 2), rtFast))
	if resp := tc.Post("/v1/chat/completions", rtChat); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("429 then 500: status %d, want 502", resp.StatusCode)
	}
}

// A 2xx that is not a completion is a provider failure: arbstr moves on
// instead of handing the client an HTML page or an error dressed as success.
func TestRetryNonCompletion2xxMovesOn(t *testing.T) {
	for name, answer := range map[string]func(w http.ResponseWriter){
		"html page": func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "text/html")
			_, _ = io.WriteString(w, "<html>captive portal</html>")
		},
		"error object": func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"error":{"message":"upstream overloaded","code":502}}`)
		},
	} {
		t.Run(name, func(t *testing.T) {
			alpha := rtNewUpstream(t, func(_ int, w http.ResponseWriter, _ *http.Request) { answer(w) })
			beta := rtNewUpstream(t, nil)
			tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast))
			resp := tc.Post("/v1/chat/completions", rtChat)
			rtExpectOK(t, resp, "beta")
			if got := resp.Header.Get("x-arbstr-retries"); got != "1/alpha" {
				t.Errorf("x-arbstr-retries = %q, want 1/alpha (no retry on the same provider)", got)
			}
		})
	}
}

func TestRetryDeadline504(t *testing.T) {
	var alpha, beta *rtUpstream
	alpha = rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if alpha.delay(r, 350*time.Millisecond) {
			rtStatus(500)(n, w, r)
		}
	})
	beta = rtNewUpstream(t, func(_ int, _ http.ResponseWriter, r *http.Request) { beta.hang(r) })
	tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast, "timeout 1s\n"))
	start := time.Now()
	resp := tc.Post("/v1/chat/completions", rtChat)
	elapsed := time.Since(start)
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", resp.StatusCode)
	}
	if elapsed < 900*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("504 after %v, want at the 1s deadline", elapsed)
	}
	e := rtDecodeError(t, resp)
	if len(e.Error.Attempts) < 2 || e.Error.Attempts[0].Provider != "alpha" || e.Error.Attempts[0].Status != 500 {
		t.Errorf("error body does not list the attempts (alpha's 500 first): %+v", e.Error.Attempts)
	}
	if got := resp.Header.Get("x-should-retry"); got != "false" {
		t.Errorf("x-should-retry = %q, want false", got)
	}
	if got := resp.Header.Get("x-arbstr-retries"); !strings.HasPrefix(got, "2/alpha") {
		t.Errorf("x-arbstr-retries = %q, want 2/alpha first", got)
	}
}

func TestRetryNoBackoffPastDeadline(t *testing.T) {
	slow := "timeout 1s\nretry {\n\tattempts 3\n\tbackoff 5s\n}\n"
	t.Run("next provider", func(t *testing.T) {
		alpha := rtNewUpstream(t, rtStatus(500))
		beta := rtNewUpstream(t, nil)
		tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast, slow))
		start := time.Now()
		resp := tc.Post("/v1/chat/completions", rtChat)
		if elapsed := time.Since(start); elapsed > 700*time.Millisecond {
			t.Errorf("took %v: a 5s backoff past the 1s deadline must not be started", elapsed)
		}
		rtExpectOK(t, resp, "beta")
		if got := resp.Header.Get("x-arbstr-retries"); got != "1/alpha" {
			t.Errorf("x-arbstr-retries = %q, want 1/alpha", got)
		}
		rtCounts(t, map[*rtUpstream]int{alpha: 1, beta: 1}, map[*rtUpstream]string{alpha: "alpha", beta: "beta"})
	})
	t.Run("last provider", func(t *testing.T) {
		alpha := rtNewUpstream(t, rtStatus(500))
		tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtFast, slow))
		start := time.Now()
		resp := tc.Post("/v1/chat/completions", rtChat)
		if elapsed := time.Since(start); elapsed > 700*time.Millisecond {
			t.Errorf("took %v: a 5s backoff past the 1s deadline must not be started", elapsed)
		}
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("status %d, want 502", resp.StatusCode)
		}
		rtDecodeError(t, resp)
		if n := alpha.count(); n != 1 {
			t.Errorf("alpha received %d requests, want 1", n)
		}
	})
}
