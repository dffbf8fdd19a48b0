package arbstr

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rtDo sends a request with any method and body to the test Caddy.
func rtDo(t *testing.T, tc *testCaddy, method, path string, body io.Reader, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, tc.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// rtOpaqueReader hides the length of its reader, so the client sends the
// body with chunked transfer encoding and no Content-Length.
type rtOpaqueReader struct{ r io.Reader }

func (o rtOpaqueReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// rtOddBody is a chat request with unknown fields, nulls, odd spacing, key
// order and number formats that a re-encoding would change.
const rtOddBody = `{ "messages" : [ {"role":"system","content":null},
  {"role":"user","content":"Write caf\u00e9 code \"now\"","name":"u1"} ],
  "model" :  "gpt-4o" ,
  "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{}}}}],
  "response_format":{"type":"json_schema","json_schema":{"name":"s","schema":{}}},
  "temperature": 0.70, "seed": 12345678901234567890, "top_p": 1E0,
  "x_unknown": [true,false,null,{}], "stream": false }
`

func TestHandlerForwardBodyUnchanged(t *testing.T) {
	for _, c := range []struct {
		name, mapping, upstreamModel string
	}{
		{"no mapping", "", "gpt-4o"},
		{"public to upstream", "model gpt-4o openai/gpt-4o", "openai/gpt-4o"},
		{"wildcard", "model * llama3.1:8b", "llama3.1:8b"},
	} {
		t.Run(c.name, func(t *testing.T) {
			alpha := rtNewUpstream(t, nil)
			tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1, c.mapping), rtFast))
			resp := tc.Post("/v1/chat/completions", rtOddBody)
			rtExpectOK(t, resp, "alpha")
			got := alpha.received()
			if len(got) != 1 {
				t.Fatalf("alpha received %d requests, want 1", len(got))
			}
			want := strings.Replace(rtOddBody, `"gpt-4o"`, strconv.Quote(c.upstreamModel), 1)
			if string(got[0].body) != want {
				t.Errorf("upstream body differs from the client's (model aside):\n got %s\nwant %s", got[0].body, want)
			}
			if got[0].method != http.MethodPost || got[0].path != "/v1/chat/completions" {
				t.Errorf("upstream got %s %s, want POST /v1/chat/completions", got[0].method, got[0].path)
			}
		})
	}
}

func TestHandlerForwardHeaders(t *testing.T) {
	alpha := rtNewUpstream(t, nil)
	tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtFast))
	secrets := []string{"client-secret-token", "cookie-secret", "custom-secret", "proxy-secret", "apikey-secret"}
	resp := tc.Post("/v1/chat/completions", rtChat,
		"Authorization", "Bearer client-secret-token",
		"Cookie", "session=cookie-secret",
		"X-Secret", "custom-secret",
		"Proxy-Authorization", "Basic proxy-secret",
		"X-Api-Key", "apikey-secret",
		"Accept", "application/json",
	)
	rtExpectOK(t, resp, "alpha")
	got := alpha.received()
	if len(got) != 1 {
		t.Fatalf("alpha received %d requests, want 1", len(got))
	}
	h := got[0].header
	if v := h.Values("Authorization"); len(v) != 1 || v[0] != "Bearer key-alpha" {
		t.Errorf("Authorization = %q, want exactly the provider's key", v)
	}
	if ct := h.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	for _, name := range []string{"Cookie", "X-Secret", "Proxy-Authorization", "X-Api-Key"} {
		if v := h.Get(name); v != "" {
			t.Errorf("the client's %s reached the provider: %q", name, v)
		}
	}
	for name, vals := range h {
		for _, v := range vals {
			for _, s := range secrets {
				if strings.Contains(v, s) {
					t.Errorf("upstream header %s carries the client's secret %q", name, s)
				}
			}
		}
	}
}

func TestHandlerIdempotencyKeyStableAcrossAttempts(t *testing.T) {
	for _, clientKey := range []string{"idem-rt-42", ""} {
		name := "client key"
		if clientKey == "" {
			name = "request id"
		}
		t.Run(name, func(t *testing.T) {
			alpha := rtNewUpstream(t, rtStatus(500))
			beta := rtNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					rtStatus(502)(n, w, r)
					return
				}
				rtWriteCompletion(w)
			})
			tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 1), rtProvider("beta", beta.url(), 2), rtFast))
			var hdr []string
			if clientKey != "" {
				hdr = []string{"Idempotency-Key", clientKey}
			}
			resp := tc.Post("/v1/chat/completions", rtChat, hdr...)
			rtExpectOK(t, resp, "beta")
			want := clientKey
			if want == "" {
				want = resp.Header.Get("x-arbstr-request-id")
				if want == "" {
					t.Fatal("no x-arbstr-request-id")
				}
			}
			all := append(alpha.received(), beta.received()...)
			if len(all) != 4 {
				t.Fatalf("%d attempts, want 4 (2 on alpha, 2 on beta)", len(all))
			}
			for i, r := range all {
				if v := r.header.Values("Idempotency-Key"); len(v) != 1 || v[0] != want {
					t.Errorf("attempt %d: Idempotency-Key %q, want %q", i+1, v, want)
				}
			}
		})
	}
}

func TestHandlerResponseBodyAndHeaders(t *testing.T) {
	const upstreamBody = `{"id":"chatcmpl-9",  "object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"caf\u00e9 \"q\""},"finish_reason":"stop"}],` +
		`"usage":{"prompt_tokens":1237,"completion_tokens":50,"total_tokens":1287},"system_fingerprint":null}` + "\n"
	var alpha *rtUpstream
	alpha = rtNewUpstream(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		// Latency the client should see reported.
		alpha.delay(r, 60*time.Millisecond)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_, _ = io.WriteString(w, upstreamBody)
	})
	// 1237·1000/1e6 + 50·20000/1e6 + 0.5 = 2.737 sats.
	tc := startCaddy(t, rtSite(rtProvider("alpha", alpha.url(), 0.5, "input_rate 1000", "output_rate 20000"), rtFast))
	resp := tc.Post("/v1/chat/completions", rtChat)
	if body := rtExpectOK(t, resp, "alpha"); body != upstreamBody {
		t.Errorf("body differs from the upstream's:\n got %q\nwant %q", body, upstreamBody)
	}
	// arbstr checked the answer is JSON and says so (SPEC §10 amendment).
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	if id := resp.Header.Get("x-arbstr-request-id"); id == "" {
		t.Error("no x-arbstr-request-id")
	}
	if cost := resp.Header.Get("x-arbstr-cost-sats"); cost != "2.74" {
		t.Errorf("x-arbstr-cost-sats = %q, want 2.74 (1237 in at 1000, 50 out at 20000, base 0.5)", cost)
	}
	ms, err := strconv.Atoi(resp.Header.Get("x-arbstr-latency-ms"))
	if err != nil || ms < 50 || ms > 5000 {
		t.Errorf("x-arbstr-latency-ms = %q, want a whole number ≥ the upstream's 60ms", resp.Header.Get("x-arbstr-latency-ms"))
	}
	if v, ok := resp.Header["X-Arbstr-Retries"]; ok {
		t.Errorf("x-arbstr-retries = %q on a request without failed attempts", v)
	}
	if v := resp.Header.Get("x-arbstr-streaming"); v != "" {
		t.Errorf("x-arbstr-streaming = %q on a non-streaming response", v)
	}

	// Two requests get two request ids.
	resp2 := tc.Post("/v1/chat/completions", rtChat)
	rtExpectOK(t, resp2, "alpha")
	if a, b := resp.Header.Get("x-arbstr-request-id"), resp2.Header.Get("x-arbstr-request-id"); a == b {
		t.Errorf("two requests share the request id %q", a)
	}
}

func TestHandlerCostUsesServingProviderRates(t *testing.T) {
	alpha := rtNewUpstream(t, rtStatus(500))
	beta := rtNewUpstream(t, nil) // usage: 10 in, 5 out
	tc := startCaddy(t, rtSite(
		rtProvider("alpha", alpha.url(), 1),
		rtProvider("beta", beta.url(), 2, "input_rate 100000", "output_rate 300000"),
		rtFast))
	resp := tc.Post("/v1/chat/completions", rtChat)
	rtExpectOK(t, resp, "beta")
	// 10·100000/1e6 + 5·300000/1e6 + 2 = 1 + 1.5 + 2.
	if cost := resp.Header.Get("x-arbstr-cost-sats"); cost != "4.50" {
		t.Errorf("x-arbstr-cost-sats = %q, want 4.50 at beta's rates", cost)
	}
	if got := resp.Header.Get("x-arbstr-retries"); got != "2/alpha" {
		t.Errorf("x-arbstr-retries = %q, want 2/alpha", got)
	}
}

func TestHandlerModelsList(t *testing.T) {
	up := rtNewUpstream(t, nil)
	tc := startCaddy(t, rtSite(
		rtProvider("alpha", up.url(), 1, "models gpt-4o gpt-4o-mini"),
		rtProvider("beta", up.url(), 2, "models gpt-4o claude-sonnet"),
		rtProvider("gamma", up.url(), 3, "model llama llama3.1:8b"),
		rtProvider("delta", up.url(), 4),
		rtFast))
	for _, path := range []string{"/v1/models", "/models"} {
		resp := rtDo(t, tc, http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d", path, resp.StatusCode)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("Content-Type %q", ct)
		}
		var list struct {
			Object string `json:"object"`
			Data   []struct {
				ID      string `json:"id"`
				Object  string `json:"object"`
				OwnedBy string `json:"owned_by"`
			} `json:"data"`
		}
		decodeJSON(t, resp, &list)
		if list.Object != "list" {
			t.Errorf("object = %q, want list", list.Object)
		}
		var ids []string
		for _, m := range list.Data {
			ids = append(ids, m.ID)
			if m.Object != "model" || m.OwnedBy == "" {
				t.Errorf("model entry %+v: want object model and an owned_by", m)
			}
		}
		slices.Sort(ids)
		if want := []string{"claude-sonnet", "gpt-4o", "gpt-4o-mini", "llama"}; !slices.Equal(ids, want) {
			t.Errorf("GET %s ids = %q, want each of %q once", path, ids, want)
		}
	}
	if n := up.count(); n != 0 {
		t.Errorf("the providers received %d requests for the model list", n)
	}
}

func TestHandlerWrongMethod405(t *testing.T) {
	up := rtNewUpstream(t, nil)
	tc := startCaddy(t, rtSite(rtProvider("alpha", up.url(), 1), rtFast))
	for _, c := range []struct {
		method, path, allow string
	}{
		// Other methods on .../chat/completions go to the next handler
		// (TestHardeningGetChatCompletionsGoesToNext).
		{http.MethodPost, "/v1/models", "GET"},
		{http.MethodDelete, "/v1/models", "GET"},
	} {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			var body io.Reader
			if c.method != http.MethodGet {
				body = strings.NewReader(rtChat)
			}
			resp := rtDo(t, tc, c.method, c.path, body, "Content-Type", "application/json")
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Fatalf("status %d, want 405", resp.StatusCode)
			}
			if allow := resp.Header.Get("Allow"); !strings.Contains(allow, c.allow) {
				t.Errorf("Allow = %q, want it to list %s", allow, c.allow)
			}
			if resp.Header.Get("x-arbstr-request-id") == "" {
				t.Error("no x-arbstr-request-id on the 405")
			}
			e := rtDecodeError(t, resp)
			if e.Error.Type != "invalid_request_error" {
				t.Errorf("type %q", e.Error.Type)
			}
		})
	}
	if n := up.count(); n != 0 {
		t.Errorf("the provider received %d requests", n)
	}
}

func TestHandlerOtherPathsGoToNextHandler(t *testing.T) {
	up := rtNewUpstream(t, nil)
	tc := startCaddy(t, rtSite(rtProvider("alpha", up.url(), 1), rtFast)+"respond \"next\" 200\n")
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/health"},
		{http.MethodGet, "/"},
		{http.MethodPost, "/v1/completions"},
		{http.MethodGet, "/v1/embeddings"},
		{http.MethodGet, "/v1/responses/resp_1"},
		{http.MethodPost, "/v1/responses/resp_1/cancel"},
		{http.MethodPost, "/v1/messages/count_tokens"},
		{http.MethodPost, "/v1/threads/thread_1/messages"},
		{http.MethodPost, "/v1/chat/completions/extra"},
		{http.MethodGet, "/v1/models/gpt-4o"},
	} {
		resp := rtDo(t, tc, c.method, c.path, strings.NewReader(rtChat))
		body := rtReadBody(t, resp)
		if resp.StatusCode != http.StatusOK || body != "next" {
			t.Errorf("%s %s: %d %q, want the next handler's 200 next", c.method, c.path, resp.StatusCode, body)
		}
		if id := resp.Header.Get("x-arbstr-request-id"); id != "" {
			t.Errorf("%s %s: arbstr's request id on a request it did not handle", c.method, c.path)
		}
	}
	if n := up.count(); n != 0 {
		t.Errorf("the provider received %d requests", n)
	}
}

func TestHandlerBadInput(t *testing.T) {
	up := rtNewUpstream(t, nil)
	tc := startCaddy(t, rtSite(rtProvider("alpha", up.url(), 1), rtFast, "max_body 1KB\n"))
	big := `{"model":"gpt-4o","messages":[{"role":"user","content":"` + strings.Repeat("x", 2000) + `"}]}`
	cases := []struct {
		name   string
		body   io.Reader
		status int
		param  string // "" means null
	}{
		{"not JSON", strings.NewReader(`hello there`), 400, ""},
		{"truncated JSON", strings.NewReader(`{"model":"gpt-4o","messages":[`), 400, ""},
		{"trailing garbage", strings.NewReader(rtChat + ` x`), 400, ""},
		{"JSON array", strings.NewReader(`[{"model":"gpt-4o","messages":[]}]`), 400, ""},
		{"JSON string", strings.NewReader(`"gpt-4o"`), 400, ""},
		{"JSON null", strings.NewReader(`null`), 400, ""},
		{"empty body", strings.NewReader(``), 400, ""},
		{"no model", strings.NewReader(`{"messages":[{"role":"user","content":"hi"}]}`), 400, "model"},
		{"model a number", strings.NewReader(`{"model":4,"messages":[{"role":"user","content":"hi"}]}`), 400, "model"},
		{"model null", strings.NewReader(`{"model":null,"messages":[{"role":"user","content":"hi"}]}`), 400, "model"},
		{"model empty", strings.NewReader(`{"model":"","messages":[{"role":"user","content":"hi"}]}`), 400, "model"},
		{"messages missing", strings.NewReader(`{"model":"gpt-4o"}`), 400, "messages"},
		{"messages an object", strings.NewReader(`{"model":"gpt-4o","messages":{"role":"user"}}`), 400, "messages"},
		{"messages a string", strings.NewReader(`{"model":"gpt-4o","messages":"hi"}`), 400, "messages"},
		{"stream a string", strings.NewReader(`{"model":"gpt-4o","messages":[],"stream":"true"}`), 400, "stream"},
		{"stream a number", strings.NewReader(`{"model":"gpt-4o","messages":[],"stream":1}`), 400, "stream"},
		{"over max_body, Content-Length", strings.NewReader(big), 413, ""},
		{"over max_body, chunked", rtOpaqueReader{strings.NewReader(big)}, 413, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp := rtDo(t, tc, http.MethodPost, "/v1/chat/completions", c.body, "Content-Type", "application/json")
			if resp.StatusCode != c.status {
				t.Errorf("status %d, want %d", resp.StatusCode, c.status)
			}
			if resp.Header.Get("x-arbstr-request-id") == "" {
				t.Error("no x-arbstr-request-id on the error")
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
			e := rtDecodeError(t, resp)
			if e.Error.Type != "invalid_request_error" {
				t.Errorf("type %q, want invalid_request_error", e.Error.Type)
			}
			switch {
			case c.param == "" && e.Error.Param != nil:
				t.Errorf("param %q, want null", *e.Error.Param)
			case c.param != "" && (e.Error.Param == nil || *e.Error.Param != c.param):
				t.Errorf("param %v, want %q", e.Error.Param, c.param)
			}
			if n := up.count(); n != 0 {
				t.Fatalf("the provider received %d request(s) of a bad request", n)
			}
		})
	}

	// The limit is not over-eager: a body under max_body goes through.
	ok := `{"model":"gpt-4o","messages":[{"role":"user","content":"` + strings.Repeat("x", 800) + `"}]}`
	for _, body := range []io.Reader{strings.NewReader(ok), rtOpaqueReader{bytes.NewReader([]byte(ok))}} {
		resp := rtDo(t, tc, http.MethodPost, "/v1/chat/completions", body, "Content-Type", "application/json")
		rtExpectOK(t, resp, "alpha")
	}
	if got := up.received(); len(got) != 2 || string(got[0].body) != ok || string(got[1].body) != ok {
		t.Errorf("bodies under max_body did not reach the provider intact")
	}
}

// TestHandlerBadInputNeverPanics sends malformed bodies that once broke
// hand-written JSON scanners; each must get a 4xx, never a dropped connection.
func TestHandlerBadInputNeverPanics(t *testing.T) {
	up := rtNewUpstream(t, nil)
	tc := startCaddy(t, rtSite(rtProvider("alpha", up.url(), 1), rtFast))
	for _, body := range []string{
		`{`, `}`, `{"model"`, `{"model":`, `{"model":"gpt-4o`, `{"model":"\u12"}`, `{"model":"gpt-4o",}`,
		`{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":5}]}],}`,
		`{"model":"gpt-4o","messages":[1,"x",null,[]],"stream":tru}`,
		strings.Repeat("[", 10000), `{"a":` + strings.Repeat("[", 10000),
		"\xff\xfe{}", `{"model":"gpt-4o","messages":[],"stream_options":5}`,
	} {
		resp := rtDo(t, tc, http.MethodPost, "/v1/chat/completions", strings.NewReader(body), "Content-Type", "application/json")
		if resp.StatusCode < 400 || resp.StatusCode > 499 {
			t.Errorf("body %.40q: status %d, want 4xx", body, resp.StatusCode)
		}
		var e map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e["error"] == nil {
			t.Errorf("body %.40q: answer is not an error object: %v", body, err)
		}
	}
	if n := up.count(); n != 0 {
		t.Errorf("the provider received %d request(s)", n)
	}
}
