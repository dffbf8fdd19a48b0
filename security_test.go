package arbstr

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Security tests: provider keys never leave arbstr except towards their
// provider, client credentials and hop-by-hop headers never reach a
// provider, provider headers are filtered, oversized bodies are refused
// before being read, provider URLs are checked at load, and redirects are
// never followed.

// Distinctive keys, so that any leak is found by a plain substring search.
const (
	secKeyGood   = "sk-secGOOD-4f9c1e7a2b"
	secKeyPicky  = "sk-secPICKY-8d2e5b1f0c"
	secKeyDown   = "sk-secDOWN-1a7f3c9e4d"
	secKeyEcho   = "sk-secECHO-6b0d2f8a1e"
	secKeySlow   = "sk-secSLOW-3e8a6c0b9f"
	secKeyTrip   = "sk-secTRIP-9c4b7e2d5a"
	secKeyCut    = "sk-secCUT-2f6d0a8c3b"
	secKeyEnv    = "sk-secENV-7a1c5e9b0d"
	secKeyEnvVar = "sk-secENVVAR-0e3b8d6f2c"
)

var secAllKeys = []string{secKeyGood, secKeyPicky, secKeyDown, secKeyEcho, secKeySlow, secKeyTrip, secKeyCut, secKeyEnv, secKeyEnvVar}

// secUpstream is an httptest provider that records what it received.
type secUpstream struct {
	srv     *httptest.Server
	hits    atomic.Int32
	mu      sync.Mutex
	headers []http.Header
	closing chan struct{}
}

func secNewUpstream(t *testing.T, serve func(w http.ResponseWriter, r *http.Request)) *secUpstream {
	t.Helper()
	u := &secUpstream{closing: make(chan struct{})}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		u.mu.Lock()
		u.headers = append(u.headers, r.Header.Clone())
		u.mu.Unlock()
		u.hits.Add(1)
		serve(w, r)
	}))
	t.Cleanup(func() {
		close(u.closing)
		u.srv.Close()
	})
	return u
}

func (u *secUpstream) url() string { return u.srv.URL + "/v1" }

func (u *secUpstream) received() []http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]http.Header(nil), u.headers...)
}

// hang holds the request until it is cancelled or the test ends.
func (u *secUpstream) hang(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-u.closing:
	}
}

const secCompletion = `{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`

// secServeOK answers a completion, streamed when the request asks for it.
func secServeOK(w http.ResponseWriter, r *http.Request) {
	if !secWantsStream(r) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, secCompletion)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	for _, ev := range []string{
		`{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}`,
		`{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`,
		`[DONE]`,
	} {
		fmt.Fprintf(w, "data: %s\n\n", ev)
	}
}

// secWantsStream tells a streaming request by the Accept header arbstr
// sets from the body's "stream".
func secWantsStream(r *http.Request) bool {
	return r.Header.Get("Accept") == "text/event-stream"
}

func secStatus(status int, body string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// secCaddy is an in-process Caddy whose whole log, at DEBUG level, goes to
// a file.
type secCaddy struct {
	*testCaddy
	logPath string
}

// secStart runs siteBody like startCaddy, with Caddy's log (default logger
// at DEBUG, access log included) written to a file of the test.
func secStart(t *testing.T, siteBody string) *secCaddy {
	t.Helper()
	tc := newTestCaddy(t)
	sc := &secCaddy{testCaddy: tc, logPath: filepath.Join(t.TempDir(), "caddy.log")}
	caddyfile := fmt.Sprintf(`{
	admin %s
	persist_config off
	auto_https off
	skip_install_trust
	grace_period 1s
	log {
		output file %s
		format json
		level DEBUG
	}
}
http://127.0.0.1:%d {
	log
%s
}
`, tc.adminAddr, sc.logPath, tc.Port, siteBody)
	if err := caddy.Load(adaptCaddyfile(t, caddyfile), true); err != nil {
		t.Fatalf("loading config: %v\n%s", err, caddyfile)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	tc.waitReady()
	return sc
}

// secDo sends a request and returns the response with its body read whole
// (a read error, as from an aborted stream, is returned beside it).
func secDo(t *testing.T, req *http.Request) (*http.Response, []byte, error) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func secChatRequest(t *testing.T, url, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	return req
}

// secNoKey fails when data holds any provider key, or a long piece of one.
func secNoKey(t *testing.T, where string, data []byte) {
	t.Helper()
	for _, k := range secAllKeys {
		for _, piece := range []string{k, k[3:13], k[len(k)-10:]} {
			if bytes.Contains(data, []byte(piece)) {
				t.Errorf("%s contains provider key material %q", where, piece)
			}
		}
	}
}

func secGet(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// TestSecurityKeysNeverLeak drives every kind of answer (success, stream,
// relayed 4xx, 502, 504, 503, broken stream, arbstr's own 4xx) and looks
// for the provider keys in everything a client, an operator or a scraper
// can see: response heads and bodies, the admin API, metrics and the log.
func TestSecurityKeysNeverLeak(t *testing.T) {
	good := secNewUpstream(t, secServeOK)
	picky := secNewUpstream(t, secStatus(400, `{"error":{"message":"bad temperature","type":"invalid_request_error","param":"temperature","code":null}}`))
	down := secNewUpstream(t, secStatus(500, `{"error":{"message":"boom","type":"server_error"}}`))
	// Like some providers, echo the key in an auth error: arbstr must not
	// relay an auth failure's body.
	echo := secNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		secStatus(401, `{"error":{"message":"Incorrect API key provided: `+strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")+`","type":"invalid_request_error"}}`)(w, r)
	})
	var slow *secUpstream
	slow = secNewUpstream(t, func(w http.ResponseWriter, r *http.Request) { slow.hang(r) })
	trip := secNewUpstream(t, secStatus(503, `{"error":{"message":"overloaded","type":"server_error"}}`))
	cut := secNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"},\"finish_reason\":null}]}\n\n")
		fmt.Fprint(w, "data: {\"error\":{\"message\":\"upstream fell over\",\"type\":\"server_error\"}}\n\n")
	})
	envUp := secNewUpstream(t, secServeOK)
	envVarUp := secNewUpstream(t, secServeOK)
	t.Setenv("SEC_TEST_PROVIDER_KEY", secKeyEnv)
	t.Setenv(apiKeyEnvName("secenvvar"), secKeyEnvVar)

	prov := func(name, url, key, models string) string {
		keyLine := ""
		if key != "" {
			keyLine = "api_key " + key
		}
		return fmt.Sprintf("\t\tprovider %s {\n\t\t\turl %s\n\t\t\t%s\n\t\t\tmodels %s\n\t\t}\n", name, url, keyLine, models)
	}
	site := "\tarbstr {\n" +
		prov("good", good.url(), secKeyGood, "good-model") +
		prov("picky", picky.url(), secKeyPicky, "picky-model") +
		prov("down", down.url(), secKeyDown, "down-model") +
		prov("echo", echo.url(), secKeyEcho, "down-model") +
		prov("slow", slow.url(), secKeySlow, "slow-model") +
		prov("trip", trip.url(), secKeyTrip, "trip-model") +
		prov("cut", cut.url(), secKeyCut, "cut-model") +
		prov("secenv", envUp.url(), "{env.SEC_TEST_PROVIDER_KEY}", "env-model") +
		prov("secenvvar", envVarUp.url(), "", "envvar-model") +
		"\t\tretry {\n\t\t\tattempts 1\n\t\t\tbackoff 10ms\n\t\t}\n" +
		"\t\tbreaker {\n\t\t\tfailures 1\n\t\t\topen 30s\n\t\t}\n" +
		"\t\ttimeout 1s\n\t\tfirst_event_timeout 800ms\n\t\tstream_idle_timeout 800ms\n\t\tmax_body 4KB\n\t}\n"
	sc := secStart(t, site)

	chat := func(model string, stream bool) string {
		return fmt.Sprintf(`{"model":%q,"stream":%v,"messages":[{"role":"user","content":"hello"}]}`, model, stream)
	}
	cases := []struct {
		name   string
		body   string
		status int
	}{
		{"success", chat("good-model", false), 200},
		{"stream", chat("good-model", true), 200},
		{"env placeholder key", chat("env-model", false), 200},
		{"ARBSTR_<NAME>_API_KEY", chat("envvar-model", true), 200},
		{"relayed 400", chat("picky-model", false), 400},
		{"all failed 502", chat("down-model", false), 502},
		{"deadline 504", chat("slow-model", false), 504},
		{"breaker opens 502", chat("trip-model", false), 502},
		{"circuit open 503", chat("trip-model", false), 503},
		{"broken stream", chat("cut-model", true), 200},
		{"unknown model 404", chat("nobody-serves-this", false), 404},
		{"bad JSON 400", `{"model":`, 400},
		{"too large 413", `{"model":"good-model","messages":[{"role":"user","content":"` + strings.Repeat("x", 5000) + `"}]}`, 413},
	}
	for _, c := range cases {
		resp, body, _ := secDo(t, secChatRequest(t, sc.URL, c.body))
		if resp.StatusCode != c.status {
			t.Errorf("%s: status %d, want %d; body %s", c.name, resp.StatusCode, c.status, body)
		}
		var head bytes.Buffer
		_ = resp.Header.Write(&head)
		_ = resp.Trailer.Write(&head)
		secNoKey(t, c.name+": response headers", head.Bytes())
		secNoKey(t, c.name+": response body", body)
	}
	// The key must have reached each provider, or the test proves nothing.
	for key, u := range map[string]*secUpstream{secKeyGood: good, secKeyEcho: echo, secKeyEnv: envUp, secKeyEnvVar: envVarUp, secKeyCut: cut} {
		hs := u.received()
		if len(hs) == 0 || hs[0].Get("Authorization") != "Bearer "+key {
			t.Errorf("provider with key %s did not receive it: %v", key, hs)
		}
	}

	status, models := secGet(t, sc.URL+"/v1/models")
	if status != 200 {
		t.Errorf("GET /v1/models: %d", status)
	}
	secNoKey(t, "GET /v1/models", models)

	status, admin := secGet(t, sc.Admin+adminProvidersPath)
	if status != 200 || !bytes.Contains(admin, []byte(`"good"`)) {
		t.Errorf("GET %s: %d %s", adminProvidersPath, status, admin)
	}
	secNoKey(t, "admin "+adminProvidersPath, admin)

	status, metrics := secGet(t, sc.Admin+"/metrics")
	if status != 200 || !bytes.Contains(metrics, []byte("caddy_arbstr_requests_total")) {
		t.Errorf("GET /metrics: %d, no caddy_arbstr_requests_total", status)
	}
	secNoKey(t, "metrics", metrics)

	// Access log entries are written after each response; wait for all.
	var logData []byte
	deadline := time.Now().Add(3 * time.Second)
	for {
		logData, _ = os.ReadFile(sc.logPath)
		if bytes.Count(logData, []byte(`"arbstr_request_id"`)) >= len(cases) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := bytes.Count(logData, []byte(`"arbstr_request_id"`)); n < len(cases) {
		t.Fatalf("the DEBUG log holds %d access entries with arbstr fields, want %d:\n%s", n, len(cases), logData)
	}
	if !bytes.Contains(logData, []byte(`"level":"debug"`)) {
		t.Errorf("the log has no DEBUG entries: the test does not check what it claims")
	}
	secNoKey(t, "Caddy's DEBUG log", logData)
}

// secAllowedUpstreamHeaders is everything a provider may receive: what
// SPEC §5 lists, a User-Agent, and what Go's transport adds itself.
var secAllowedUpstreamHeaders = map[string]bool{
	"Authorization": true, "Content-Type": true, "Accept": true, "Idempotency-Key": true,
	"User-Agent": true, "Content-Length": true, "Accept-Encoding": true,
}

// TestSecurityClientHeadersNotForwarded sends, over a raw connection so
// that nothing is dropped on the way, every header that must not reach a
// provider: client credentials, cookies, hop-by-hop and forwarding headers.
func TestSecurityClientHeadersNotForwarded(t *testing.T) {
	up := secNewUpstream(t, secServeOK)
	tc := startCaddy(t, "\tarbstr {\n\t\tprovider p {\n\t\t\turl "+up.url()+"\n\t\t\tapi_key "+secKeyGood+"\n\t\t}\n\t\ttimeout 2s\n\t}\n")
	hostile := []string{
		"Authorization: Bearer client-secret-token",
		"Cookie: session=client-cookie-value",
		"Proxy-Authorization: Basic Y2xpZW50OnByb3h5",
		"Connection: keep-alive, X-Sec-Hop",
		"X-Sec-Hop: named-by-connection",
		"Keep-Alive: timeout=5",
		"TE: trailers",
		"Upgrade: sec-proto/1",
		"Proxy-Connection: keep-alive",
		"X-Forwarded-For: 203.0.113.9",
		"X-Forwarded-Host: evil.example",
		"X-Forwarded-Proto: https",
		"Forwarded: for=203.0.113.9",
		"X-Real-IP: 203.0.113.9",
		"X-Api-Key: client-api-key",
		"OpenAI-Organization: org-client",
	}
	for _, stream := range []bool{false, true} {
		body := fmt.Sprintf(`{"model":"m","stream":%v,"messages":[{"role":"user","content":"hi"}]}`, stream)
		status, resp := secRawRequest(t, tc.Port, "POST", "/v1/chat/completions", body, hostile)
		if status != 200 {
			t.Fatalf("stream=%v: status %d: %s", stream, status, resp)
		}
	}
	got := up.received()
	if len(got) != 2 {
		t.Fatalf("the provider received %d requests, want 2", len(got))
	}
	for i, h := range got {
		if a := h.Get("Authorization"); a != "Bearer "+secKeyGood {
			t.Errorf("request %d: Authorization %q, want the provider key", i, a)
		}
		var extra []string
		for name := range h {
			if !secAllowedUpstreamHeaders[name] {
				extra = append(extra, name+": "+strings.Join(h[name], ", "))
			}
		}
		sort.Strings(extra)
		if len(extra) > 0 {
			t.Errorf("request %d: the provider received headers beyond the allowed set: %q", i, extra)
		}
		var all bytes.Buffer
		_ = h.Write(&all)
		for _, leak := range []string{"client-secret-token", "client-cookie-value", "Y2xpZW50OnByb3h5", "203.0.113.9", "evil.example", "client-api-key", "org-client"} {
			if bytes.Contains(all.Bytes(), []byte(leak)) {
				t.Errorf("request %d: the provider received the client's %q", i, leak)
			}
		}
	}
}

// secRawRequest writes an HTTP/1.1 request by hand and returns the status
// and body of the answer.
func secRawRequest(t *testing.T, port int, method, path, body string, headers []string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	var req strings.Builder
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", method, path, port, len(body))
	for _, h := range headers {
		req.WriteString(h + "\r\n")
	}
	req.WriteString("\r\n" + body)
	if _, err := io.WriteString(conn, req.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// secSafeResponseHeaders is what a client may see on a chat answer: the
// content headers, Caddy's own, and arbstr's.
var secSafeResponseHeaders = map[string]bool{
	"Content-Type": true, "Content-Length": true, "Date": true, "Server": true,
	"Cache-Control": true, "X-Accel-Buffering": true, "Retry-After": true, "X-Should-Retry": true,
	"Trailer": true, "Vary": true, "X-Content-Type-Options": true,
}

// TestSecurityUpstreamHeadersFiltered: a provider's cookies, server banner
// and internal headers never reach the client, on any kind of answer.
func TestSecurityUpstreamHeadersFiltered(t *testing.T) {
	leaky := func(w http.ResponseWriter) {
		h := w.Header()
		h.Set("Set-Cookie", "upstream_session=sec-cookie-123; HttpOnly")
		h.Set("Server", "sec-internal-llm/1.2")
		h.Set("X-Internal-Secret", "sec-internal-value")
		h.Set("X-Powered-By", "sec-framework")
		h.Set("Openai-Organization", "sec-org-internal")
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Location", "http://sec-internal.example/")
	}
	up := secNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		leaky(w)
		if strings.Contains(r.Header.Get("Idempotency-Key"), "relay") {
			secStatus(422, `{"error":{"message":"unprocessable","type":"invalid_request_error"}}`)(w, r)
			return
		}
		secServeOK(w, r)
	})
	tc := startCaddy(t, "\tarbstr {\n\t\tprovider p {\n\t\t\turl "+up.url()+"\n\t\t\tapi_key "+secKeyGood+"\n\t\t}\n\t\ttimeout 2s\n\t}\n")
	for _, c := range []struct {
		name, body, idem string
		status           int
	}{
		{"buffered", `{"model":"m","messages":[]}`, "a", 200},
		{"stream", `{"model":"m","stream":true,"messages":[]}`, "b", 200},
		{"relayed 4xx", `{"model":"m","messages":[]}`, "relay", 422},
	} {
		req := secChatRequest(t, tc.URL, c.body)
		req.Header.Set("Idempotency-Key", c.idem)
		resp, body, err := secDo(t, req)
		if err != nil || resp.StatusCode != c.status {
			t.Fatalf("%s: status %d (%v): %s", c.name, resp.StatusCode, err, body)
		}
		for name, vals := range resp.Header {
			if secSafeResponseHeaders[name] || strings.HasPrefix(strings.ToLower(name), "x-arbstr-") {
				continue
			}
			t.Errorf("%s: the client got header %s: %q", c.name, name, vals)
		}
		if s := resp.Header.Get("Server"); strings.Contains(s, "sec-internal") {
			t.Errorf("%s: the provider's Server header reached the client: %q", c.name, s)
		}
		var head bytes.Buffer
		_ = resp.Header.Write(&head)
		for _, leak := range []string{"sec-cookie-123", "sec-internal", "sec-framework", "sec-org-internal"} {
			if bytes.Contains(head.Bytes(), []byte(leak)) {
				t.Errorf("%s: %q reached the client", c.name, leak)
			}
		}
	}
}

// TestSecurityMaxBodyRefusedBeforeRead: a body declared larger than
// max_body, or sent chunked past it, is refused with 413 while the client
// is still sending, and nothing reaches the provider.
func TestSecurityMaxBodyRefusedBeforeRead(t *testing.T) {
	up := secNewUpstream(t, secServeOK)
	tc := startCaddy(t, "\tarbstr {\n\t\tprovider p {\n\t\t\turl "+up.url()+"\n\t\t}\n\t\tmax_body 1KB\n\t\ttimeout 2s\n\t}\n")
	for _, c := range []struct {
		name, head, partial string
	}{
		{"declared length", "Content-Length: 10485760\r\n", `{"model":"m","messages":[{"role":"user","content":"`},
		{"chunked", "Transfer-Encoding: chunked\r\n", fmt.Sprintf("800\r\n%s\r\n800\r\n%s\r\n", strings.Repeat("a", 0x800), strings.Repeat("b", 0x800))},
	} {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tc.Port))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_ = conn.SetDeadline(start.Add(3 * time.Second))
		// The body never finishes: the connection stays open, unwritten.
		_, err = fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n%s\r\n%s", tc.Port, c.head, c.partial)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		elapsed := time.Since(start)
		if err != nil {
			t.Fatalf("%s: no answer while the body is unfinished (after %v): %v", c.name, elapsed, err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		conn.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: status %d, want 413: %s", c.name, resp.StatusCode, body)
		}
		if elapsed > 1500*time.Millisecond {
			t.Errorf("%s: the 413 took %v; it must not wait for the body", c.name, elapsed)
		}
		var e struct {
			Error struct{ Type, Code string } `json:"error"`
		}
		if json.Unmarshal(body, &e) != nil || e.Error.Type == "" {
			t.Errorf("%s: the 413 body is not an OpenAI-style error: %s", c.name, body)
		}
	}
	if n := up.hits.Load(); n != 0 {
		t.Errorf("the provider received %d request(s) of an oversized body", n)
	}
}

// TestSecurityProviderURLValidatedAtLoad: a provider URL that is not
// http(s) with a host, or that carries credentials, is refused at load,
// both from the Caddyfile and from JSON, without quoting the password.
func TestSecurityProviderURLValidatedAtLoad(t *testing.T) {
	bad := []string{
		"javascript:alert(1)",
		"ftp://files.example/v1",
		"file:///etc/passwd",
		"http:///v1",
		"http://:8080/v1",
		"//host.example/v1",
		"host.example/v1",
		"http://user:sec-url-password@host.example/v1",
		"https://sec-url-token@host.example/v1",
		// /chat/completions would be appended after the query or fragment.
		"https://host.example/v1?key=sec-url-token",
		"https://host.example/v1?",
		"https://host.example/v1#sec-url-token",
		"https://host.example/v1#",
	}
	for _, u := range bad {
		site := fmt.Sprintf("arbstr {\n\tprovider p {\n\t\turl %s\n\t}\n}", u)
		caddyfile := fmt.Sprintf("{\n\tadmin off\n}\nhttp://127.0.0.1:%d {\n%s\n}\n", freePort(t), site)
		if cfg, err := tryAdapt(caddyfile); err == nil {
			err = caddy.Validate(secMustUnmarshalConfig(t, cfg))
			if err == nil {
				t.Errorf("url %q: accepted", u)
				continue
			}
			secNoURLSecret(t, u, err)
		} else {
			secNoURLSecret(t, u, err)
		}
		// The same through JSON, as POST /load takes it.
		h := &Handler{Providers: []*Provider{{Name: "p", URL: u}}}
		h.applyDefaults()
		if err := h.Validate(); err == nil {
			t.Errorf("url %q: accepted from JSON", u)
		} else {
			secNoURLSecret(t, u, err)
		}
	}
	for _, u := range []string{"http://127.0.0.1:9/v1", "https://api.example/v1", "http://[::1]:8080/v1/"} {
		h := &Handler{Providers: []*Provider{{Name: "p", URL: u}}}
		h.applyDefaults()
		if err := h.Validate(); err != nil {
			t.Errorf("url %q: refused: %v", u, err)
		}
	}
}

func secMustUnmarshalConfig(t *testing.T, cfg []byte) *caddy.Config {
	t.Helper()
	var c caddy.Config
	if err := json.Unmarshal(cfg, &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

func secNoURLSecret(t *testing.T, u string, err error) {
	t.Helper()
	for _, s := range []string{"sec-url-password", "sec-url-token"} {
		if strings.Contains(err.Error(), s) {
			t.Errorf("url %q: the load error quotes the credential: %v", u, err)
		}
	}
}

// TestSecurityRedirectsNotFollowed: a provider answering with a redirect
// never makes arbstr send the request (and its key) to the target.
func TestSecurityRedirectsNotFollowed(t *testing.T) {
	target := secNewUpstream(t, secServeOK)
	for _, status := range []int{301, 302, 303, 307, 308} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			redirector := secNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.url()+"/chat/completions", status)
			})
			tc := startCaddy(t, "\tarbstr {\n\t\tprovider r {\n\t\t\turl "+redirector.url()+"\n\t\t\tapi_key "+secKeyGood+
				"\n\t\t}\n\t\tretry {\n\t\t\tattempts 1\n\t\t}\n\t\ttimeout 2s\n\t\tfirst_event_timeout 1s\n\t}\n")
			for _, stream := range []bool{false, true} {
				body := fmt.Sprintf(`{"model":"m","stream":%v,"messages":[]}`, stream)
				resp, respBody, _ := secDo(t, secChatRequest(t, tc.URL, body))
				if resp.StatusCode != http.StatusBadGateway {
					t.Errorf("stream=%v: status %d, want 502: %s", stream, resp.StatusCode, respBody)
				}
				if loc := resp.Header.Get("Location"); loc != "" {
					t.Errorf("stream=%v: the redirect's Location reached the client: %s", stream, loc)
				}
			}
			if n := redirector.hits.Load(); n != 2 {
				t.Errorf("the redirecting provider got %d requests, want 2", n)
			}
		})
	}
	// The redirects were answered before the 502s above were written, so a
	// followed redirect would have been recorded by now.
	if n := target.hits.Load(); n != 0 {
		t.Errorf("the redirect target was called %d time(s); headers: %v", n, target.received())
	}
}
