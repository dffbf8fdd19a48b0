package standin

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// testResponse mirrors what openai-go's responses.Response and the npm
// SDK's output_text helper read.
type testResponse struct {
	ID        string  `json:"id"`
	Object    string  `json:"object"`
	CreatedAt float64 `json:"created_at"`
	Status    string  `json:"status"`
	Model     string  `json:"model"`
	Output    []struct {
		Type    string `json:"type"`
		ID      string `json:"id"`
		Status  string `json:"status"`
		Role    string `json:"role"`
		Content []struct {
			Type        string `json:"type"`
			Text        string `json:"text"`
			Annotations []any  `json:"annotations"`
		} `json:"content"`
	} `json:"output"`
	Usage *struct {
		InputTokens  int `json:"input_tokens"`
		OutputTokens int `json:"output_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

// outputText is what the SDKs' output_text / OutputText() give: the text of
// every output_text part of every message item.
func (r testResponse) outputText() string {
	var b strings.Builder
	for _, item := range r.Output {
		if item.Type != "message" {
			continue
		}
		for _, c := range item.Content {
			if c.Type == "output_text" {
				b.WriteString(c.Text)
			}
		}
	}
	return b.String()
}

func postResponses(t *testing.T, url, body string) (*http.Response, []byte) {
	t.Helper()
	return mustPostAPI(t, url, "/v1/responses", nil, body)
}

func TestResponses(t *testing.T) {
	srv, _ := testServer(t, &Provider{Answer: "Hello from the stand-in."})
	resp, body := postResponses(t, srv.URL, responsesBody(false))
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var r testResponse
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r.ID, "resp_") || r.Object != "response" || r.CreatedAt == 0 || r.Status != "completed" || r.Model != "m" {
		t.Errorf("bad envelope: %s", body)
	}
	if !strings.Contains(string(body), `"error":null`) {
		t.Errorf("error must be null: %s", body)
	}
	if len(r.Output) != 1 || r.Output[0].Role != "assistant" || !strings.HasPrefix(r.Output[0].ID, "msg_") || r.Output[0].Status != "completed" ||
		len(r.Output[0].Content) != 1 || r.Output[0].Content[0].Annotations == nil {
		t.Fatalf("bad output: %s", body)
	}
	if got := r.outputText(); got != "Hello from the stand-in." {
		t.Errorf("output text %q", got)
	}
	if u := r.Usage; u == nil || u.InputTokens != promptTokens || u.OutputTokens != 4 || u.TotalTokens != promptTokens+4 {
		t.Errorf("usage %s", body)
	}
}

// responsesStreamOrder is the event sequence of a healthy Responses stream
// of two deltas.
var responsesStreamOrder = []string{
	"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
	"response.output_text.delta", "response.output_text.delta",
	"response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
}

// accumulateResponse applies the events as the npm SDK's ResponseStream
// does (output items, content parts, deltas), checks their types and
// sequence numbers, and returns the text it built
// and the response of response.completed (nil without one).
func accumulateResponse(t *testing.T, events []sseEvent) (string, *testResponse) {
	t.Helper()
	var text strings.Builder
	var completed *testResponse
	seq := 0 // sequence numbers count from 0, without the malformed event
	for i, e := range events {
		var ev struct {
			Type           string          `json:"type"`
			SequenceNumber *int            `json:"sequence_number"`
			Delta          string          `json:"delta"`
			ItemID         string          `json:"item_id"`
			OutputIndex    *int            `json:"output_index"`
			ContentIndex   *int            `json:"content_index"`
			Response       json.RawMessage `json:"response"`
		}
		if e.data == malformedResponsesPayload {
			continue
		}
		if err := json.Unmarshal([]byte(e.data), &ev); err != nil {
			t.Fatalf("event %d is not JSON: %s", i, e.data)
		}
		if ev.Type != e.name || ev.SequenceNumber == nil || *ev.SequenceNumber != seq {
			t.Errorf("event %d: name %q, data type %q, sequence_number %v (want %d)", i, e.name, ev.Type, ev.SequenceNumber, seq)
		}
		seq++
		switch ev.Type {
		case "response.output_text.delta":
			if ev.OutputIndex == nil || ev.ContentIndex == nil || !strings.HasPrefix(ev.ItemID, "msg_") {
				t.Errorf("delta without indexes or item id: %s", e.data)
			}
			text.WriteString(ev.Delta)
		case "response.completed":
			completed = new(testResponse)
			if err := json.Unmarshal(ev.Response, completed); err != nil {
				t.Fatal(err)
			}
		}
	}
	return text.String(), completed
}

func TestResponsesStream(t *testing.T) {
	srv, _ := testServer(t, &Provider{Answer: "Hello there."})
	resp, err := postAPI(t.Context(), srv.URL, "/v1/responses", nil, responsesBody(true))
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
	if got := strings.Join(eventNames(events), ","); got != strings.Join(responsesStreamOrder, ",") {
		t.Fatalf("events %s\nwant   %s", got, strings.Join(responsesStreamOrder, ","))
	}
	text, completed := accumulateResponse(t, events)
	if text != "Hello there." || completed == nil || completed.outputText() != "Hello there." || completed.Status != "completed" {
		t.Fatalf("text %q, completed %+v", text, completed)
	}
	if u := completed.Usage; u == nil || u.InputTokens != promptTokens || u.OutputTokens != 2 {
		t.Errorf("usage %+v", u)
	}
	var created struct {
		Response testResponse `json:"response"`
	}
	if err := json.Unmarshal([]byte(events[0].data), &created); err != nil || created.Response.Status != "in_progress" || created.Response.Output == nil || created.Response.ID != completed.ID {
		t.Errorf("response.created: %s", events[0].data)
	}
}

func TestResponsesStreamFaults(t *testing.T) {
	const answer = "one two three"
	preamble := responsesStreamOrder[:4]
	delta := "response.output_text.delta"
	tests := []struct {
		name       string
		fault      string
		faultAfter *int
		wantErr    bool // the client sees a read error
		want       []string
	}{
		{"cut after 2", faultCut, intPtr(2), true, concat(preamble, delta, delta)},
		{"cut before any delta", faultCut, intPtr(0), true, preamble},
		{"malformed", faultMalformed, nil, false, concat(concat(preamble, delta, delta, delta, delta), responsesStreamOrder[6:]...)},
		{"no_done", faultNoDone, nil, false, concat(preamble, delta, delta, delta)},
		{"no_finish", faultNoFinish, nil, false, concat(preamble, delta, delta, delta)},
		{"error_event", faultErrorEvent, nil, false, []string{"error"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := testServer(t, &Provider{Answer: answer, Fault: tt.fault, FaultAfter: tt.faultAfter})
			resp, err := postAPI(t.Context(), srv.URL, "/v1/responses", nil, responsesBody(true))
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
				var e map[string]any
				_ = json.Unmarshal([]byte(events[0].data), &e)
				if e["type"] != "error" || e["code"] != "standin_error" || e["message"] == "" || e["sequence_number"] != 0.0 {
					t.Errorf("error event %s", events[0].data)
				}
				if _, ok := e["param"]; !ok || e["param"] != nil {
					t.Errorf("param must be null: %s", events[0].data)
				}
			case faultMalformed:
				expect(t, events[5].data == malformedResponsesPayload, "malformed event not after the first delta: %q", events)
				text, completed := accumulateResponse(t, events)
				expect(t, text == answer && completed != nil, "the stream must go on: %q", text)
			default:
				text, completed := accumulateResponse(t, events)
				expect(t, completed == nil && strings.HasPrefix(answer, text), "text %q, completed %v", text, completed)
			}
		})
	}
}

func concat(head []string, tail ...string) []string {
	return append(append([]string{}, head...), tail...)
}

func TestResponsesBadInput(t *testing.T) {
	srv, _ := testServer(t, &Provider{Context: 10})
	tests := []struct{ name, body, code string }{
		{"no input", `{"model":"m"}`, "invalid_value"},
		{"number input", `{"model":"m","input":7}`, "invalid_value"},
		{"empty items", `{"model":"m","input":[]}`, "invalid_value"},
		{"not JSON", `[`, "invalid_body"},
		{"over context", `{"model":"m","input":"12345678","max_output_tokens":9}`, "context_length_exceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := postResponses(t, srv.URL, tt.body)
			var e errorResponse
			if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != 400 || e.Error.Type != "invalid_request_error" || e.Error.Code != tt.code {
				t.Errorf("status %d body %s; want 400 %s", resp.StatusCode, body, tt.code)
			}
		})
	}
	if resp, body := postResponses(t, srv.URL, `{"model":"m","input":"12345678","max_output_tokens":8}`); resp.StatusCode != 200 {
		t.Errorf("2 + 8 tokens in a window of 10: %d %s", resp.StatusCode, body)
	}
}
