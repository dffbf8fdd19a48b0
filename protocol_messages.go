package arbstr

import (
	"encoding/json"
	"net/http"

	"github.com/arbstr/caddy-arbstr/internal/jsonscan"
	"github.com/arbstr/caddy-arbstr/internal/sse"
)

// messagesProtocol is Anthropic's Messages API, POST …/messages, served by
// providers with `api anthropic`. Usage comes in two parts: input with
// message_start, output (a running total) with message_delta (SPEC §15).
type messagesProtocol struct{}

var _ protocol = messagesProtocol{}

func (messagesProtocol) id() protocolID    { return protoMessages }
func (messagesProtocol) endpoint() string  { return "messages" }
func (messagesProtocol) operation() string { return genAIOperationChat }
func (messagesProtocol) api() providerAPI  { return apiAnthropic }
func (messagesProtocol) path() string      { return "/messages" }

// messagesKeys are the members of a Messages request arbstr reads.
var messagesKeys = []string{"model", "stream", "messages", "max_tokens", "system"}

func (messagesProtocol) inspect(body []byte) (*requestFacts, *apiError) {
	var messages, maxTokens, system jsonscan.Span
	f, apiErr := inspectBody(body, messagesKeys, func(key string, v jsonscan.Span) {
		switch key {
		case "messages":
			messages = v
		case "max_tokens":
			maxTokens = v
		case "system":
			system = v
		}
	})
	if apiErr != nil {
		return nil, apiErr
	}
	if messages.Kind != jsonscan.Array {
		return nil, errInvalidRequest("messages", "'messages' is required and must be an array")
	}
	// Anthropic requires max_tokens: a request without it would only be
	// refused by the provider, after a reservation and an attempt. 0 is
	// valid (it warms the prompt cache and generates nothing).
	if maxTokens.Kind != jsonscan.Number || (positiveInt(body, maxTokens) == 0 && !isZero(body, maxTokens)) {
		return nil, errInvalidRequest("max_tokens", "'max_tokens' is required and must be an integer ≥ 0")
	}
	f.maxTokens = positiveInt(body, maxTokens)
	f.noOutput = f.maxTokens == 0
	switch system.Kind {
	case jsonscan.Invalid, jsonscan.Null, jsonscan.String, jsonscan.Array:
		f.textBytes += textBytes(body, system)
	default:
		return nil, errInvalidRequest("system", "'system' must be a string or an array of text blocks")
	}
	if apiErr := f.inspectMessages(body, messages); apiErr != nil {
		return nil, apiErr
	}
	return f, nil
}

// isZero reports whether a number member is the integer 0.
func isZero(body []byte, v jsonscan.Span) bool {
	return string(body[v.Start:v.End]) == "0"
}

// judgeAnswer reads a Message (or an error object) and its usage.
func (messagesProtocol) judgeAnswer(body []byte) chunkInfo {
	info, _ := judgeAnthropic(body)
	return info
}

// judgeAnthropic reads an answer or stream event: its type, whether it is
// an error, and the usage at the top level.
func judgeAnthropic(data []byte) (chunkInfo, anthropicSpans) {
	var sp anthropicSpans
	var info chunkInfo
	_, err := jsonscan.TopLevelObject(data, func(key []byte, v jsonscan.Span) error {
		switch string(key) {
		case "type":
			sp.typ = v
		case "error":
			info.isError = v.Kind != jsonscan.Null
		case "usage":
			sp.usage = v
		case "message":
			sp.message = v
		case "delta":
			sp.delta = v
		}
		return nil
	})
	if err != nil {
		return chunkInfo{}, sp
	}
	info.valid = true
	if sp.is(data, "error") {
		info.isError = true
	}
	if sp.usage.Kind == jsonscan.Object {
		info.usage = usageFrom(data, sp.usage)
	}
	return info, sp
}

// anthropicSpans are the members of an Anthropic event arbstr reads.
type anthropicSpans struct {
	typ, usage, message, delta jsonscan.Span
}

func (sp anthropicSpans) is(data []byte, typ string) bool {
	return sp.typ.Kind == jsonscan.String && string(data[sp.typ.Start+1:sp.typ.End-1]) == typ
}

func (messagesProtocol) judgeEvent(ev sse.Event) chunkInfo {
	info, sp := judgeAnthropic(ev.Data)
	if !info.valid || info.isError || sp.typ.Kind != jsonscan.String {
		return info
	}
	switch string(ev.Data[sp.typ.Start+1 : sp.typ.End-1]) {
	case "message_start":
		info.preamble = true
		if sp.message.Kind == jsonscan.Object {
			_ = jsonscan.Members(ev.Data, sp.message, func(key []byte, v jsonscan.Span) error {
				if string(key) == "usage" && v.Kind == jsonscan.Object {
					info.usage = usageFrom(ev.Data, v)
				}
				return nil
			})
		}
	case "ping":
		info.preamble, info.keepalive = true, true
	case "message_delta":
		info.finished = stopReason(ev.Data, sp.delta)
	case "message_stop":
		info.terminal = true
	}
	return info
}

// stopReason reports whether a message_delta's delta has a stop_reason.
func stopReason(data []byte, delta jsonscan.Span) bool {
	found := false
	if delta.Kind == jsonscan.Object {
		_ = jsonscan.Members(data, delta, func(key []byte, v jsonscan.Span) error {
			if string(key) == "stop_reason" && v.Kind == jsonscan.String {
				found = true
			}
			return nil
		})
	}
	return found
}

// messagesClosing ends a stream whose provider sent the stop reason but
// not message_stop.
var messagesClosing = []byte("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")

func (messagesProtocol) closing() []byte { return messagesClosing }

// errorBody is the error in Anthropic's shape, {"type":"error","error":
// {"type","message"}}, with arbstr's attempts beside the message.
func (messagesProtocol) errorBody(e *apiError) []byte {
	var payload struct {
		Type  string `json:"type"`
		Error struct {
			Type     string        `json:"type"`
			Message  string        `json:"message"`
			Attempts []attemptJSON `json:"attempts,omitempty"`
		} `json:"error"`
	}
	payload.Type = "error"
	payload.Error.Type = anthropicErrorType(e.status)
	payload.Error.Message = e.message
	payload.Error.Attempts = e.attemptsJSON()
	b, _ := json.Marshal(payload)
	return b
}

// errorEvent is Anthropic's error event, the error object under event: error.
func (m messagesProtocol) errorEvent(e *apiError) []byte { return sseEvent("error", m.errorBody(e)) }

// anthropicErrorType is the Anthropic error type of a status, as the SDKs
// map them to their error classes.
func anthropicErrorType(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusRequestTimeout:
		return "invalid_request_error"
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case http.StatusServiceUnavailable:
		return "overloaded_error"
	}
	return "api_error"
}
