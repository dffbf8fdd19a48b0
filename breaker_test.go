package arbstr

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A provider that accepts and never answers must not stay first in line:
// the deadline that ended the wait counts as its timeout, so its circuit
// opens and later requests go to the next provider.
func TestBreakerSilentProviderOpensAtTheDeadline(t *testing.T) {
	silent := hlNewUpstream(t, func(_ http.ResponseWriter, r *http.Request, _ int64) { <-r.Context().Done() })
	good := hlNewUpstream(t, hlOK)
	providers := hlProviderBlock("alpha", silent.base(), "", "", 1, 1, 0) +
		hlProviderBlock("beta", good.base(), "", "", 9, 9, 0)
	tc := startCaddy(t, strings.Replace(hlHealthSite(providers, 1, "30s", ""), "timeout 2s", "timeout 300ms", 1))

	if resp := tc.Post("/v1/chat/completions", hlChat("gpt-bk", false)); resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("first request: status %d, want 504 (alpha held it to the deadline)", resp.StatusCode)
	}
	resp := tc.Post("/v1/chat/completions", hlChat("gpt-bk", false))
	if resp.StatusCode != http.StatusOK || resp.Header.Get(headerProvider) != "beta" {
		t.Fatalf("second request: status %d from %q, want 200 from beta (alpha's circuit open)",
			resp.StatusCode, resp.Header.Get(headerProvider))
	}
	if n := silent.calls.Load(); n != 1 {
		t.Errorf("alpha got %d calls, want 1", n)
	}
}

// A provider that serves any model keeps health per model: 404s for a model
// it lacks do not take it away from the models it has.
func TestBreakerAnyModelProviderKeepsHealthPerModel(t *testing.T) {
	any := hlNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		if n == 1 {
			hlStatus(404)(w, r, n)
			return
		}
		hlOK(w, r, n)
	})
	tc := startCaddy(t, hlHealthSite(hlProviderBlock("alpha", any.base(), "", "", 1, 1, 0), 1, "30s", ""))

	if resp := tc.Post("/v1/chat/completions", hlChat("no-such-model", false)); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("unknown model: status %d, want 502", resp.StatusCode)
	}
	if resp := tc.Post("/v1/chat/completions", hlChat("gpt-4o", false)); resp.StatusCode != http.StatusOK {
		t.Fatalf("another model: status %d, want 200 (its circuit is its own)", resp.StatusCode)
	}
	if resp := tc.Post("/v1/chat/completions", hlChat("no-such-model", false)); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("the failed model again: status %d, want 503 (its circuit is open)", resp.StatusCode)
	}
}

// The probe of a half-open circuit frees it as soon as its stream commits:
// while that stream is still running, other requests may use the provider.
func TestBreakerStreamingProbeFreesCircuitAtCommit(t *testing.T) {
	release := make(chan struct{})
	alpha := hlNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		switch {
		case n == 1:
			hlStatus(500)(w, r, n)
		case strings.Contains(r.Header.Get("Accept"), "event-stream"):
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = w.Write([]byte("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n"))
			w.(http.Flusher).Flush()
			select { // a long answer, still running while the next request comes
			case <-release:
			case <-r.Context().Done():
			}
			_, _ = w.Write([]byte("data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"))
		default:
			hlOK(w, r, n)
		}
	})
	beta := hlNewUpstream(t, hlOK)
	providers := hlProviderBlock("alpha", alpha.base(), "", "", 1, 1, 0) +
		hlProviderBlock("beta", beta.base(), "", "", 9, 9, 0)
	tc := startCaddy(t, hlHealthSite(providers, 1, "200ms", ""))

	if resp := tc.Post("/v1/chat/completions", hlChat("gpt-bk", false)); resp.Header.Get(headerProvider) != "beta" {
		t.Fatalf("first request served by %q, want beta after alpha's 500", resp.Header.Get(headerProvider))
	}
	time.Sleep(250 * time.Millisecond) // the open period passes: alpha is half open
	probe := tc.Post("/v1/chat/completions", hlChat("gpt-bk", true))
	if probe.Header.Get(headerProvider) != "alpha" {
		t.Fatalf("probe served by %q, want alpha", probe.Header.Get(headerProvider))
	}
	if _, err := bufio.NewReader(probe.Body).ReadString('\n'); err != nil {
		t.Fatal(err) // the probe's stream has committed
	}
	resp := tc.Post("/v1/chat/completions", hlChat("gpt-bk", false))
	close(release)
	if got := resp.Header.Get(headerProvider); got != "alpha" {
		t.Errorf("during the probe's stream a request went to %q, want alpha (the circuit closed at commit)", got)
	}
}

// A provider whose streams commit and then always break is failing, however
// well they start: its circuit opens after `failures` broken streams.
func TestBreakerStreamsThatAlwaysBreakOpenTheCircuit(t *testing.T) {
	alpha := hlNewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n"))
		// and the answer ends here, without a finish_reason
	})
	beta := hlNewUpstream(t, hlStreamOK)
	providers := hlProviderBlock("alpha", alpha.base(), "", "", 1, 1, 0) +
		hlProviderBlock("beta", beta.base(), "", "", 9, 9, 0)
	tc := startCaddy(t, hlHealthSite(providers, 2, "30s", ""))
	for i := 1; i <= 3; i++ {
		resp := tc.Post("/v1/chat/completions", hlChat("gpt-bk", true))
		_, _ = io.Copy(io.Discard, resp.Body)
		want := "alpha"
		if i == 3 {
			want = "beta"
		}
		if got := resp.Header.Get(headerProvider); got != want {
			t.Fatalf("stream %d served by %q, want %s", i, got, want)
		}
	}
}
