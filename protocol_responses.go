package arbstr

import (
	"encoding/json"

	"github.com/arbstr/caddy-arbstr/internal/jsonscan"
	"github.com/arbstr/caddy-arbstr/internal/sse"
)

// responsesProtocol is OpenAI's Responses API, POST …/responses. Its
// streams name their events (event: response.output_text.delta, …), which
// arbstr relays as they are; usage comes with response.completed (SPEC §15).
type responsesProtocol struct{}

var _ protocol = responsesProtocol{}

func (responsesProtocol) id() protocolID    { return protoResponses }
func (responsesProtocol) endpoint() string  { return "responses" }
func (responsesProtocol) operation() string { return genAIOperationChat }
func (responsesProtocol) api() providerAPI  { return apiOpenAI }
func (responsesProtocol) path() string      { return "/responses" }

// responsesKeys are the members of a Responses request arbstr reads.
var responsesKeys = []string{"model", "stream", "input", "instructions", "max_output_tokens"}

func (responsesProtocol) inspect(body []byte) (*requestFacts, *apiError) {
	var input, instructions, maxOutput jsonscan.Span
	f, apiErr := inspectBody(body, responsesKeys, func(key string, v jsonscan.Span) {
		switch key {
		case "input":
			input = v
		case "instructions":
			instructions = v
		case "max_output_tokens":
			maxOutput = v
		}
	})
	if apiErr != nil {
		return nil, apiErr
	}
	f.maxTokens = positiveInt(body, maxOutput)
	switch instructions.Kind {
	case jsonscan.Invalid, jsonscan.Null:
	case jsonscan.String:
		f.textBytes += instructions.End - instructions.Start - 2
	default:
		return nil, errInvalidRequest("instructions", "'instructions' must be a string")
	}
	switch input.Kind {
	case jsonscan.Invalid, jsonscan.Null:
		// A response may continue a stored one (previous_response_id).
	case jsonscan.String:
		f.textBytes += input.End - input.Start - 2
		f.lastUser, f.messages = input, 1
	case jsonscan.Array:
		if apiErr := f.inspectMessages(body, input); apiErr != nil {
			return nil, apiErr
		}
	default:
		return nil, errInvalidRequest("input", "'input' must be a string or an array of input items")
	}
	return f, nil
}

// judgeAnswer reads a Response object: failed (an error object or status
// "failed") or not, and its usage. Its "error" member is null when it
// succeeded.
func (responsesProtocol) judgeAnswer(body []byte) chunkInfo {
	var info chunkInfo
	var status, usageSpan jsonscan.Span
	_, err := jsonscan.TopLevelObject(body, func(key []byte, v jsonscan.Span) error {
		switch string(key) {
		case "error":
			info.isError = v.Kind != jsonscan.Null
		case "status":
			status = v
		case "usage":
			usageSpan = v
		}
		return nil
	})
	if err != nil {
		return chunkInfo{}
	}
	info.valid = true
	if status.Kind == jsonscan.String && string(body[status.Start:status.End]) == `"failed"` {
		info.isError = true
	}
	if usageSpan.Kind == jsonscan.Object {
		info.usage = usageFrom(body, usageSpan)
	}
	return info
}

// judgeEvent reads one event by its type (the data's "type", which the
// event: line repeats).
func (responsesProtocol) judgeEvent(ev sse.Event) chunkInfo {
	var typ, usageSpan jsonscan.Span
	_, err := jsonscan.Walk(ev.Data, func(key []byte, v jsonscan.Span) error {
		if string(key) == "type" {
			typ = v
		}
		return nil
	}, "response", func(key []byte, v jsonscan.Span) error {
		if string(key) == "usage" {
			usageSpan = v
		}
		return nil
	})
	if err != nil || typ.Kind != jsonscan.String {
		return chunkInfo{}
	}
	info := chunkInfo{valid: true}
	switch string(ev.Data[typ.Start+1 : typ.End-1]) {
	case "error", "response.failed":
		info.isError = true
	case "response.created", "response.in_progress", "response.queued":
		info.preamble = true
	case "response.completed", "response.incomplete":
		info.terminal, info.finished = true, true
		if usageSpan.Kind == jsonscan.Object {
			info.usage = usageFrom(ev.Data, usageSpan)
		}
	}
	return info
}

func (responsesProtocol) closing() []byte { return nil }

func (responsesProtocol) errorBody(e *apiError) []byte { return e.openAIBody() }

// errorEvent is the Responses API's error event: {"type":"error","code",
// "message","param"}.
func (responsesProtocol) errorEvent(e *apiError) []byte {
	var param *string
	if e.param != "" {
		param = &e.param
	}
	data, _ := json.Marshal(struct {
		Type    string  `json:"type"`
		Code    string  `json:"code"`
		Message string  `json:"message"`
		Param   *string `json:"param"`
	}{"error", e.code, e.message, param})
	return sseEvent("error", data)
}
