package arbstr

import (
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/arbstr/caddy-arbstr/ledger"
)

// recordInLedger queues the request's ledger row (SPEC §11). It never
// blocks: a full queue drops the row and counts it.
func (ex *exchange) recordInLedger(providerName, model string, cost float64, costKnown bool) {
	app := ex.h.app
	if app == nil || app.ledger == nil {
		return
	}
	app.ledger.writer.Enqueue(ex.ledgerRow(app, providerName, model, cost, costKnown))
}

// ledgerRow is the row of a finished request.
func (ex *exchange) ledgerRow(app *App, providerName, model string, cost float64, costKnown bool) ledger.Row {
	row := ledger.Row{
		ID:        ex.requestID,
		Time:      ex.start,
		Instance:  app.instance,
		Model:     model,
		Provider:  providerName,
		Status:    ex.status,
		Outcome:   ex.outcome,
		Attempts:  ex.attempts,
		LatencyMS: time.Since(ex.start).Milliseconds(),
		ErrorCode: ex.errorCode,

		Continuations: ex.continuations,
		// Tier routing (SPEC §14): nil and "" when it is off.
		Complexity: ex.complexity,
		Tier:       ex.tier,
		Endpoint:   ex.proto.endpoint(),
	}
	if app.ClientID != "" {
		if repl, ok := ex.r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			row.Client = repl.ReplaceAll(app.ClientID, "")
		}
	}
	if ex.facts != nil {
		row.Stream = ex.facts.stream
	}
	if ex.plan != nil && ex.plan.policy != nil {
		row.Policy = ex.plan.policy.name
	}
	if len(ex.records) > 0 {
		row.Retries = retriesHeader(ex.records)
	}
	if ex.provider != nil {
		row.UpstreamModel = ex.provider.upstreamModel(model)
		if ex.firstEvent > 0 {
			ms := ex.firstEvent.Milliseconds()
			row.FirstEventMS = &ms
		}
	}
	if ex.usage.known {
		row.PromptTokens = int64(ex.usage.promptTokens)
		row.CompletionTokens = int64(ex.usage.completionTokens)
	}
	if costKnown && ex.plan != nil {
		row.CostSats = cost
		row.DearestCostSats = dearestCost(ex.plan.providers(), ex.usage, cost)
	}
	if row.Outcome == "broken_stream" && row.ErrorCode == "" {
		row.ErrorCode = "stream_broken" // told to the client in-band, after a 200
	}
	return row
}

// dearestCost is what the same tokens would have cost at the dearest
// provider that qualified for the request (never less than what was paid).
func dearestCost(candidates []*provider, u usage, paid float64) float64 {
	dearest := paid
	for _, p := range candidates {
		dearest = max(dearest, p.expectedCost(u.promptTokens, u.completionTokens))
	}
	return dearest
}

// instanceID is Caddy's instance ID, or "" when it cannot be read.
func instanceID() string {
	id, err := caddy.InstanceID()
	if err != nil {
		return ""
	}
	return id.String()
}
