package arbstr

import (
	"github.com/arbstr/caddy-arbstr/internal/jsonscan"
	"github.com/arbstr/caddy-arbstr/internal/sse"
)

// embeddingsProtocol is OpenAI's embeddings, POST …/embeddings: never
// streamed, priced by input tokens alone (SPEC §15).
type embeddingsProtocol struct{}

var _ protocol = embeddingsProtocol{}

func (embeddingsProtocol) id() protocolID    { return protoEmbeddings }
func (embeddingsProtocol) endpoint() string  { return "embeddings" }
func (embeddingsProtocol) operation() string { return "embeddings" }
func (embeddingsProtocol) api() providerAPI  { return apiOpenAI }
func (embeddingsProtocol) path() string      { return "/embeddings" }

// embeddingsKeys are the members of an embeddings request arbstr reads.
var embeddingsKeys = []string{"model", "stream", "input"}

// tokenBytes is what one token of a token-array input counts for in the
// input estimate, which divides text bytes by 4.
const tokenBytes = 4

func (embeddingsProtocol) inspect(body []byte) (*requestFacts, *apiError) {
	var input jsonscan.Span
	f, apiErr := inspectBody(body, embeddingsKeys, func(key string, v jsonscan.Span) {
		if key == "input" {
			input = v
		}
	})
	if apiErr != nil {
		return nil, apiErr
	}
	if f.stream {
		return nil, errInvalidRequest("stream", "embeddings are not streamed; leave out 'stream'")
	}
	f.noOutput = true
	switch input.Kind {
	case jsonscan.String:
		f.textBytes, f.lastUser, f.messages = input.End-input.Start-2, input, 1
	case jsonscan.Array:
		if isEmpty(body, input) {
			return nil, errInvalidRequest("input", "'input' must not be empty")
		}
		if apiErr := f.inspectEmbeddingInputs(body, input); apiErr != nil {
			return nil, apiErr
		}
	default:
		return nil, errInvalidRequest("input", "'input' is required: a string, an array of strings, an array of tokens or an array of token arrays")
	}
	return f, nil
}

// inspectEmbeddingInputs sizes an array input: strings by their bytes,
// tokens by tokenBytes each.
func (f *requestFacts) inspectEmbeddingInputs(body []byte, input jsonscan.Span) *apiError {
	var bad *apiError
	_ = jsonscan.Elements(body, input, func(v jsonscan.Span) error {
		f.messages++
		switch v.Kind {
		case jsonscan.String:
			f.textBytes += v.End - v.Start - 2
		case jsonscan.Number:
			f.textBytes += tokenBytes
		case jsonscan.Array:
			_ = jsonscan.Elements(body, v, func(jsonscan.Span) error {
				f.textBytes += tokenBytes
				return nil
			})
		default:
			bad = errInvalidRequest("input", "each element of 'input' must be a string, a token (integer) or an array of tokens")
			return bad
		}
		return nil
	})
	return bad
}

// judgeAnswer reads an embeddings list: an error object, or usage.
func (embeddingsProtocol) judgeAnswer(body []byte) chunkInfo { return inspectChunk(body) }

// judgeEvent is never used (embeddings are not streamed); an event reads as
// an answer would.
func (embeddingsProtocol) judgeEvent(ev sse.Event) chunkInfo { return inspectChunk(ev.Data) }

func (embeddingsProtocol) closing() []byte { return nil }

func (embeddingsProtocol) errorBody(e *apiError) []byte { return e.openAIBody() }

func (embeddingsProtocol) errorEvent(e *apiError) []byte { return sseEvent("", e.openAIBody()) }
