package arbstr

import (
	"encoding/json"

	"errors"
	"fmt"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Tests of SPEC §15: embeddings, the Responses API and Anthropic Messages
// on the same planner as chat completions.

// ptProvider is a provider block with rates, so that tests set the order.
func ptProvider(name, url string, inRate, outRate, fee float64, extra ...string) string {
	return fmt.Sprintf("provider %s {\n\turl %s\n\tapi_key key-%s-0123456789\n\tinput_rate %g\n\toutput_rate %g\n\tbase_fee %g\n\t%s\n}\n",
		name, url, name, inRate, outRate, fee, strings.Join(extra, "\n\t"))
}

// ptSite is an arbstr block with quick retries and short stream timeouts.
func ptSite(providers ...string) string {
	return rtSite(strings.Join(providers, ""), rtFast, "first_event_timeout 500ms\nstream_idle_timeout 300ms\n")
}

// ptEvents writes a stream of named events, flushing each.
func ptEvents(w http.ResponseWriter, events ...string) {
	for i := 0; i+1 < len(events); i += 2 {
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", events[i], events[i+1])
		_ = http.NewResponseController(w).Flush()
	}
}

// ptNamedEvents reads a response body into (name, data) pairs and comments.
func ptNamedEvents(body string) (events [][2]string, comments []string) {
	var name string
	var data []string
	for _, l := range strings.Split(body, "\n") {
		switch {
		case l == "":
			if data != nil {
				events = append(events, [2]string{name, strings.Join(data, "\n")})
			}
			name, data = "", nil
		case strings.HasPrefix(l, "event: "):
			name = strings.TrimPrefix(l, "event: ")
		case strings.HasPrefix(l, "data: "):
			data = append(data, strings.TrimPrefix(l, "data: "))
		case strings.HasPrefix(l, ":"):
			comments = append(comments, l)
		}
	}
	return events, comments
}

func ptNames(events [][2]string) []string {
	var out []string
	for _, e := range events {
		out = append(out, e[0])
	}
	return out
}

// readCut reads a body that arbstr cut: it reports whether the read failed
// (an aborted response), and what arrived.
func readCut(resp *http.Response) (string, bool) {
	b, err := io.ReadAll(resp.Body)
	return string(b), err != nil && !errors.Is(err, io.EOF)
}

const ptEmbeddingAnswer = `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"e","usage":{"prompt_tokens":1000,"total_tokens":1000}}`

func TestEmbeddingsFallBackAndCostFromInput(t *testing.T) {
	broken := rtNewUpstream(t, rtStatus(http.StatusInternalServerError))
	good := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, ptEmbeddingAnswer)
	})
	tc := startCaddy(t, ptSite(
		ptProvider("broken", broken.url(), 10, 20, 0),
		ptProvider("good", good.url(), 2000, 9999, 1, "model text-embedding-3-small up-embed"),
	))
	resp := rtDo(t, tc, http.MethodPost, "/v1/embeddings",
		strings.NewReader(`{"model":"text-embedding-3-small","input":["hello","world"]}`), "Authorization", "Bearer client-secret")
	body := rtExpectOK(t, resp, "good")
	if body != ptEmbeddingAnswer {
		t.Errorf("body %s, want the provider's answer as it was", body)
	}
	// 1000 input tokens at 2000 sats per 1M, plus the base fee; no output.
	if got := resp.Header.Get("x-arbstr-cost-sats"); got != "3.00" {
		t.Errorf("x-arbstr-cost-sats %q, want 3.00", got)
	}
	if broken.count() == 0 {
		t.Error("the cheaper provider was never tried")
	}
	got := good.received()[0]
	if got.path != "/v1/embeddings" {
		t.Errorf("provider path %q", got.path)
	}
	if !strings.Contains(string(got.body), `"model":"up-embed"`) {
		t.Errorf("the model was not renamed for the provider: %s", got.body)
	}
	if auth := got.header.Get("Authorization"); auth != "Bearer key-good-0123456789" {
		t.Errorf("provider saw Authorization %q", auth)
	}
}

func TestProtocolBadInputNeverReachesAProvider(t *testing.T) {
	up := rtNewUpstream(t, nil)
	tc := startCaddy(t, ptSite(ptProvider("openai", up.url(), 1, 1, 0), ptProvider("anthropic", up.url(), 1, 1, 0, "api anthropic")))
	cases := []struct {
		path, body, param, fragment string
	}{
		{"/v1/embeddings", `{"model":"e"}`, "input", "'input' is required"},
		{"/v1/embeddings", `{"model":"e","input":[]}`, "input", "must not be empty"},
		{"/v1/embeddings", `{"model":"e","input":[{"a":1}]}`, "input", "each element"},
		{"/v1/embeddings", `{"model":"e","input":"x","stream":true}`, "stream", "not streamed"},
		{"/v1/embeddings", `{"input":"x"}`, "model", "'model' is required"},
		{"/v1/responses", `{"model":"m","input":42}`, "input", "string or an array"},
		{"/v1/responses", `{"model":"m","input":"x","instructions":7}`, "instructions", "must be a string"},
		{"/v1/responses", `{"MODEL":"m","input":"x"}`, "", "look-alike"},
		{"/v1/responses", `not json`, "", "not valid JSON"},
		{"/v1/messages", `{"model":"m","messages":[{"role":"user","content":"x"}]}`, "max_tokens", "'max_tokens' is required"},
		{"/v1/messages", `{"model":"m","max_tokens":5}`, "messages", "'messages' is required"},
		{"/v1/messages", `{"model":"m","max_tokens":-1,"messages":[]}`, "max_tokens", "integer ≥ 0"},
		{"/v1/messages", `{"model":"m","max_tokens":1.5,"messages":[]}`, "max_tokens", "integer ≥ 0"},
		{"/v1/messages", `{"model":"m","max_tokens":5,"messages":[],"system":5}`, "system", "'system' must be"},
		{"/v1/messages", `{"model":"m","max_tokens":5,"messages":[],"stream":"yes"}`, "stream", "'stream' must be a boolean"},
	}
	for _, c := range cases {
		resp := rtDo(t, tc, http.MethodPost, c.path, strings.NewReader(c.body))
		body := rtReadBody(t, resp)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s %s: status %d, want 400", c.path, c.body, resp.StatusCode)
			continue
		}
		if !strings.Contains(body, c.fragment) {
			t.Errorf("%s %s: %s does not say %q", c.path, c.body, body, c.fragment)
		}
		if c.path == "/v1/messages" {
			var e ptAnthropicError
			if err := json.Unmarshal([]byte(body), &e); err != nil || e.Type != "error" || e.Error.Type != "invalid_request_error" {
				t.Errorf("%s: not Anthropic's error shape: %s", c.path, body)
			}
			continue
		}
		var e rtAPIError
		if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error.Type != "invalid_request_error" {
			t.Errorf("%s: not OpenAI's error shape: %s", c.path, body)
		} else if c.param != "" && (e.Error.Param == nil || *e.Error.Param != c.param) {
			t.Errorf("%s %s: param %v, want %q", c.path, c.body, e.Error.Param, c.param)
		}
	}
	if n := up.count(); n != 0 {
		t.Errorf("providers received %d bad requests", n)
	}
}

// ptAnthropicError is Anthropic's error body.
type ptAnthropicError struct {
	Type  string `json:"type"`
	Error struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
}

const ptResponse = `{"id":"resp_1","object":"response","status":"completed","error":null,"model":"m","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":1000,"output_tokens":500,"total_tokens":1500}}`

func TestResponsesNonStreaming(t *testing.T) {
	failed := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"resp_0","object":"response","status":"failed","error":{"code":"server_error","message":"boom"},"output":[]}`)
	})
	good := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, ptResponse)
	})
	tc := startCaddy(t, ptSite(ptProvider("failed", failed.url(), 1, 1, 0), ptProvider("good", good.url(), 1000, 2000, 0)))
	resp := rtDo(t, tc, http.MethodPost, "/v1/responses", strings.NewReader(`{"model":"m","input":"hello"}`))
	if body := rtExpectOK(t, resp, "good"); body != ptResponse {
		t.Errorf("body %s", body)
	}
	if got := resp.Header.Get("x-arbstr-cost-sats"); got != "2.00" { // 1000·1000/1e6 + 500·2000/1e6
		t.Errorf("x-arbstr-cost-sats %q, want 2.00", got)
	}
	if failed.count() == 0 || good.received()[0].path != "/v1/responses" {
		t.Errorf("the failed response was not moved on from, or the path was wrong")
	}
}

// Events of a Responses stream.
const (
	ptCreated   = `{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","status":"in_progress","usage":null}}`
	ptDelta     = `{"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"hi"}`
	ptCompleted = `{"type":"response.completed","sequence_number":2,"response":{"id":"resp_1","status":"completed","usage":{"input_tokens":1000,"output_tokens":500,"total_tokens":1500}}}`
)

func TestResponsesStreamKeepsEventNamesAndMovesOnFromEarlyErrors(t *testing.T) {
	early := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		stHead(w)
		ptEvents(w, "response.created", ptCreated, "error", `{"type":"error","code":"server_error","message":"overloaded","param":null}`)
	})
	good := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		stHead(w)
		ptEvents(w, "response.created", ptCreated, "response.output_text.delta", ptDelta, "response.completed", ptCompleted)
	})
	tc := startCaddy(t, ptSite(ptProvider("early", early.url(), 1, 1, 0), ptProvider("good", good.url(), 1000, 2000, 0)))
	resp := rtDo(t, tc, http.MethodPost, "/v1/responses", strings.NewReader(`{"model":"m","input":"hello","stream":true}`))
	body := rtExpectOK(t, resp, "good")
	events, comments := ptNamedEvents(body)
	want := []string{"response.created", "response.output_text.delta", "response.completed"}
	if fmt.Sprint(ptNames(events)) != fmt.Sprint(want) {
		t.Fatalf("events %q, want %q (the early provider's response.created must not reach the client)\n%s", ptNames(events), want, body)
	}
	if events[2][1] != ptCompleted {
		t.Errorf("response.completed changed: %s", events[2][1])
	}
	if strings.Contains(body, "[DONE]") {
		t.Error("a Responses stream got chat's [DONE]")
	}
	if len(comments) != 1 || comments[0] != ": x-arbstr-cost-sats: 2.00" {
		t.Errorf("comments %q, want the cost", comments)
	}
	if got := resp.Trailer.Get("x-arbstr-cost-sats"); got != "2.00" {
		t.Errorf("trailer %q", got)
	}
	if early.count() != 1 {
		t.Errorf("the early-error provider got %d tries, want 1 (an in-band error moves on at once, §6)", early.count())
	}
}

func TestResponsesStreamBreakEndsHonestly(t *testing.T) {
	up := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		stHead(w)
		ptEvents(w, "response.created", ptCreated, "response.output_text.delta", ptDelta)
		stCut(t, w, false)
	})
	// A prefill provider could finish a chat stream; Responses streams are
	// not continued (§13 is chat's), so it must stay idle.
	spare := rtNewUpstream(t, nil)
	tc := startCaddy(t, ptSite(ptProvider("only", up.url(), 1, 1, 0), ptProvider("spare", spare.url(), 9, 9, 0, "prefill")))
	resp := rtDo(t, tc, http.MethodPost, "/v1/responses", strings.NewReader(`{"model":"m","input":"hello","stream":true}`))
	body, cut := readCut(resp)
	if !cut {
		t.Error("the response ended cleanly; a broken stream must be cut")
	}
	if spare.count() != 0 {
		t.Errorf("a Responses stream was continued by the prefill provider (%d requests)", spare.count())
	}
	events, _ := ptNamedEvents(body)
	last := events[len(events)-1]
	var e struct{ Type, Code, Message string }
	if last[0] != "error" || json.Unmarshal([]byte(last[1]), &e) != nil || e.Type != "error" || e.Code != "stream_broken" {
		t.Errorf("last event %q, want the Responses API's error event with code stream_broken\n%s", last, body)
	}
}

// Events of an Anthropic Messages stream.
const (
	ptMessageStart = `{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","usage":{"input_tokens":1000,"output_tokens":1}}}`
	ptBlockStart   = `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`
	ptBlockDelta   = `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}`
	ptBlockStop    = `{"type":"content_block_stop","index":0}`
	ptMessageDelta = `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":500}}`
	ptMessageStop  = `{"type":"message_stop"}`
	ptPing         = `{"type": "ping"}`
	ptOverloaded   = `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`
	ptMessagesBody = `{"model":"claude","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hello"}]}`
)

func ptGoodMessages(w http.ResponseWriter, withStop bool) {
	stHead(w)
	ptEvents(w, "message_start", ptMessageStart, "ping", ptPing, "content_block_start", ptBlockStart,
		"content_block_delta", ptBlockDelta, "content_block_stop", ptBlockStop, "message_delta", ptMessageDelta)
	if withStop {
		ptEvents(w, "message_stop", ptMessageStop)
	}
}

func TestMessagesGoOnlyToAnthropicProvidersWithTheirHeaders(t *testing.T) {
	openai := rtNewUpstream(t, nil)
	anthropic := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"hi"}],"model":"claude","stop_reason":"end_turn","usage":{"input_tokens":1000,"output_tokens":500,"cache_read_input_tokens":1000}}`)
	})
	// The OpenAI provider is cheaper: only the API keeps the request from it.
	tc := startCaddy(t, ptSite(ptProvider("openai", openai.url(), 1, 1, 0), ptProvider("anthropic", anthropic.url(), 1000, 2000, 0, "api anthropic")))
	resp := rtDo(t, tc, http.MethodPost, "/v1/messages",
		strings.NewReader(`{"model":"claude","max_tokens":1024,"messages":[{"role":"user","content":"hello"}]}`),
		"x-api-key", "client-secret", "Authorization", "Bearer client-token",
		"anthropic-version", "2023-06-01", "anthropic-beta", "prompt-caching-2024-07-31")
	rtExpectOK(t, resp, "anthropic")
	// Cache reads count as input: 2000·1000/1e6 + 500·2000/1e6.
	if got := resp.Header.Get("x-arbstr-cost-sats"); got != "3.00" {
		t.Errorf("x-arbstr-cost-sats %q, want 3.00", got)
	}
	if openai.count() != 0 {
		t.Errorf("an openai provider got %d Anthropic requests", openai.count())
	}
	got := anthropic.received()[0]
	if got.path != "/v1/messages" {
		t.Errorf("path %q, want /v1/messages", got.path)
	}
	for name, want := range map[string]string{
		"X-Api-Key":         "key-anthropic-0123456789",
		"Anthropic-Version": "2023-06-01",
		"Anthropic-Beta":    "prompt-caching-2024-07-31",
		"Authorization":     "",
	} {
		if v := got.header.Get(name); v != want {
			t.Errorf("provider saw %s %q, want %q", name, v, want)
		}
	}

	// max_tokens 0 warms a prompt cache: valid, and forwarded.
	resp = rtDo(t, tc, http.MethodPost, "/v1/messages",
		strings.NewReader(`{"model":"claude","max_tokens":0,"messages":[{"role":"user","content":"hello"}]}`))
	rtExpectOK(t, resp, "anthropic")

	// And a chat completion never goes to the Anthropic provider.
	resp = rtDo(t, tc, http.MethodPost, "/v1/chat/completions", strings.NewReader(rtChat))
	rtExpectOK(t, resp, "openai")
}

func TestMessagesWithoutAnthropicProviderIs404InAnthropicShape(t *testing.T) {
	up := rtNewUpstream(t, nil)
	tc := startCaddy(t, ptSite(ptProvider("openai", up.url(), 1, 1, 0)))
	resp := rtDo(t, tc, http.MethodPost, "/v1/messages", strings.NewReader(ptMessagesBody))
	body := rtReadBody(t, resp)
	var e ptAnthropicError
	if resp.StatusCode != http.StatusNotFound || json.Unmarshal([]byte(body), &e) != nil || e.Error.Type != "not_found_error" ||
		!strings.Contains(e.Error.Message, "api anthropic") {
		t.Errorf("%d %s, want 404 not_found_error naming `api anthropic`", resp.StatusCode, body)
	}
	if up.count() != 0 {
		t.Error("the openai provider got the Anthropic request")
	}
}

func TestMessagesStreamFallsBackAndCountsUsageFromBothEvents(t *testing.T) {
	early := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		stHead(w)
		ptEvents(w, "message_start", ptMessageStart, "ping", ptPing, "error", ptOverloaded)
	})
	good := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) { ptGoodMessages(w, true) })
	tc := startCaddy(t, ptSite(ptProvider("early", early.url(), 1, 1, 0, "api anthropic"),
		ptProvider("good", good.url(), 1000, 2000, 0, "api anthropic")))
	resp := rtDo(t, tc, http.MethodPost, "/v1/messages", strings.NewReader(ptMessagesBody), "anthropic-version", "2023-06-01")
	body := rtExpectOK(t, resp, "good")
	events, comments := ptNamedEvents(body)
	want := []string{"message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"}
	if fmt.Sprint(ptNames(events)) != fmt.Sprint(want) {
		t.Fatalf("events %q, want %q\n%s", ptNames(events), want, body)
	}
	// Input from message_start, output from message_delta.
	if len(comments) != 1 || comments[0] != ": x-arbstr-cost-sats: 2.00" {
		t.Errorf("comments %q, want the cost 2.00", comments)
	}
	if early.count() == 0 {
		t.Error("the cheaper provider was never tried")
	}
}

func TestMessagesStreamEndings(t *testing.T) {
	t.Run("stop reason without message_stop completes", func(t *testing.T) {
		up := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) { ptGoodMessages(w, false) })
		tc := startCaddy(t, ptSite(ptProvider("only", up.url(), 1, 1, 0, "api anthropic")))
		resp := rtDo(t, tc, http.MethodPost, "/v1/messages", strings.NewReader(ptMessagesBody))
		body, cut := readCut(resp)
		events, _ := ptNamedEvents(body)
		if cut || len(events) == 0 || events[len(events)-1][0] != "message_stop" {
			t.Errorf("cut %v, events %q: want a clean end with message_stop", cut, ptNames(events))
		}
	})
	t.Run("a break after the answer began ends with event error", func(t *testing.T) {
		up := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			ptEvents(w, "message_start", ptMessageStart, "content_block_start", ptBlockStart, "content_block_delta", ptBlockDelta)
			stCut(t, w, false)
		})
		tc := startCaddy(t, ptSite(ptProvider("only", up.url(), 1, 1, 0, "api anthropic")))
		resp := rtDo(t, tc, http.MethodPost, "/v1/messages", strings.NewReader(ptMessagesBody))
		body, cut := readCut(resp)
		events, _ := ptNamedEvents(body)
		last := events[len(events)-1]
		var e ptAnthropicError
		if !cut || last[0] != "error" || json.Unmarshal([]byte(last[1]), &e) != nil || e.Type != "error" || e.Error.Type != "api_error" {
			t.Errorf("cut %v, last event %q: want Anthropic's error event and a cut response\n%s", cut, last, body)
		}
	})
	t.Run("pings do not hold a silent stream open", func(t *testing.T) {
		stop := make(chan struct{})
		t.Cleanup(func() { close(stop) })
		up := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			ptEvents(w, "message_start", ptMessageStart, "content_block_start", ptBlockStart)
			tick := time.NewTicker(50 * time.Millisecond) // well inside stream_idle_timeout (300ms)
			defer tick.Stop()
			for {
				select {
				case <-tick.C:
					ptEvents(w, "ping", ptPing)
				case <-r.Context().Done():
					return
				case <-stop:
					return
				}
			}
		})
		tc := startCaddy(t, ptSite(ptProvider("only", up.url(), 1, 1, 0, "api anthropic")))
		resp := rtDo(t, tc, http.MethodPost, "/v1/messages", strings.NewReader(ptMessagesBody))
		body, cut := readCut(resp)
		if !cut || !strings.Contains(body, "stream_idle_timeout") {
			t.Errorf("cut %v; want the idle timeout's error event although pings kept coming:\n%s", cut, body)
		}
	})
}

func TestProviderAPICaddyfile(t *testing.T) {
	var h Handler
	d := caddyfile.NewTestDispenser("arbstr {\n provider a {\n url http://h/v1\n api anthropic\n }\n}")
	if err := h.UnmarshalCaddyfile(d); err != nil || h.Providers[0].API != "anthropic" {
		t.Fatalf("api anthropic: %v, %+v", err, h.Providers)
	}
	d = caddyfile.NewTestDispenser("arbstr {\n provider a {\n url http://h/v1\n api gemini\n }\n}")
	if err := new(Handler).UnmarshalCaddyfile(d); err == nil || !strings.Contains(err.Error(), "use openai (the default) or anthropic") {
		t.Errorf("api gemini: %v", err)
	}
}
