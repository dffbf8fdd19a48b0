package standin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// sseEvent is one server-sent event as a client parses it.
type sseEvent struct {
	name, data string
}

// readSSE returns the events (with their "event:" names) read before the
// body ended, and the read error (nil on a clean end).
func readSSE(body io.Reader) ([]sseEvent, error) {
	var events []sseEvent
	var cur sseEvent
	br := bufio.NewReader(body)
	for {
		line, err := br.ReadString('\n')
		if strings.HasSuffix(line, "\n") {
			line = strings.TrimRight(line, "\n")
			switch {
			case line == "" && cur.data != "":
				events = append(events, cur)
				cur = sseEvent{}
			case strings.HasPrefix(line, "event: "):
				cur.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				cur.data = strings.TrimPrefix(line, "data: ")
			}
		}
		if errors.Is(err, io.EOF) && line == "" {
			return events, nil
		}
		if err != nil {
			return events, err
		}
	}
}

func eventNames(events []sseEvent) []string {
	names := make([]string, len(events))
	for i, e := range events {
		names[i] = e.name
	}
	return names
}

// apiCase is one of the stand-in's APIs, for tests that every API must pass.
type apiCase struct {
	name   string
	path   string
	header http.Header
	body   func(stream bool) string
	// errorType reads the error type of an error body in the API's shape.
	errorType func(t *testing.T, body []byte) string
	streams   bool
}

func openAIErrorType(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Error struct {
			Type    string  `json:"type"`
			Message string  `json:"message"`
			Code    *string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Message == "" || e.Error.Code == nil {
		t.Errorf("not an OpenAI error body (%v): %s", err, body)
	}
	return e.Error.Type
}

func anthropicErrorTypeOf(t *testing.T, body []byte) string {
	t.Helper()
	var e anthropicError
	if err := json.Unmarshal(body, &e); err != nil || e.Type != "error" || e.Error.Message == "" {
		t.Errorf("not an Anthropic error body (%v): %s", err, body)
	}
	return e.Error.Type
}

var anthropicHeader = http.Header{"Anthropic-Version": {"2023-06-01"}, "X-Api-Key": {"sk-ant-test"}}

var apiCases = []apiCase{
	{"chat", "/v1/chat/completions", nil, func(stream bool) string { return chatBody("m", stream, false) }, openAIErrorType, true},
	{"embeddings", "/v1/embeddings", nil, func(bool) string { return `{"model":"m","input":"hello"}` }, openAIErrorType, false},
	{"responses", "/v1/responses", nil, responsesBody, openAIErrorType, true},
	{"messages", "/v1/messages", anthropicHeader, messagesBody, anthropicErrorTypeOf, true},
}

// responsesBody has 16 + 8 bytes of text: 6 input tokens.
func responsesBody(stream bool) string {
	return `{"model":"m","instructions":"0123456789abcdef","input":[{"role":"user","content":[{"type":"input_text","text":"12345678"}]}],"stream":` + boolJSON(stream) + `}`
}

// messagesBody has 16 + 8 bytes of text: 6 input tokens.
func messagesBody(stream bool) string {
	return `{"model":"m","max_tokens":100,"system":"0123456789abcdef","messages":[{"role":"user","content":[{"type":"text","text":"12345678"}]}],"stream":` + boolJSON(stream) + `}`
}

func boolJSON(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func postAPI(ctx context.Context, url, path string, header http.Header, body string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = header.Clone()
	if req.Header == nil {
		req.Header = http.Header{}
	}
	req.Header.Set("Content-Type", "application/json")
	return (&http.Client{Transport: &http.Transport{}}).Do(req)
}

func mustPostAPI(t *testing.T, url, path string, header http.Header, body string) (*http.Response, []byte) {
	t.Helper()
	resp, err := postAPI(t.Context(), url, path, header, body)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return resp, data
}

// TestEveryAPIFaults checks that the transport faults and the non-streaming
// meaning of the stream faults apply to every API.
func TestEveryAPIFaults(t *testing.T) {
	for _, api := range apiCases {
		t.Run(api.name, func(t *testing.T) {
			t.Run("reset", func(t *testing.T) {
				srv, _ := testServer(t, &Provider{Fault: faultReset})
				_, err := postAPI(t.Context(), srv.URL, api.path, api.header, api.body(false))
				expect(t, errors.Is(err, syscall.ECONNRESET), "want connection reset, got %v", err)
			})
			for _, fault := range []string{faultHang, faultStall} {
				t.Run(fault, func(t *testing.T) {
					srv, returned := testServer(t, &Provider{Fault: fault})
					ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
					defer cancel()
					resp, err := postAPI(ctx, srv.URL, api.path, api.header, api.body(false))
					expectTimeout(t, resp, err)
					waitReturned(t, returned)
				})
			}
			t.Run("error_event not streaming", func(t *testing.T) {
				srv, _ := testServer(t, &Provider{Fault: faultErrorEvent})
				resp, body := mustPostAPI(t, srv.URL, api.path, api.header, api.body(false))
				wantType := map[bool]string{true: "api_error", false: "server_error"}[api.name == "messages"]
				if resp.StatusCode != 500 || api.errorType(t, body) != wantType {
					t.Errorf("status %d body %s; want 500 %s", resp.StatusCode, body, wantType)
				}
			})
			t.Run("cut not streaming", func(t *testing.T) {
				srv, _ := testServer(t, &Provider{Fault: faultCut})
				resp, err := postAPI(t.Context(), srv.URL, api.path, api.header, api.body(false))
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				expect(t, errors.Is(err, io.ErrUnexpectedEOF), "read error = %v, want unexpected EOF", err)
				expect(t, len(body) > 0 && int64(len(body)) < resp.ContentLength, "got %d of %d bytes", len(body), resp.ContentLength)
			})
			for _, fault := range []string{faultMalformed, faultNoDone, faultNoFinish} {
				t.Run(fault+" not streaming", func(t *testing.T) {
					srv, _ := testServer(t, &Provider{Fault: fault})
					resp, body := mustPostAPI(t, srv.URL, api.path, api.header, api.body(false))
					expect(t, resp.StatusCode == 200 && json.Valid(body), "want a healthy answer, got %d %s", resp.StatusCode, body)
				})
			}
		})
	}
}

// TestEveryAPIFailStatus checks fail_status, its retry hints and its
// error shape on every API, streaming or not.
func TestEveryAPIFailStatus(t *testing.T) {
	tests := []struct {
		status                  int
		openAIType, anthropType string
	}{
		{429, "requests", "rate_limit_error"},
		{503, "server_error", "api_error"},
		{529, "server_error", "overloaded_error"},
		{401, "invalid_request_error", "authentication_error"},
		{400, "invalid_request_error", "invalid_request_error"},
	}
	for _, api := range apiCases {
		for _, tt := range tests {
			for _, stream := range []bool{false, api.streams} {
				t.Run(api.name+"/"+http.StatusText(tt.status)+"/stream="+boolJSON(stream), func(t *testing.T) {
					srv, _ := testServer(t, &Provider{FailStatus: tt.status, RetryAfter: caddy.Duration(1500 * time.Millisecond), RetryAfterMs: 1500})
					resp, body := mustPostAPI(t, srv.URL, api.path, api.header, api.body(stream))
					want := tt.openAIType
					if api.name == "messages" {
						want = tt.anthropType
					}
					if got := api.errorType(t, body); resp.StatusCode != tt.status || got != want {
						t.Errorf("status %d type %q; want %d %q: %s", resp.StatusCode, got, tt.status, want, body)
					}
					if resp.Header.Get("Retry-After") != "2" || resp.Header.Get("Retry-After-Ms") != "1500" {
						t.Errorf("retry hints %v", resp.Header)
					}
				})
			}
		}
	}
}

// TestEveryAPICounted checks that the request counter and fail_first count
// the requests of all APIs together.
func TestEveryAPICounted(t *testing.T) {
	srv, _ := testServer(t, &Provider{FailStatus: 503, FailFirst: 3})
	var statuses []int
	for _, api := range apiCases {
		resp, _ := mustPostAPI(t, srv.URL, api.path, api.header, api.body(false))
		statuses = append(statuses, resp.StatusCode)
	}
	if want := []int{503, 503, 503, 200}; !equalInts(statuses, want) {
		t.Errorf("statuses %v, want %v", statuses, want)
	}
	if _, body := do(t, http.MethodGet, srv.URL+"/v1/standin/requests"); body != `{"requests":4}` {
		t.Errorf("counter after one request per API: %s", body)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestLastRequest checks that the stand-in shows what it received, e.g.
// which key a router sent.
func TestLastRequest(t *testing.T) {
	srv, _ := testServer(t, &Provider{})
	if resp, _ := do(t, http.MethodGet, srv.URL+"/v1/standin/last-request"); resp.StatusCode != 404 {
		t.Errorf("before any request: status %d, want 404", resp.StatusCode)
	}
	mustPostAPI(t, srv.URL, "/v1/messages", anthropicHeader, messagesBody(false))
	_, body := do(t, http.MethodGet, srv.URL+"/v1/standin/last-request")
	var last struct {
		Method, Path string
		Headers      http.Header
	}
	if err := json.Unmarshal([]byte(body), &last); err != nil {
		t.Fatal(err)
	}
	if last.Method != "POST" || last.Path != "/v1/messages" || last.Headers.Get("X-Api-Key") != "sk-ant-test" || last.Headers.Get("Anthropic-Version") != "2023-06-01" {
		t.Errorf("last request: %s", body)
	}
	if resp, _ := do(t, http.MethodDelete, srv.URL+"/v1/standin/last-request"); resp.StatusCode != 405 {
		t.Errorf("DELETE: status %d, want 405", resp.StatusCode)
	}
}

// TestEveryAPIStreamStall checks that stall stops the Responses and
// Messages streams after fault_after deltas (chat: TestStreamStall) and
// that the handler ends with the client.
func TestEveryAPIStreamStall(t *testing.T) {
	deltaEvent := map[string]string{"responses": "response.output_text.delta", "messages": "content_block_delta"}
	for _, api := range apiCases {
		if deltaEvent[api.name] == "" {
			continue
		}
		t.Run(api.name, func(t *testing.T) {
			srv, returned := testServer(t, &Provider{Answer: "a b c", Fault: faultStall, FaultAfter: intPtr(2)})
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			resp, err := postAPI(ctx, srv.URL, api.path, api.header, api.body(true))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			events, err := readSSE(resp.Body)
			expect(t, errors.Is(err, context.DeadlineExceeded), "read error = %v, want deadline exceeded", err)
			deltas := 0
			for _, e := range events {
				if e.name == deltaEvent[api.name] {
					deltas++
				}
			}
			expect(t, deltas == 2 && events[len(events)-1].name == deltaEvent[api.name], "want 2 deltas, then nothing: %q", eventNames(events))
			waitReturned(t, returned)
		})
	}
}
