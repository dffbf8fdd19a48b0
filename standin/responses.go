package standin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// malformedResponsesPayload is the broken event of the malformed fault in a
// Responses stream.
const malformedResponsesPayload = `{"type":"response.output_text.delta","delta":`

// serveResponses answers POST .../responses (the OpenAI Responses API),
// streaming and not.
func (s *Provider) serveResponses(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return methodNotAllowed(w, http.MethodPost)
	}
	n := s.count(r)
	var req responsesRequest
	if status, err := readJSONBody(w, r, &req); err != nil {
		return writeError(w, status, "invalid_request_error", "invalid_body", err.Error())
	}
	prompt, err := req.promptBytes()
	if err != nil {
		return writeParamError(w, err)
	}
	ex := s.newResponsesExchange(w, r, req, max(1, prompt/4))
	if s.Context > 0 {
		if need := ex.inputTokens + req.MaxOutputTokens; need > s.Context {
			return writeError(w, http.StatusBadRequest, "invalid_request_error", "context_length_exceeded",
				fmt.Sprintf("Your input exceeds the context window of this model (%d tokens with max_output_tokens, the window is %d). Please adjust your input and try again.", need, s.Context))
		}
	}
	return s.answer(n, ex)
}

// responsesRequest holds the fields of a Responses API request that the
// stand-in looks at.
type responsesRequest struct {
	Model           string          `json:"model"`
	Input           json.RawMessage `json:"input"`
	Instructions    *string         `json:"instructions"`
	Stream          bool            `json:"stream"`
	MaxOutputTokens int             `json:"max_output_tokens"`
}

// promptBytes counts the text bytes of instructions and input (a string,
// or items whose content is a string or parts with text, or whose output
// is a string); an input of another type is an error.
func (req responsesRequest) promptBytes() (int, error) {
	n := 0
	if req.Instructions != nil {
		n += len(*req.Instructions)
	}
	var text string
	if json.Unmarshal(req.Input, &text) == nil {
		return n + len(text), nil
	}
	var items []struct {
		Content json.RawMessage `json:"content"`
		Output  json.RawMessage `json:"output"`
	}
	if err := json.Unmarshal(req.Input, &items); err != nil || len(items) == 0 {
		return 0, &paramError{"input", "input must be a string or a non-empty array of input items"}
	}
	for _, it := range items {
		n += contentBytes(it.Content) + contentBytes(it.Output)
	}
	return n, nil
}

func (s *Provider) newResponsesExchange(w http.ResponseWriter, r *http.Request, req responsesRequest, inputTokens int) *responsesExchange {
	seq := strconv.FormatInt(s.completionSeq.Add(1), 10)
	return &responsesExchange{
		rp:          newReply(s, w, r),
		req:         req,
		id:          "resp_standin_" + seq,
		itemID:      "msg_standin_" + seq,
		model:       s.modelOr(req.Model),
		createdAt:   time.Now().Unix(),
		inputTokens: inputTokens,
		faultN:      min(s.faultAfter(), len(s.pieces)),
	}
}

// responsesExchange is one Responses API request being answered.
type responsesExchange struct {
	rp          *reply
	req         responsesRequest
	id          string // the response id
	itemID      string // the id of the one output message
	model       string
	createdAt   int64
	inputTokens int
	faultN      int   // deltas sent before a mid-stream fault fires
	seq         int64 // the next event's sequence_number
}

func (ex *responsesExchange) reply() *reply   { return ex.rp }
func (ex *responsesExchange) streaming() bool { return ex.req.Stream }
func (ex *responsesExchange) body() any       { return ex.response(true) }

func (ex *responsesExchange) writeError(status int, code, message string) error {
	errType, _ := errorKind(status)
	return writeError(ex.rp.w, status, errType, code, message)
}

// response is the Response object: completed (with the answer and usage),
// or in progress (no output yet), as the first stream events carry it.
func (ex *responsesExchange) response(completed bool) response {
	rsp := response{
		ID:                ex.id,
		Object:            "response",
		CreatedAt:         ex.createdAt,
		Status:            "in_progress",
		Instructions:      ex.req.Instructions,
		Model:             ex.model,
		Output:            []outputMessage{},
		ParallelToolCalls: true,
		Reasoning:         responseReasoning{},
		Temperature:       1,
		Text:              responseText{Format: responseTextFormat{Type: "text"}},
		ToolChoice:        "auto",
		Tools:             []any{},
		TopP:              1,
		Truncation:        "disabled",
		Metadata:          map[string]string{},
	}
	if ex.req.MaxOutputTokens > 0 {
		rsp.MaxOutputTokens = &ex.req.MaxOutputTokens
	}
	if completed {
		s := ex.rp.s
		rsp.Status = "completed"
		rsp.CompletedAt = &ex.createdAt
		rsp.Output = []outputMessage{ex.message(s.answerText, "completed")}
		rsp.Usage = &responseUsage{
			InputTokens:  ex.inputTokens,
			OutputTokens: s.answerTokens,
			TotalTokens:  ex.inputTokens + s.answerTokens,
		}
	}
	return rsp
}

// message is the output message with text (none while in progress).
func (ex *responsesExchange) message(text, status string) outputMessage {
	m := outputMessage{Type: "message", ID: ex.itemID, Status: status, Role: "assistant", Content: []outputText{}}
	if status == "completed" {
		m.Content = []outputText{newOutputText(text)}
	}
	return m
}

func newOutputText(text string) outputText {
	return outputText{Type: "output_text", Text: text, Annotations: []any{}, Logprobs: []any{}}
}

// streamErrorEvent sends `event: error` as the first event, before any
// output, as the Responses API does when a request fails once streaming.
func (ex *responsesExchange) streamErrorEvent() error {
	ex.rp.startStream()
	ex.send("error", &responsesErrorEvent{
		Code:    "standin_error",
		Message: "stand-in in-band error",
	})
	return nil
}

// stream sends a Responses stream: response.created, response.in_progress,
// response.output_item.added, response.content_part.added, one
// response.output_text.delta per piece, response.output_text.done,
// response.content_part.done, response.output_item.done and
// response.completed. no_done and no_finish end it right after the last
// delta.
func (ex *responsesExchange) stream(fault string) error {
	rp, s := ex.rp, ex.rp.s
	rp.startStream()
	ex.send("response.created", &responseEvent{Response: ex.response(false)})
	ex.send("response.in_progress", &responseEvent{Response: ex.response(false)})
	ex.send("response.output_item.added", &outputItemEvent{Item: ex.message("", "in_progress")})
	ex.send("response.content_part.added", ex.partEvent(newOutputText("")))
	for i := 0; i <= len(s.pieces) && rp.err == nil; i++ {
		if i == ex.faultN && rp.midStreamFault(fault, "response.output_text.delta", malformedResponsesPayload) {
			return nil
		}
		if i < len(s.pieces) {
			ex.send("response.output_text.delta", &textDeltaEvent{
				ItemID: ex.itemID, Delta: s.pieces[i], Logprobs: []any{},
			})
		}
	}
	if fault == faultNoDone || fault == faultNoFinish {
		return nil
	}
	ex.send("response.output_text.done", &textDoneEvent{ItemID: ex.itemID, Text: s.answerText, Logprobs: []any{}})
	ex.send("response.content_part.done", ex.partEvent(newOutputText(s.answerText)))
	ex.send("response.output_item.done", &outputItemEvent{Item: ex.message(s.answerText, "completed")})
	ex.send("response.completed", &responseEvent{Response: ex.response(true)})
	return nil
}

func (ex *responsesExchange) partEvent(part outputText) *contentPartEvent {
	return &contentPartEvent{ItemID: ex.itemID, Part: part}
}

// send sends one event of the given type: its data is v with "type" and
// "sequence_number" set.
func (ex *responsesExchange) send(eventType string, v responsesEvent) {
	v.setHeader(eventType, ex.seq)
	ex.seq++
	ex.rp.sendJSON(eventType, v)
}

// responsesEvent is a Responses stream event: every one carries its type
// and sequence number.
type responsesEvent interface {
	setHeader(eventType string, seq int64)
}

// eventHeader is the part every Responses stream event shares.
type eventHeader struct {
	// Type is the event type, also sent as the SSE event name.
	Type string `json:"type"`
	// SequenceNumber numbers the events of a stream from 0.
	SequenceNumber int64 `json:"sequence_number"`
}

func (h *eventHeader) setHeader(eventType string, seq int64) {
	h.Type, h.SequenceNumber = eventType, seq
}

// responseEvent is response.created, response.in_progress or
// response.completed.
type responseEvent struct {
	eventHeader
	// Response is the Response object as it stands.
	Response response `json:"response"`
}

// outputItemEvent is response.output_item.added or .done.
type outputItemEvent struct {
	eventHeader
	// OutputIndex is the item's index in output (always 0: one message).
	OutputIndex int `json:"output_index"`
	// Item is the output message.
	Item outputMessage `json:"item"`
}

// contentPartEvent is response.content_part.added or .done.
type contentPartEvent struct {
	eventHeader
	// ItemID is the output message's id.
	ItemID string `json:"item_id"`
	// OutputIndex is the message's index in output (always 0).
	OutputIndex int `json:"output_index"`
	// ContentIndex is the part's index in the message (always 0).
	ContentIndex int `json:"content_index"`
	// Part is the output_text part.
	Part outputText `json:"part"`
}

// textDeltaEvent is response.output_text.delta.
type textDeltaEvent struct {
	eventHeader
	// ItemID is the output message's id.
	ItemID string `json:"item_id"`
	// OutputIndex is the message's index in output (always 0).
	OutputIndex int `json:"output_index"`
	// ContentIndex is the part's index in the message (always 0).
	ContentIndex int `json:"content_index"`
	// Delta is the next piece of text.
	Delta string `json:"delta"`
	// Logprobs is always empty.
	Logprobs []any `json:"logprobs"`
}

// textDoneEvent is response.output_text.done.
type textDoneEvent struct {
	eventHeader
	// ItemID is the output message's id.
	ItemID string `json:"item_id"`
	// OutputIndex is the message's index in output (always 0).
	OutputIndex int `json:"output_index"`
	// ContentIndex is the part's index in the message (always 0).
	ContentIndex int `json:"content_index"`
	// Text is the whole text of the part.
	Text string `json:"text"`
	// Logprobs is always empty.
	Logprobs []any `json:"logprobs"`
}

// responsesErrorEvent is the `error` event of a Responses stream.
type responsesErrorEvent struct {
	eventHeader
	// Code is the error code.
	Code string `json:"code"`
	// Message explains the error.
	Message string `json:"message"`
	// Param is always null.
	Param *string `json:"param"`
}

// response is a Responses API Response object, with the fields the
// official SDKs read.
type response struct {
	// ID is "resp_standin_<n>".
	ID string `json:"id"`
	// Object is always "response".
	Object string `json:"object"`
	// CreatedAt is a Unix time in seconds.
	CreatedAt int64 `json:"created_at"`
	// Status is "in_progress" or "completed".
	Status string `json:"status"`
	// Background is always false.
	Background bool `json:"background"`
	// CompletedAt is set once completed.
	CompletedAt *int64 `json:"completed_at"`
	// Error is always null: failures are HTTP errors or error events.
	Error *struct{} `json:"error"`
	// IncompleteDetails is always null.
	IncompleteDetails *struct{} `json:"incomplete_details"`
	// Instructions echoes the request's instructions.
	Instructions *string `json:"instructions"`
	// MaxOutputTokens echoes the request's max_output_tokens.
	MaxOutputTokens *int `json:"max_output_tokens"`
	// Model is the requested model.
	Model string `json:"model"`
	// Output holds the one assistant message once completed.
	Output []outputMessage `json:"output"`
	// ParallelToolCalls is always true.
	ParallelToolCalls bool `json:"parallel_tool_calls"`
	// PreviousResponseID is always null.
	PreviousResponseID *string `json:"previous_response_id"`
	// Reasoning is always {"effort":null,"summary":null}.
	Reasoning responseReasoning `json:"reasoning"`
	// Store is always false: the stand-in keeps nothing.
	Store bool `json:"store"`
	// Temperature is always 1.
	Temperature float64 `json:"temperature"`
	// Text is the text format, always plain text.
	Text responseText `json:"text"`
	// ToolChoice is always "auto".
	ToolChoice string `json:"tool_choice"`
	// Tools is always empty.
	Tools []any `json:"tools"`
	// TopP is always 1.
	TopP float64 `json:"top_p"`
	// Truncation is always "disabled".
	Truncation string `json:"truncation"`
	// Usage counts tokens once completed (null before).
	Usage *responseUsage `json:"usage"`
	// User is always null.
	User *string `json:"user"`
	// Metadata is always empty.
	Metadata map[string]string `json:"metadata"`
}

// responseReasoning is the reasoning configuration: none.
type responseReasoning struct {
	// Effort is always null.
	Effort *string `json:"effort"`
	// Summary is always null.
	Summary *string `json:"summary"`
}

// responseText is the text configuration of a Response.
type responseText struct {
	// Format is always {"type":"text"}.
	Format responseTextFormat `json:"format"`
}

// responseTextFormat is the output text format.
type responseTextFormat struct {
	// Type is always "text".
	Type string `json:"type"`
}

// outputMessage is the assistant message in a Response's output.
type outputMessage struct {
	// Type is always "message".
	Type string `json:"type"`
	// ID is "msg_standin_<n>".
	ID string `json:"id"`
	// Status is "in_progress" or "completed".
	Status string `json:"status"`
	// Role is always "assistant".
	Role string `json:"role"`
	// Content holds the output_text part once completed.
	Content []outputText `json:"content"`
}

// outputText is an output_text content part.
type outputText struct {
	// Type is always "output_text".
	Type string `json:"type"`
	// Text is the answer (or what of it was sent so far).
	Text string `json:"text"`
	// Annotations is always empty.
	Annotations []any `json:"annotations"`
	// Logprobs is always empty.
	Logprobs []any `json:"logprobs"`
}

// responseUsage counts a Response's tokens.
type responseUsage struct {
	// InputTokens is (instructions + input text bytes) / 4, at least 1.
	InputTokens int `json:"input_tokens"`
	// InputTokensDetails is always {"cached_tokens":0}.
	InputTokensDetails struct {
		// CachedTokens is always 0.
		CachedTokens int `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	// OutputTokens is the answer's word count (or events).
	OutputTokens int `json:"output_tokens"`
	// OutputTokensDetails is always {"reasoning_tokens":0}.
	OutputTokensDetails struct {
		// ReasoningTokens is always 0.
		ReasoningTokens int `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	// TotalTokens is InputTokens + OutputTokens.
	TotalTokens int `json:"total_tokens"`
}
