package standin

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// testMessage mirrors what anthropic-sdk-go's Message reads.
type testMessage struct {
	ID         string  `json:"id"`
	Type       string  `json:"type"`
	Role       string  `json:"role"`
	Model      string  `json:"model"`
	StopReason *string `json:"stop_reason"`
	Content    []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	} `json:"content"`
	Usage struct {
		InputTokens  int `json:"input_tokens"`
		OutputTokens int `json:"output_tokens"`
	} `json:"usage"`
}

func (m testMessage) text() string {
	var b strings.Builder
	for _, c := range m.Content {
		if c.Type == "text" {
			b.WriteString(c.Text)
		}
	}
	return b.String()
}

func postMessages(t *testing.T, url string, header http.Header, body string) (*http.Response, []byte) {
	t.Helper()
	return mustPostAPI(t, url, "/v1/messages", header, body)
}

func TestMessages(t *testing.T) {
	srv, _ := testServer(t, &Provider{Answer: "Hello from the stand-in."})
	resp, body := postMessages(t, srv.URL, anthropicHeader, messagesBody(false))
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var m testMessage
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(m.ID, "msg_") || m.Type != "message" || m.Role != "assistant" || m.Model != "m" ||
		m.StopReason == nil || *m.StopReason != "end_turn" || !strings.Contains(string(body), `"stop_sequence":null`) {
		t.Errorf("bad envelope: %s", body)
	}
	if m.text() != "Hello from the stand-in." || len(m.Content) != 1 {
		t.Errorf("content: %s", body)
	}
	if m.Usage.InputTokens != promptTokens || m.Usage.OutputTokens != 4 {
		t.Errorf("usage: %s", body)
	}
}

// messagesStreamOrder is the event sequence of a healthy Messages stream
// of two deltas.
var messagesStreamOrder = []string{
	"message_start", "content_block_start", "ping",
	"content_block_delta", "content_block_delta",
	"content_block_stop", "message_delta", "message_stop",
}

// accumulateMessage applies the events as anthropic-sdk-go's
// Message.Accumulate does, checking that each event's data has its name as
// type, and tells whether message_stop came.
func accumulateMessage(t *testing.T, events []sseEvent) (m testMessage, stopped bool) {
	t.Helper()
	for i, e := range events {
		if e.data == malformedMessagesPayload {
			continue
		}
		var ev struct {
			Type    string          `json:"type"`
			Message json.RawMessage `json:"message"`
			Index   int             `json:"index"`
			Delta   struct {
				Type       string  `json:"type"`
				Text       string  `json:"text"`
				StopReason *string `json:"stop_reason"`
			} `json:"delta"`
			Usage struct {
				OutputTokens int `json:"output_tokens"`
			} `json:"usage"`
		}
		if err := json.Unmarshal([]byte(e.data), &ev); err != nil || ev.Type != e.name {
			t.Fatalf("event %d named %q: %s (%v)", i, e.name, e.data, err)
		}
		switch ev.Type {
		case "message_start":
			if err := json.Unmarshal(ev.Message, &m); err != nil {
				t.Fatal(err)
			}
		case "content_block_start":
			if ev.Index != len(m.Content) {
				t.Fatalf("content_block_start index %d, want %d", ev.Index, len(m.Content))
			}
			m.Content = append(m.Content, struct {
				Type string `json:"type"`
				Text string `json:"text"`
			}{Type: "text"})
		case "content_block_delta":
			if ev.Index >= len(m.Content) || ev.Delta.Type != "text_delta" {
				t.Fatalf("bad delta: %s", e.data)
			}
			m.Content[ev.Index].Text += ev.Delta.Text
		case "message_delta":
			m.StopReason = ev.Delta.StopReason
			m.Usage.OutputTokens = ev.Usage.OutputTokens
		case "message_stop":
			stopped = true
		}
	}
	return m, stopped
}

func TestMessagesStream(t *testing.T) {
	srv, _ := testServer(t, &Provider{Answer: "Hello there."})
	resp, err := postAPI(t.Context(), srv.URL, "/v1/messages", anthropicHeader, messagesBody(true))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, headers %v", resp.StatusCode, resp.Header)
	}
	events, err := readSSE(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(eventNames(events), ","); got != strings.Join(messagesStreamOrder, ",") {
		t.Fatalf("events %s\nwant   %s", got, strings.Join(messagesStreamOrder, ","))
	}
	var start struct {
		Message testMessage `json:"message"`
	}
	if err := json.Unmarshal([]byte(events[0].data), &start); err != nil || start.Message.Usage.InputTokens != promptTokens || start.Message.Usage.OutputTokens != 1 || start.Message.StopReason != nil {
		t.Errorf("message_start: %s", events[0].data)
	}
	m, stopped := accumulateMessage(t, events)
	if !stopped || m.text() != "Hello there." || m.StopReason == nil || *m.StopReason != "end_turn" || m.Usage.OutputTokens != 2 || m.Usage.InputTokens != promptTokens {
		t.Errorf("accumulated %+v, stopped %v", m, stopped)
	}
}

func TestMessagesStreamFaults(t *testing.T) {
	const answer = "one two three"
	preamble := messagesStreamOrder[:3]
	delta := "content_block_delta"
	tests := []struct {
		name       string
		fault      string
		faultAfter *int
		wantErr    bool // the client sees a read error
		want       []string
	}{
		{"cut after 2", faultCut, intPtr(2), true, concat(preamble, delta, delta)},
		{"cut before any delta", faultCut, intPtr(0), true, preamble},
		{"malformed", faultMalformed, nil, false, concat(concat(preamble, delta, delta, delta, delta), messagesStreamOrder[5:]...)},
		{"no_done", faultNoDone, nil, false, concat(preamble, delta, delta, delta)},
		{"no_finish", faultNoFinish, nil, false, concat(preamble, delta, delta, delta)},
		{"error_event", faultErrorEvent, nil, false, []string{"error"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := testServer(t, &Provider{Answer: answer, Fault: tt.fault, FaultAfter: tt.faultAfter})
			resp, err := postAPI(t.Context(), srv.URL, "/v1/messages", anthropicHeader, messagesBody(true))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			events, err := readSSE(resp.Body)
			if (err != nil) != tt.wantErr || tt.wantErr && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("read error = %v, want an unexpected EOF: %v", err, tt.wantErr)
			}
			if got := strings.Join(eventNames(events), ","); got != strings.Join(tt.want, ",") {
				t.Fatalf("events %s\nwant   %s", got, strings.Join(tt.want, ","))
			}
			switch tt.fault {
			case faultErrorEvent:
				if got := anthropicErrorTypeOf(t, []byte(events[0].data)); got != "overloaded_error" {
					t.Errorf("error event type %q: %s", got, events[0].data)
				}
			case faultMalformed:
				expect(t, events[4].data == malformedMessagesPayload, "malformed event not after the first delta: %q", events)
				m, stopped := accumulateMessage(t, events)
				expect(t, m.text() == answer && stopped, "the stream must go on: %+v", m)
			default:
				m, stopped := accumulateMessage(t, events)
				expect(t, !stopped && m.StopReason == nil && strings.HasPrefix(answer, m.text()), "accumulated %+v, stopped %v", m, stopped)
			}
		})
	}
}

func TestMessagesBadInput(t *testing.T) {
	srv, _ := testServer(t, &Provider{Context: 10, Prefill: prefillRefuse})
	tests := []struct {
		name   string
		header http.Header
		body   string
		status int
		want   string // in the error message
	}{
		{"no anthropic-version", http.Header{"X-Api-Key": {"k"}}, messagesBody(false), 400, "anthropic-version"},
		{"not JSON", anthropicHeader, `{`, 400, "invalid JSON"},
		{"no model", anthropicHeader, `{"max_tokens":1,"messages":[{"role":"user","content":"hi"}]}`, 400, "model"},
		{"no max_tokens", anthropicHeader, `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, 400, "max_tokens"},
		{"zero max_tokens", anthropicHeader, `{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"hi"}]}`, 400, "max_tokens"},
		{"no messages", anthropicHeader, `{"model":"m","max_tokens":1,"messages":[]}`, 400, "messages"},
		{"system role", anthropicHeader, `{"model":"m","max_tokens":1,"messages":[{"role":"system","content":"hi"}]}`, 400, "role"},
		{"number content", anthropicHeader, `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":7}]}`, 400, "content"},
		{"prefill refused", anthropicHeader, `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"Hel"}]}`, 400, "prefill"},
		{"over context", anthropicHeader, `{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"12345678"}]}`, 400, "prompt is too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := postMessages(t, srv.URL, tt.header, tt.body)
			var e anthropicError
			_ = json.Unmarshal(body, &e)
			if resp.StatusCode != tt.status || e.Type != "error" || e.Error.Type != "invalid_request_error" || !strings.Contains(e.Error.Message, tt.want) {
				t.Errorf("status %d body %s; want %d invalid_request_error mentioning %q", resp.StatusCode, body, tt.status, tt.want)
			}
		})
	}
	if resp, body := postMessages(t, srv.URL, anthropicHeader, `{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"12345678"}]}`); resp.StatusCode != 200 {
		t.Errorf("2 + 8 tokens in a window of 10: %d %s", resp.StatusCode, body)
	}
	resp, body := do(t, http.MethodGet, srv.URL+"/v1/messages")
	if resp.StatusCode != 405 || anthropicErrorTypeOf(t, []byte(body)) != "invalid_request_error" {
		t.Errorf("GET: %d %s", resp.StatusCode, body)
	}
}

// TestMessagesPrefill checks that with prefill accept an assistant-last
// message is continued, streaming and not.
func TestMessagesPrefill(t *testing.T) {
	srv, _ := testServer(t, &Provider{Answer: "one two three", Prefill: prefillAccept})
	body := func(stream bool) string {
		return `{"model":"m","max_tokens":50,"stream":` + boolJSON(stream) + `,"messages":[{"role":"user","content":"count"},{"role":"assistant","content":[{"type":"text","text":"one two"}]}]}`
	}
	_, data := postMessages(t, srv.URL, anthropicHeader, body(false))
	var m testMessage
	if err := json.Unmarshal(data, &m); err != nil || m.text() != " three" || m.Usage.OutputTokens != 1 {
		t.Errorf("not streaming: %s", data)
	}
	resp, err := postAPI(t.Context(), srv.URL, "/v1/messages", anthropicHeader, body(true))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	events, err := readSSE(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if m, stopped := accumulateMessage(t, events); !stopped || m.text() != " three" || m.Usage.OutputTokens != 1 {
		t.Errorf("streaming: %+v", m)
	}
}
