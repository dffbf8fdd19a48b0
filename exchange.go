package arbstr

import (
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// exchange is the state of one request arbstr routes.
type exchange struct {
	h              *Handler
	proto          protocol // the request's API
	w              http.ResponseWriter
	r              *http.Request
	body           []byte
	facts          *requestFacts
	requestID      string
	idempotencyKey string
	start          time.Time
	deadline       time.Time
	records        []attemptRecord
	attempts       int

	provider *provider // the provider that answered, when one did
	usage    usage
	outcome  string      // for metrics and logs: ok, relayed, error, client_gone, broken_stream
	aborted  bool        // the response must be cut, not ended cleanly
	budget   *budgetHold // the request's budget reservation, when admitted against budgets

	// For the ledger row (ledger_row.go).
	plan       *plan         // the policy and the providers that qualified
	status     int           // the status the client got; 0 when none was written
	errorCode  string        // the code of arbstr's own error answer
	firstEvent time.Duration // a stream's time from the request's start to commit

	// Continuation and context windows (SPEC §13, continuation.go).
	cont           *continuation // the text kept to finish a broken stream; nil: not possible
	continuations  int           // continuations that took over a broken stream
	costCorrection float64       // a continued stream's calls at their own rates (see settle)
	finalOutcome   string        // set by a continuation: the request's outcome
	contextRefusal *relayedResponse
	contextRefuser *provider // who sent contextRefusal

	// complexity is the request's score when a complexity block is set;
	// tier is the serving provider's tier when routing by tier (SPEC §14).
	complexity *float64
	tier       string
}

func (ex *exchange) remaining() time.Duration { return time.Until(ex.deadline) }

func (ex *exchange) deadlinePassed() bool { return !time.Now().Before(ex.deadline) }

// attemptLimit is how long the next attempt may take before it is abandoned
// (streams: until their first event), and the cause it is abandoned with.
func (ex *exchange) attemptLimit() (time.Duration, error) {
	limit, cause := ex.remaining(), errDeadlinePassed
	per := time.Duration(ex.h.AttemptTimeout)
	if ex.facts.stream {
		per = time.Duration(ex.h.FirstEventTimeout)
	}
	if per > 0 && per < limit {
		limit, cause = per, errAttemptTimeout
		if ex.facts.stream {
			cause = errFirstEventTimeout
		}
	}
	return limit, cause
}

// sleep waits d unless the client goes away first; false means it went.
func (ex *exchange) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ex.r.Context().Done():
		return false
	}
}

// setCommonHeaders adds the x-arbstr headers known once a provider answered.
func (ex *exchange) setCommonHeaders(p *provider) {
	hdr := ex.w.Header()
	if p != nil {
		hdr.Set(headerProvider, p.name)
		if ex.h.tiered {
			ex.tier = p.tier.String()
			hdr.Set(headerTier, ex.tier)
		}
	}
	hdr.Set(headerLatency, strconv.FormatInt(time.Since(ex.start).Milliseconds(), 10))
	if len(ex.records) > 0 {
		hdr.Set(headerRetries, retriesHeader(ex.records))
	}
	ex.setPlaceholders()
}

// commit writes the response head of a provider's good answer.
func (ex *exchange) commit(p *provider, status int, contentType string, length int64) {
	ex.provider, ex.outcome, ex.status = p, "ok", status
	ex.setCommonHeaders(p)
	hdr := ex.w.Header()
	if contentType != "" {
		hdr.Set("Content-Type", contentType)
	}
	if length >= 0 {
		hdr.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	if cost, ok := ex.cost(); ok {
		hdr.Set(headerCost, strconv.FormatFloat(cost, 'f', 2, 64))
	}
	ex.w.WriteHeader(status)
}

// succeeded records the provider that served the request.
func (ex *exchange) succeeded(p *provider, res attemptResult) {
	ex.provider = p
	switch res.class {
	case classClientGone:
		ex.outcome = "client_gone"
	case classBrokenStream:
		ex.outcome = "broken_stream"
	}
	if ex.finalOutcome != "" {
		ex.outcome = ex.finalOutcome
	}
}

// relay passes a provider's refusal of the request to the client as it was.
func (ex *exchange) relay(p *provider, rr *relayedResponse) {
	ex.provider, ex.outcome, ex.status = p, "relayed", rr.status
	ex.setCommonHeaders(p)
	hdr := ex.w.Header()
	if rr.contentType != "" {
		hdr.Set("Content-Type", rr.contentType)
	}
	hdr.Set("Content-Length", strconv.Itoa(len(rr.body)))
	ex.w.WriteHeader(rr.status)
	_, _ = ex.w.Write(rr.body)
}

// fail answers with an error of arbstr's own.
func (ex *exchange) fail(e *apiError) {
	ex.outcome, ex.status, ex.errorCode = "error", e.status, e.code
	if len(ex.records) > 0 {
		ex.w.Header().Set(headerRetries, retriesHeader(ex.records))
	}
	ex.setPlaceholders()
	e.write(ex.w, ex.proto)
}

// clientGone ends a request whose client left: nothing to write.
func (ex *exchange) clientGone() {
	ex.outcome = "client_gone"
}

// cost is the price of this request in sats, when the usage is known.
func (ex *exchange) cost() (float64, bool) {
	if ex.provider == nil || !ex.usage.known {
		return 0, false
	}
	return ex.provider.expectedCost(ex.usage.promptTokens, ex.usage.completionTokens) + ex.costCorrection, true
}

// account reports the request once it is over: placeholders, access log
// fields, metrics and the ledger.
func (ex *exchange) account() {
	providerName, model := "", ""
	if ex.provider != nil {
		providerName = ex.provider.name
	}
	if ex.facts != nil {
		model = ex.facts.model
	}
	cost, costKnown := ex.cost()
	ex.setPlaceholders() // again: a stream's cost is known only now
	ex.logFields(providerName, model, cost, costKnown)
	ex.h.metrics.observeRequest(ex, providerName, model, cost, costKnown)
	ex.recordInLedger(providerName, model, cost, costKnown)
	ex.settleBudget(cost, costKnown)
}

// setPlaceholders publishes {http.arbstr.*}. It runs before the response
// head is written, so that deferred header directives (applied at
// WriteHeader) see the values, and again at the end for the access log.
// Values not known yet are empty rather than left as literal placeholders.
func (ex *exchange) setPlaceholders() {
	repl, _ := ex.r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		return
	}
	providerName, cost := "", ""
	if ex.provider != nil {
		providerName = ex.provider.name
	}
	if c, ok := ex.cost(); ok {
		cost = strconv.FormatFloat(c, 'f', 2, 64)
	}
	repl.Set("http.arbstr.request_id", ex.requestID)
	repl.Set("http.arbstr.provider", providerName)
	repl.Set("http.arbstr.cost_sats", cost)
	repl.Set("http.arbstr.complexity", ex.complexityText())
	repl.Set("http.arbstr.tier", ex.tier)
}
