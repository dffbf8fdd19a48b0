package arbstr

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/arbstr/caddy-arbstr/internal/freeport"
	"github.com/caddyserver/caddy/v2"
)

// Over HTTPS, clients such as openai-go speak HTTP/2: there a broken stream
// must end in a stream reset, not a clean end of the body, just as it ends
// in a cut connection over HTTP/1.1.
func TestStreamBrokenOverHTTP2IsReset(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n")
		// Then the provider ends without a finish_reason: a truncated answer.
	}))
	defer upstream.Close()

	ports := freeport.Ports(t, 2)
	port, admin := ports[0], ports[1]
	caddyfile := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https disable_redirects
	skip_install_trust
	grace_period 1s
	storage file_system %s
}
https://127.0.0.1:%d {
	tls internal
	arbstr {
		provider alpha {
			url %s
		}
	}
}
`, admin, t.TempDir(), port, upstream.URL)
	if err := caddy.Load(adaptCaddyfile(t, caddyfile), true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })

	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, ServerName: "127.0.0.1"},
		ForceAttemptHTTP2: true,
	}}
	// The internal CA issues the site's certificate in the background.
	models := fmt.Sprintf("https://127.0.0.1:%d/v1/models", port)
	for deadline := time.Now().Add(10 * time.Second); ; {
		r, err := client.Get(models)
		if err == nil {
			r.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("HTTPS site not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	body := `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	resp, err := client.Post(fmt.Sprintf("https://127.0.0.1:%d/v1/chat/completions", port), "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("protocol %s, want HTTP/2", resp.Proto)
	}
	got, err := io.ReadAll(resp.Body)
	if err == nil || !strings.Contains(err.Error(), "stream error") {
		t.Fatalf("read error %v; a truncated stream must end in an HTTP/2 stream reset:\n%s", err, got)
	}
	if !strings.Contains(string(got), `"code":"stream_broken"`) || strings.Contains(string(got), "[DONE]") {
		t.Errorf("want the partial answer, an error event and no [DONE]; got:\n%s", got)
	}
}
