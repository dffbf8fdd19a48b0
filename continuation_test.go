package arbstr

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	dto "github.com/prometheus/client_model/go"

	"github.com/arbstr/caddy-arbstr/standin"
)

// ctAnswer is a 20-word answer; the tests cut it after 10 words.
const ctAnswer = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty."

// ctProvider is a stand-in provider served over HTTP, recording the bodies
// of the chat requests it received.
type ctProvider struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []string
}

func (p *ctProvider) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.bodies...)
}

func ctStandin(t *testing.T, s *standin.Provider) *ctProvider {
	t.Helper()
	if s.Answer == "" {
		s.Answer = ctAnswer
	}
	if err := s.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	p := &ctProvider{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		p.mu.Lock()
		p.bodies = append(p.bodies, string(body))
		p.mu.Unlock()
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		_ = s.ServeHTTP(w, r, nil)
	}))
	t.Cleanup(p.Close)
	return p
}

func ctIntPtr(n int) *int { return &n }

// ctSite lists the providers in order of price (the first is cheapest);
// options[i] is added to provider i's block.
func ctSite(extra string, ups []*ctProvider, options ...string) string {
	names := []string{"alpha", "beta", "gamma"}
	var b strings.Builder
	b.WriteString("\tarbstr {\n")
	for i, u := range ups {
		opt := ""
		if i < len(options) {
			opt = options[i]
		}
		fmt.Fprintf(&b, "\t\tprovider %s {\n\t\t\turl %s/v1\n\t\t\tinput_rate %d\n\t\t\toutput_rate %d\n\t\t\tbase_fee %d\n\t\t\t%s\n\t\t}\n",
			names[i], u.URL, 1000*(i+1), 2000*(i+1), i+1, opt)
	}
	b.WriteString("\t\tretry {\n\t\t\tattempts 1\n\t\t}\n\t\ttimeout 5s\n\t\tfirst_event_timeout 1s\n\t\tstream_idle_timeout 300ms\n")
	b.WriteString(extra)
	b.WriteString("\t}\n")
	return b.String()
}

const ctStreamBody = `{"model":"standin","stream":true,"messages":[{"role":"user","content":"count to twenty"}]}`

// ctStream is a streamed answer as a client reads it.
type ctStream struct {
	ids, models  map[string]bool
	created      map[int64]bool
	roles        int
	content      string
	finish       string
	comments     []string
	errorEvent   map[string]any
	done         bool
	readErr      error
	trailer      http.Header
	usageChunk   map[string]int
	eventsAfterX int // data events after a continued comment (must be only [DONE])
}

func ctRead(t *testing.T, resp *http.Response) *ctStream {
	t.Helper()
	s := &ctStream{ids: map[string]bool{}, models: map[string]bool{}, created: map[int64]bool{}}
	r := bufio.NewReader(resp.Body)
	sawContinued := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if err != io.EOF {
				s.readErr = err
			}
			break
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case strings.HasPrefix(line, ":"):
			s.comments = append(s.comments, line)
			if strings.HasPrefix(line, ": x-arbstr-continued:") {
				sawContinued = true
			}
		case strings.HasPrefix(line, "data: "):
			data := strings.TrimPrefix(line, "data: ")
			if data == "[DONE]" {
				s.done = true
				continue
			}
			if sawContinued {
				s.eventsAfterX++
			}
			var chunk struct {
				ID      string         `json:"id"`
				Model   string         `json:"model"`
				Created int64          `json:"created"`
				Error   map[string]any `json:"error"`
				Choices []struct {
					Delta struct {
						Role    string  `json:"role"`
						Content *string `json:"content"`
					} `json:"delta"`
					FinishReason *string `json:"finish_reason"`
				} `json:"choices"`
				Usage map[string]int `json:"usage"`
			}
			if err := json.Unmarshal([]byte(data), &chunk); err != nil {
				t.Fatalf("event is not JSON: %v: %s", err, data)
			}
			if chunk.Error != nil {
				s.errorEvent = chunk.Error
				continue
			}
			if chunk.Usage != nil {
				s.usageChunk = chunk.Usage
			}
			if len(chunk.Choices) == 0 {
				continue
			}
			s.ids[chunk.ID], s.models[chunk.Model], s.created[chunk.Created] = true, true, true
			for _, c := range chunk.Choices {
				if c.Delta.Role != "" {
					s.roles++
				}
				if c.Delta.Content != nil {
					s.content += *c.Delta.Content
				}
				if c.FinishReason != nil {
					s.finish = *c.FinishReason
				}
			}
		}
	}
	s.trailer = resp.Trailer
	return s
}

// assertOneAnswer checks that the client saw one complete answer.
func (s *ctStream) assertOneAnswer(t *testing.T, want string) {
	t.Helper()
	if s.errorEvent != nil || s.readErr != nil {
		t.Fatalf("stream failed: error event %v, read error %v", s.errorEvent, s.readErr)
	}
	if s.content != want {
		t.Errorf("content:\n got %q\nwant %q", s.content, want)
	}
	if len(s.ids) != 1 || len(s.models) != 1 || len(s.created) != 1 {
		t.Errorf("want one id, model and created; got %v %v %v", s.ids, s.models, s.created)
	}
	if s.roles != 1 {
		t.Errorf("role deltas: got %d, want 1", s.roles)
	}
	if s.finish != "stop" || !s.done {
		t.Errorf("finish_reason %q, [DONE] %v; want stop and [DONE]", s.finish, s.done)
	}
}

func (s *ctStream) hasComment(prefix string) int {
	n := 0
	for _, c := range s.comments {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func words(text string, n int) string {
	f := strings.Fields(text)
	return strings.Join(f[:n], " ")
}

// lastMessage is the last entry of a request body's messages.
func lastMessage(t *testing.T, body string) map[string]any {
	t.Helper()
	var req struct {
		Messages []map[string]any `json:"messages"`
	}
	if err := json.Unmarshal([]byte(body), &req); err != nil {
		t.Fatalf("provider got a body that is not JSON: %v: %s", err, body)
	}
	return req.Messages[len(req.Messages)-1]
}

func continuationsMetric(provider, outcome string) float64 {
	if metricsSingleton == nil {
		return 0
	}
	var m dto.Metric
	if err := metricsSingleton.continuations.WithLabelValues(provider, outcome).Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

func TestContinuationFinishesCutStream(t *testing.T) {
	alpha := ctStandin(t, &standin.Provider{Name: "alpha", Fault: "cut", FaultAfter: ctIntPtr(10)})
	beta := ctStandin(t, &standin.Provider{Name: "beta", Prefill: "accept"})
	logPath := filepath.Join(t.TempDir(), "access.log")
	tc := startCaddy(t, fmt.Sprintf("log {\n\toutput file %s\n\tformat json\n}\n", logPath)+
		ctSite("", []*ctProvider{alpha, beta}, "", "prefill"))
	okBefore := continuationsMetric("beta", "ok")

	resp := tc.Post("/v1/chat/completions", ctStreamBody)
	if resp.StatusCode != 200 || resp.Header.Get(headerProvider) != "alpha" {
		t.Fatalf("status %d provider %q", resp.StatusCode, resp.Header.Get(headerProvider))
	}
	s := ctRead(t, resp)
	s.assertOneAnswer(t, ctAnswer)
	if !s.ids["chatcmpl-standin-1"] {
		t.Errorf("chunks should carry the first stream's id; got %v", s.ids)
	}
	if n := s.hasComment(": x-arbstr-continued: beta"); n != 1 {
		t.Errorf("continued comments: got %d, want 1 (%v)", n, s.comments)
	}
	// Both calls at their own rates: alpha's estimated (3 in, 12 out:
	// 1.027 sats), beta's reported (15 in, 10 out: 2.07 sats).
	if s.hasComment(": x-arbstr-cost-sats: 3.10") != 1 {
		t.Errorf("want the cost of both calls, 3.10 sats: %v", s.comments)
	}
	if s.eventsAfterX != 0 {
		t.Errorf("%d data events after the continued comment; only [DONE] may follow", s.eventsAfterX)
	}
	if got := s.trailer.Get(headerContinuations); got != "1" {
		t.Errorf("trailer %s = %q, want 1", headerContinuations, got)
	}
	reqs := beta.requests()
	if len(reqs) != 1 {
		t.Fatalf("beta got %d requests, want 1", len(reqs))
	}
	last := lastMessage(t, reqs[0])
	if last["role"] != "assistant" || last["content"] != words(ctAnswer, 10) {
		t.Errorf("continuation's last message: %v; want the assistant's first 10 words", last)
	}
	if got := continuationsMetric("beta", "ok") - okBefore; got != 1 {
		t.Errorf("continuations_total{beta,ok} grew by %v, want 1", got)
	}
	e := hlAccessEntry(t, logPath, resp.Header.Get(headerRequestID))
	for k, v := range map[string]any{"arbstr_outcome": "continued", "arbstr_continuations": 1.0, "arbstr_provider": "alpha",
		"arbstr_tokens_in": 18.0, "arbstr_tokens_out": 22.0, "arbstr_retries": "1/alpha"} {
		if e[k] != v {
			t.Errorf("access log %s = %#v, want %#v", k, e[k], v)
		}
	}
}

func TestContinuationFinishesStalledStream(t *testing.T) {
	alpha := ctStandin(t, &standin.Provider{Name: "alpha", Fault: "stall", FaultAfter: ctIntPtr(10)})
	beta := ctStandin(t, &standin.Provider{Name: "beta", Prefill: "accept"})
	tc := startCaddy(t, ctSite("", []*ctProvider{alpha, beta}, "", "prefill"))

	// The client asks for usage itself: the chunk it gets sums both calls.
	body := `{"model":"standin","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"count to twenty"}]}`
	s := ctRead(t, tc.Post("/v1/chat/completions", body))
	s.assertOneAnswer(t, ctAnswer)
	if s.hasComment(": x-arbstr-continued: beta") != 1 {
		t.Errorf("no continued comment: %v", s.comments)
	}
	// alpha's 10 words are estimated (it reported no usage), beta reported 10.
	if s.usageChunk == nil || s.usageChunk["completion_tokens"] < 12 {
		t.Errorf("usage chunk %v: want both calls' completion tokens summed", s.usageChunk)
	}
}

func TestContinuationRefusedEndsHonestlyNamingTheCut(t *testing.T) {
	alpha := ctStandin(t, &standin.Provider{Name: "alpha", Fault: "cut", FaultAfter: ctIntPtr(10)})
	beta := ctStandin(t, &standin.Provider{Name: "beta", Prefill: "refuse"})
	tc := startCaddy(t, ctSite("", []*ctProvider{alpha, beta}, "", "prefill"))
	refusedBefore := continuationsMetric("beta", "refused")

	s := ctRead(t, tc.Post("/v1/chat/completions", ctStreamBody))
	if s.done {
		t.Error("a stream whose continuation was refused must not end with [DONE]")
	}
	if s.errorEvent == nil || s.errorEvent["code"] != "stream_broken" {
		t.Fatalf("want an error event with code stream_broken, got %v", s.errorEvent)
	}
	if msg, _ := s.errorEvent["message"].(string); !strings.Contains(msg, "stream broke") || strings.Contains(msg, "prefill") {
		t.Errorf("the error must name the cut, not the refusal: %q", msg)
	}
	if s.content != words(ctAnswer, 10) {
		t.Errorf("content %q, want the first 10 words only", s.content)
	}
	if len(beta.requests()) != 1 {
		t.Errorf("beta got %d requests, want 1", len(beta.requests()))
	}
	if got := continuationsMetric("beta", "refused") - refusedBefore; got != 1 {
		t.Errorf("continuations_total{beta,refused} grew by %v, want 1", got)
	}
}

func TestContinuationSecondTargetAfterRefusal(t *testing.T) {
	alpha := ctStandin(t, &standin.Provider{Name: "alpha", Fault: "cut", FaultAfter: ctIntPtr(10)})
	beta := ctStandin(t, &standin.Provider{Name: "beta", Prefill: "refuse"})
	gamma := ctStandin(t, &standin.Provider{Name: "gamma", Prefill: "accept"})
	tc := startCaddy(t, ctSite("", []*ctProvider{alpha, beta, gamma}, "", "prefill", "prefill"))

	s := ctRead(t, tc.Post("/v1/chat/completions", ctStreamBody))
	s.assertOneAnswer(t, ctAnswer)
	if s.hasComment(": x-arbstr-continued: gamma") != 1 || s.hasComment(": x-arbstr-continued: beta") != 0 {
		t.Errorf("comments %v: want gamma continued, beta not", s.comments)
	}
}

func TestContinuationChainedWhenTheContinuationBreaks(t *testing.T) {
	alpha := ctStandin(t, &standin.Provider{Name: "alpha", Fault: "cut", FaultAfter: ctIntPtr(5)})
	beta := ctStandin(t, &standin.Provider{Name: "beta", Prefill: "accept", Fault: "cut", FaultAfter: ctIntPtr(5)})
	gamma := ctStandin(t, &standin.Provider{Name: "gamma", Prefill: "accept"})
	tc := startCaddy(t, ctSite("", []*ctProvider{alpha, beta, gamma}, "", "prefill", "prefill"))

	s := ctRead(t, tc.Post("/v1/chat/completions", ctStreamBody))
	s.assertOneAnswer(t, ctAnswer)
	if s.hasComment(": x-arbstr-continued: beta") != 1 || s.hasComment(": x-arbstr-continued: gamma") != 1 {
		t.Errorf("comments %v: want one for beta and one for gamma", s.comments)
	}
	if got := s.trailer.Get(headerContinuations); got != "2" {
		t.Errorf("trailer %s = %q, want 2", headerContinuations, got)
	}
	if last := lastMessage(t, gamma.requests()[0]); last["content"] != words(ctAnswer, 10) {
		t.Errorf("gamma was given %q, want the first 10 words", last["content"])
	}
}

func TestContinuationsLimit(t *testing.T) {
	alpha := ctStandin(t, &standin.Provider{Name: "alpha", Fault: "cut", FaultAfter: ctIntPtr(5)})
	beta := ctStandin(t, &standin.Provider{Name: "beta", Prefill: "accept", Fault: "cut", FaultAfter: ctIntPtr(5)})
	gamma := ctStandin(t, &standin.Provider{Name: "gamma", Prefill: "accept"})
	tc := startCaddy(t, ctSite("\t\tcontinuations 1\n", []*ctProvider{alpha, beta, gamma}, "", "prefill", "prefill"))

	s := ctRead(t, tc.Post("/v1/chat/completions", ctStreamBody))
	if s.done || s.errorEvent == nil || s.errorEvent["code"] != "stream_broken" {
		t.Fatalf("with continuations 1 a second break must end honestly; done %v, error %v", s.done, s.errorEvent)
	}
	if len(gamma.requests()) != 0 {
		t.Errorf("gamma got %d requests past the limit", len(gamma.requests()))
	}
}

func TestNoContinuationWithoutPrefill(t *testing.T) {
	alpha := ctStandin(t, &standin.Provider{Name: "alpha", Fault: "cut", FaultAfter: ctIntPtr(10)})
	beta := ctStandin(t, &standin.Provider{Name: "beta", Prefill: "accept"})
	tc := startCaddy(t, ctSite("", []*ctProvider{alpha, beta}))

	s := ctRead(t, tc.Post("/v1/chat/completions", ctStreamBody))
	if s.done || s.errorEvent == nil || s.errorEvent["code"] != "stream_broken" {
		t.Fatalf("want the honest ending; done %v error %v", s.done, s.errorEvent)
	}
	if len(beta.requests()) != 0 {
		t.Errorf("beta (no prefill) got %d requests", len(beta.requests()))
	}
}

func TestNoContinuationOfToolCalls(t *testing.T) {
	alpha := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) {
		stHead(w)
		_ = stSend(w, `{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}`)
		_ = stSend(w, `{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}`)
		stCut(t, w, false)
	})
	beta := ctStandin(t, &standin.Provider{Name: "beta", Prefill: "accept"})
	tc := startCaddy(t, ctSite("", []*ctProvider{{Server: alpha.Server}, beta}, "", "prefill"))

	s := ctRead(t, tc.Post("/v1/chat/completions", ctStreamBody))
	if s.done || s.errorEvent == nil || s.errorEvent["code"] != "stream_broken" {
		t.Fatalf("a tool-call stream must end honestly; done %v error %v", s.done, s.errorEvent)
	}
	if len(beta.requests()) != 0 {
		t.Errorf("beta got %d requests: tool-call streams are not continued", len(beta.requests()))
	}
}

func TestContextLengthRefusalFallsOver(t *testing.T) {
	alpha := ctStandin(t, &standin.Provider{Name: "alpha", Context: 3})
	beta := ctStandin(t, &standin.Provider{Name: "beta"})
	tc := startCaddy(t, ctSite("", []*ctProvider{alpha, beta}))

	body := `{"model":"standin","messages":[{"role":"user","content":"a prompt longer than three tokens"}]}`
	resp := tc.Post("/v1/chat/completions", body)
	if resp.StatusCode != 200 || resp.Header.Get(headerProvider) != "beta" {
		t.Fatalf("status %d provider %q; want 200 from beta", resp.StatusCode, resp.Header.Get(headerProvider))
	}
	if got := resp.Header.Get(headerRetries); got != "1/alpha" {
		t.Errorf("%s = %q, want 1/alpha", headerRetries, got)
	}
	if len(alpha.requests()) != 1 {
		t.Errorf("alpha got %d requests, want 1 (never retried)", len(alpha.requests()))
	}
}

func TestContextLengthRefusalRelayedWhenNoneFits(t *testing.T) {
	alpha := ctStandin(t, &standin.Provider{Name: "alpha", Context: 3})
	beta := ctStandin(t, &standin.Provider{Name: "beta", Context: 4})
	tc := startCaddy(t, ctSite("", []*ctProvider{alpha, beta}))

	body := `{"model":"standin","messages":[{"role":"user","content":"a prompt longer than four tokens"}]}`
	resp := tc.Post("/v1/chat/completions", body)
	var e struct {
		Error struct{ Code, Message string }
	}
	decodeJSON(t, resp, &e)
	if resp.StatusCode != 400 || e.Error.Code != "context_length_exceeded" || !strings.Contains(e.Error.Message, "3 tokens") {
		t.Errorf("status %d %+v; want alpha's (the first) context_length_exceeded relayed", resp.StatusCode, e.Error)
	}
	if len(alpha.requests()) != 1 || len(beta.requests()) != 1 {
		t.Errorf("requests alpha %d beta %d, want 1 each", len(alpha.requests()), len(beta.requests()))
	}
}

func TestContextWindowSkipsSmallProvider(t *testing.T) {
	alpha := ctStandin(t, &standin.Provider{Name: "alpha"})
	beta := ctStandin(t, &standin.Provider{Name: "beta"})
	tc := startCaddy(t, ctSite("", []*ctProvider{alpha, beta}, "context 50"))

	body := `{"model":"standin","max_tokens":40,"messages":[{"role":"user","content":"` + strings.Repeat("word ", 10) + `"}]}`
	resp := tc.Post("/v1/chat/completions", body)
	if resp.StatusCode != 200 || resp.Header.Get(headerProvider) != "beta" {
		t.Fatalf("status %d provider %q; want beta", resp.StatusCode, resp.Header.Get(headerProvider))
	}
	if len(alpha.requests()) != 0 {
		t.Errorf("alpha (context 50) saw %d requests of ~%d tokens", len(alpha.requests()), len(body)/3+40)
	}
	// Small enough: alpha, the cheapest, serves it.
	resp = tc.Post("/v1/chat/completions", `{"model":"standin","messages":[{"role":"user","content":"hi"}]}`)
	if resp.Header.Get(headerProvider) != "alpha" {
		t.Errorf("a small request went to %q, want alpha", resp.Header.Get(headerProvider))
	}
}

func TestContextWindowNoneFits(t *testing.T) {
	alpha := ctStandin(t, &standin.Provider{Name: "alpha"})
	tc := startCaddy(t, ctSite("", []*ctProvider{alpha}, "context 10"))
	resp := tc.Post("/v1/chat/completions", `{"model":"standin","messages":[{"role":"user","content":"`+strings.Repeat("x", 100)+`"}]}`)
	var e struct {
		Error struct{ Code, Message string }
	}
	decodeJSON(t, resp, &e)
	if resp.StatusCode != 400 || e.Error.Code != "context_length_exceeded" {
		t.Errorf("status %d %+v; want 400 context_length_exceeded", resp.StatusCode, e.Error)
	}
	if len(alpha.requests()) != 0 {
		t.Errorf("alpha saw %d requests", len(alpha.requests()))
	}
}

func TestIsContextLengthError(t *testing.T) {
	for _, tt := range []struct {
		status int
		body   string
		want   bool
	}{
		{400, `{"error":{"code":"context_length_exceeded","message":"x"}}`, true},
		{400, `{"error":{"message":"This model's maximum context length is 8192 tokens."}}`, true},
		{400, `{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}`, true},
		{400, `{"error":{"message":"The input token count exceeds the context window"}}`, true},
		{400, `{"error":{"message":"Too many tokens in request"}}`, true},
		{400, `{"error":{"message":"invalid value for temperature"}}`, false},
		{401, `{"error":{"code":"context_length_exceeded"}}`, false},
	} {
		if got := isContextLengthError(tt.status, []byte(tt.body)); got != tt.want {
			t.Errorf("isContextLengthError(%d, %s) = %v, want %v", tt.status, tt.body, got, tt.want)
		}
	}
}

func TestContinuationOptionsCaddyfile(t *testing.T) {
	var h Handler
	d := caddyfile.NewTestDispenser(`arbstr {
		provider a {
			url http://127.0.0.1:1/v1
			prefill
			context 128000
		}
		continuations 0
	}`)
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if p := h.Providers[0]; !p.Prefill || p.Context != 128000 {
		t.Errorf("provider %+v: want prefill and context 128000", p)
	}
	if h.Continuations == nil || *h.Continuations != 0 {
		t.Errorf("continuations %v, want 0", h.Continuations)
	}
	for _, bad := range []string{
		"arbstr {\n provider a {\n url http://x/v1\n prefill yes\n }\n}",
		"arbstr {\n provider a {\n url http://x/v1\n context many\n }\n}",
		"arbstr {\n provider a {\n url http://x/v1\n }\n continuations -1\n}",
	} {
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	var def Handler
	def.applyDefaults()
	if def.continuations != 2 {
		t.Errorf("default continuations %d, want 2", def.continuations)
	}
}

func TestContinuationAfterInBandErrorMidStream(t *testing.T) {
	alpha := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) {
		stHead(w)
		_ = stSend(w, `{"id":"c1","object":"chat.completion.chunk","created":7,"model":"m-alpha","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`)
		for _, w2 := range strings.Fields(words(ctAnswer, 10)) {
			prefix := " "
			if w2 == "one" {
				prefix = ""
			}
			_ = stSend(w, fmt.Sprintf(`{"id":"c1","object":"chat.completion.chunk","created":7,"model":"m-alpha","choices":[{"index":0,"delta":{"content":%q},"finish_reason":null}]}`, prefix+w2))
		}
		_ = stSend(w, stInBand)
	})
	beta := ctStandin(t, &standin.Provider{Name: "beta", Prefill: "accept"})
	tc := startCaddy(t, ctSite("", []*ctProvider{{Server: alpha.Server}, beta}, "", "prefill"))

	s := ctRead(t, tc.Post("/v1/chat/completions", ctStreamBody))
	s.assertOneAnswer(t, ctAnswer)
	if !s.ids["c1"] || !s.models["m-alpha"] || !s.created[7] {
		t.Errorf("want alpha's id, model and created on every chunk; got %v %v %v", s.ids, s.models, s.created)
	}
}

func TestContinuationBodyKeepsTheClientsPrefill(t *testing.T) {
	for _, tt := range []struct{ body, wantLast string }{
		{`{"model":"m","messages":[{"role":"user","content":"hi"}]}`, `,{"role":"assistant","content":"So <far>"}]}`},
		{`{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"Answer: "}]}`, `},{"role":"assistant","content":"Answer: So <far>"}]}`},
	} {
		facts, apiErr := inspectRequest([]byte(tt.body))
		if apiErr != nil {
			t.Fatal(apiErr)
		}
		ex := &exchange{body: []byte(tt.body), facts: facts, cont: &continuation{text: []byte("So <far>")}}
		out, apiErr := continuationBody(ex, &provider{name: "p"})
		if apiErr != nil {
			t.Fatal(apiErr)
		}
		if !strings.HasSuffix(string(out), tt.wantLast) {
			t.Errorf("%s: continuation body %s, want it to end %s", tt.body, out, tt.wantLast)
		}
		_ = lastMessage(t, string(out)) // valid JSON
	}
}
