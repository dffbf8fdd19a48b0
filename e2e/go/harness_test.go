package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// e2eArb is the Caddy that TestMain runs for every test of the package.
var e2eArb *arbstrProcess

// e2eCapture is the recording upstream behind the /capture/ route.
var e2eCapture *captureUpstream

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	bin := os.Getenv("ARBSTR_E2E_CADDY")
	if bin == "" {
		fmt.Fprintln(os.Stderr, "ARBSTR_E2E_CADDY must name a caddy binary built with arbstr (e2e/run.sh builds one)")
		return 2
	}
	e2eCapture = newCaptureUpstream()
	defer e2eCapture.server.Close()
	port := e2eCapture.server.Listener.Addr().(*net.TCPAddr).Port
	a, err := startArbstr(bin, map[string]int{"capture": port})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer a.stop()
	e2eArb = a
	return m.Run()
}

var portPattern = regexp.MustCompile(`\{\{port\.([a-z0-9_]+)\}\}`)

// arbstrProcess is the built Caddy running e2e/Caddyfile.tmpl with every
// {{port.NAME}} filled in with a free port of 127.0.0.1.
type arbstrProcess struct {
	ports map[string]int
	dir   string
	cmd   *exec.Cmd
	done  chan struct{}
}

func startArbstr(bin string, fixed map[string]int) (*arbstrProcess, error) {
	tmpl, err := os.ReadFile(filepath.Join("..", "Caddyfile.tmpl"))
	if err != nil {
		return nil, err
	}
	ports := map[string]int{}
	var names []string
	for _, m := range portPattern.FindAllSubmatch(tmpl, -1) {
		name := string(m[1])
		if _, ok := fixed[name]; ok {
			ports[name] = fixed[name]
		} else if _, seen := ports[name]; !seen {
			ports[name] = 0
			names = append(names, name)
		}
	}
	free, err := freePorts(len(names))
	if err != nil {
		return nil, err
	}
	for i, name := range names {
		ports[name] = free[i]
	}
	config := portPattern.ReplaceAllFunc(tmpl, func(b []byte) []byte {
		return []byte(strconv.Itoa(ports[string(portPattern.FindSubmatch(b)[1])]))
	})
	dir, err := os.MkdirTemp("", "arbstr-e2e-go-")
	if err != nil {
		return nil, err
	}
	configPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(configPath, config, 0o644); err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "caddy.log"))
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "run", "--config", configPath, "--adapter", "caddyfile")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Caddy's data and config dirs go to the temp dir, not the user's home.
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	a := &arbstrProcess{ports: ports, dir: dir, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(a.done) }()
	if err := a.waitReady(15 * time.Second); err != nil {
		a.stop()
		return nil, err
	}
	return a, nil
}

// freePorts returns n free ports of 127.0.0.1, all held open until all are
// known so that none is handed out twice.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (a *arbstrProcess) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-a.done:
			return fmt.Errorf("caddy exited before serving:\n%s", a.log())
		default:
		}
		resp, err := http.Get(a.baseURL("healthy") + "/models")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("caddy did not serve within %s; log:\n%s", limit, a.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (a *arbstrProcess) log() string {
	b, _ := os.ReadFile(filepath.Join(a.dir, "caddy.log"))
	return string(b)
}

func (a *arbstrProcess) stop() {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(5 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
	if os.Getenv("ARBSTR_E2E_KEEP") != "" {
		fmt.Println("# caddy config and log kept in", a.dir)
		return
	}
	_ = os.RemoveAll(a.dir)
}

// baseURL is the OpenAI base URL of a router scenario.
func (a *arbstrProcess) baseURL(scenario string) string {
	return fmt.Sprintf("http://127.0.0.1:%d/%s/v1", a.ports["router"], scenario)
}

// client is an SDK client for a scenario. Retries are off unless an option
// turns them on, so that a test sees arbstr's own answer.
func (a *arbstrProcess) client(scenario string, opts ...option.RequestOption) *openai.Client {
	base := []option.RequestOption{
		option.WithBaseURL(a.baseURL(scenario) + "/"),
		option.WithAPIKey("sk-e2e-client-key"),
		option.WithMaxRetries(0),
	}
	c := openai.NewClient(append(base, opts...)...)
	return &c
}

func (a *arbstrProcess) standinURL(t *testing.T, name string) string {
	t.Helper()
	port, ok := a.ports[name]
	if !ok {
		t.Fatalf("no stand-in site %s in Caddyfile.tmpl", name)
	}
	return fmt.Sprintf("http://127.0.0.1:%d/v1/standin/requests", port)
}

// resetCalls zeroes the stand-ins' request counters (and their fail_first).
func (a *arbstrProcess) resetCalls(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		req, _ := http.NewRequest(http.MethodDelete, a.standinURL(t, name), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
}

// callsOf reports how many chat requests each stand-in got since its reset.
func (a *arbstrProcess) callsOf(t *testing.T, names ...string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, name := range names {
		resp, err := http.Get(a.standinURL(t, name))
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Requests int }
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[name] = body.Requests
	}
	return out
}

// post sends a raw chat completion request, for what the SDK hides.
func (a *arbstrProcess) post(t *testing.T, scenario, body string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Post(a.baseURL(scenario)+"/chat/completions", "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// openBreaker makes sure the breaker scenario's circuit was opened just now
// by a failure (502), not a while ago: an older opening could turn half
// open in the middle of a test.
func (a *arbstrProcess) openBreaker(t *testing.T, model string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, _ := a.post(t, "breaker", `{"model":"`+model+`","messages":[{"role":"user","content":"open it"}]}`)
		if resp.StatusCode == http.StatusBadGateway {
			return
		}
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("opening the breaker: got %d", resp.StatusCode)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sdkRecorder is SDK middleware that records each HTTP request the SDK
// makes: the body it sent and the status it got.
type sdkRecorder struct {
	mu       sync.Mutex
	bodies   [][]byte
	statuses []int
}

func (r *sdkRecorder) middleware() option.RequestOption {
	return option.WithMiddleware(func(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
		var body []byte
		if req.GetBody != nil {
			if rc, err := req.GetBody(); err == nil {
				body, _ = io.ReadAll(rc)
				rc.Close()
			}
		}
		resp, err := next(req)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.bodies = append(r.bodies, body)
		if err != nil {
			r.statuses = append(r.statuses, 0)
		} else {
			r.statuses = append(r.statuses, resp.StatusCode)
		}
		return resp, err
	})
}

func (r *sdkRecorder) seen() ([]int, [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.statuses...), append([][]byte(nil), r.bodies...)
}

// capturedRequest is one request the capture upstream got.
type capturedRequest struct {
	header http.Header
	raw    []byte
	body   map[string]any
}

// captureUpstream is a recording OpenAI-compatible provider: it answers a
// tool call when the request has tools, else JSON text.
type captureUpstream struct {
	server   *httptest.Server
	mu       sync.Mutex
	requests []capturedRequest
}

const (
	captureToolArguments = `{"city":"Paris","unit":"c"}`
	captureJSONAnswer    = `{"city":"Paris","temperature_c":21.5}`
)

func newCaptureUpstream() *captureUpstream {
	c := &captureUpstream{}
	c.server = httptest.NewServer(http.HandlerFunc(c.serve))
	return c
}

func (c *captureUpstream) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requests = nil
}

func (c *captureUpstream) got() []capturedRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]capturedRequest(nil), c.requests...)
}

func (c *captureUpstream) serve(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	c.requests = append(c.requests, capturedRequest{header: r.Header.Clone(), raw: raw, body: body})
	c.mu.Unlock()

	_, tools := body["tools"]
	base := map[string]any{"id": "chatcmpl-capture", "created": 1700000000, "model": body["model"]}
	usage := map[string]any{"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}
	toolCall := map[string]any{"id": "call_e2e", "type": "function",
		"function": map[string]any{"name": "get_weather", "arguments": captureToolArguments}}
	finish := "stop"
	if tools {
		finish = "tool_calls"
	}
	with := func(extra map[string]any) map[string]any {
		out := map[string]any{}
		for k, v := range base {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	if stream, _ := body["stream"].(bool); !stream {
		message := map[string]any{"role": "assistant", "content": captureJSONAnswer}
		if tools {
			message = map[string]any{"role": "assistant", "content": nil, "tool_calls": []any{toolCall}}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(with(map[string]any{"object": "chat.completion", "usage": usage,
			"choices": []any{map[string]any{"index": 0, "message": message, "finish_reason": finish}}}))
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	send := func(v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(w, "data: %s\n\n", b)
		w.(http.Flusher).Flush()
	}
	chunk := func(delta map[string]any, finishReason any) {
		send(with(map[string]any{"object": "chat.completion.chunk",
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finishReason}}}))
	}
	if tools {
		chunk(map[string]any{"role": "assistant", "content": nil, "tool_calls": []any{map[string]any{"index": 0, "id": "call_e2e",
			"type": "function", "function": map[string]any{"name": "get_weather", "arguments": ""}}}}, nil)
		for _, part := range []string{captureToolArguments[:10], captureToolArguments[10:]} {
			chunk(map[string]any{"tool_calls": []any{map[string]any{"index": 0, "function": map[string]any{"arguments": part}}}}, nil)
		}
	} else {
		chunk(map[string]any{"role": "assistant", "content": ""}, nil)
		for _, part := range []string{captureJSONAnswer[:12], captureJSONAnswer[12:]} {
			chunk(map[string]any{"content": part}, nil)
		}
	}
	chunk(map[string]any{}, finish)
	if opts, _ := body["stream_options"].(map[string]any); opts["include_usage"] == true {
		send(with(map[string]any{"object": "chat.completion.chunk", "choices": []any{}, "usage": usage}))
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
}

// apiErrorOf returns the SDK's API error in err, or nil.
func apiErrorOf(err error) *openai.Error {
	var apierr *openai.Error
	if errors.As(err, &apierr) {
		return apierr
	}
	return nil
}
