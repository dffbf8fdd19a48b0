package arbstr

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// hlStartWhole is startCaddy with extra global options (inside the global
// block) for the cases a site body cannot express, such as `debug`.
func hlStartWhole(t *testing.T, globals, siteBody string) *testCaddy {
	t.Helper()
	tc := newTestCaddy(t)
	whole := fmt.Sprintf(`{
	admin %s
	persist_config off
	auto_https off
	skip_install_trust
	grace_period 1s
%s
}
http://127.0.0.1:%d {
%s
}
`, tc.adminAddr, globals, tc.Port, siteBody)
	if err := caddy.Load(adaptCaddyfile(t, whole), true); err != nil {
		t.Fatalf("loading config: %v\n%s", err, whole)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	tc.waitReady()
	return tc
}

// hlAccessEntry polls the JSON log file at path until it holds the access
// log entry of the request with this id.
func hlAccessEntry(t *testing.T, path, requestID string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		raw, _ := os.ReadFile(path)
		sc := bufio.NewScanner(bytes.NewReader(raw))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var entry map[string]any
			if json.Unmarshal(sc.Bytes(), &entry) == nil && entry["arbstr_request_id"] == requestID {
				return entry
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no access log entry for %s in %s:\n%s", requestID, path, raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestObservabilityPlaceholdersInDeferredHeadersIntegration(t *testing.T) {
	good := hlNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		if r.Header.Get("Accept") == "text/event-stream" {
			hlStreamOK(w, r, n)
			return
		}
		hlOK(w, r, n)
	})
	refusing := hlNewUpstream(t, hlStatus(400))
	site := `header {
	defer
	X-Hl-Provider "{http.arbstr.provider}"
	X-Hl-Cost "{http.arbstr.cost_sats}"
	X-Hl-Request "{http.arbstr.request_id}"
}
` + hlHealthSite(hlProviderBlock("hlobs-alpha", good.base(), "hl-k", "gpt-hlobs", 1e6, 2e6, 1)+
		hlProviderBlock("hlobs-relay", refusing.base(), "hl-k", "gpt-refused", 1, 1, 0), 3, "30s", "")
	tc := startCaddy(t, site)

	cases := []struct {
		name, body   string
		status       int
		provider     string
		cost         string // "" when not known at the time of the response head
		costFromHead bool
	}{
		{"buffered", hlChat("gpt-hlobs", false), 200, "hlobs-alpha", "51.00", true},
		{"stream", hlChat("gpt-hlobs", true), 200, "hlobs-alpha", "", false},
		{"relayed refusal", hlChat("gpt-refused", false), 400, "hlobs-relay", "", false},
		{"unknown model", hlChat("gpt-nobody", false), 404, "", "", false},
		{"bad json", `{"model":`, 400, "", "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp := tc.Post("/v1/chat/completions", c.body)
			_, _ = io.ReadAll(resp.Body)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.status)
			}
			for name, vals := range resp.Header {
				for _, v := range vals {
					if strings.Contains(v, "{http.arbstr.") {
						t.Errorf("header %s is a literal placeholder: %q", name, v)
					}
				}
			}
			id := resp.Header.Get(headerRequestID)
			if id == "" || resp.Header.Get("X-Hl-Request") != id {
				t.Errorf("{http.arbstr.request_id} = %q; want the request id %q", resp.Header.Get("X-Hl-Request"), id)
			}
			if got := resp.Header.Get("X-Hl-Provider"); got != c.provider {
				t.Errorf("{http.arbstr.provider} = %q; want %q", got, c.provider)
			}
			if got := resp.Header.Get("X-Hl-Cost"); got != c.cost {
				t.Errorf("{http.arbstr.cost_sats} = %q; want %q", got, c.cost)
			}
			if c.costFromHead && resp.Header.Get("X-Hl-Cost") != resp.Header.Get(headerCost) {
				t.Errorf("{http.arbstr.cost_sats} %q differs from %s %q", resp.Header.Get("X-Hl-Cost"), headerCost, resp.Header.Get(headerCost))
			}
		})
	}
}

func TestObservabilityAccessLogFieldsIntegration(t *testing.T) {
	bad := hlNewUpstream(t, hlStatus(500))
	good := hlNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		if r.Header.Get("Accept") == "text/event-stream" {
			hlStreamOK(w, r, n)
			return
		}
		hlOK(w, r, n)
	})
	logPath := filepath.Join(t.TempDir(), "access.log")
	site := fmt.Sprintf(`log {
	output file %s
	format json
}
`, logPath) + hlHealthSite(hlProviderBlock("hlobs-alpha", bad.base(), "hl-log-secret-a", "gpt-hlobs", 1, 1, 0)+
		hlProviderBlock("hlobs-beta", good.base(), "hl-log-secret-b", "gpt-hlobs", 1e6, 2e6, 1), 5, "30s", "")
	tc := startCaddy(t, site)

	for _, stream := range []bool{false, true} {
		resp := tc.Post("/v1/chat/completions", hlChat("gpt-hlobs", stream))
		_, _ = io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("stream=%v: %d", stream, resp.StatusCode)
		}
		e := hlAccessEntry(t, logPath, resp.Header.Get(headerRequestID))
		want := map[string]any{
			"arbstr_provider":   "hlobs-beta",
			"arbstr_model":      "gpt-hlobs",
			"arbstr_attempts":   2.0,
			"arbstr_retries":    "1/hlobs-alpha",
			"arbstr_outcome":    "ok",
			"arbstr_tokens_in":  10.0,
			"arbstr_tokens_out": 20.0,
			"arbstr_cost_sats":  51.0,
		}
		for k, v := range want {
			if e[k] != v {
				t.Errorf("stream=%v: access log %s = %#v; want %#v", stream, k, e[k], v)
			}
		}
	}

	// An error of arbstr's own is logged too, with what is known.
	resp := tc.Post("/v1/chat/completions", hlChat("gpt-nobody", false))
	e := hlAccessEntry(t, logPath, resp.Header.Get(headerRequestID))
	if e["arbstr_outcome"] != "error" || e["arbstr_attempts"] != 0.0 || e["status"] != 404.0 {
		t.Errorf("access log of a 404: outcome %v attempts %v status %v", e["arbstr_outcome"], e["arbstr_attempts"], e["status"])
	}
	if _, ok := e["arbstr_provider"]; ok {
		t.Errorf("a request no provider served logs arbstr_provider %v", e["arbstr_provider"])
	}
	raw, _ := os.ReadFile(logPath)
	for _, secret := range []string{"hl-log-secret-a", "hl-log-secret-b"} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("access log contains the API key %q", secret)
		}
	}
}

// With every logger at DEBUG, nothing arbstr or Caddy logs while routing
// may contain a provider's key: not the access log, not the default log.
func TestObservabilitySecretsNeverLoggedAtDebugIntegration(t *testing.T) {
	t.Setenv("HL_OBS_ENV_KEY", "hl-obs-env-secret-2")
	dir := t.TempDir()
	good := hlNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		if r.Header.Get("Accept") == "text/event-stream" {
			hlStreamOK(w, r, n)
			return
		}
		hlOK(w, r, n)
	})
	unauthorized := hlNewUpstream(t, hlStatus(401))
	refusing := hlNewUpstream(t, hlStatus(400))
	closed := hlNewUpstream(t, hlOK)
	closed.Close() // connection refused
	globals := fmt.Sprintf(`	debug
	log {
		output file %s
		format json
	}`, filepath.Join(dir, "caddy.log"))
	site := fmt.Sprintf(`log {
	output file %s
	format json
}
`, filepath.Join(dir, "access.log")) + hlHealthSite(
		hlProviderBlock("hlobs-down", closed.base(), "hl-obs-literal-secret-0", "gpt-hlobs", 1, 1, 0)+
			hlProviderBlock("hlobs-unauth", unauthorized.base(), "hl-obs-literal-secret-1", "gpt-hlobs", 2, 2, 0)+
			hlProviderBlock("hlobs-good", good.base(), "{env.HL_OBS_ENV_KEY}", "gpt-hlobs", 3, 3, 0)+
			hlProviderBlock("hlobs-refusing", refusing.base(), "hl-obs-literal-secret-3", "gpt-refused", 1, 1, 0),
		5, "30s", "")
	tc := hlStartWhole(t, globals, site)

	var ids []string
	for _, body := range []string{hlChat("gpt-hlobs", false), hlChat("gpt-hlobs", true), hlChat("gpt-refused", false), hlChat("gpt-nobody", false)} {
		resp := tc.Post("/v1/chat/completions", body, "Authorization", "Bearer hl-client-token")
		_, _ = io.ReadAll(resp.Body)
		ids = append(ids, resp.Header.Get(headerRequestID))
	}
	// The keys were really in play: each provider received its own.
	if got := good.authorization(t, 0); got != "Bearer hl-obs-env-secret-2" {
		t.Fatalf("good provider got Authorization %q", got)
	}
	if got := unauthorized.authorization(t, 0); got != "Bearer hl-obs-literal-secret-1" {
		t.Fatalf("unauthorized provider got Authorization %q", got)
	}
	for _, id := range ids {
		hlAccessEntry(t, filepath.Join(dir, "access.log"), id) // every request is logged before we look
	}
	logs := ""
	for _, name := range []string{"caddy.log", "access.log"} {
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || len(raw) == 0 {
			t.Fatalf("log %s is empty or missing: %v", name, err)
		}
		logs += string(raw)
	}
	if !strings.Contains(logs, `"level":"debug"`) {
		t.Fatalf("no debug-level entry was logged; the test does not run at DEBUG")
	}
	for _, secret := range []string{"hl-obs-literal-secret-0", "hl-obs-literal-secret-1", "hl-obs-env-secret-2", "hl-obs-literal-secret-3", "hl-client-token"} {
		if strings.Contains(logs, secret) {
			for _, line := range strings.Split(logs, "\n") {
				if strings.Contains(line, secret) {
					t.Errorf("a log line contains the secret %q: %s", secret, line)
					break
				}
			}
		}
	}
}
