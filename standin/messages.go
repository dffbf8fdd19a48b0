package standin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// malformedMessagesPayload is the broken event of the malformed fault in an
// Anthropic Messages stream.
const malformedMessagesPayload = `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":`

// serveMessages answers POST .../messages (the Anthropic Messages API),
// streaming and not. It needs the anthropic-version header, accepts any
// x-api-key, and answers errors in Anthropic's shape.
func (s *Provider) serveMessages(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return writeAnthropicError(w, http.StatusMethodNotAllowed, "method not allowed, use POST")
	}
	n := s.count(r)
	if r.Header.Get("anthropic-version") == "" {
		return writeAnthropicError(w, http.StatusBadRequest, "anthropic-version: header is required")
	}
	var req messagesRequest
	if status, err := readJSONBody(w, r, &req); err != nil {
		return writeAnthropicError(w, status, err.Error())
	}
	if err := req.check(); err != nil {
		return writeAnthropicError(w, http.StatusBadRequest, err.Error())
	}
	if refused, err := s.refuseMessages(w, req); refused {
		return err
	}
	return s.answer(n, s.newMessagesExchange(w, r, req))
}

// messagesRequest holds the fields of a Messages request that the stand-in
// looks at.
type messagesRequest struct {
	Model     string          `json:"model"`
	MaxTokens *int            `json:"max_tokens"`
	System    json.RawMessage `json:"system"`
	Stream    bool            `json:"stream"`
	Messages  []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
}

// check refuses what the Messages API refuses: no model, no positive
// max_tokens, no messages, a role other than user or assistant, or a
// content that is neither a string nor an array of blocks.
func (req messagesRequest) check() error {
	switch {
	case req.Model == "":
		return fmt.Errorf("model: Field required")
	case req.MaxTokens == nil:
		return fmt.Errorf("max_tokens: Field required")
	case *req.MaxTokens < 1:
		return fmt.Errorf("max_tokens: must be greater than or equal to 1")
	case len(req.Messages) == 0:
		return fmt.Errorf("messages: at least one message is required")
	}
	for i, m := range req.Messages {
		if m.Role != "user" && m.Role != "assistant" {
			return fmt.Errorf("messages.%d.role: Input should be 'user' or 'assistant'", i)
		}
		var text string
		var blocks []json.RawMessage
		if json.Unmarshal(m.Content, &text) != nil && json.Unmarshal(m.Content, &blocks) != nil {
			return fmt.Errorf("messages.%d.content: Input should be a valid string or list of content blocks", i)
		}
	}
	return nil
}

// promptBytes counts the text bytes of system and the messages.
func (req messagesRequest) promptBytes() int {
	n := contentBytes(req.System)
	for _, m := range req.Messages {
		n += contentBytes(m.Content)
	}
	return n
}

// assistantPrefix is the text of the last message when it is the
// assistant's: a partial answer to continue (a string or text blocks).
func (req messagesRequest) assistantPrefix() (string, bool) {
	last := req.Messages[len(req.Messages)-1]
	if last.Role != "assistant" {
		return "", false
	}
	var text string
	if json.Unmarshal(last.Content, &text) == nil {
		return text, true
	}
	var blocks []struct {
		Text string `json:"text"`
	}
	_ = json.Unmarshal(last.Content, &blocks)
	var b strings.Builder
	for _, bl := range blocks {
		b.WriteString(bl.Text)
	}
	return b.String(), true
}

// refuseMessages answers 400, in Anthropic's words, to a prefill the
// stand-in refuses or a prompt over its context window.
func (s *Provider) refuseMessages(w http.ResponseWriter, req messagesRequest) (bool, error) {
	if _, ok := req.assistantPrefix(); ok && s.Prefill == prefillRefuse {
		return true, writeAnthropicError(w, http.StatusBadRequest,
			"This model does not support assistant message prefill. The conversation must end with a user message.")
	}
	if s.Context > 0 {
		if need := max(1, req.promptBytes()/4) + *req.MaxTokens; need > s.Context {
			return true, writeAnthropicError(w, http.StatusBadRequest,
				fmt.Sprintf("prompt is too long: %d tokens > %d maximum", need, s.Context))
		}
	}
	return false, nil
}

func (s *Provider) newMessagesExchange(w http.ResponseWriter, r *http.Request, req messagesRequest) *messagesExchange {
	pieces, tokens := s.pieces, s.answerTokens
	if s.Prefill == prefillAccept {
		pieces, tokens = s.continuation(req.assistantPrefix())
	}
	input := max(1, req.promptBytes()/4)
	return &messagesExchange{
		rp:     newReply(s, w, r),
		req:    req,
		id:     "msg_standin_" + strconv.FormatInt(s.completionSeq.Add(1), 10),
		pieces: pieces,
		usage:  messagesUsage{InputTokens: input, OutputTokens: tokens},
		faultN: min(s.faultAfter(), len(pieces)),
	}
}

// messagesExchange is one Messages request being answered.
type messagesExchange struct {
	rp     *reply
	req    messagesRequest
	id     string
	pieces []string // the text deltas to send (the rest, after a prefill)
	usage  messagesUsage
	faultN int // deltas sent before a mid-stream fault fires
}

func (ex *messagesExchange) reply() *reply   { return ex.rp }
func (ex *messagesExchange) streaming() bool { return ex.req.Stream }

func (ex *messagesExchange) writeError(status int, _, message string) error {
	return writeAnthropicError(ex.rp.w, status, message)
}

// body is the whole message: the answer (after a prefill, the rest of it) in
// one text block.
func (ex *messagesExchange) body() any {
	stop := "end_turn"
	return ex.message([]textBlock{{Type: "text", Text: strings.Join(ex.pieces, "")}}, &stop, ex.usage)
}

func (ex *messagesExchange) message(content []textBlock, stopReason *string, u messagesUsage) anthropicMessage {
	return anthropicMessage{
		ID:         ex.id,
		Type:       "message",
		Role:       "assistant",
		Model:      ex.req.Model,
		Content:    content,
		StopReason: stopReason,
		Usage:      u,
	}
}

// streamErrorEvent sends `event: error` as the first event, as Anthropic
// does when it is overloaded once streaming.
func (ex *messagesExchange) streamErrorEvent() error {
	ex.rp.startStream()
	ex.rp.sendJSON("error", anthropicErrorBody("overloaded_error", "stand-in in-band error"))
	return nil
}

// stream sends a Messages stream: message_start, content_block_start, ping,
// one content_block_delta per piece, content_block_stop, message_delta and
// message_stop. no_done and no_finish end it right after the last delta.
func (ex *messagesExchange) stream(fault string) error {
	rp := ex.rp
	rp.startStream()
	start := messagesUsage{InputTokens: ex.usage.InputTokens, OutputTokens: 1}
	rp.sendJSON("message_start", map[string]any{"type": "message_start", "message": ex.message([]textBlock{}, nil, start)})
	rp.sendJSON("content_block_start", map[string]any{"type": "content_block_start", "index": 0, "content_block": textBlock{Type: "text"}})
	rp.sendEvent("ping", `{"type":"ping"}`)
	for i := 0; i <= len(ex.pieces) && rp.err == nil; i++ {
		if i == ex.faultN && rp.midStreamFault(fault, "content_block_delta", malformedMessagesPayload) {
			return nil
		}
		if i < len(ex.pieces) {
			rp.sendJSON("content_block_delta", map[string]any{
				"type": "content_block_delta", "index": 0,
				"delta": map[string]string{"type": "text_delta", "text": ex.pieces[i]},
			})
		}
	}
	if fault == faultNoDone || fault == faultNoFinish {
		return nil
	}
	rp.sendEvent("content_block_stop", `{"type":"content_block_stop","index":0}`)
	rp.sendJSON("message_delta", map[string]any{
		"type":  "message_delta",
		"delta": map[string]any{"stop_reason": "end_turn", "stop_sequence": nil},
		"usage": map[string]int{"output_tokens": ex.usage.OutputTokens},
	})
	rp.sendEvent("message_stop", `{"type":"message_stop"}`)
	return nil
}

// anthropicErrorType is Anthropic's error type for an HTTP status.
func anthropicErrorType(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusPaymentRequired:
		return "billing_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case http.StatusGatewayTimeout:
		return "timeout_error"
	case 529:
		return "overloaded_error"
	}
	if status >= 500 {
		return "api_error"
	}
	return "invalid_request_error"
}

func anthropicErrorBody(errType, message string) anthropicError {
	return anthropicError{Type: "error", Error: anthropicErrorDetail{Type: errType, Message: message}}
}

// writeAnthropicError answers status with an Anthropic error body whose
// type follows the status.
func writeAnthropicError(w http.ResponseWriter, status int, message string) error {
	return writeJSON(w, status, anthropicErrorBody(anthropicErrorType(status), message))
}

// anthropicError is Anthropic's error body (also the data of a stream's
// error event).
type anthropicError struct {
	// Type is always "error".
	Type string `json:"type"`
	// Error says what went wrong.
	Error anthropicErrorDetail `json:"error"`
}

// anthropicErrorDetail is the error inside an anthropicError.
type anthropicErrorDetail struct {
	// Type is e.g. invalid_request_error, rate_limit_error, api_error or
	// overloaded_error.
	Type string `json:"type"`
	// Message explains the error.
	Message string `json:"message"`
}

// anthropicMessage is a Messages API message (the non-streaming answer, and
// the message of message_start).
type anthropicMessage struct {
	// ID is "msg_standin_<n>".
	ID string `json:"id"`
	// Type is always "message".
	Type string `json:"type"`
	// Role is always "assistant".
	Role string `json:"role"`
	// Model is the requested model.
	Model string `json:"model"`
	// Content holds one text block (none in message_start).
	Content []textBlock `json:"content"`
	// StopReason is "end_turn", or null in message_start.
	StopReason *string `json:"stop_reason"`
	// StopSequence is always null.
	StopSequence *string `json:"stop_sequence"`
	// Usage counts tokens.
	Usage messagesUsage `json:"usage"`
}

// textBlock is a text content block.
type textBlock struct {
	// Type is always "text".
	Type string `json:"type"`
	// Text is the answer ("" in content_block_start).
	Text string `json:"text"`
}

// messagesUsage counts a message's tokens.
type messagesUsage struct {
	// InputTokens is (system + message text bytes) / 4, at least 1.
	InputTokens int `json:"input_tokens"`
	// CacheCreationInputTokens is always 0.
	CacheCreationInputTokens int `json:"cache_creation_input_tokens"`
	// CacheReadInputTokens is always 0.
	CacheReadInputTokens int `json:"cache_read_input_tokens"`
	// OutputTokens is the answer's word count (or events); 1 in
	// message_start.
	OutputTokens int `json:"output_tokens"`
}
