package arbstr

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/arbstr/caddy-arbstr/internal/jsonscan"
	"github.com/arbstr/caddy-arbstr/internal/sse"
)

// This file is SPEC §13: finishing a committed stream that broke by asking
// a provider with `prefill` for the rest of the answer, and context windows.
//
// How a continuation runs: the pump of the broken stream (stream.go) calls
// continueAfterBreak where it would write the honest ending. That sends the
// original body plus {"role":"assistant","content":<text so far>} to the
// next prefill candidate, through the same attempt machinery as any other
// attempt (sendTracked: health, metrics, first-event timeout), and relays
// its events with a pump of its own that rewrites each chunk to the first
// stream's id, model and created. The continuation's pump may break in turn
// and continue again, up to Handler.Continuations times.

// maxContinuationText bounds the answer text kept per stream for a
// continuation. Past it the text is dropped and a break ends honestly, as
// without continuation: memory per stream stays bounded.
const maxContinuationText = 1 << 20

// classContextLength is a 400 saying the request is over the provider's
// context window: the next provider is tried, never the same one (§6).
const classContextLength = classBadResponse + 1

// Outcomes of caddy_arbstr_continuations_total.
const (
	continuationOK         = "ok"          // finished the answer
	continuationBroken     = "broken"      // took over, then broke itself
	continuationRefused    = "refused"     // failed before its first event
	continuationClientGone = "client_gone" // the client left meanwhile
)

// headerContinuations is the trailer counting the continuations of a stream.
const headerContinuations = "x-arbstr-continuations"

var (
	errInBandAfterCommit = errors.New("provider sent an error event after commit")
	errContinuing        = errors.New("stream broke; continuing with another provider")
)

// errInBandBreak is the honest ending of a stream whose provider sent an
// error event after the answer had started, once a continuation was tried.
func errInBandBreak() *apiError {
	return &apiError{message: "the provider sent an error event after the answer had started; the answer is incomplete",
		errType: "server_error", code: "stream_broken"}
}

// continuation is what one request keeps to finish its stream elsewhere.
type continuation struct {
	text      []byte                     // the assistant text the client has received
	textBytes int                        // its length, also past the cap
	callStart int                        // textBytes when the current call began
	callOpen  bool                       // the current call's usage is not accounted yet
	ids       map[string]json.RawMessage // id, model, created of the first stream
	original  *apiError                  // the first break: what an honest ending names
	tried     map[*provider]bool
	by        []string // providers that took over, in order
	prior     usage    // calls before the current one (reported or estimated)
	priorCost float64  // what they cost, each at its provider's rates
	// off: a continuation is no longer possible (tool calls, several
	// choices, text past the cap); chunks of a running continuation are
	// still rewritten.
	off bool
}

// startContinuable prepares a committing stream for continuation when some
// other candidate could continue it. Only chat completions continue: the
// other APIs' streams end honestly when they break.
func (ex *exchange) startContinuable(p *provider) {
	if ex.h.continuations <= 0 || ex.cont != nil || ex.proto.id() != protoChat {
		return
	}
	for _, c := range ex.plan.providers() {
		if c.prefill && c != p {
			ex.cont = &continuation{callOpen: true, tried: map[*provider]bool{p: true}}
			return
		}
	}
}

// observe tracks the text of a chunk about to be sent to the client and,
// for a continuation's chunk, rewrites it into the first stream. nil means
// the chunk is not sent.
func (c *continuation) observe(p *pump, data []byte) []byte {
	if p.continues {
		if data = c.rewrite(p.ex, data); data == nil {
			return nil
		}
	} else if c.ids == nil {
		c.ids = streamIdentity(data)
	}
	if !c.off {
		c.track(data)
	}
	return data
}

// streamIdentity is the raw id, model and created of a chunk.
func streamIdentity(data []byte) map[string]json.RawMessage {
	ids := map[string]json.RawMessage{}
	_, _ = jsonscan.TopLevelObject(data, func(key []byte, v jsonscan.Span) error {
		switch k := string(key); k {
		case "id", "model", "created":
			ids[k] = bytes.Clone(data[v.Start:v.End])
		}
		return nil
	})
	return ids
}

// track appends a chunk's content to the text so far, and turns
// continuation off for what cannot be continued as text.
func (c *continuation) track(data []byte) {
	var choices jsonscan.Span
	_, _ = jsonscan.TopLevelObject(data, func(key []byte, v jsonscan.Span) error {
		if string(key) == "choices" {
			choices = v
		}
		return nil
	})
	if choices.Kind != jsonscan.Array {
		return
	}
	_ = jsonscan.Elements(data, choices, func(choice jsonscan.Span) error {
		if choice.Kind != jsonscan.Object {
			return nil
		}
		return jsonscan.Members(data, choice, func(key []byte, v jsonscan.Span) error {
			switch string(key) {
			case "index":
				if string(data[v.Start:v.End]) != "0" {
					c.stop() // n > 1: several answers in one stream
				}
			case "delta":
				if v.Kind == jsonscan.Object {
					c.trackDelta(data, v)
				}
			}
			return nil
		})
	})
}

func (c *continuation) trackDelta(data []byte, delta jsonscan.Span) {
	_ = jsonscan.Members(data, delta, func(key []byte, v jsonscan.Span) error {
		switch string(key) {
		case "content":
			if v.Kind == jsonscan.String {
				text := decodeString(data[v.Start:v.End])
				c.textBytes += len(text)
				if c.textBytes > maxContinuationText {
					c.stop()
				} else if !c.off {
					c.text = append(c.text, text...)
				}
			}
		case "tool_calls", "function_call":
			if v.Kind != jsonscan.Null {
				c.stop() // a tool call cannot be continued as text
			}
		}
		return nil
	})
}

func (c *continuation) stop() {
	c.off = true
	c.text = nil
}

// rewrite makes a continuation's chunk one of the first stream: its id,
// model and created, no second role delta, usage summed over the calls.
// nil means the chunk carries nothing once the role is gone.
func (c *continuation) rewrite(ex *exchange, data []byte) []byte {
	var top map[string]json.RawMessage
	if json.Unmarshal(data, &top) != nil {
		return data
	}
	for k, v := range c.ids {
		top[k] = v
	}
	empty := false
	if raw, ok := top["choices"]; ok {
		var choices []map[string]json.RawMessage
		if json.Unmarshal(raw, &choices) == nil && len(choices) > 0 {
			empty = true
			for _, ch := range choices {
				if !dropRole(ch) {
					empty = false
				}
			}
			top["choices"], _ = json.Marshal(choices)
		}
	}
	hasUsage := len(top["usage"]) > 0 && string(top["usage"]) != "null"
	if empty && !hasUsage {
		return nil
	}
	if hasUsage && ex.usage.known {
		total := c.prior.plus(ex.usage)
		top["usage"], _ = json.Marshal(map[string]int{"prompt_tokens": total.promptTokens,
			"completion_tokens": total.completionTokens, "total_tokens": total.promptTokens + total.completionTokens})
	}
	out, err := json.Marshal(top)
	if err != nil {
		return data
	}
	return out
}

// dropRole removes the role from a choice's delta (the client had it from
// the first stream) and reports whether the choice is left empty.
func dropRole(ch map[string]json.RawMessage) bool {
	if fr := ch["finish_reason"]; len(fr) > 0 && string(fr) != "null" {
		return false
	}
	var delta map[string]json.RawMessage
	if json.Unmarshal(ch["delta"], &delta) != nil {
		return false
	}
	if _, ok := delta["role"]; !ok {
		return false
	}
	delete(delta, "role")
	if content, ok := delta["content"]; ok && (string(content) == `""` || string(content) == "null") {
		delete(delta, "content")
	}
	ch["delta"], _ = json.Marshal(delta)
	return len(delta) == 0
}

func (u usage) plus(v usage) usage {
	return usage{known: true, promptTokens: u.promptTokens + v.promptTokens,
		completionTokens: u.completionTokens + v.completionTokens}
}

// continueAfterBreak is called where a committed stream broke. handled
// means the end of the stream was taken care of here: continued by another
// provider, or ended honestly naming the first break. Not handled: no
// continuation was possible and the caller ends the stream as before.
func (p *pump) continueAfterBreak(brk *apiError, cause error) (attemptResult, bool) {
	ex, c := p.ex, p.ex.cont
	if c == nil {
		return attemptResult{}, false
	}
	if c.original == nil {
		c.original = brk
	}
	if c.off || p.finished || ex.continuations >= ex.h.continuations || ex.r.Context().Err() != nil {
		if !p.continues {
			return attemptResult{}, false
		}
		return p.honestEnding(cause), true
	}
	p.at.cancel(errContinuing) // the broken provider may still be sending
	if p.flushPending() != nil {
		return p.clientGone(), true
	}
	ex.records = append(ex.records, attemptRecord{provider: p.at.provider.name, status: http.StatusOK, class: classBrokenStream, err: cause})
	c.closeCall(ex, p.at.provider)
	for next := ex.nextContinuationTarget(); next != nil; next = ex.nextContinuationTarget() {
		res, took := p.tryContinuation(next)
		switch {
		case took:
			if res.class == classClientGone {
				ex.finalOutcome = "client_gone"
			}
			return attemptResult{class: classBrokenStream, committed: true, err: cause}, true
		case res.class == classClientGone:
			ex.finalOutcome = "client_gone"
			return attemptResult{class: classClientGone, committed: true}, true
		}
	}
	return p.honestEnding(cause), true
}

// nextContinuationTarget is the first candidate, in the plan's order, that
// has prefill, has not failed this request and can hold the longer body.
func (ex *exchange) nextContinuationTarget() *provider {
	c := ex.cont
	failed := map[string]bool{}
	for _, r := range ex.records {
		failed[r.provider] = true
	}
	need := (len(ex.body)+len(c.text))/3 + ex.facts.maxTokens
	for _, p := range ex.plan.ordered() {
		if p.prefill && !c.tried[p] && !failed[p.name] && (p.context == 0 || p.context >= need) {
			return p
		}
	}
	return nil
}

// tryContinuation asks one provider for the rest of the answer. took means
// it committed: its pump has ended the stream.
func (p *pump) tryContinuation(next *provider) (attemptResult, bool) {
	ex, h := p.ex, p.ex.h
	ex.cont.tried[next] = true
	t, ok := h.health.begin(next, ex.facts.model, false)
	if !ok {
		return attemptResult{class: classNone}, false // open circuit: never wait on it
	}
	defer h.health.abandon(t)
	body, apiErr := continuationBody(ex, next)
	if apiErr != nil {
		return attemptResult{class: classClient, err: apiErr}, false
	}
	// A fresh deadline for the new call, as for a new request: the stream
	// may have run longer than timeout.
	ex.deadline = time.Now().Add(time.Duration(h.Timeout))
	res, state := h.sendTracked(ex, next, t, body, &continuationDelivery{parent: p})
	h.metrics.observeAttempt(next, ex.facts.model, res.class, state)
	outcome := continuationRefused
	switch {
	case res.class == classClientGone:
		outcome = continuationClientGone
	case res.committed && res.class == classNone:
		outcome = continuationOK
	case res.committed:
		outcome = continuationBroken
	}
	h.metrics.observeContinuation(next.name, outcome)
	if res.committed {
		return res, true
	}
	ex.records = append(ex.records, attemptRecord{next.name, res.status, res.class, res.retryAfter, res.err})
	return res, false
}

// continuationBody is the request body of a continuation: the client's with
// the text so far appended to messages as the assistant's, then the
// provider's usual edits (model name, include_usage).
func continuationBody(ex *exchange, p *provider) ([]byte, *apiError) {
	var messages jsonscan.Span
	_, err := jsonscan.TopLevelObject(ex.body, func(key []byte, v jsonscan.Span) error {
		if string(key) == "messages" {
			messages = v
		}
		return nil
	})
	if err != nil || messages.Kind != jsonscan.Array {
		return nil, errInvalidRequest("messages", "'messages' is required and must be an array")
	}
	var e edit
	if prefix, content, ok := clientPrefill(ex.body, messages); ok {
		// The client prefilled the answer itself: the text so far follows
		// its prefix in the same message.
		e = edit{content.Start, content.End, encodeJSON(prefix + string(ex.cont.text))}
	} else {
		insert := encodeJSON(struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		}{"assistant", string(ex.cont.text)})
		if len(bytes.TrimSpace(ex.body[messages.Start+1:messages.End-1])) > 0 {
			insert = append([]byte(","), insert...)
		}
		e = edit{messages.End - 1, messages.End - 1, insert}
	}
	body := applyEdits(ex.body, []edit{e})
	facts, apiErr := inspectRequest(body)
	if apiErr != nil {
		return nil, apiErr
	}
	return upstreamBody(body, facts, p.upstreamModel(ex.facts.model), ex.facts.injectUsage), nil
}

// clientPrefill finds a last message that is the assistant's with string
// content: a prefix the client asked the provider to continue.
func clientPrefill(body []byte, messages jsonscan.Span) (string, jsonscan.Span, bool) {
	var last jsonscan.Span
	_ = jsonscan.Elements(body, messages, func(m jsonscan.Span) error {
		last = m
		return nil
	})
	if last.Kind != jsonscan.Object {
		return "", jsonscan.Span{}, false
	}
	var role, content jsonscan.Span
	_ = jsonscan.Members(body, last, func(key []byte, v jsonscan.Span) error {
		switch string(key) {
		case "role":
			role = v
		case "content":
			content = v
		}
		return nil
	})
	if role.Kind != jsonscan.String || string(body[role.Start:role.End]) != `"assistant"` || content.Kind != jsonscan.String {
		return "", jsonscan.Span{}, false
	}
	return decodeString(body[content.Start:content.End]), content, true
}

// encodeJSON encodes v without escaping <, > and &.
func encodeJSON(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	return bytes.TrimRight(b.Bytes(), "\n")
}

// continuationDelivery relays a continuation into the stream already
// committed to the client, once its first good event has arrived.
type continuationDelivery struct {
	parent *pump
}

func (d *continuationDelivery) deliver(ex *exchange, at *attempt, resp *http.Response) attemptResult {
	sc := sse.NewScanner(resp.Body)
	defer sc.Release()
	held, res, ok := passGate(ex, at, sc, resp.StatusCode)
	if !ok {
		return res
	}
	c := ex.cont
	c.callStart, c.callOpen = c.textBytes, true
	c.by = append(c.by, at.provider.name)
	ex.continuations++
	ex.usage = usage{}
	p := &pump{ex: ex, at: at, sc: sc, rc: d.parent.rc, continues: true}
	sc.BeforeRead = p.flushBeforeRead
	at.onCommit()
	return p.run(held)
}

// closeCall accounts the usage of the call that just ended: as reported,
// or estimated (prompt: message text bytes / 4, as in §4, plus the text it
// was given to continue; completion: the text it sent / 4).
func (c *continuation) closeCall(ex *exchange, p *provider) {
	if !c.callOpen {
		return
	}
	c.callOpen = false
	u := ex.usage
	if !u.known {
		u = usage{known: true, promptTokens: (ex.facts.textBytes + c.callStart) / 4,
			completionTokens: (c.textBytes - c.callStart + 3) / 4}
	}
	c.prior = c.prior.plus(u)
	c.priorCost += p.expectedCost(u.promptTokens, u.completionTokens)
	ex.usage = usage{}
}

// settle sums the calls of a continued stream into the exchange: tokens
// into usage, and a cost correction so that ex.cost() is each call at its
// own provider's rates (ex.provider stays the one that committed).
func (c *continuation) settle(ex *exchange, current *provider) {
	c.closeCall(ex, current)
	ex.usage = c.prior
	ex.costCorrection = c.priorCost - ex.provider.expectedCost(c.prior.promptTokens, c.prior.completionTokens)
}

// honestEnding ends a stream whose continuation failed with §8's error
// event, naming the first break, and cuts the response.
func (p *pump) honestEnding(cause error) attemptResult {
	c := p.ex.cont
	c.settle(p.ex, p.at.provider)
	p.writeRaw(p.ex.proto.errorEvent(c.original))
	p.abort()
	return attemptResult{class: classBrokenStream, committed: true, err: cause}
}

// markContinued, before [DONE] of a continued stream, settles its calls
// and says who continued it: one SSE comment per continuation and the
// x-arbstr-continuations trailer.
func (p *pump) markContinued() {
	c := p.ex.cont
	if c == nil || len(c.by) == 0 {
		return
	}
	c.settle(p.ex, p.at.provider)
	for _, name := range c.by {
		_, _ = fmt.Fprintf(p.ex.w, ": x-arbstr-continued: %s\n\n", name)
	}
	p.ex.w.Header().Set(http.TrailerPrefix+headerContinuations, strconv.Itoa(p.ex.continuations))
	p.ex.finalOutcome = "continued"
}

func (m *arbstrMetrics) observeContinuation(provider, outcome string) {
	if m == nil {
		return
	}
	m.continuations.WithLabelValues(provider, outcome).Inc()
}

// errContextTooSmall refuses a request that no candidate's context window
// can hold (choose skips those whose window is too small), before any call.
func errContextTooSmall(model string, need, largest int) *apiError {
	return &apiError{status: http.StatusBadRequest, errType: "invalid_request_error", param: "messages",
		code: "context_length_exceeded", message: fmt.Sprintf(
			"this request needs about %d tokens (body bytes / 3, plus max_tokens) but the largest context window of the providers of model %q is %d tokens; shorten the messages or lower max_tokens",
			need, model, largest)}
}

// contextPhrasings are how providers say a request is over the context
// window (OpenAI, vLLM, Anthropic, Gemini, Mistral, llama.cpp, Ollama).
var contextPhrasings = [][]byte{
	[]byte("context_length_exceeded"),
	[]byte("maximum context length"),
	[]byte("context window"),
	[]byte("context length"),
	[]byte("too many tokens"),
	[]byte("prompt is too long"),
	[]byte("input is too long"),
}

// isContextLengthError reports whether a provider's 4xx says the request
// does not fit its context window: another provider's may be larger (§6).
func isContextLengthError(status int, body []byte) bool {
	if status != http.StatusBadRequest && status != http.StatusRequestEntityTooLarge && status != http.StatusUnprocessableEntity {
		return false
	}
	lower := bytes.ToLower(body)
	for _, phrase := range contextPhrasings {
		if bytes.Contains(lower, phrase) {
			return true
		}
	}
	return false
}

// noteContextRefusal keeps the first context-length refusal, to relay when
// no other provider can take the request.
func (ex *exchange) noteContextRefusal(p *provider, res attemptResult) {
	if res.class == classContextLength && ex.contextRefusal == nil {
		ex.contextRefusal, ex.contextRefuser = res.relay, p
	}
}

// relayContextRefusal answers with the first context-length refusal, if any.
func (ex *exchange) relayContextRefusal() bool {
	if ex.contextRefusal == nil {
		return false
	}
	ex.relay(ex.contextRefuser, ex.contextRefusal)
	return true
}
