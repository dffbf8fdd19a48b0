package arbstr

import (
	"bufio"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// hlScrape fetches the Prometheus text exposition from url.
func hlScrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	return string(body)
}

var hlLabelRE = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)

// hlMetric sums the samples of name whose labels include want; found is
// false when there is none.
func hlMetric(text, name string, want map[string]string) (sum float64, found bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		labels := map[string]string{}
		if strings.HasPrefix(rest, "{") {
			end := strings.LastIndex(rest, "}")
			for _, m := range hlLabelRE.FindAllStringSubmatch(rest[1:end], -1) {
				labels[m[1]] = m[2]
			}
			rest = rest[end+1:]
		} else if !strings.HasPrefix(rest, " ") {
			continue // a longer name with this prefix
		}
		match := true
		for k, v := range want {
			if labels[k] != v {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}

// hlL builds a label set from name/value pairs.
func hlL(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// hlMetricDelta is a metric's value in after minus its value in before.
func hlMetricDelta(before, after, name string, labels map[string]string) float64 {
	a, _ := hlMetric(after, name, labels)
	b, _ := hlMetric(before, name, labels)
	return a - b
}

func TestMetricsAfterTrafficIntegration(t *testing.T) {
	bad := hlNewUpstream(t, hlStatus(500))
	var streamCalls atomic.Int64
	good := hlNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		if r.Header.Get("Accept") == "text/event-stream" {
			streamCalls.Add(1)
			hlStreamOK(w, r, n)
			return
		}
		hlOK(w, r, n)
	})
	// beta costs 1 sat per input token, 2 per output token and 1 per
	// request: 10 in, 20 out = 51 sats.
	providers := hlProviderBlock("hlmet-alpha", bad.base(), "hl-metrics-secret-a", "gpt-hlmet", 1, 1, 0) +
		hlProviderBlock("hlmet-beta", good.base(), "hl-metrics-secret-b", "gpt-hlmet", 1e6, 2e6, 1)
	site := "metrics /metrics\n" + hlHealthSite(providers, 2, "30s", "")
	tc := startCaddy(t, site)
	before := hlScrape(t, tc.Admin+"/metrics")

	if resp := tc.Post("/v1/chat/completions", hlChat("gpt-hlmet", false)); resp.StatusCode != 200 || resp.Header.Get(headerCost) != "51.00" {
		t.Fatalf("non-streaming request: %d cost %q; want 200 costing 51.00", resp.StatusCode, resp.Header.Get(headerCost))
	}
	resp := tc.Post("/v1/chat/completions", hlChat("gpt-hlmet", true))
	if _, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != 200 || streamCalls.Load() != 1 {
		t.Fatalf("streaming request: %d %v (stream calls %d)", resp.StatusCode, err, streamCalls.Load())
	}
	// alpha failed twice: its circuit is now open.

	after := hlScrape(t, tc.Admin+"/metrics")
	// The site's own metrics endpoint shows the same collectors.
	if site := hlScrape(t, tc.URL+"/metrics"); !strings.Contains(site, "caddy_arbstr_requests_total") {
		t.Errorf("the site's metrics endpoint lacks caddy_arbstr_requests_total")
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"caddy_arbstr_requests_total", hlL("provider", "hlmet-beta", "model", "gpt-hlmet", "outcome", "ok"), 2},
		{"caddy_arbstr_attempts_total", hlL("provider", "hlmet-alpha", "result", "server_error"), 2},
		{"caddy_arbstr_attempts_total", hlL("provider", "hlmet-beta", "result", "ok"), 2},
		{"caddy_arbstr_cost_sats_total", hlL("provider", "hlmet-beta", "model", "gpt-hlmet"), 102},
		{"caddy_arbstr_tokens_total", hlL("provider", "hlmet-beta", "model", "gpt-hlmet", "direction", "input"), 20},
		{"caddy_arbstr_tokens_total", hlL("provider", "hlmet-beta", "model", "gpt-hlmet", "direction", "output"), 40},
		{"caddy_arbstr_upstream_latency_seconds_count", hlL("provider", "hlmet-beta"), 2},
		{"caddy_arbstr_upstream_latency_seconds_count", hlL("provider", "hlmet-alpha"), 2},
		{"caddy_arbstr_time_to_first_event_seconds_count", hlL("provider", "hlmet-beta"), 1},
	}
	for _, c := range checks {
		if got := hlMetricDelta(before, after, c.name, c.labels); got != c.want {
			t.Errorf("%s%v went up by %v; want %v", c.name, c.labels, got, c.want)
		}
	}
	if v, ok := hlMetric(after, "caddy_arbstr_circuit_state", hlL("provider", "hlmet-alpha", "model", "gpt-hlmet")); !ok || v != float64(circuitOpen) {
		t.Errorf("circuit_state of alpha = %v (found %v); want %d (open)", v, ok, circuitOpen)
	}
	if v, ok := hlMetric(after, "caddy_arbstr_circuit_state", hlL("provider", "hlmet-beta", "model", "gpt-hlmet")); !ok || v != float64(circuitClosed) {
		t.Errorf("circuit_state of beta = %v (found %v); want %d (closed)", v, ok, circuitClosed)
	}
	for _, secret := range []string{"hl-metrics-secret-a", "hl-metrics-secret-b"} {
		if strings.Contains(after, secret) {
			t.Errorf("metrics output contains the API key %q", secret)
		}
	}

	// A reload keeps the counters: nothing drops, and new traffic adds on.
	tc.Load("metrics /metrics\n" + hlHealthSite(providers, 2, "30s", "\tmax_body 1MB\n"))
	reloaded := hlScrape(t, tc.Admin+"/metrics")
	ok := hlL("provider", "hlmet-beta", "model", "gpt-hlmet", "outcome", "ok")
	if d := hlMetricDelta(after, reloaded, "caddy_arbstr_requests_total", ok); d != 0 {
		t.Errorf("requests_total changed by %v across a reload without traffic", d)
	}
	if d := hlMetricDelta(after, reloaded, "caddy_arbstr_cost_sats_total", hlL("provider", "hlmet-beta")); d != 0 {
		t.Errorf("cost_sats_total changed by %v across a reload without traffic", d)
	}
	tc.Post("/v1/chat/completions", hlChat("gpt-hlmet", false))
	final := hlScrape(t, tc.Admin+"/metrics")
	if d := hlMetricDelta(before, final, "caddy_arbstr_requests_total", ok); d != 3 {
		t.Errorf("requests_total went up by %v over the test; want 3 (2 before the reload, 1 after)", d)
	}
	if d := hlMetricDelta(before, final, "caddy_arbstr_attempts_total", hlL("provider", "hlmet-alpha")); d != 2 {
		t.Errorf("alpha attempts went up by %v; want 2 (its circuit stayed open across the reload)", d)
	}
}

// A provider that serves any model must not turn the model names clients
// invent into label values: they are counted under "*".
func TestMetricsInventedModelNamesAreNotLabelsIntegration(t *testing.T) {
	const invented = "hl-invented-model-q7"
	bad := hlNewUpstream(t, hlStatus(503))
	var goodFails atomic.Bool
	good := hlNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		if goodFails.Load() {
			hlStatus(500)(w, r, n)
			return
		}
		hlOK(w, r, n)
	})
	providers := hlProviderBlock("hlmet-any-bad", bad.base(), "hl-k1", "", 1, 1, 0) +
		hlProviderBlock("hlmet-any-good", good.base(), "hl-k2", "", 1e6, 1e6, 0)
	tc := startCaddy(t, hlHealthSite(providers, 5, "30s", ""))
	before := hlScrape(t, tc.Admin+"/metrics")

	if resp := tc.Post("/v1/chat/completions", hlChat(invented, false)); resp.StatusCode != 200 {
		t.Fatalf("served request: %d", resp.StatusCode)
	}
	goodFails.Store(true)
	if resp := tc.Post("/v1/chat/completions", hlChat(invented+"-2", false)); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("request failing everywhere: %d, want 502", resp.StatusCode)
	}
	after := hlScrape(t, tc.Admin+"/metrics")
	if strings.Contains(after, invented) {
		for _, line := range strings.Split(after, "\n") {
			if strings.Contains(line, invented) {
				t.Errorf("client-invented model name became a label: %s", line)
			}
		}
	}
	if d := hlMetricDelta(before, after, "caddy_arbstr_requests_total", hlL("provider", "hlmet-any-good", "model", "*", "outcome", "ok")); d != 1 {
		t.Errorf("served request counted %v times under model \"*\"; want 1", d)
	}
	if d := hlMetricDelta(before, after, "caddy_arbstr_cost_sats_total", hlL("provider", "hlmet-any-good", "model", "*")); d != 30 {
		t.Errorf("cost under model \"*\" went up by %v; want 30", d)
	}
	if _, ok := hlMetric(after, "caddy_arbstr_circuit_state", hlL("provider", "hlmet-any-bad", "model", "*")); !ok {
		t.Errorf("circuit_state of an any-model provider is not labelled model=\"*\"")
	}
	if d := hlMetricDelta(before, after, "caddy_arbstr_requests_total", hlL("provider", "", "model", "*", "outcome", "error")); d != 1 {
		t.Errorf("request failed everywhere counted %v times under provider \"\" model \"*\"; want 1", d)
	}
}
