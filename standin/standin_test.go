package standin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// testChunk is a chat.completion.chunk as a client decodes it.
type testChunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index int `json:"index"`
		Delta struct {
			Role    string  `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *usage `json:"usage"`
}

// testServer serves s; every handler return (or abort) is reported on
// the returned channel.
func testServer(t *testing.T, s *Provider) (*httptest.Server, <-chan struct{}) {
	t.Helper()
	if err := s.Provision(caddy.Context{}); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	if err := s.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	returned := make(chan struct{}, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { returned <- struct{}{} }()
		if err := s.ServeHTTP(w, r, nil); err != nil {
			t.Errorf("ServeHTTP returned error: %v", err)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, returned
}

func intPtr(n int) *int { return &n }

func chatBody(model string, stream, includeUsage bool) string {
	body := map[string]any{
		"model":  model,
		"stream": stream,
		"messages": []any{
			map[string]any{"role": "system", "content": "0123456789abcdef"},
			map[string]any{"role": "user", "content": []any{map[string]any{"type": "text", "text": "12345678"}}},
		},
	}
	if includeUsage {
		body["stream_options"] = map[string]any{"include_usage": true}
	}
	data, _ := json.Marshal(body)
	return string(data)
}

// promptTokens is the prompt_tokens expected for chatBody:
// 16 + 8 bytes of text / 4.
const promptTokens = 6

func post(ctx context.Context, url, body string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return (&http.Client{Transport: &http.Transport{}}).Do(req)
}

func mustPost(t *testing.T, url, body string) *http.Response {
	t.Helper()
	resp, err := post(t.Context(), url, body)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func do(t *testing.T, method, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s %s: %v", method, url, err)
	}
	return resp, string(body)
}

// readEvents returns the payloads of the "data:" lines read before
// the body ended, and the read error (nil on a clean end).
func readEvents(body io.Reader) ([]string, error) {
	var events []string
	br := bufio.NewReader(body)
	for {
		line, err := br.ReadString('\n')
		if payload, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "data: "); ok && strings.HasSuffix(line, "\n") {
			events = append(events, payload)
		}
		if errors.Is(err, io.EOF) && line == "" {
			return events, nil
		}
		if err != nil {
			return events, err
		}
	}
}

func decodeChunk(t *testing.T, event string) testChunk {
	t.Helper()
	var c testChunk
	if err := json.Unmarshal([]byte(event), &c); err != nil {
		t.Fatalf("event %q is not JSON: %v", event, err)
	}
	return c
}

// streamSummary is what a client makes of a stream.
type streamSummary struct {
	content      strings.Builder
	contentCount int
	roleFirst    bool
	finishCount  int
	usage        *usage
	done         bool
	ids          map[string]bool
}

func summarize(t *testing.T, events []string, model string) *streamSummary {
	t.Helper()
	sum := &streamSummary{ids: map[string]bool{}}
	for i, ev := range events {
		if ev == "[DONE]" {
			if i != len(events)-1 {
				t.Errorf("[DONE] is event %d of %d", i, len(events))
			}
			sum.done = true
			continue
		}
		if ev == malformedPayload {
			continue
		}
		c := decodeChunk(t, ev)
		sum.ids[c.ID] = true
		if c.Object != "chat.completion.chunk" || c.Model != model || c.Created == 0 {
			t.Errorf("event %d: bad object/model/created: %s", i, ev)
		}
		sum.add(t, i, c, ev)
	}
	return sum
}

func (sum *streamSummary) add(t *testing.T, i int, c testChunk, raw string) {
	t.Helper()
	if c.Usage != nil {
		if !strings.Contains(raw, `"choices":[]`) {
			t.Errorf("usage chunk must have empty choices: %s", raw)
		}
		sum.usage = c.Usage
		return
	}
	if len(c.Choices) != 1 {
		t.Fatalf("event %d: want 1 choice: %s", i, raw)
	}
	ch := c.Choices[0]
	switch {
	case ch.FinishReason != nil:
		if *ch.FinishReason != "stop" || ch.Delta.Content != nil {
			t.Errorf("bad finish chunk: %s", raw)
		}
		sum.finishCount++
	case ch.Delta.Role != "":
		sum.roleFirst = i == 0 && ch.Delta.Role == "assistant" && ch.Delta.Content != nil && *ch.Delta.Content == ""
	case ch.Delta.Content != nil:
		sum.content.WriteString(*ch.Delta.Content)
		sum.contentCount++
	default:
		t.Errorf("unexpected chunk: %s", raw)
	}
}

func TestCompletion(t *testing.T) {
	tests := []struct {
		name        string
		standin     *Provider
		wantContent string
		wantTokens  int
	}{
		{"defaults", &Provider{}, "Hello from standin.", 3},
		{"named", &Provider{Name: "beta"}, "Hello from beta.", 3},
		{"answer", &Provider{Answer: "Hello from the stand-in."}, "Hello from the stand-in.", 4},
		{"events", &Provider{Answer: "a b", Events: 5}, "a b a b a", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := testServer(t, tt.standin)
			resp := mustPost(t, srv.URL, chatBody("gpt-4o", false, false))
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("status %d, content-type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			if got := resp.Header.Get("x-standin-name"); got != tt.standin.Name {
				t.Errorf("x-standin-name = %q, want %q", got, tt.standin.Name)
			}
			var c completion
			if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(c.ID, "chatcmpl-standin-") || c.Object != "chat.completion" || c.Model != "gpt-4o" || c.Created == 0 {
				t.Errorf("bad envelope: %+v", c)
			}
			if len(c.Choices) != 1 || c.Choices[0].Message.Role != "assistant" || c.Choices[0].FinishReason != "stop" {
				t.Fatalf("bad choices: %+v", c.Choices)
			}
			if got := c.Choices[0].Message.Content; got != tt.wantContent {
				t.Errorf("content = %q, want %q", got, tt.wantContent)
			}
			want := usage{promptTokens, tt.wantTokens, promptTokens + tt.wantTokens}
			if c.Usage != want {
				t.Errorf("usage = %+v, want %+v", c.Usage, want)
			}
		})
	}
}

func TestStream(t *testing.T) {
	tests := []struct {
		name         string
		standin      *Provider
		includeUsage bool
		wantContent  string
		wantEvents   int
	}{
		{"words", &Provider{Answer: "Hello from the stand-in."}, false, "Hello from the stand-in.", 4},
		{"words with usage", &Provider{Answer: "Hello from the stand-in."}, true, "Hello from the stand-in.", 4},
		{"odd spacing", &Provider{Answer: "  two\twords \n"}, false, "  two\twords \n", 2},
		{"events cycle", &Provider{Answer: "a b c", Events: 7}, true, "a b c a b c a", 7},
		{"events fewer than words", &Provider{Answer: "a b c", Events: 2}, false, "a b", 2},
		{"paced", &Provider{Answer: "x y", FirstToken: caddy.Duration(time.Millisecond), Pace: caddy.Duration(time.Millisecond)}, true, "x y", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := testServer(t, tt.standin)
			resp := mustPost(t, srv.URL, chatBody("m1", true, tt.includeUsage))
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("Cache-Control") != "no-cache" {
				t.Fatalf("status %d, headers %v", resp.StatusCode, resp.Header)
			}
			events, err := readEvents(resp.Body)
			if err != nil {
				t.Fatalf("reading stream: %v", err)
			}
			sum := summarize(t, events, "m1")
			if !sum.roleFirst || !sum.done || sum.finishCount != 1 || len(sum.ids) != 1 {
				t.Errorf("roleFirst=%v done=%v finish=%d ids=%v", sum.roleFirst, sum.done, sum.finishCount, sum.ids)
			}
			if sum.content.String() != tt.wantContent || sum.contentCount != tt.wantEvents {
				t.Errorf("content %q in %d events, want %q in %d", sum.content.String(), sum.contentCount, tt.wantContent, tt.wantEvents)
			}
			if (sum.usage != nil) != tt.includeUsage {
				t.Fatalf("usage chunk present = %v, want %v", sum.usage != nil, tt.includeUsage)
			}
			if sum.usage != nil && (sum.usage.PromptTokens != promptTokens || sum.usage.CompletionTokens != tt.wantEvents) {
				t.Errorf("usage = %+v", sum.usage)
			}
			if want := 2 + tt.wantEvents + boolInt(tt.includeUsage) + 1; len(events) != want {
				t.Errorf("got %d events, want %d: %q", len(events), want, events)
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestStreamFaults(t *testing.T) {
	const answer = "one two three four"
	tests := []struct {
		name       string
		fault      string
		faultAfter *int
		wantErr    bool // the client sees a read error
		check      func(t *testing.T, events []string, sum *streamSummary)
	}{
		{"cut after 2", faultCut, intPtr(2), true, func(t *testing.T, events []string, sum *streamSummary) {
			expect(t, sum.contentCount == 2 && sum.finishCount == 0 && !sum.done, "cut stream: %q", events)
		}},
		{"cut before content", faultCut, intPtr(0), true, func(t *testing.T, events []string, sum *streamSummary) {
			expect(t, len(events) == 1 && sum.roleFirst, "want only the role chunk: %q", events)
		}},
		{"cut after all content", faultCut, intPtr(99), true, func(t *testing.T, events []string, sum *streamSummary) {
			expect(t, sum.content.String() == answer && sum.finishCount == 0, "got %q", events)
		}},
		{"malformed", faultMalformed, nil, false, func(t *testing.T, events []string, sum *streamSummary) {
			expect(t, len(events) > 2 && events[2] == malformedPayload, "malformed event not third: %q", events)
			expect(t, sum.content.String() == answer && sum.done && sum.finishCount == 1, "stream must go on: %q", events)
		}},
		{"no_done", faultNoDone, nil, false, func(t *testing.T, events []string, sum *streamSummary) {
			expect(t, sum.content.String() == answer && sum.finishCount == 1 && sum.usage != nil && !sum.done, "got %q", events)
		}},
		{"no_finish", faultNoFinish, nil, false, func(t *testing.T, events []string, sum *streamSummary) {
			expect(t, sum.content.String() == answer && sum.finishCount == 0 && sum.usage == nil && !sum.done, "got %q", events)
		}},
		{"error_event", faultErrorEvent, nil, false, func(t *testing.T, events []string, _ *streamSummary) {
			expect(t, len(events) == 1 && events[0] == errorEventData, "got %q", events)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := testServer(t, &Provider{Answer: answer, Fault: tt.fault, FaultAfter: tt.faultAfter})
			resp := mustPost(t, srv.URL, chatBody("m", true, true))
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("status %d, content-type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			events, err := readEvents(resp.Body)
			if (err != nil) != tt.wantErr {
				t.Fatalf("read error = %v, want error: %v", err, tt.wantErr)
			}
			if tt.wantErr && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("read error = %v, want unexpected EOF", err)
			}
			var sum *streamSummary
			if tt.fault != faultErrorEvent {
				sum = summarize(t, events, "m")
			}
			tt.check(t, events, sum)
		})
	}
}

func expect(t *testing.T, ok bool, format string, args ...any) {
	t.Helper()
	if !ok {
		t.Errorf(format, args...)
	}
}

// waitReturned fails the test if the handler does not return soon
// after its client gave up.
func waitReturned(t *testing.T, returned <-chan struct{}) {
	t.Helper()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("handler did not return after the client went away")
	}
}

func TestStreamStall(t *testing.T) {
	srv, returned := testServer(t, &Provider{Answer: "a b c", Fault: faultStall, FaultAfter: intPtr(2)})
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	resp, err := post(ctx, srv.URL, chatBody("m", true, false))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	events, err := readEvents(resp.Body)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read error = %v, want deadline exceeded", err)
	}
	sum := summarize(t, events, "m")
	if sum.content.String() != "a b" || sum.contentCount != 2 || sum.finishCount != 0 {
		t.Errorf("events before stall: %q", events)
	}
	waitReturned(t, returned)
}

func TestNonStreamingFaults(t *testing.T) {
	tests := []struct {
		name   string
		fault  string
		check  func(t *testing.T, resp *http.Response, err error)
		waitOK bool // the handler must return once the client gives up
	}{
		{"reset", faultReset, func(t *testing.T, _ *http.Response, err error) {
			expect(t, errors.Is(err, syscall.ECONNRESET), "want connection reset, got %v", err)
		}, false},
		{"hang", faultHang, expectTimeout, true},
		{"stall", faultStall, expectTimeout, true},
		{"error_event", faultErrorEvent, func(t *testing.T, resp *http.Response, err error) {
			expectErrorBody(t, resp, err, 500, "server_error")
		}, false},
		{"cut", faultCut, func(t *testing.T, resp *http.Response, err error) {
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			expect(t, errors.Is(err, io.ErrUnexpectedEOF), "read error = %v, want unexpected EOF", err)
			expect(t, len(body) > 0 && int64(len(body)) < resp.ContentLength, "got %d of %d bytes", len(body), resp.ContentLength)
		}, false},
		{"malformed", faultMalformed, expectCompletion, false},
		{"no_done", faultNoDone, expectCompletion, false},
		{"no_finish", faultNoFinish, expectCompletion, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, returned := testServer(t, &Provider{Fault: tt.fault})
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			resp, err := post(ctx, srv.URL, chatBody("m", false, false))
			if err == nil {
				defer resp.Body.Close()
			}
			tt.check(t, resp, err)
			if tt.waitOK {
				waitReturned(t, returned)
			}
		})
	}
}

func expectTimeout(t *testing.T, resp *http.Response, err error) {
	t.Helper()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("want client timeout, got response %v, error %v", resp, err)
	}
}

func expectCompletion(t *testing.T, resp *http.Response, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	var c completion
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d, decode error %v", resp.StatusCode, err)
	}
	expect(t, c.Choices[0].Message.Content == "Hello from standin.", "content %q", c.Choices[0].Message.Content)
}

func expectErrorBody(t *testing.T, resp *http.Response, err error, status int, errType string) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Error map[string]any `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != status || body.Error["type"] != errType || body.Error["message"] == "" {
		t.Errorf("status %d, error %v; want %d %s", resp.StatusCode, body.Error, status, errType)
	}
	if param, ok := body.Error["param"]; !ok || param != nil {
		t.Errorf("param must be null: %v", body.Error)
	}
	if _, ok := body.Error["code"].(string); !ok {
		t.Errorf("code must be a string: %v", body.Error)
	}
}

func TestFailStatus(t *testing.T) {
	tests := []struct {
		name         string
		standin      *Provider
		stream       bool
		wantType     string
		retryAfter   string
		retryAfterMs string
	}{
		{"503 rounded up", &Provider{FailStatus: 503, RetryAfter: caddy.Duration(1500 * time.Millisecond)}, false, "server_error", "2", ""},
		{"429 ms", &Provider{FailStatus: 429, RetryAfterMs: 1500}, true, "requests", "", "1500"},
		{"400 both", &Provider{FailStatus: 400, RetryAfter: caddy.Duration(time.Second), RetryAfterMs: 20}, false, "invalid_request_error", "1", "20"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := testServer(t, tt.standin)
			resp, err := post(t.Context(), srv.URL, chatBody("m", tt.stream, false))
			if err == nil {
				defer resp.Body.Close()
			}
			expectErrorBody(t, resp, err, tt.standin.FailStatus, tt.wantType)
			if got := resp.Header.Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
			}
			if got := resp.Header.Get("retry-after-ms"); got != tt.retryAfterMs {
				t.Errorf("retry-after-ms = %q, want %q", got, tt.retryAfterMs)
			}
		})
	}
}

func TestFailFirst(t *testing.T) {
	srv, _ := testServer(t, &Provider{FailStatus: 503, FailFirst: 2})
	want := []int{503, 503, 200, 200}
	for i, status := range want {
		if resp := mustPost(t, srv.URL, chatBody("m", false, false)); resp.StatusCode != status {
			t.Errorf("request %d: status %d, want %d", i+1, resp.StatusCode, status)
		}
	}
	do(t, http.MethodDelete, srv.URL+"/v1/standin/requests")
	if resp := mustPost(t, srv.URL, chatBody("m", false, false)); resp.StatusCode != 503 {
		t.Errorf("after reset: status %d, want 503", resp.StatusCode)
	}
}

func TestFailFirstFault(t *testing.T) {
	srv, _ := testServer(t, &Provider{Fault: faultReset, FailFirst: 1})
	if _, err := post(t.Context(), srv.URL, chatBody("m", false, false)); err == nil {
		t.Fatal("first request must be reset")
	}
	expectCompletion(t, mustPost(t, srv.URL, chatBody("m", false, false)), nil)
}

func TestModels(t *testing.T) {
	tests := []struct {
		name   string
		models []string
		want   []string
	}{
		{"default", nil, []string{"standin"}},
		{"configured", []string{"gpt-4o", "gpt-4o-mini"}, []string{"gpt-4o", "gpt-4o-mini"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := testServer(t, &Provider{Models: tt.models})
			resp, body := do(t, http.MethodGet, srv.URL+"/v1/models")
			var list modelList
			if err := json.Unmarshal([]byte(body), &list); err != nil || resp.StatusCode != 200 {
				t.Fatalf("status %d, body %s, err %v", resp.StatusCode, body, err)
			}
			if list.Object != "list" || len(list.Data) != len(tt.want) {
				t.Fatalf("bad list: %s", body)
			}
			for i, m := range list.Data {
				if m.ID != tt.want[i] || m.Object != "model" || m.OwnedBy != "arbstr-standin" || m.Created == 0 {
					t.Errorf("model %d: %+v", i, m)
				}
			}
		})
	}
}

func TestRequestCounter(t *testing.T) {
	srv, _ := testServer(t, &Provider{Name: "counter"})
	count := func() string {
		resp, body := do(t, http.MethodGet, srv.URL+"/v1/standin/requests")
		if resp.Header.Get("x-standin-name") != "counter" {
			t.Errorf("missing x-standin-name on counter endpoint")
		}
		return body
	}
	if got := count(); got != `{"requests":0}` {
		t.Errorf("initial count %s", got)
	}
	mustPost(t, srv.URL, chatBody("m", false, false))
	mustPost(t, srv.URL, chatBody("m", true, false))
	mustPost(t, srv.URL, "not json")
	do(t, http.MethodGet, srv.URL+"/v1/models")
	if got := count(); got != `{"requests":3}` {
		t.Errorf("count after 3 chat requests: %s", got)
	}
	if _, body := do(t, http.MethodDelete, srv.URL+"/standin/requests"); body != `{"requests":0}` {
		t.Errorf("DELETE answered %s", body)
	}
	if got := count(); got != `{"requests":0}` {
		t.Errorf("count after reset: %s", got)
	}
}

func TestErrors(t *testing.T) {
	srv, _ := testServer(t, &Provider{})
	tests := []struct {
		name, method, path string
		wantStatus         int
	}{
		{"unknown path", http.MethodGet, "/v1/images/generations", 404},
		{"GET chat", http.MethodGet, "/v1/chat/completions", 405},
		{"POST models", http.MethodPost, "/v1/models", 405},
		{"PUT counter", http.MethodPut, "/standin/requests", 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, tt.method, srv.URL+tt.path)
			var e errorResponse
			if err := json.Unmarshal([]byte(body), &e); err != nil || resp.StatusCode != tt.wantStatus || e.Error.Message == "" {
				t.Errorf("status %d body %s, want %d with error body", resp.StatusCode, body, tt.wantStatus)
			}
		})
	}
	resp := mustPost(t, srv.URL, `{"model":`)
	expectErrorBody(t, resp, nil, 400, "invalid_request_error")
}

func TestLatency(t *testing.T) {
	tests := []struct {
		name    string
		standin *Provider
		stream  bool
		atLeast time.Duration
	}{
		{"latency", &Provider{Latency: caddy.Duration(50 * time.Millisecond)}, false, 50 * time.Millisecond},
		{"first token and pace", &Provider{Answer: "a b c", FirstToken: caddy.Duration(30 * time.Millisecond), Pace: caddy.Duration(10 * time.Millisecond)}, true, 30*time.Millisecond + 5*10*time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := testServer(t, tt.standin)
			start := time.Now()
			resp := mustPost(t, srv.URL, chatBody("m", tt.stream, false))
			if _, err := io.ReadAll(resp.Body); err != nil {
				t.Fatal(err)
			}
			if elapsed := time.Since(start); elapsed < tt.atLeast {
				t.Errorf("answered after %v, want at least %v", elapsed, tt.atLeast)
			}
		})
	}
}

func TestWaitsEndWithClient(t *testing.T) {
	tests := []struct {
		name    string
		standin *Provider
		stream  bool
	}{
		{"latency", &Provider{Latency: caddy.Duration(time.Hour)}, false},
		{"first_token", &Provider{FirstToken: caddy.Duration(time.Hour)}, true},
		{"pace", &Provider{Pace: caddy.Duration(time.Hour)}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, returned := testServer(t, tt.standin)
			ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
			defer cancel()
			resp, err := post(ctx, srv.URL, chatBody("m", tt.stream, false))
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			expectTimeout(t, resp, err)
			waitReturned(t, returned)
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		standin *Provider
		wantErr string
	}{
		{"zero", &Provider{}, ""},
		{"full", &Provider{FailStatus: 429, RetryAfter: caddy.Duration(time.Second), RetryAfterMs: 10, FailFirst: 2, Latency: 1}, ""},
		{"fault_after", &Provider{Fault: "cut", FaultAfter: intPtr(0)}, ""},
		{"unknown fault", &Provider{Fault: "explode"}, "unknown fault \"explode\", allowed: reset, hang, error_event, cut, stall, malformed, no_done, no_finish"},
		{"negative latency", &Provider{Latency: -1}, "latency must not be negative"},
		{"negative pace", &Provider{Pace: -1}, "pace must not be negative"},
		{"negative first_token", &Provider{FirstToken: -1}, "first_token must not be negative"},
		{"status too low", &Provider{FailStatus: 200}, "fail_status must be in 400..599"},
		{"status too high", &Provider{FailStatus: 600}, "fail_status must be in 400..599"},
		{"negative events", &Provider{Events: -1}, "events must not be negative"},
		{"negative fault_after", &Provider{Fault: "cut", FaultAfter: intPtr(-1)}, "fault_after must not be negative"},
		{"status and fault", &Provider{FailStatus: 503, Fault: "hang"}, "mutually exclusive"},
		{"retry without status", &Provider{RetryAfter: caddy.Duration(time.Second)}, "need fail_status"},
		{"fail_first alone", &Provider{FailFirst: 1}, "fail_first needs"},
		{"fault_after with hang", &Provider{Fault: "hang", FaultAfter: intPtr(1)}, "fault_after only applies"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.standin.Validate()
			if tt.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`arbstr_standin {
		name         beta
		models       gpt-4o gpt-4o-mini
		answer       "Hello from the stand-in."
		events       7
		latency      50ms
		first_token  100ms
		pace         10ms
		fail_first   3
		fault        cut
		fault_after  0
	}`)
	var s Provider
	if err := s.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if s.Name != "beta" || strings.Join(s.Models, ",") != "gpt-4o,gpt-4o-mini" || s.Answer != "Hello from the stand-in." ||
		s.Events != 7 || s.Latency != caddy.Duration(50*time.Millisecond) || s.FirstToken != caddy.Duration(100*time.Millisecond) ||
		s.Pace != caddy.Duration(10*time.Millisecond) || s.FailFirst != 3 || s.Fault != "cut" || s.FaultAfter == nil || *s.FaultAfter != 0 {
		t.Errorf("unexpected result: %+v", &s)
	}
	if err := s.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}

	d = caddyfile.NewTestDispenser(`arbstr_standin {
		fail_status    503
		retry_after    2s
		retry_after_ms 1500
	}`)
	s = Provider{}
	if err := s.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if s.FailStatus != 503 || s.RetryAfter != caddy.Duration(2*time.Second) || s.RetryAfterMs != 1500 {
		t.Errorf("unexpected result: %+v", &s)
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	tests := []struct{ name, input, wantErr string }{
		{"argument on directive", `arbstr_standin foo`, "wrong argument count"},
		{"unknown subdirective", "arbstr_standin {\n\tcolour blue\n}", `unrecognized arbstr_standin subdirective "colour"`},
		{"missing value", "arbstr_standin {\n\tname\n}", "wrong argument count"},
		{"two values", "arbstr_standin {\n\tname a b\n}", "wrong argument count"},
		{"no models", "arbstr_standin {\n\tmodels\n}", "wrong argument count"},
		{"bad duration", "arbstr_standin {\n\tlatency soon\n}", "latency:"},
		{"bad number", "arbstr_standin {\n\tevents many\n}", "events:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Provider
			err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// TestThroughCaddy runs stand-ins in an in-process Caddy to check
// the directive, its order and that flushing, hijacking and aborting work
// through Caddy's response writer wrappers.
func TestThroughCaddy(t *testing.T) {
	base := startCaddy(t, `
	handle /healthy/* {
		# Never reached: arbstr_standin is ordered before respond.
		respond /healthy/v1/other "from respond" 200
		arbstr_standin {
			name   healthy
			models gpt-4o gpt-4o-mini
			answer "Hello from the healthy stand-in."
		}
	}
	handle /failing/* {
		arbstr_standin {
			name        failing
			fail_status 503
			retry_after 1500ms
		}
	}
	handle /reset/* {
		arbstr_standin {
			name  reset
			fault reset
		}
	}
	handle /cut/* {
		arbstr_standin {
			name        cut
			fault       cut
			fault_after 1
		}
	}`)
	healthy, failing := base+"/healthy", base+"/failing"

	resp := mustPost(t, healthy, chatBody("gpt-4o", true, true))
	events, err := readEvents(resp.Body)
	if err != nil || resp.Header.Get("x-standin-name") != "healthy" {
		t.Fatalf("healthy stream: %v, headers %v", err, resp.Header)
	}
	sum := summarize(t, events, "gpt-4o")
	expect(t, sum.content.String() == "Hello from the healthy stand-in." && sum.done && sum.usage != nil, "healthy stream: %q", events)

	_, body := do(t, http.MethodGet, healthy+"/v1/other")
	expect(t, strings.Contains(body, "Unknown request URL"), "arbstr_standin must run before respond: %s", body)

	resp = mustPost(t, failing, chatBody("m", false, false))
	expectErrorBody(t, resp, nil, 503, "server_error")
	expect(t, resp.Header.Get("Retry-After") == "2", "Retry-After = %q", resp.Header.Get("Retry-After"))

	_, err = post(t.Context(), base+"/reset", chatBody("m", false, false))
	expect(t, errors.Is(err, syscall.ECONNRESET), "reset through Caddy: %v", err)

	resp = mustPost(t, base+"/cut", chatBody("m", true, false))
	events, err = readEvents(resp.Body)
	expect(t, errors.Is(err, io.ErrUnexpectedEOF) && len(events) == 2, "cut through Caddy: %v, %q", err, events)
}

func TestModelsReplacedAtRuntime(t *testing.T) {
	srv, _ := testServer(t, &Provider{Models: []string{"a"}})
	put := func(body string) *http.Response {
		req, _ := http.NewRequest(http.MethodPut, srv.URL+"/v1/standin/models", strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := put(`{"models":["a","b"]}`); resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT: status %d", resp.StatusCode)
	}
	_, body := do(t, http.MethodGet, srv.URL+"/v1/models")
	var list modelList
	if err := json.Unmarshal([]byte(body), &list); err != nil || len(list.Data) != 2 || list.Data[1].ID != "b" {
		t.Fatalf("after PUT, GET /models = %s (%v); want a and b", body, err)
	}
	if resp := put(`{"nope":1}`); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("PUT without models: status %d, want 400", resp.StatusCode)
	}
	if resp, _ := do(t, http.MethodPost, srv.URL+"/v1/standin/models"); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: status %d, want 405", resp.StatusCode)
	}
}
