package arbstr

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func TestGenAIMetricsIntegration(t *testing.T) {
	const invented = "tel-invented-model-z9"
	bad := hlNewUpstream(t, hlStatus(500))
	good := hlNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		if r.Header.Get("Accept") == "text/event-stream" {
			hlStreamOK(w, r, n)
			return
		}
		hlOK(w, r, n)
	})
	anyModel := hlNewUpstream(t, hlOK)
	// alpha fails, beta serves gpt-tel under its upstream name, gamma serves
	// any model at a price that puts it last for gpt-tel.
	providers := hlProviderBlock("tel-alpha", bad.base(), "tel-secret-a", "gpt-tel", 1, 1, 0) +
		strings.Replace(hlProviderBlock("tel-beta", good.base(), "tel-secret-b", "", 2, 2, 0),
			"\t\tinput_rate", "\t\tmodel gpt-tel gpt-tel-upstream-v1\n\t\tinput_rate", 1) +
		hlProviderBlock("tel-gamma", anyModel.base(), "tel-secret-c", "", 1e9, 1e9, 0)
	tc := startCaddy(t, hlHealthSite(providers, 10, "30s", ""))
	before := hlScrape(t, tc.Admin+"/metrics")

	if resp := tc.Post("/v1/chat/completions", hlChat("gpt-tel", false)); resp.StatusCode != 200 || resp.Header.Get(headerProvider) != "tel-beta" {
		t.Fatalf("non-streaming request: %d from %q; want 200 from tel-beta", resp.StatusCode, resp.Header.Get(headerProvider))
	}
	resp := tc.Post("/v1/chat/completions", hlChat("gpt-tel", true))
	if _, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != 200 || resp.Header.Get(headerProvider) != "tel-beta" {
		t.Fatalf("streaming request: %d from %q (%v); want 200 from tel-beta", resp.StatusCode, resp.Header.Get(headerProvider), err)
	}
	if resp := tc.Post("/v1/chat/completions", hlChat(invented, false)); resp.StatusCode != 200 || resp.Header.Get(headerProvider) != "tel-gamma" {
		t.Fatalf("request for an unlisted model: %d from %q; want 200 from tel-gamma", resp.StatusCode, resp.Header.Get(headerProvider))
	}
	if resp := tc.Post("/v1/embeddings", `{"model":"`+invented+`","input":"hello"}`); resp.StatusCode != 200 || resp.Header.Get(headerProvider) != "tel-gamma" {
		t.Fatalf("embeddings request: %d from %q; want 200 from tel-gamma", resp.StatusCode, resp.Header.Get(headerProvider))
	}
	after := hlScrape(t, tc.Admin+"/metrics")

	beta := func(kv ...string) map[string]string {
		return hlL(append([]string{"gen_ai_operation_name", "chat", "gen_ai_provider_name", "tel-beta",
			"gen_ai_request_model", "gpt-tel", "gen_ai_response_model", "gpt-tel-upstream-v1"}, kv...)...)
	}
	alpha := hlL("gen_ai_operation_name", "chat", "gen_ai_provider_name", "tel-alpha",
		"gen_ai_request_model", "gpt-tel", "gen_ai_response_model", "gpt-tel", "error_type", "server_error")
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		// Each request failed on alpha once, then beta served it.
		{"gen_ai_client_operation_duration_seconds_count", alpha, 2},
		{"gen_ai_client_operation_duration_seconds_count", beta("error_type", ""), 2},
		{"gen_ai_client_operation_duration_seconds_count", beta("error_type", "server_error"), 0},
		{"gen_ai_client_operation_duration_seconds_count", hlL("gen_ai_operation_name", "chat", "gen_ai_provider_name", "tel-gamma", "gen_ai_request_model", "*", "gen_ai_response_model", "*"), 1},
		{"gen_ai_client_operation_duration_seconds_count", hlL("gen_ai_operation_name", "embeddings", "gen_ai_provider_name", "tel-gamma"), 1},
		// 10 input and 20 output tokens per answer, in the conventions' buckets.
		{"gen_ai_client_token_usage_count", beta("gen_ai_token_type", "input"), 2},
		{"gen_ai_client_token_usage_sum", beta("gen_ai_token_type", "input"), 20},
		{"gen_ai_client_token_usage_sum", beta("gen_ai_token_type", "output"), 40},
		{"gen_ai_client_token_usage_bucket", beta("gen_ai_token_type", "input", "le", "4"), 0},
		{"gen_ai_client_token_usage_bucket", beta("gen_ai_token_type", "input", "le", "16"), 2},
		{"gen_ai_client_token_usage_bucket", beta("gen_ai_token_type", "output", "le", "16"), 0},
		{"gen_ai_client_token_usage_bucket", beta("gen_ai_token_type", "output", "le", "64"), 2},
		{"gen_ai_client_token_usage_count", hlL("gen_ai_provider_name", "tel-alpha"), 0},
		{"gen_ai_client_token_usage_sum", hlL("gen_ai_operation_name", "chat", "gen_ai_provider_name", "tel-gamma", "gen_ai_request_model", "*", "gen_ai_token_type", "output"), 20},
		// Only the stream has a first token; the failed attempts none.
		{"gen_ai_server_time_to_first_token_seconds_count", beta(), 1},
		{"gen_ai_server_time_to_first_token_seconds_count", hlL("gen_ai_provider_name", "tel-alpha"), 0},
	}
	for _, c := range checks {
		if got := hlMetricDelta(before, after, c.name, c.labels); got != c.want {
			t.Errorf("%s%v went up by %v; want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, bucket := range []string{"0.01", "81.92"} {
		if _, ok := hlMetric(after, "gen_ai_client_operation_duration_seconds_bucket", hlL("le", bucket)); !ok {
			t.Errorf("operation duration has no bucket le=%q of the GenAI conventions", bucket)
		}
	}
	for _, leak := range []string{invented, "tel-secret-a", "tel-secret-b", "tel-secret-c"} {
		if strings.Contains(after, leak) {
			t.Errorf("metrics output contains %q", leak)
		}
	}
}

// keepingExporter is tracetest's in-memory exporter that keeps its spans when
// Caddy shuts its tracer provider down (InMemoryExporter forgets them then).
type keepingExporter struct{ *tracetest.InMemoryExporter }

func (keepingExporter) Shutdown(context.Context) error { return nil }

var (
	registerTestExporter sync.Once
	testSpans            = tracetest.NewInMemoryExporter()
)

// useTestSpanExporter makes Caddy's tracing directive export to testSpans:
// Caddy builds its exporter from OTEL_TRACES_EXPORTER.
func useTestSpanExporter(t *testing.T) {
	registerTestExporter.Do(func() {
		autoexport.RegisterSpanExporter("arbstr-test-memory", func(context.Context) (sdktrace.SpanExporter, error) {
			return keepingExporter{testSpans}, nil
		})
	})
	testSpans.Reset()
	t.Setenv("OTEL_TRACES_EXPORTER", "arbstr-test-memory")
}

func spanAttr(s tracetest.SpanStub, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func TestGenAITracingSpanPerAttemptIntegration(t *testing.T) {
	useTestSpanExporter(t)
	bad := hlNewUpstream(t, hlStatus(503))
	good := hlNewUpstream(t, hlOK)
	providers := hlProviderBlock("trace-alpha", bad.base(), "trace-secret-a", "gpt-trace", 1, 1, 0) +
		hlProviderBlock("trace-beta", good.base(), "trace-secret-b", "gpt-trace", 2, 2, 0)
	site := fmt.Sprintf(`tracing {
	span arbstr-test-request
}
arbstr {
%s	retry {
		attempts 2
		backoff 10ms
	}
	breaker {
		failures 10
	}
}
`, providers)
	tc := startCaddy(t, site)
	resp := tc.Post("/v1/chat/completions", hlChat("gpt-trace", false))
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get(headerRetries) != "2/trace-alpha" {
		t.Fatalf("got %d with retries %q: %s; want 200 after 2/trace-alpha", resp.StatusCode, resp.Header.Get(headerRetries), body)
	}
	// Stopping Caddy flushes its tracer provider's batch of spans.
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}

	spans := testSpans.GetSpans()
	var request *tracetest.SpanStub
	for i := range spans {
		if spans[i].Name == "arbstr-test-request" {
			request = &spans[i]
		}
	}
	if request == nil {
		t.Fatalf("no span of Caddy's tracing directive among %d spans", len(spans))
	}
	var attempts []tracetest.SpanStub
	for _, s := range spans {
		if s.Parent.SpanID() == request.SpanContext.SpanID() {
			attempts = append(attempts, s)
		}
	}
	slices.SortFunc(attempts, func(a, b tracetest.SpanStub) int { return a.StartTime.Compare(b.StartTime) })
	if len(attempts) != 3 {
		t.Fatalf("the request span has %d children; want 3 (two tries on trace-alpha, one on trace-beta)", len(attempts))
	}
	goodURL, _ := url.Parse(good.URL)
	wantProvider := []string{"trace-alpha", "trace-alpha", "trace-beta"}
	for i, s := range attempts {
		if s.Name != "chat gpt-trace" || s.SpanKind != trace.SpanKindClient {
			t.Errorf("attempt %d: span %q kind %v; want \"chat gpt-trace\", client", i+1, s.Name, s.SpanKind)
		}
		if s.SpanContext.TraceID() != request.SpanContext.TraceID() {
			t.Errorf("attempt %d is in another trace than its request", i+1)
		}
		for key, want := range map[string]any{
			"gen_ai.operation.name": "chat",
			"gen_ai.provider.name":  wantProvider[i],
			"gen_ai.request.model":  "gpt-trace",
			"gen_ai.response.model": "gpt-trace",
			"server.address":        "127.0.0.1",
			"arbstr.attempt.number": int64(i + 1),
		} {
			if v, ok := spanAttr(s, key); !ok || v.AsInterface() != want {
				t.Errorf("attempt %d: %s = %v (set: %v); want %v", i+1, key, v.AsInterface(), ok, want)
			}
		}
	}
	for i, s := range attempts[:2] {
		if v, _ := spanAttr(s, "error.type"); v.AsString() != "server_error" || s.Status.Code != codes.Error {
			t.Errorf("failed attempt %d: error.type %q status %v; want server_error, Error", i+1, v.AsString(), s.Status.Code)
		}
		if v, _ := spanAttr(s, "http.response.status_code"); v.AsInt64() != 503 {
			t.Errorf("failed attempt %d: status code attribute %d; want 503", i+1, v.AsInt64())
		}
		if _, ok := spanAttr(s, "gen_ai.usage.input_tokens"); ok {
			t.Errorf("failed attempt %d carries token usage", i+1)
		}
	}
	served := attempts[2]
	if _, ok := spanAttr(served, "error.type"); ok || served.Status.Code == codes.Error {
		t.Errorf("the served attempt is marked failed (status %v)", served.Status)
	}
	if v, _ := spanAttr(served, "server.port"); v.AsInt64() != int64(mustPort(t, goodURL)) {
		t.Errorf("served attempt: server.port %d; want %s", v.AsInt64(), goodURL.Port())
	}
	for key, want := range map[string]any{
		"gen_ai.usage.input_tokens":  int64(10),
		"gen_ai.usage.output_tokens": int64(20),
		"arbstr.attempt.result":      "ok",
	} {
		if v, ok := spanAttr(served, key); !ok || v.AsInterface() != want {
			t.Errorf("served attempt: %s = %v; want %v", key, v.AsInterface(), want)
		}
	}
	for _, s := range spans {
		for _, kv := range s.Attributes {
			if strings.Contains(kv.Value.Emit(), "trace-secret") {
				t.Errorf("span %q attribute %s holds an API key", s.Name, kv.Key)
			}
		}
	}
}

func mustPort(t *testing.T, u *url.URL) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(u.Port(), &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestTelemetryDocCaddyfilesAdapt keeps docs/telemetry.md honest: its
// Caddyfile examples adapt without error or warning.
func TestTelemetryDocCaddyfilesAdapt(t *testing.T) {
	doc, err := os.ReadFile("docs/telemetry.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```caddyfile\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	if len(blocks) == 0 {
		t.Fatal("docs/telemetry.md has no Caddyfile example")
	}
	for _, b := range blocks {
		if _, err := tryAdapt(b[1]); err != nil {
			t.Errorf("docs/telemetry.md example does not adapt: %v\n%s", err, b[1])
		}
	}
}

// The response model label comes from the config only, whatever the client
// asked for.
func TestGenAIResponseModelLabel(t *testing.T) {
	mk := func(models []string, mapping map[string]string) *provider {
		p, err := newProvider(&Provider{Name: "p", URL: "https://llm.example/v1", Models: models, Model: mapping}, caddy.NewReplacer())
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name          string
		p             *provider
		model         string
		request, resp string
	}{
		{"listed", mk([]string{"m1"}, nil), "m1", "m1", "m1"},
		{"mapped", mk(nil, map[string]string{"m1": "vendor-m1-2025"}), "m1", "m1", "vendor-m1-2025"},
		{"wildcard", mk(nil, map[string]string{"*": "vendor-default"}), "client-made-up", "*", "vendor-default"},
		{"any model", mk(nil, nil), "client-made-up", "*", "*"},
	}
	for _, c := range cases {
		if got := metricModel(c.p, c.model); got != c.request {
			t.Errorf("%s: request model label %q; want %q", c.name, got, c.request)
		}
		if got := responseModelLabel(c.p, c.model); got != c.resp {
			t.Errorf("%s: response model label %q; want %q", c.name, got, c.resp)
		}
	}
	if host, port, ok := serverAddress("https://llm.example/v1"); !ok || host != "llm.example" || port != 443 {
		t.Errorf("server address of https://llm.example/v1: %q %d %v; want llm.example 443", host, port, ok)
	}
}
