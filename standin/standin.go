// Package standin is arbstr's stand-in provider: the Caddy module
// http.handlers.arbstr_standin (Caddyfile directive arbstr_standin), a fake
// OpenAI-compatible provider with injectable latency and faults, for demos,
// tests and benchmarks. Import it (blank) in a Caddy build to register it.
package standin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(new(Provider))
	httpcaddyfile.RegisterHandlerDirective("arbstr_standin", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("arbstr_standin", httpcaddyfile.Before, "respond")
}

// Fault names accepted by Provider.Fault.
const (
	faultReset      = "reset"
	faultHang       = "hang"
	faultErrorEvent = "error_event"
	faultCut        = "cut"
	faultStall      = "stall"
	faultMalformed  = "malformed"
	faultNoDone     = "no_done"
	faultNoFinish   = "no_finish"
)

var faults = []string{
	faultReset, faultHang, faultErrorEvent, faultCut,
	faultStall, faultMalformed, faultNoDone, faultNoFinish,
}

// faultAfterFaults are the faults that fire part-way through a stream.
var faultAfterFaults = []string{faultCut, faultStall, faultMalformed}

// Prefill modes accepted by Provider.Prefill.
const (
	prefillAccept = "accept"
	prefillRefuse = "refuse"
)

const (
	maxBodyBytes     = 32 << 20
	defaultModel     = "standin"
	defaultFaultAt   = 1
	malformedPayload = `{"choices":[{"delta":{"content":`
	errorEventData   = `{"error":{"message":"stand-in in-band error","type":"server_error","param":null,"code":"standin_error"}}`
)

// Provider is a fake OpenAI-compatible LLM provider. It answers
// POST .../chat/completions, .../responses and .../messages (Anthropic;
// streaming and not), POST .../embeddings, GET .../models,
// GET/DELETE .../standin/requests and GET .../standin/last-request, and can
// inject latency, error statuses and transport or stream faults into every
// API. It is meant for demos, tests and benchmarks of
// the arbstr router, never for production traffic.
type Provider struct {
	// Name identifies this stand-in: it is sent in the x-standin-name response
	// header and used in the default answer.
	Name string `json:"name,omitempty"`

	// Models lists the model ids returned by GET .../models.
	// Default: ["standin"].
	Models []string `json:"models,omitempty"`

	// Answer is the assistant reply text. Default: "Hello from <name>."
	// (or "Hello from standin." without a name).
	Answer string `json:"answer,omitempty"`

	// Events is the exact number of content chunks sent when streaming,
	// cycling through the answer's words. Default (0): one chunk per word.
	// It also sets completion_tokens and the non-streaming content.
	Events int `json:"events,omitempty"`

	// Latency is waited before the response headers of an API request
	// (non-streaming: before the whole answer).
	Latency caddy.Duration `json:"latency,omitempty"`

	// FirstToken is waited, when streaming, after the response headers and
	// before the first event.
	FirstToken caddy.Duration `json:"first_token,omitempty"`

	// Pace is waited, when streaming, between two consecutive events.
	Pace caddy.Duration `json:"pace,omitempty"`

	// FailStatus, if set (400..599), makes API requests fail with this status
	// and an error body in the API's shape (OpenAI's, or Anthropic's on
	// .../messages). Mutually exclusive with Fault.
	FailStatus int `json:"fail_status,omitempty"`

	// RetryAfter, with FailStatus, sends a Retry-After header in whole
	// seconds, rounded up.
	RetryAfter caddy.Duration `json:"retry_after,omitempty"`

	// RetryAfterMs, with FailStatus, sends a retry-after-ms header with this
	// number of milliseconds.
	RetryAfterMs int `json:"retry_after_ms,omitempty"`

	// FailFirst limits FailStatus or Fault to the first N API requests
	// (counted since start or the last DELETE .../standin/requests); later
	// requests are healthy. 0 means every request fails.
	FailFirst int `json:"fail_first,omitempty"`

	// Fault injects a failure into API requests. One of: reset (connection
	// reset before any response), hang (never answer), error_event (in-band
	// SSE error event; 500 when not streaming), cut (abort the connection
	// mid-stream or mid-body), stall (stop mid-stream and wait; hang when not
	// streaming), malformed (one broken JSON event mid-stream), no_done (no
	// final [DONE]), no_finish (neither finish_reason chunk nor [DONE]).
	// Stream-only faults answer normally to non-streaming requests. Each
	// API's events for these faults are in docs/standin.md.
	Fault string `json:"fault,omitempty"`

	// FaultAfter is the number of content events sent before the cut, stall
	// or malformed fault fires. Default: 1.
	FaultAfter *int `json:"fault_after,omitempty"`

	// Prefill is what the stand-in does with a request whose last message is
	// the assistant's (a partial answer to continue): "accept" streams the
	// rest of its answer after that text, "refuse" answers 400 as providers
	// without prefill do. Default (""): the message is ignored and the whole
	// answer is sent.
	Prefill string `json:"prefill,omitempty"`

	// Context is a context window in tokens: a request whose prompt
	// (message text bytes / 4) plus max_tokens is larger gets 400
	// context_length_exceeded. 0: no limit.
	Context int `json:"context,omitempty"`

	requests      atomic.Int64
	last          atomic.Pointer[lastRequest] // served by GET .../standin/last-request
	completionSeq atomic.Int64
	models        atomic.Pointer[[]string] // served by GET .../models; PUT .../standin/models replaces it
	created       int64
	pieces        []string
	answerText    string
	answerTokens  int
}

// CaddyModule returns the Caddy module information.
func (*Provider) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.arbstr_standin",
		New: func() caddy.Module { return new(Provider) },
	}
}

// Provision fills in defaults and precomputes the answer. It does not use
// ctx, so a zero caddy.Context is fine in tests.
func (s *Provider) Provision(_ caddy.Context) error {
	if len(s.Models) == 0 {
		s.Models = []string{defaultModel}
	}
	models := slices.Clone(s.Models)
	s.models.Store(&models)
	if s.Answer == "" {
		s.Answer = "Hello from " + s.displayName() + "."
	}
	s.created = time.Now().Unix()
	s.pieces = contentPieces(s.Answer, s.Events)
	s.answerText = strings.Join(s.pieces, "")
	s.answerTokens = len(strings.Fields(s.Answer))
	if s.Events > 0 {
		s.answerTokens = s.Events
	}
	return nil
}

// Validate checks the configuration.
func (s *Provider) Validate() error {
	if s.Fault != "" && !slices.Contains(faults, s.Fault) {
		return fmt.Errorf("arbstr_standin: unknown fault %q, allowed: %s", s.Fault, strings.Join(faults, ", "))
	}
	if s.Prefill != "" && s.Prefill != prefillAccept && s.Prefill != prefillRefuse {
		return fmt.Errorf("arbstr_standin: prefill must be %s or %s, got %q", prefillAccept, prefillRefuse, s.Prefill)
	}
	if err := s.validateDurations(); err != nil {
		return err
	}
	if err := s.validateCounts(); err != nil {
		return err
	}
	return s.validateCombinations()
}

func (s *Provider) validateDurations() error {
	durations := []struct {
		name  string
		value caddy.Duration
	}{{"latency", s.Latency}, {"first_token", s.FirstToken}, {"pace", s.Pace}, {"retry_after", s.RetryAfter}}
	for _, d := range durations {
		if d.value < 0 {
			return fmt.Errorf("arbstr_standin: %s must not be negative, got %s", d.name, time.Duration(d.value))
		}
	}
	return nil
}

func (s *Provider) validateCounts() error {
	if s.FailStatus != 0 && (s.FailStatus < 400 || s.FailStatus > 599) {
		return fmt.Errorf("arbstr_standin: fail_status must be in 400..599, got %d", s.FailStatus)
	}
	counts := []struct {
		name  string
		value int
	}{{"events", s.Events}, {"retry_after_ms", s.RetryAfterMs}, {"fail_first", s.FailFirst}, {"fault_after", s.faultAfter()}, {"context", s.Context}}
	for _, c := range counts {
		if c.value < 0 {
			return fmt.Errorf("arbstr_standin: %s must not be negative, got %d", c.name, c.value)
		}
	}
	return nil
}

func (s *Provider) validateCombinations() error {
	switch {
	case s.FailStatus != 0 && s.Fault != "":
		return errors.New("arbstr_standin: fail_status and fault are mutually exclusive")
	case (s.RetryAfter != 0 || s.RetryAfterMs != 0) && s.FailStatus == 0:
		return errors.New("arbstr_standin: retry_after and retry_after_ms need fail_status")
	case s.FailFirst != 0 && s.FailStatus == 0 && s.Fault == "":
		return errors.New("arbstr_standin: fail_first needs fail_status or fault")
	case s.FaultAfter != nil && !slices.Contains(faultAfterFaults, s.Fault):
		return fmt.Errorf("arbstr_standin: fault_after only applies to faults %s", strings.Join(faultAfterFaults, ", "))
	}
	return nil
}

func (s *Provider) displayName() string {
	if s.Name != "" {
		return s.Name
	}
	return defaultModel
}

func (s *Provider) faultAfter() int {
	if s.FaultAfter == nil {
		return defaultFaultAt
	}
	return *s.FaultAfter
}

// ServeHTTP answers every request itself (it never calls next): chat
// completions, embeddings, responses, Anthropic messages, the model list, the
// request counter, or a 404.
func (s *Provider) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if s.Name != "" {
		w.Header().Set("X-Standin-Name", s.Name)
	}
	path := r.URL.Path
	switch {
	case strings.HasSuffix(path, "/chat/completions"):
		return s.serveChat(w, r)
	case strings.HasSuffix(path, "/embeddings"):
		return s.serveEmbeddings(w, r)
	case strings.HasSuffix(path, "/responses"):
		return s.serveResponses(w, r)
	case strings.HasSuffix(path, "/messages"):
		return s.serveMessages(w, r)
	case strings.HasSuffix(path, "/standin/last-request"):
		return s.serveLastRequest(w, r)
	case strings.HasSuffix(path, "/standin/requests"):
		return s.serveRequestCount(w, r)
	case strings.HasSuffix(path, "/standin/models"):
		return s.serveModelsUpdate(w, r)
	case strings.HasSuffix(path, "/models"):
		return s.serveModels(w, r)
	}
	return writeError(w, http.StatusNotFound, "invalid_request_error", "unknown_url",
		fmt.Sprintf("Unknown request URL: %s %s", r.Method, path))
}

func (s *Provider) serveModels(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return methodNotAllowed(w, http.MethodGet)
	}
	list := *s.models.Load()
	data := make([]model, 0, len(list))
	for _, id := range list {
		data = append(data, model{ID: id, Object: "model", Created: s.created, OwnedBy: "arbstr-standin"})
	}
	return writeJSON(w, http.StatusOK, modelList{Object: "list", Data: data})
}

// serveModelsUpdate answers PUT .../standin/models with a body
// {"models":["a","b"]}: from then on GET .../models lists those ids (until a
// reload). It lets a demo or test show model discovery picking up a model.
func (s *Provider) serveModelsUpdate(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPut {
		return methodNotAllowed(w, http.MethodPut)
	}
	var req struct {
		Models []string `json:"models"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || req.Models == nil {
		return writeError(w, http.StatusBadRequest, "invalid_request_error", "invalid_body",
			`the body must be {"models":["id",...]}`)
	}
	s.models.Store(&req.Models)
	return writeJSON(w, http.StatusOK, map[string][]string{"models": req.Models})
}

func (s *Provider) serveRequestCount(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodGet:
	case http.MethodDelete:
		s.requests.Store(0)
	default:
		return methodNotAllowed(w, "GET, DELETE")
	}
	return writeJSON(w, http.StatusOK, map[string]int64{"requests": s.requests.Load()})
}

func (s *Provider) serveChat(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return methodNotAllowed(w, http.MethodPost)
	}
	n := s.count(r)
	var req chatRequest
	if status, err := readJSONBody(w, r, &req); err != nil {
		return writeError(w, status, "invalid_request_error", "invalid_body", err.Error())
	}
	if refused, err := s.refuseRequest(w, req); refused {
		return err
	}
	return s.answer(n, s.newExchange(w, r, req))
}

// count counts a request of any API (the counter of GET .../standin/requests
// and fail_first) and keeps it for GET .../standin/last-request; it returns
// the request's 1-based number.
func (s *Provider) count(r *http.Request) int64 {
	s.last.Store(&lastRequest{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone()})
	return s.requests.Add(1)
}

// serveLastRequest answers GET .../standin/last-request with the method, path
// and headers of the last API request, so that a test can check what a
// provider saw (e.g. which API key arbstr sent).
func (s *Provider) serveLastRequest(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return methodNotAllowed(w, http.MethodGet)
	}
	last := s.last.Load()
	if last == nil {
		return writeError(w, http.StatusNotFound, "invalid_request_error", "no_request",
			"no API request received yet; send one first")
	}
	return writeJSON(w, http.StatusOK, last)
}

// lastRequest is what GET .../standin/last-request answers.
type lastRequest struct {
	// Method is the HTTP method of the request.
	Method string `json:"method"`
	// Path is the URL path of the request.
	Path string `json:"path"`
	// Header holds the request headers, keys in canonical form.
	Header http.Header `json:"headers"`
}

// protocol is what one API (chat completions, embeddings, responses,
// messages) adds to the shared request flow of answer: its bodies, its
// stream and its error shape.
type protocol interface {
	// reply is the response being written.
	reply() *reply
	// streaming tells whether the client asked for a stream.
	streaming() bool
	// body is the whole non-streaming answer.
	body() any
	// stream sends a whole stream with fault ("" for none) injected.
	stream(fault string) error
	// streamErrorEvent answers 200, then the in-band error as the first event.
	streamErrorEvent() error
	// writeError answers status with an error body in the API's shape; code
	// is the OpenAI error code (APIs without codes ignore it).
	writeError(status int, code, message string) error
}

// answer is the request flow every API shares once its request is read:
// latency, then a healthy answer, the fail_status or the fault.
func (s *Provider) answer(n int64, p protocol) error {
	rp := p.reply()
	if !wait(rp.ctx, time.Duration(s.Latency)) {
		return nil
	}
	switch {
	case !s.failsRequest(n) && p.streaming():
		return p.stream("")
	case !s.failsRequest(n):
		return writeJSON(rp.w, http.StatusOK, p.body())
	case s.FailStatus != 0:
		return s.serveFailStatus(p)
	}
	return s.serveFault(p)
}

// failsRequest tells whether the n-th request (1-based) gets the
// configured fail_status or fault.
func (s *Provider) failsRequest(n int64) bool {
	if s.FailStatus == 0 && s.Fault == "" {
		return false
	}
	return s.FailFirst == 0 || n <= int64(s.FailFirst)
}

func (s *Provider) newExchange(w http.ResponseWriter, r *http.Request, req chatRequest) *exchange {
	model := req.Model
	if model == "" {
		model = s.Models[0]
	}
	prompt := max(1, req.promptBytes()/4)
	pieces, completionTokens := s.pieces, s.answerTokens
	if s.Prefill == prefillAccept {
		pieces, completionTokens = s.continuation(req.assistantPrefix())
	}
	return &exchange{
		rp:     newReply(s, w, r),
		req:    req,
		id:     "chatcmpl-standin-" + strconv.FormatInt(s.completionSeq.Add(1), 10),
		model:  model,
		now:    time.Now().Unix(),
		usage:  usage{PromptTokens: prompt, CompletionTokens: completionTokens, TotalTokens: prompt + completionTokens},
		faultN: min(s.faultAfter(), len(pieces)),
		pieces: pieces,
	}
}

// reply is one response being written, whatever the API: the stand-in's
// options, the writer and the SSE state shared by all streams.
type reply struct {
	s    *Provider
	w    http.ResponseWriter
	ctx  context.Context
	rc   *http.ResponseController
	sent int   // SSE events written so far
	err  error // first streaming failure; later sends are skipped
}

func newReply(s *Provider, w http.ResponseWriter, r *http.Request) *reply {
	return &reply{s: s, w: w, ctx: r.Context(), rc: http.NewResponseController(w)}
}

// serveFailStatus answers the configured fail_status, with the retry hints,
// in the API's error shape.
func (s *Provider) serveFailStatus(p protocol) error {
	h := p.reply().w.Header()
	if s.RetryAfter > 0 {
		secs := (time.Duration(s.RetryAfter) + time.Second - 1) / time.Second
		h.Set("Retry-After", strconv.FormatInt(int64(secs), 10))
	}
	if s.RetryAfterMs > 0 {
		h.Set("Retry-After-Ms", strconv.Itoa(s.RetryAfterMs))
	}
	_, code := errorKind(s.FailStatus)
	msg := fmt.Sprintf("stand-in %s is configured to fail with status %d", s.displayName(), s.FailStatus)
	return p.writeError(s.FailStatus, code, msg)
}

// serveFault applies the configured fault. Faults that only make sense in a
// stream have a non-streaming meaning (error_event: 500, cut: half a body,
// stall: hang) or none (the answer is healthy).
func (s *Provider) serveFault(p protocol) error {
	rp, fault, stream := p.reply(), s.Fault, p.streaming()
	switch {
	case fault == faultReset:
		return rp.resetConnection()
	case fault == faultHang, fault == faultStall && !stream:
		<-rp.ctx.Done()
		return nil
	case fault == faultErrorEvent && stream:
		return p.streamErrorEvent()
	case fault == faultErrorEvent:
		return p.writeError(http.StatusInternalServerError, "standin_error", "stand-in internal error")
	case fault == faultCut && !stream:
		return rp.cutBody(p.body())
	case stream:
		return p.stream(fault)
	}
	return writeJSON(rp.w, http.StatusOK, p.body())
}

// continuation is what is left to send of the answer, and its token
// count, when the request ends with the assistant's partial answer prefix
// (ok) and prefill is accepted.
func (s *Provider) continuation(prefix string, ok bool) (pieces []string, tokens int) {
	if !ok {
		return s.pieces, s.answerTokens
	}
	pieces = remainingPieces(s.pieces, prefix)
	if len(pieces) == len(s.pieces) {
		return pieces, s.answerTokens
	}
	return pieces, len(pieces)
}

// exchange is one chat completion request being answered.
type exchange struct {
	rp     *reply
	req    chatRequest
	id     string
	model  string
	now    int64
	usage  usage
	faultN int      // content events sent before a mid-stream fault fires
	pieces []string // the content chunks to send (the rest, after a prefill)
}

func (ex *exchange) reply() *reply   { return ex.rp }
func (ex *exchange) streaming() bool { return ex.req.Stream }
func (ex *exchange) body() any       { return ex.completion() }

func (ex *exchange) writeError(status int, code, message string) error {
	errType, _ := errorKind(status)
	return writeError(ex.rp.w, status, errType, code, message)
}

func (ex *exchange) completion() completion {
	return completion{
		ID:      ex.id,
		Object:  "chat.completion",
		Created: ex.now,
		Model:   ex.model,
		Choices: []completionChoice{{
			Message:      messageOut{Role: "assistant", Content: ex.rp.s.answerText},
			FinishReason: "stop",
		}},
		Usage: ex.usage,
	}
}

// cutBody sends the headers and half of v's JSON body, then aborts the
// connection.
func (rp *reply) cutBody(v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	rp.w.Header().Set("Content-Type", "application/json")
	rp.w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	rp.w.WriteHeader(http.StatusOK)
	_, _ = rp.w.Write(body[:len(body)/2])
	abort(rp.rc)
	return nil
}

// resetConnection closes the TCP connection with SO_LINGER 0 so that the
// client sees a reset, without any response.
func (rp *reply) resetConnection() error {
	conn, _, err := rp.rc.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	setNoLinger(conn)
	return conn.Close()
}

func (ex *exchange) streamErrorEvent() error {
	ex.rp.startStream()
	ex.rp.sendData(errorEventData)
	return nil
}

// stream sends a whole SSE chat completion stream, with the given fault
// ("" for none) injected.
func (ex *exchange) stream(fault string) error {
	ex.rp.startStream()
	ex.sendChunk(delta{Role: "assistant", Content: new(string)}, nil)
	for i := 0; i <= len(ex.pieces) && ex.rp.err == nil; i++ {
		if i == ex.faultN && ex.rp.midStreamFault(fault, "", malformedPayload) {
			return nil
		}
		if i < len(ex.pieces) {
			ex.sendChunk(delta{Content: &ex.pieces[i]}, nil)
		}
	}
	if fault == faultNoFinish {
		return nil
	}
	stop := "stop"
	ex.sendChunk(delta{}, &stop)
	if ex.req.includeUsage() {
		ex.sendUsage()
	}
	if fault != faultNoDone {
		ex.rp.sendData("[DONE]")
	}
	return nil
}

// midStreamFault applies a cut, stall or malformed fault (malformed: the
// event named event, "" for none, with the broken payload) and tells
// whether the stream must end here.
func (rp *reply) midStreamFault(fault, event, payload string) (stop bool) {
	switch fault {
	case faultCut:
		abort(rp.rc)
	case faultStall:
		<-rp.ctx.Done()
		return true
	case faultMalformed:
		rp.sendEvent(event, payload)
	}
	return false
}

func (rp *reply) startStream() {
	h := rp.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	rp.w.WriteHeader(http.StatusOK)
	rp.err = rp.rc.Flush()
}

func (ex *exchange) sendChunk(d delta, finishReason *string) {
	ex.rp.sendJSON("", chunk{
		ID:      ex.id,
		Object:  "chat.completion.chunk",
		Created: ex.now,
		Model:   ex.model,
		Choices: []chunkChoice{{Delta: d, FinishReason: finishReason}},
	})
}

func (ex *exchange) sendUsage() {
	ex.rp.sendJSON("", chunk{
		ID:      ex.id,
		Object:  "chat.completion.chunk",
		Created: ex.now,
		Model:   ex.model,
		Choices: []chunkChoice{},
		Usage:   &ex.usage,
	})
}

// sendJSON sends v as the data of an SSE event named event ("" for none).
func (rp *reply) sendJSON(event string, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		rp.err = err
		return
	}
	rp.sendEvent(event, string(data))
}

// sendData sends one unnamed "data:" event, as chat completions streams do.
func (rp *reply) sendData(data string) { rp.sendEvent("", data) }

// sendEvent waits first_token (first event) or pace (later events), then
// writes and flushes one SSE event: an "event:" line when event is not "",
// and a "data:" line. After a failure it does nothing.
func (rp *reply) sendEvent(event, data string) {
	if rp.err != nil {
		return
	}
	delay := rp.s.Pace
	if rp.sent == 0 {
		delay = rp.s.FirstToken
	}
	if !wait(rp.ctx, time.Duration(delay)) {
		rp.err = rp.ctx.Err()
		return
	}
	rp.sent++
	var err error
	if event != "" {
		_, err = fmt.Fprintf(rp.w, "event: %s\ndata: %s\n\n", event, data)
	} else {
		_, err = fmt.Fprintf(rp.w, "data: %s\n\n", data)
	}
	if err != nil {
		rp.err = err
		return
	}
	rp.err = rp.rc.Flush()
}

// abort flushes what was written so far, then aborts the connection
// (net/http and Caddy close it without logging a panic).
func abort(rc *http.ResponseController) {
	_ = rc.Flush()
	panic(http.ErrAbortHandler)
}

// setNoLinger sets SO_LINGER 0 on the TCP connection under conn (also
// through TLS), so that Close sends a RST.
func setNoLinger(conn net.Conn) {
	for {
		switch c := conn.(type) {
		case *net.TCPConn:
			_ = c.SetLinger(0)
			return
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		default:
			return
		}
	}
}

// wait waits d or until ctx is done; it reports whether ctx is still
// alive.
func wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// contentPieces splits answer into words that keep their leading
// whitespace (so that joining them gives answer back). With events > 0 it
// returns exactly events pieces, cycling the words.
func contentPieces(answer string, events int) []string {
	words := splitWords(answer)
	if events <= 0 {
		return words
	}
	pieces := make([]string, events)
	for i := range pieces {
		p := words[i%len(words)]
		if i >= len(words) && strings.TrimLeftFunc(p, unicode.IsSpace) == p {
			p = " " + p // keep words apart when wrapping around
		}
		pieces[i] = p
	}
	return pieces
}

func splitWords(answer string) []string {
	var words []string
	start, prevSpace := 0, true
	for i, r := range answer {
		space := unicode.IsSpace(r)
		if space && !prevSpace {
			words = append(words, answer[start:i])
			start = i
		}
		prevSpace = space
	}
	rest := answer[start:]
	if strings.TrimSpace(rest) == "" && len(words) > 0 {
		words[len(words)-1] += rest
		return words
	}
	return append(words, rest)
}

// readJSONBody decodes the request body into req; on failure it returns the
// status to answer and an error to show the client.
func readJSONBody(w http.ResponseWriter, r *http.Request, req any) (int, error) {
	body := http.MaxBytesReader(w, r.Body, maxBodyBytes)
	err := json.NewDecoder(body).Decode(req)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge, fmt.Errorf("request body larger than %d bytes", tooLarge.Limit)
	case err != nil:
		return http.StatusBadRequest, fmt.Errorf("invalid JSON body: %v", err)
	}
	// Read to EOF so that net/http watches the connection and cancels the
	// request context when the client goes away.
	_, _ = io.Copy(io.Discard, body)
	return 0, nil
}

// errorKind gives the OpenAI error type and code for a status.
func errorKind(status int) (errType, code string) {
	switch {
	case status == http.StatusTooManyRequests:
		return "requests", "rate_limit_exceeded"
	case status == http.StatusUnauthorized:
		return "invalid_request_error", "invalid_api_key"
	case status >= 500:
		return "server_error", "standin_fail_status"
	}
	return "invalid_request_error", "standin_fail_status"
}

func methodNotAllowed(w http.ResponseWriter, allow string) error {
	w.Header().Set("Allow", allow)
	return writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed",
		"method not allowed, use "+allow)
}

func writeError(w http.ResponseWriter, status int, errType, code, message string) error {
	return writeJSON(w, status, errorResponse{Error: errorBody{
		Message: message, Type: errType, Code: code,
	}})
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
	return nil
}

// chatRequest holds the fields of a chat completion request that the
// stand-in looks at.
type chatRequest struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	MaxTokens           int `json:"max_tokens"`
	MaxCompletionTokens int `json:"max_completion_tokens"`
}

// assistantPrefix is the text of the last message when it is the
// assistant's: a partial answer to continue.
func (req chatRequest) assistantPrefix() (string, bool) {
	if len(req.Messages) == 0 {
		return "", false
	}
	last := req.Messages[len(req.Messages)-1]
	var text string
	if last.Role != "assistant" || json.Unmarshal(last.Content, &text) != nil {
		return "", false
	}
	return text, true
}

// remainingPieces drops the pieces of the answer that prefix already holds:
// a continuation sends only the words after it.
func remainingPieces(pieces []string, prefix string) []string {
	done, k := "", 0
	for k < len(pieces) && strings.HasPrefix(prefix, done+pieces[k]) {
		done += pieces[k]
		k++
	}
	return pieces[k:]
}

func (req chatRequest) includeUsage() bool {
	return req.StreamOptions != nil && req.StreamOptions.IncludeUsage
}

// promptBytes counts the bytes of message text (string contents and the
// text of content parts).
func (req chatRequest) promptBytes() int {
	n := 0
	for _, m := range req.Messages {
		n += contentBytes(m.Content)
	}
	return n
}

// contentBytes counts the text bytes of a message content: a string, or
// the "text" of each part of an array (OpenAI content parts, Anthropic
// blocks, Responses input parts).
func contentBytes(content json.RawMessage) int {
	var text string
	if json.Unmarshal(content, &text) == nil {
		return len(text)
	}
	var parts []struct {
		Text string `json:"text"`
	}
	n := 0
	if json.Unmarshal(content, &parts) == nil {
		for _, p := range parts {
			n += len(p.Text)
		}
	}
	return n
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type messageOut struct {
	Role    string  `json:"role"`
	Content string  `json:"content"`
	Refusal *string `json:"refusal"`
}

type completionChoice struct {
	Index        int        `json:"index"`
	Message      messageOut `json:"message"`
	Logprobs     *struct{}  `json:"logprobs"`
	FinishReason string     `json:"finish_reason"`
}

type completion struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"`
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []completionChoice `json:"choices"`
	Usage   usage              `json:"usage"`
}

type delta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

type chunkChoice struct {
	Index        int       `json:"index"`
	Delta        delta     `json:"delta"`
	Logprobs     *struct{} `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

type chunk struct {
	ID      string        `json:"id"`
	Object  string        `json:"object"`
	Created int64         `json:"created"`
	Model   string        `json:"model"`
	Choices []chunkChoice `json:"choices"`
	Usage   *usage        `json:"usage,omitempty"`
}

type model struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

type modelList struct {
	Object string  `json:"object"`
	Data   []model `json:"data"`
}

type errorBody struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

type errorResponse struct {
	Error errorBody `json:"error"`
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	s := new(Provider)
	err := s.UnmarshalCaddyfile(h.Dispenser)
	return s, err
}

// UnmarshalCaddyfile sets up the stand-in from Caddyfile tokens. Syntax:
//
//	arbstr_standin {
//		name           <name>
//		models         <id...>
//		answer         <text>
//		events         <n>
//		latency        <duration>
//		first_token    <duration>
//		pace           <duration>
//		fail_status    <400..599>
//		retry_after    <duration>
//		retry_after_ms <milliseconds>
//		fail_first     <n>
//		fault          reset|hang|error_event|cut|stall|malformed|no_done|no_finish
//		fault_after    <n>
//		prefill        accept|refuse
//		context        <tokens>
//	}
//
// The block is optional: a bare `arbstr_standin` answers "Hello from standin."
// for model "standin".
func (s *Provider) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		if err := s.unmarshalSubdirective(d); err != nil {
			return err
		}
	}
	return nil
}

func (s *Provider) unmarshalSubdirective(d *caddyfile.Dispenser) error {
	name := d.Val()
	if name == "models" {
		s.Models = d.RemainingArgs()
		if len(s.Models) == 0 {
			return d.ArgErr()
		}
		return nil
	}
	var arg string
	if !d.AllArgs(&arg) {
		return d.ArgErr()
	}
	var err error
	switch name {
	case "name":
		s.Name = arg
	case "answer":
		s.Answer = arg
	case "fault":
		s.Fault = arg
	case "events":
		s.Events, err = strconv.Atoi(arg)
	case "fail_status":
		s.FailStatus, err = strconv.Atoi(arg)
	case "retry_after_ms":
		s.RetryAfterMs, err = strconv.Atoi(arg)
	case "fail_first":
		s.FailFirst, err = strconv.Atoi(arg)
	case "prefill":
		s.Prefill = arg
	case "context":
		s.Context, err = strconv.Atoi(arg)
	case "fault_after":
		s.FaultAfter = new(int)
		*s.FaultAfter, err = strconv.Atoi(arg)
	case "latency":
		err = parseDuration(arg, &s.Latency)
	case "first_token":
		err = parseDuration(arg, &s.FirstToken)
	case "pace":
		err = parseDuration(arg, &s.Pace)
	case "retry_after":
		err = parseDuration(arg, &s.RetryAfter)
	default:
		return d.Errf("unrecognized arbstr_standin subdirective %q", name)
	}
	if err != nil {
		return d.Errf("%s: %v", name, err)
	}
	return nil
}

func parseDuration(arg string, dst *caddy.Duration) error {
	d, err := caddy.ParseDuration(arg)
	*dst = caddy.Duration(d)
	return err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Provider)(nil)
	_ caddy.Validator             = (*Provider)(nil)
	_ caddyhttp.MiddlewareHandler = (*Provider)(nil)
	_ caddyfile.Unmarshaler       = (*Provider)(nil)
)

// refuseRequest answers 400 to a request the stand-in's options refuse: a
// prefill it does not accept, or a prompt over its context window. The
// messages are those of real providers, which arbstr recognises.
func (s *Provider) refuseRequest(w http.ResponseWriter, req chatRequest) (bool, error) {
	if _, ok := req.assistantPrefix(); ok && s.Prefill == prefillRefuse {
		return true, writeError(w, http.StatusBadRequest, "invalid_request_error", "invalid_request_error",
			"This model does not support assistant message prefill. The conversation must end with a user message.")
	}
	if s.Context > 0 {
		prompt := max(1, req.promptBytes()/4)
		if need := prompt + max(req.MaxTokens, req.MaxCompletionTokens); need > s.Context {
			return true, writeError(w, http.StatusBadRequest, "invalid_request_error", "context_length_exceeded",
				fmt.Sprintf("This model's maximum context length is %d tokens. However, you requested %d tokens. Please reduce the length of the messages or completion.", s.Context, need))
		}
	}
	return false, nil
}
