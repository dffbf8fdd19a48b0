package arbstr

import (
	"errors"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// arbstrMetrics are the caddy_arbstr_* collectors. They are created once per
// process and registered in each config's registry, so their values survive
// reloads (as Caddy's reverse_proxy does with its own). Label values come
// from the config (provider and model names are bounded there); a model
// name from a request is used only when a provider serves it.
type arbstrMetrics struct {
	requests     *prometheus.CounterVec
	attempts     *prometheus.CounterVec
	costSats     *prometheus.CounterVec
	tokens       *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	firstEvent   *prometheus.HistogramVec
	circuitState *prometheus.GaugeVec
	tierRequests *prometheus.CounterVec
	// genAI are the OpenTelemetry GenAI metrics (telemetry.go).
	genAI genAIMetrics
	// continuations counts attempts to finish a broken stream (§13).
	continuations *prometheus.CounterVec
}

var (
	metricsOnce      sync.Once
	metricsSingleton *arbstrMetrics
)

func newArbstrMetrics() *arbstrMetrics {
	const ns, sub = "caddy", "arbstr"
	buckets := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	return &arbstrMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "requests_total", Help: "Chat completion requests by provider that served them, model and outcome."},
			[]string{"provider", "model", "outcome"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "attempts_total", Help: "Upstream attempts by provider and result class."},
			[]string{"provider", "result"}),
		costSats: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "cost_sats_total", Help: "Cost of served requests in satoshis, from reported usage."},
			[]string{"provider", "model"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tokens_total", Help: "Tokens reported by providers, by direction (input, output)."},
			[]string{"provider", "model", "direction"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "upstream_latency_seconds", Help: "Time from sending an attempt to the provider's response headers.",
			Buckets: buckets}, []string{"provider"}),
		firstEvent: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "time_to_first_event_seconds", Help: "Time from sending a streaming attempt to its first data event.",
			Buckets: buckets}, []string{"provider"}),
		circuitState: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "circuit_state", Help: "Breaker state per provider and model: 0 closed, 1 open, 2 half open."},
			[]string{"provider", "model"}),
		tierRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tier_requests_total", Help: "Requests routed by tier, by the tier of the provider that answered."},
			[]string{"tier"}),
		genAI: newGenAIMetrics(),
		continuations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "continuations_total", Help: "Attempts to finish a broken stream, by continuing provider and outcome (ok, broken, refused, client_gone)."},
			[]string{"provider", "outcome"}),
	}
}

func (m *arbstrMetrics) collectors() []prometheus.Collector {
	return append([]prometheus.Collector{m.requests, m.attempts, m.costSats, m.tokens, m.latency, m.firstEvent, m.circuitState, m.continuations, m.tierRequests},
		m.genAI.collectors()...)
}

// loadMetrics returns the process's collectors, registered in this config's
// metrics registry.
func loadMetrics(ctx caddy.Context) (*arbstrMetrics, error) {
	metricsOnce.Do(func() { metricsSingleton = newArbstrMetrics() })
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return metricsSingleton, nil
	}
	for _, c := range metricsSingleton.collectors() {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return nil, err
			}
		}
	}
	return metricsSingleton, nil
}

func (m *arbstrMetrics) observeAttempt(p *provider, model string, class failureClass, state circuitState) {
	if m == nil {
		return
	}
	m.attempts.WithLabelValues(p.name, class.String()).Inc()
	m.circuitState.WithLabelValues(p.name, metricModel(p, model)).Set(float64(state))
}

func (m *arbstrMetrics) observeUpstreamHeaders(provider string, d time.Duration) {
	if m == nil {
		return
	}
	m.latency.WithLabelValues(provider).Observe(d.Seconds())
}

func (m *arbstrMetrics) observeFirstEvent(operation string, p *provider, model string, d time.Duration) {
	if m == nil {
		return
	}
	m.firstEvent.WithLabelValues(p.name).Observe(d.Seconds())
	m.genAI.observeFirstToken(operation, p, model, d)
}

// observeRequest counts a finished request. A request no provider served
// (refused before one was chosen, or every one failed) is counted under its
// model when the config lists that name, else under "*", so that client
// input never becomes a label and "every circuit open for gpt-4o" can be
// alerted on.
func (m *arbstrMetrics) observeRequest(ex *exchange, provider, model string, cost float64, costKnown bool) {
	if m == nil {
		return
	}
	if ex.provider != nil {
		model = metricModel(ex.provider, model)
	} else {
		model = configuredModelLabel(ex.h.providers, model)
	}
	outcome := ex.outcome
	if outcome == "" {
		outcome = "unknown"
	}
	m.requests.WithLabelValues(provider, model, outcome).Inc()
	if ex.tier != "" {
		m.tierRequests.WithLabelValues(ex.tier).Inc()
	}
	if provider == "" || !ex.usage.known {
		return
	}
	m.tokens.WithLabelValues(provider, model, "input").Add(float64(ex.usage.promptTokens))
	m.tokens.WithLabelValues(provider, model, "output").Add(float64(ex.usage.completionTokens))
	if costKnown {
		m.costSats.WithLabelValues(provider, model).Add(cost)
	}
}

// configuredModelLabel is model when some provider's config lists it, else
// "*" (a name only an any-model provider could serve, or none at all).
func configuredModelLabel(providers []*provider, model string) string {
	for _, p := range providers {
		if p.listed(model) {
			return model
		}
	}
	return "*"
}
