package arbstr

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"

	"github.com/arbstr/caddy-arbstr/internal/sse"
)

// This file is the seam between the client APIs arbstr routes (SPEC §15)
// and everything they share. A protocol knows its API's wire format:
// which requests are its own, what a request says about routing, what a
// provider's answer and each of its stream events mean, and how errors
// look. Choosing, health, retries, fallback, the commit gate, honest
// endings, metrics, the ledger and budgets are the same for every API and
// know nothing of these formats.
//
// Translating between APIs (an Anthropic request to an OpenAI-only
// provider) would be a protocol whose provider API differs from its
// client's; today a request goes only to providers that speak its API.

// protocolID indexes the protocols, e.g. a provider's precomputed URLs.
type protocolID uint8

const (
	protoChat protocolID = iota
	protoEmbeddings
	protoResponses
	protoMessages
	protocolCount
)

// protocol is one client API.
type protocol interface {
	// id is the protocol's index.
	id() protocolID
	// endpoint names the API in the ledger and logs: chat, embeddings,
	// responses or messages.
	endpoint() string
	// operation is the GenAI semantic conventions' gen_ai.operation.name.
	operation() string
	// api is the provider API that serves this protocol's requests.
	api() providerAPI
	// path is appended to a provider's base URL.
	path() string
	// inspect validates a request body and finds what routing needs. Its
	// errors are ready to send; nothing of a refused body is forwarded.
	inspect(body []byte) (*requestFacts, *apiError)
	// judgeAnswer reads a provider's non-streaming 2xx answer.
	judgeAnswer(body []byte) chunkInfo
	// judgeEvent reads one event of a provider's stream.
	judgeEvent(ev sse.Event) chunkInfo
	// closing ends a complete stream whose provider finished the answer
	// without its terminal event (chat's [DONE]); nil when there is none.
	closing() []byte
	// errorBody is one of arbstr's errors in the API's shape.
	errorBody(e *apiError) []byte
	// errorEvent is a stream's honest ending (SPEC §8) in the API's shape:
	// the whole SSE event.
	errorEvent(e *apiError) []byte
}

// protocols are the APIs arbstr serves, indexed by protocolID.
var protocols = [protocolCount]protocol{chatProtocol{}, embeddingsProtocol{}, responsesProtocol{}, messagesProtocol{}}

// protocolFor is the protocol of a POST to path, nil when the path is not
// one arbstr routes (it goes to the next handler).
func protocolFor(path string) protocol {
	switch {
	case strings.HasSuffix(path, "/chat/completions"):
		return protocols[protoChat]
	case strings.HasSuffix(path, "/embeddings"):
		return protocols[protoEmbeddings]
	case strings.HasSuffix(path, "/responses"):
		return protocols[protoResponses]
	// POST /v1/threads/{id}/messages is OpenAI's Assistants API, not
	// Anthropic's Messages: it is left to the next handler.
	case strings.HasSuffix(path, "/messages") && !strings.Contains(path, "/threads/"):
		return protocols[protoMessages]
	}
	return nil
}

// providerAPI is the wire API a provider speaks (Provider.API).
type providerAPI uint8

const (
	apiOpenAI    providerAPI = iota // chat completions, embeddings, responses; Bearer key
	apiAnthropic                    // Anthropic Messages; x-api-key
)

func (a providerAPI) String() string {
	if a == apiAnthropic {
		return "anthropic"
	}
	return "openai"
}

func parseProviderAPI(s string) (providerAPI, error) {
	switch s {
	case "", "openai":
		return apiOpenAI, nil
	case "anthropic":
		return apiAnthropic, nil
	}
	return apiOpenAI, fmt.Errorf("api %q is not known; use openai (the default) or anthropic", s)
}

// defaultAnthropicVersion is sent to an Anthropic provider when the client
// did not say which version it speaks (the official SDKs always do).
const defaultAnthropicVersion = "2023-06-01"

// setAuth puts the provider's key on a request to it, in its API's header.
// The client's own credentials are never copied: only the Anthropic API's
// version and beta headers pass from client to provider.
func (p *provider) setAuth(hdr http.Header, client http.Header) {
	if p.api == apiAnthropic {
		if p.apiKey != "" {
			hdr["X-Api-Key"] = []string{p.apiKey}
		}
		version := defaultAnthropicVersion
		if client != nil {
			if v := client.Get("anthropic-version"); v != "" {
				version = v
			}
			if beta := client.Values("anthropic-beta"); len(beta) > 0 {
				hdr["Anthropic-Beta"] = beta
			}
		}
		hdr["Anthropic-Version"] = []string{version}
		return
	}
	if p.apiKey != "" {
		hdr["Authorization"] = []string{"Bearer " + p.apiKey}
	}
}

// sseEvent renders one server-sent event: its name, when it has one, and
// its data, one data: line per line of it.
func sseEvent(name string, data []byte) []byte {
	out := make([]byte, 0, len(name)+len(data)+16)
	return appendSSEEvent(out, []byte(name), data)
}

// appendSSEEvent appends one server-sent event to out.
func appendSSEEvent(out, name, data []byte) []byte {
	if len(name) > 0 {
		out = append(out, "event: "...)
		out = append(out, name...)
		out = append(out, '\n')
	}
	out = append(out, "data: "...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		out = append(out, data[:i]...)
		out = append(out, "\ndata: "...)
		data = data[i+1:]
	}
	out = append(out, data...)
	return append(out, "\n\n"...)
}
