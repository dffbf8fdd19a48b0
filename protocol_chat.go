package arbstr

import (
	"bytes"

	"github.com/arbstr/caddy-arbstr/internal/sse"
)

// chatProtocol is OpenAI's chat completions, POST …/chat/completions: the
// API arbstr was built for. Its request inspection is in inspect.go and its
// chunk inspection in stream.go; continuation (§13) works only here.
type chatProtocol struct{}

var _ protocol = chatProtocol{}

func (chatProtocol) id() protocolID    { return protoChat }
func (chatProtocol) endpoint() string  { return "chat" }
func (chatProtocol) operation() string { return genAIOperationChat }
func (chatProtocol) api() providerAPI  { return apiOpenAI }
func (chatProtocol) path() string      { return "/chat/completions" }

func (chatProtocol) inspect(body []byte) (*requestFacts, *apiError) { return inspectRequest(body) }

func (chatProtocol) judgeAnswer(body []byte) chunkInfo { return inspectChunk(body) }

func (chatProtocol) judgeEvent(ev sse.Event) chunkInfo {
	if bytes.Equal(ev.Data, doneMarker) {
		return chunkInfo{valid: true, terminal: true, marker: true}
	}
	return inspectChunk(ev.Data)
}

var chatClosing = []byte("data: [DONE]\n\n")

func (chatProtocol) closing() []byte { return chatClosing }

func (chatProtocol) errorBody(e *apiError) []byte { return e.openAIBody() }

// errorEvent is a data event with the error object, as OpenAI sends one.
func (chatProtocol) errorEvent(e *apiError) []byte { return sseEvent("", e.openAIBody()) }
