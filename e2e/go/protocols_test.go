package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
)

// The APIs arbstr routes besides chat completions, through the official Go
// SDKs: embeddings and the Responses API (openai-go), and Anthropic's
// Messages API (anthropic-sdk-go). Each is tried on a healthy route and on
// one whose cheapest provider fails, where the client must see one good
// answer from the next provider.

const (
	steadyAnswer = "Hello from steady, the provider that answers."
	claudeAnswer = "Hello from claude, the Anthropic provider that answers."
)

// served is who answered a request (x-arbstr-provider), the retries before
// it (x-arbstr-retries) and how many API requests each stand-in got.
type served struct {
	provider, retries string
	calls             map[string]int
}

// assertServed compares a response's arbstr headers and the stand-ins'
// request counts with want.
func assertServed(t *testing.T, resp *http.Response, want served) {
	t.Helper()
	if resp == nil {
		t.Fatal("the SDK gave no HTTP response")
	}
	if got := resp.Header.Get("X-Arbstr-Provider"); got != want.provider {
		t.Errorf("x-arbstr-provider %q, want %q", got, want.provider)
	}
	if got := resp.Header.Get("X-Arbstr-Retries"); got != want.retries {
		t.Errorf("x-arbstr-retries %q, want %q", got, want.retries)
	}
	names := make([]string, 0, len(want.calls))
	for name := range want.calls {
		names = append(names, name)
	}
	if got := e2eArb.callsOf(t, names...); !reflect.DeepEqual(got, want.calls) {
		t.Errorf("stand-in calls %v, want %v", got, want.calls)
	}
}

// anthropicClient is an Anthropic SDK client for a scenario, retries off.
// The SDK appends v1/messages to its base URL, so the base is the
// scenario's root.
func (a *arbstrProcess) anthropicClient(scenario string, opts ...aoption.RequestOption) *anthropic.Client {
	base := []aoption.RequestOption{
		aoption.WithBaseURL(fmt.Sprintf("http://127.0.0.1:%d/%s/", a.ports["router"], scenario)),
		aoption.WithAPIKey("sk-ant-e2e-client-key"),
		aoption.WithMaxRetries(0),
	}
	c := anthropic.NewClient(append(base, opts...)...)
	return &c
}

// standinRequest is what a stand-in's GET …/standin/last-request answers.
type standinRequest struct {
	Method  string      `json:"method"`
	Path    string      `json:"path"`
	Headers http.Header `json:"headers"`
}

// lastRequest is the last API request the stand-in got.
func (a *arbstrProcess) lastRequest(t *testing.T, name string) standinRequest {
	t.Helper()
	url := strings.TrimSuffix(a.standinURL(t, name), "requests") + "last-request"
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out standinRequest
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("stand-in %s: status %d, %v", name, resp.StatusCode, err)
	}
	return out
}

// TestE2EEmbeddings: Embeddings.New decodes the vectors and usage, from
// steady, and from steady again when the cheapest provider answers 503.
func TestE2EEmbeddings(t *testing.T) {
	for _, tc := range []struct {
		scenario string
		want     served
	}{
		{"healthy", served{provider: "steady", calls: map[string]int{"steady": 1}}},
		{"fallback", served{provider: "steady", retries: "2/down", calls: map[string]int{"down": 2, "steady": 1}}},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			e2eArb.resetCalls(t, "down", "steady")
			var resp *http.Response
			got, err := e2eArb.client(tc.scenario).Embeddings.New(sdkContext(t), openai.EmbeddingNewParams{
				Model: "e2e-embed-" + tc.scenario,
				Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"The first text to embed.", "A second one."}},
			}, option.WithResponseInto(&resp))
			if err != nil {
				t.Fatal(err)
			}
			assertServed(t, resp, tc.want)
			if len(got.Data) != 2 {
				t.Fatalf("%d embeddings, want 2", len(got.Data))
			}
			for i, e := range got.Data {
				if e.Index != int64(i) || len(e.Embedding) != 8 || !usableVector(e.Embedding) {
					t.Errorf("embedding %d: index %d, vector %v", i, e.Index, e.Embedding)
				}
			}
			if reflect.DeepEqual(got.Data[0].Embedding, got.Data[1].Embedding) {
				t.Error("two inputs got the same vector")
			}
			if got.Usage.PromptTokens < 1 || got.Usage.TotalTokens != got.Usage.PromptTokens {
				t.Errorf("usage %+v, want prompt tokens = total tokens > 0", got.Usage)
			}
		})
	}
}

// usableVector: every element finite, and not all zero.
func usableVector(v []float64) bool {
	nonzero := false
	for _, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return false
		}
		nonzero = nonzero || x != 0
	}
	return nonzero
}

func responsesParams(model string) responses.ResponseNewParams {
	return responses.ResponseNewParams{
		Model:        model,
		Instructions: openai.String("Be brief."),
		Input:        responses.ResponseNewParamsInputUnion{OfString: openai.String("Say hello")},
	}
}

// TestE2EResponses: Responses.New gives OutputText and usage, from steady,
// and from steady again when the cheapest provider answers 503.
func TestE2EResponses(t *testing.T) {
	for _, tc := range []struct {
		scenario string
		want     served
	}{
		{"healthy", served{provider: "steady", calls: map[string]int{"steady": 1}}},
		{"fallback", served{provider: "steady", retries: "2/down", calls: map[string]int{"down": 2, "steady": 1}}},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			e2eArb.resetCalls(t, "down", "steady")
			var resp *http.Response
			got, err := e2eArb.client(tc.scenario).Responses.New(sdkContext(t),
				responsesParams("e2e-responses-"+tc.scenario), option.WithResponseInto(&resp))
			if err != nil {
				t.Fatal(err)
			}
			assertServed(t, resp, tc.want)
			if text := got.OutputText(); text != steadyAnswer {
				t.Errorf("output text %q, want %q", text, steadyAnswer)
			}
			if got.Status != responses.ResponseStatusCompleted || got.Usage.InputTokens < 1 || got.Usage.OutputTokens < 1 {
				t.Errorf("status %q, usage %+v: want completed with tokens counted", got.Status, got.Usage)
			}
		})
	}
}

// TestE2EResponsesStream: a streamed response gives text deltas and then
// response.completed with usage, from steady, and from steady again when
// the cheapest provider answers 503 or streams an error event first.
func TestE2EResponsesStream(t *testing.T) {
	for _, tc := range []struct {
		scenario string
		want     served
	}{
		{"healthy", served{provider: "steady", calls: map[string]int{"steady": 1}}},
		{"fallback", served{provider: "steady", retries: "2/down", calls: map[string]int{"down": 2, "steady": 1}}},
		{"error_event", served{provider: "steady", retries: "1/error_event", calls: map[string]int{"error_event": 1, "steady": 1}}},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			e2eArb.resetCalls(t, "down", "error_event", "steady")
			var resp *http.Response
			stream := e2eArb.client(tc.scenario).Responses.NewStreaming(sdkContext(t),
				responsesParams("e2e-responses-stream-"+tc.scenario), option.WithResponseInto(&resp))
			var deltas, types []string
			var completed *responses.Response
			for stream.Next() {
				ev := stream.Current()
				types = append(types, ev.Type)
				switch ev.Type {
				case "response.output_text.delta":
					deltas = append(deltas, ev.Delta)
				case "response.completed":
					completed = &ev.Response
				case "error", "response.failed":
					t.Errorf("the client saw %s: %s", ev.Type, ev.RawJSON())
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatalf("stream error after %v: %v", types, err)
			}
			assertServed(t, resp, tc.want)
			if len(deltas) < 2 || strings.Join(deltas, "") != steadyAnswer {
				t.Errorf("deltas %q, want %q in more than one piece", deltas, steadyAnswer)
			}
			if completed == nil || types[len(types)-1] != "response.completed" {
				t.Fatalf("events %v: want response.completed last", types)
			}
			u := completed.Usage
			if completed.Status != responses.ResponseStatusCompleted || u.InputTokens < 1 || u.OutputTokens < 1 || u.TotalTokens != u.InputTokens+u.OutputTokens {
				t.Errorf("completed: status %q, usage %+v", completed.Status, u)
			}
		})
	}
}

func messagesParams(model string) anthropic.MessageNewParams {
	return anthropic.MessageNewParams{
		Model:     anthropic.Model(model),
		MaxTokens: 64,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Say hello"))},
	}
}

// assertClaudeMessage: the message is claude's answer, complete, with usage.
func assertClaudeMessage(t *testing.T, m *anthropic.Message) {
	t.Helper()
	if len(m.Content) != 1 || m.Content[0].Type != "text" || m.Content[0].Text != claudeAnswer {
		t.Errorf("content %+v, want one text block %q", m.Content, claudeAnswer)
	}
	if m.Role != "assistant" || m.StopReason != anthropic.StopReasonEndTurn {
		t.Errorf("role %q, stop reason %q: want assistant, end_turn", m.Role, m.StopReason)
	}
	if want := int64(len(strings.Fields(claudeAnswer))); m.Usage.InputTokens < 1 || m.Usage.OutputTokens != want {
		t.Errorf("usage %+v, want input tokens > 0 and %d output tokens", m.Usage, want)
	}
}

// anthropicScenarios are the Messages routes: the healthy one (where a
// cheaper OpenAI-only provider must get nothing), and two whose cheapest
// Anthropic provider fails (500, or event: error first when streaming).
var anthropicScenarios = []struct {
	scenario      string
	plain, stream served
}{
	{
		"anthropic",
		served{provider: "claude", calls: map[string]int{"openai_cheap": 0, "claude": 1}},
		served{provider: "claude", calls: map[string]int{"openai_cheap": 0, "claude": 1}},
	},
	{
		"anthropic_fallback",
		served{provider: "claude", retries: "2/claude_down", calls: map[string]int{"claude_down": 2, "claude": 1}},
		served{provider: "claude", retries: "2/claude_down", calls: map[string]int{"claude_down": 2, "claude": 1}},
	},
	{
		"anthropic_error_event",
		served{provider: "claude", retries: "2/claude_error_event", calls: map[string]int{"claude_error_event": 2, "claude": 1}},
		served{provider: "claude", retries: "1/claude_error_event", calls: map[string]int{"claude_error_event": 1, "claude": 1}},
	},
}

var anthropicStandins = []string{"openai_cheap", "claude", "claude_down", "claude_error_event"}

// TestE2EMessages: Messages.New gives claude's text and usage, with the
// provider's key and the SDK's own anthropic-version on the provider's side.
func TestE2EMessages(t *testing.T) {
	for _, tc := range anthropicScenarios {
		t.Run(tc.scenario, func(t *testing.T) {
			e2eArb.resetCalls(t, anthropicStandins...)
			var resp *http.Response
			var sent http.Header
			recordHeader := aoption.WithMiddleware(func(req *http.Request, next aoption.MiddlewareNext) (*http.Response, error) {
				sent = req.Header.Clone()
				return next(req)
			})
			got, err := e2eArb.anthropicClient(tc.scenario).Messages.New(sdkContext(t),
				messagesParams("e2e-messages-"+tc.scenario), aoption.WithResponseInto(&resp), recordHeader)
			if err != nil {
				t.Fatal(err)
			}
			assertServed(t, resp, tc.plain)
			assertClaudeMessage(t, got)
			version := sent.Get("Anthropic-Version")
			seen := e2eArb.lastRequest(t, "claude")
			if version == "" || seen.Path != "/v1/messages" || seen.Headers.Get("X-Api-Key") != "e2e-anthropic-key" ||
				seen.Headers.Get("Anthropic-Version") != version || seen.Headers.Get("Authorization") != "" {
				t.Errorf("claude got %s with x-api-key %q, anthropic-version %q, authorization %q; want /v1/messages, the provider's key, the SDK's version %q, none",
					seen.Path, seen.Headers.Get("X-Api-Key"), seen.Headers.Get("Anthropic-Version"), seen.Headers.Get("Authorization"), version)
			}
		})
	}
}

// TestE2EMessagesStream: a streamed message gives text deltas, and the
// SDK's accumulated message is claude's answer with usage.
func TestE2EMessagesStream(t *testing.T) {
	for _, tc := range anthropicScenarios {
		t.Run(tc.scenario, func(t *testing.T) {
			e2eArb.resetCalls(t, anthropicStandins...)
			var resp *http.Response
			stream := e2eArb.anthropicClient(tc.scenario).Messages.NewStreaming(sdkContext(t),
				messagesParams("e2e-messages-stream-"+tc.scenario), aoption.WithResponseInto(&resp))
			var message anthropic.Message
			var deltas []string
			for stream.Next() {
				ev := stream.Current()
				if err := message.Accumulate(ev); err != nil {
					t.Fatalf("accumulating %s: %v", ev.Type, err)
				}
				if ev.Type == "content_block_delta" && ev.Delta.Type == "text_delta" {
					deltas = append(deltas, ev.Delta.Text)
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			assertServed(t, resp, tc.stream)
			if len(deltas) < 2 || strings.Join(deltas, "") != claudeAnswer {
				t.Errorf("deltas %q, want %q in more than one piece", deltas, claudeAnswer)
			}
			assertClaudeMessage(t, &message)
		})
	}
}

// TestE2EMessagesRefused: a request without max_tokens is refused by arbstr
// itself with a 400 in Anthropic's error shape, and reaches no provider.
func TestE2EMessagesRefused(t *testing.T) {
	e2eArb.resetCalls(t, anthropicStandins...)
	_, err := e2eArb.anthropicClient("anthropic").Messages.New(sdkContext(t),
		messagesParams("e2e-messages-refused"), aoption.WithJSONDel("max_tokens"))
	var apierr *anthropic.Error
	if !errors.As(err, &apierr) {
		t.Fatalf("got %v, want an *anthropic.Error", err)
	}
	if apierr.StatusCode != http.StatusBadRequest || apierr.Type() != anthropic.ErrorTypeInvalidRequestError ||
		!strings.Contains(apierr.Message, "max_tokens") {
		t.Errorf("status %d, type %q, message %q: want 400 invalid_request_error about max_tokens", apierr.StatusCode, apierr.Type(), apierr.Message)
	}
	var body struct {
		Type  string `json:"type"`
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(apierr.RawJSON()), &body); err != nil || body.Type != "error" || body.Error.Type != "invalid_request_error" {
		t.Errorf("body %s (%v): want Anthropic's {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",…}}", apierr.RawJSON(), err)
	}
	want := map[string]int{"openai_cheap": 0, "claude": 0, "claude_down": 0, "claude_error_event": 0}
	if got := e2eArb.callsOf(t, anthropicStandins...); !reflect.DeepEqual(got, want) {
		t.Errorf("stand-in calls %v, want none", got)
	}
}
