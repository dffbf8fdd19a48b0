package arbstr

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/arbstr/caddy-arbstr/internal/freeport"
	_ "github.com/arbstr/caddy-arbstr/standin"
)

// testCaddy is an in-process Caddy on free ports of 127.0.0.1. Unlike
// caddytest it needs no fixed ports, so several test processes may run at
// once. Only one config runs per process: tests using it must not be parallel.
type testCaddy struct {
	t         *testing.T
	Port      int    // the HTTP port the site listens on
	URL       string // http://127.0.0.1:Port
	Admin     string // http://127.0.0.1:adminPort
	adminAddr string
	// reloadedAt is when Load last replaced a running config.
	reloadedAt time.Time
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago;
// tests that need several take them from one freeport.Ports call.
func freePort(t testing.TB) int {
	t.Helper()
	return freeport.Ports(t, 1)[0]
}

// newTestCaddy is a testCaddy on two distinct free ports, not yet loaded.
func newTestCaddy(t *testing.T) *testCaddy {
	t.Helper()
	ports := freeport.Ports(t, 2)
	tc := &testCaddy{t: t, Port: ports[0], adminAddr: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	tc.URL = fmt.Sprintf("http://127.0.0.1:%d", tc.Port)
	tc.Admin = "http://" + tc.adminAddr
	return tc
}

// startCaddy runs site (the body of a site block; use {PORT} nowhere: the
// site address is added) with the given extra sites, stops it at the end of
// the test, and returns where it listens. extra may hold whole site blocks,
// with the placeholder SITE_PORT_n replaced by further free ports.
func startCaddy(t *testing.T, siteBody string) *testCaddy {
	t.Helper()
	tc := newTestCaddy(t)
	tc.Load(siteBody)
	tc.reloadedAt = time.Time{} // the first load replaced nothing of this test's
	t.Cleanup(func() { _ = caddy.Stop() })
	return tc
}

// caddyfile is the whole Caddyfile for a site body.
func (tc *testCaddy) caddyfile(siteBody string) string {
	return fmt.Sprintf(`{
	admin %s
	persist_config off
	auto_https off
	skip_install_trust
	grace_period 1s
}
http://127.0.0.1:%d {
%s
}
`, tc.adminAddr, tc.Port, siteBody)
}

// Load (re)loads the config, as `caddy reload` does.
func (tc *testCaddy) Load(siteBody string) {
	tc.t.Helper()
	cfg := adaptCaddyfile(tc.t, tc.caddyfile(siteBody))
	if err := caddy.Load(cfg, true); err != nil {
		tc.t.Fatalf("loading config: %v\n%s", err, cfg)
	}
	// A reload closes idle keep-alive connections: a request sent on one
	// right after would fail with EOF, as for any client of a reloaded Caddy.
	http.DefaultClient.CloseIdleConnections()
	tc.reloadedAt = time.Now()
	tc.waitReady()
}

func (tc *testCaddy) waitReady() {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tc.Port))
		if err == nil {
			conn.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	tc.t.Fatalf("caddy did not listen on %d", tc.Port)
}

// adaptCaddyfile turns a Caddyfile into JSON, failing the test on errors or warnings.
func adaptCaddyfile(t testing.TB, caddyfile string) []byte {
	t.Helper()
	cfg, err := tryAdapt(caddyfile)
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	return cfg
}

func tryAdapt(caddyfile string) ([]byte, error) {
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfg, warnings, err := adapter.Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		if !strings.Contains(w.Message, "formatted") {
			return nil, fmt.Errorf("warning: %s:%d: %s", w.File, w.Line, w.Message)
		}
	}
	return cfg, nil
}

// Post sends a chat completion body to path (e.g. /v1/chat/completions).
func (tc *testCaddy) Post(path, body string, header ...string) *http.Response {
	tc.t.Helper()
	send := func() (*http.Response, error) {
		req, err := http.NewRequest(http.MethodPost, tc.URL+path, strings.NewReader(body))
		if err != nil {
			tc.t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		return http.DefaultClient.Do(req)
	}
	resp, err := send()
	if err != nil && time.Since(tc.reloadedAt) < 3*time.Second {
		// Right after a reload the old server may close a connection under
		// the request (docs/reliability-and-security.md, "Reloads and grace_period"); nothing reached
		// arbstr, and a client retries such connection errors.
		resp, err = send()
	}
	if err != nil {
		tc.t.Fatalf("POST %s: %v", path, err)
	}
	tc.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// decodeJSON decodes a response body into v, failing the test otherwise.
func decodeJSON(t testing.TB, resp *http.Response, v any) {
	t.Helper()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("decoding response body: %v", err)
	}
}
