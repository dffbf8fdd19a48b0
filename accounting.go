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
	// noInput: the report has no input count (Anthropic's message_delta
	// before API versions that repeat it); the one known stands.
	noInput bool
}

// update is u after a stream event reported v: v's counts, which are the
// totals so far, except an input count v does not carry.
func (u usage) update(v usage) usage {
	if v.noInput {
		v.promptTokens, v.noInput = u.promptTokens, false
	}
	return v
}

// usageFrom reads a usage object in any of the APIs' spellings: OpenAI's
// chat and embeddings (prompt_tokens, completion_tokens), the Responses
// API's and Anthropic's (input_tokens, output_tokens; Anthropic's cache
// reads and writes count as input).
func usageFrom(b []byte, obj jsonscan.Span) usage {
	var prompt, input, completion, output = -1, -1, -1, -1
	cached := 0
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
			prompt = n
		case "input_tokens":
			input = n
		case "cache_creation_input_tokens", "cache_read_input_tokens":
			cached += n
		case "completion_tokens":
			completion = n
		case "output_tokens":
			output = n
		}
		return nil
	})
	// One spelling counts, never both: a provider answering in OpenAI's
	// shape with extra fields must not be billed twice.
	u := usage{known: true, promptTokens: prompt, completionTokens: max(completion, 0)}
	switch {
	case prompt >= 0:
	case input >= 0:
		u.promptTokens = input + cached
	default:
		u.promptTokens, u.noInput = 0, true
	}
	if completion < 0 && output >= 0 {
		u.completionTokens = output
	}
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
	extra.Set(zap.String("arbstr_endpoint", ex.proto.endpoint()))
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
