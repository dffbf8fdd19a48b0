package arbstr

import (
	"strconv"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/arbstr/caddy-arbstr/internal/jsonscan"
)

// usage is the token count a provider reported.
type usage struct {
	known            bool
	promptTokens     int
	completionTokens int
}

// usageFrom reads prompt_tokens and completion_tokens of a usage object.
func usageFrom(b []byte, obj jsonscan.Span) usage {
	u := usage{known: true}
	_ = jsonscan.Members(b, obj, func(key []byte, v jsonscan.Span) error {
		if v.Kind != jsonscan.Number {
			return nil
		}
		n, err := strconv.Atoi(string(b[v.Start:v.End]))
		if err != nil || n < 0 {
			return nil
		}
		switch string(key) {
		case "prompt_tokens":
			u.promptTokens = n
		case "completion_tokens":
			u.completionTokens = n
		}
		return nil
	})
	return u
}

// metricModel is the model label for a provider: the public name when the
// config lists it, "*" when the provider serves any model (so that client
// input never creates label values).
func metricModel(p *provider, model string) string {
	if p != nil && p.listed(model) {
		return model
	}
	return "*"
}

// logFields adds arbstr's fields to Caddy's access log entry of the request.
func (ex *exchange) logFields(providerName, model string, cost float64, costKnown bool) {
	extra, ok := ex.r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	if !ok {
		return
	}
	extra.Set(zap.String("arbstr_request_id", ex.requestID))
	if providerName != "" {
		extra.Set(zap.String("arbstr_provider", providerName))
	}
	if model != "" {
		extra.Set(zap.String("arbstr_model", truncateLogValue(model)))
	}
	extra.Set(zap.Int("arbstr_attempts", ex.attempts))
	if len(ex.records) > 0 {
		extra.Set(zap.String("arbstr_retries", retriesHeader(ex.records)))
	}
	extra.Set(zap.String("arbstr_outcome", ex.outcome))
	if ex.usage.known {
		extra.Set(zap.Int("arbstr_tokens_in", ex.usage.promptTokens))
		extra.Set(zap.Int("arbstr_tokens_out", ex.usage.completionTokens))
	}
	if costKnown {
		extra.Set(zap.Float64("arbstr_cost_sats", cost))
	}
	if ex.continuations > 0 {
		extra.Set(zap.Int("arbstr_continuations", ex.continuations))
	}
	if ex.complexity != nil {
		extra.Set(zap.Float64("arbstr_complexity", *ex.complexity))
	}
	if ex.tier != "" {
		extra.Set(zap.String("arbstr_tier", ex.tier))
	}
}

// maxLogValue bounds a client-controlled string in a log field.
const maxLogValue = maxModelName

// truncateLogValue cuts s to maxLogValue bytes (on a rune boundary), marking
// the cut, so that no client can make arbstr write a huge log line.
func truncateLogValue(s string) string {
	if len(s) <= maxLogValue {
		return s
	}
	cut := maxLogValue
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
