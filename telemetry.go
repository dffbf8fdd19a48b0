package arbstr

import (
	"net/url"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// Telemetry by the OpenTelemetry GenAI semantic conventions (SPEC §16).
// arbstr is the GenAI client of its providers: one operation is one attempt
// to a provider. Label and attribute values are bounded as the caddy_arbstr_*
// labels are: provider names and model names come from the config, a model
// name a client sent is used only when the config lists it ("*" otherwise).

// genAIOperationChat is gen_ai.operation.name of chat completions, the
// Responses API and Anthropic Messages; embeddings have their own.
const genAIOperationChat = "chat"

// tracerName is the instrumentation scope of arbstr's spans.
const tracerName = "github.com/arbstr/caddy-arbstr"

// Bucket boundaries the GenAI metric conventions recommend.
var (
	genAITokenBuckets    = []float64{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864}
	genAIDurationBuckets = []float64{0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92}
	genAIFirstTokenBkts  = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0}
)

// genAIMetrics are the GenAI client metrics, in Prometheus naming: dots
// become underscores, a unit of seconds becomes the _seconds suffix.
type genAIMetrics struct {
	tokenUsage *prometheus.HistogramVec
	duration   *prometheus.HistogramVec
	firstToken *prometheus.HistogramVec
}

func newGenAIMetrics() genAIMetrics {
	models := []string{"gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model"}
	return genAIMetrics{
		tokenUsage: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "gen_ai_client_token_usage",
			Help:    "Tokens a provider reported for an attempt, by gen_ai_token_type (input, output).",
			Buckets: genAITokenBuckets}, append(models, "gen_ai_token_type")),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "gen_ai_client_operation_duration_seconds",
			Help:    "Duration of an attempt to a provider, to the end of its answer; error_type is set when it failed.",
			Buckets: genAIDurationBuckets}, append(models, "error_type")),
		firstToken: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "gen_ai_server_time_to_first_token_seconds",
			Help:    "Time from sending a streaming attempt to its first data event.",
			Buckets: genAIFirstTokenBkts}, models),
	}
}

func (g genAIMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{g.tokenUsage, g.duration, g.firstToken}
}

// responseModelLabel is gen_ai.response.model: the upstream name the config
// maps the model to, the public name when the config lists it, the `model *`
// name, or "*". A provider's own "model" field is free text and is not read.
func responseModelLabel(p *provider, model string) string {
	if up, ok := p.upstream[model]; ok {
		return up
	}
	if p.served[model] {
		return model
	}
	if p.wildcard != "" {
		return p.wildcard
	}
	return "*"
}

// attemptTelemetry follows one attempt: its GenAI metrics and, when the
// request is traced, its span.
type attemptTelemetry struct {
	operation     string // gen_ai.operation.name of the request's API
	provider      *provider
	requestModel  string
	responseModel string
	start         time.Time
	span          trace.Span // nil when the request is not traced
}

// beginAttempt starts the telemetry of an attempt to p. With Caddy's
// tracing directive on, the request's context carries Caddy's server span;
// the attempt's span is its child, made by the same tracer provider, so no
// tracer of arbstr's own is configured anywhere.
func (h *Handler) beginAttempt(ex *exchange, p *provider) attemptTelemetry {
	t := attemptTelemetry{operation: ex.proto.operation(), provider: p, start: time.Now()}
	t.requestModel, t.responseModel = metricModel(p, ex.facts.model), responseModelLabel(p, ex.facts.model)
	parent := trace.SpanFromContext(ex.r.Context())
	if !parent.IsRecording() {
		return t // tracing off or this request not sampled: nothing to record
	}
	attrs := []attribute.KeyValue{
		semconv.GenAIOperationNameKey.String(t.operation),
		semconv.GenAIProviderNameKey.String(p.name),
		semconv.GenAIRequestModelKey.String(t.requestModel),
		attribute.String("arbstr.request_id", ex.requestID),
	}
	if host, port, ok := serverAddress(p.baseURL); ok {
		attrs = append(attrs, semconv.ServerAddressKey.String(host), semconv.ServerPortKey.Int(port))
	}
	// Span name by the conventions: "{gen_ai.operation.name} {gen_ai.request.model}".
	_, t.span = parent.TracerProvider().Tracer(tracerName).Start(ex.r.Context(),
		t.operation+" "+t.requestModel, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return t
}

// end records the attempt's outcome. Only a committed attempt carries the
// request's usage (there is at most one), so tokens are never counted twice.
func (t *attemptTelemetry) end(ex *exchange, m *arbstrMetrics, res attemptResult) {
	errorType := ""
	if res.class != classNone {
		errorType = res.class.String()
	}
	u := ex.usage
	delivered := res.committed && u.known
	if m != nil {
		m.genAI.duration.WithLabelValues(t.labels(errorType)...).Observe(time.Since(t.start).Seconds())
		if delivered {
			m.genAI.tokenUsage.WithLabelValues(t.labels("input")...).Observe(float64(u.promptTokens))
			m.genAI.tokenUsage.WithLabelValues(t.labels("output")...).Observe(float64(u.completionTokens))
		}
	}
	if t.span == nil {
		return
	}
	t.span.SetAttributes(
		semconv.GenAIResponseModelKey.String(t.responseModel),
		attribute.String("arbstr.attempt.result", res.class.String()),
		attribute.Int("arbstr.attempt.number", ex.attempts),
	)
	if res.status != 0 {
		t.span.SetAttributes(semconv.HTTPResponseStatusCodeKey.Int(res.status))
	}
	if delivered {
		t.span.SetAttributes(
			semconv.GenAIUsageInputTokensKey.Int(u.promptTokens),
			semconv.GenAIUsageOutputTokensKey.Int(u.completionTokens),
		)
	}
	if errorType != "" {
		// The class, not the error's text: that may name the provider's URL.
		t.span.SetAttributes(semconv.ErrorTypeKey.String(errorType))
		t.span.SetStatus(codes.Error, errorType)
	}
	t.span.End()
}

// labels are the metric labels of the attempt, then last.
func (t *attemptTelemetry) labels(last string) []string {
	return []string{t.operation, t.provider.name, t.requestModel, t.responseModel, last}
}

// observeFirstToken records a stream's time to its first data event.
func (g genAIMetrics) observeFirstToken(operation string, p *provider, model string, d time.Duration) {
	g.firstToken.WithLabelValues(operation, p.name, metricModel(p, model), responseModelLabel(p, model)).Observe(d.Seconds())
}

// serverAddress is the host and port of a provider's URL, for server.address
// and server.port.
func serverAddress(base string) (string, int, bool) {
	u, err := url.Parse(base)
	if err != nil || u.Hostname() == "" {
		return "", 0, false
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return u.Hostname(), 0, false
	}
	return u.Hostname(), n, true
}
