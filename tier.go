package arbstr

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// tier is a provider's class: cheap local models, standard hosted ones, or
// frontier models. A request needs a tier or above (SPEC §14).
type tier int8

const (
	tierLocal tier = iota
	tierStandard
	tierFrontier
	tierCount
	// tierAny: the request sets no tier; selection ignores tiers.
	tierAny tier = -1
)

var tierNames = [tierCount]string{"local", "standard", "frontier"}

func (t tier) String() string {
	if t < 0 || t >= tierCount {
		return ""
	}
	return tierNames[t]
}

// parseTier reads a tier name; "" is the default, standard.
func parseTier(s string) (tier, error) {
	if s == "" {
		return tierStandard, nil
	}
	for i, name := range tierNames {
		if s == name {
			return tier(i), nil
		}
	}
	return tierAny, fmt.Errorf("tier %q is not one of local, standard, frontier", s)
}

// complexityHeader is the request header that sets the needed tier by hand.
const complexityHeader = "X-Arbstr-Complexity"

// Response headers of tier routing.
const (
	headerComplexity = "x-arbstr-complexity"
	headerTier       = "x-arbstr-tier"
)

// complexityOverride reads X-Arbstr-Complexity: low, medium or high map to
// the tiers local, standard and frontier. ok is false when it is absent.
func complexityOverride(r *http.Request) (need tier, ok bool, apiErr *apiError) {
	v := strings.TrimSpace(r.Header.Get(complexityHeader))
	switch strings.ToLower(v) {
	case "":
		return tierAny, false, nil
	case "low":
		return tierLocal, true, nil
	case "medium":
		return tierStandard, true, nil
	case "high":
		return tierFrontier, true, nil
	}
	return tierAny, false, errInvalidRequest("", "the %s header must be low, medium or high, not %q", complexityHeader, truncate(v, 40))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// tierFor is the lowest tier a score allows: below low local, above high
// frontier, else standard.
func tierFor(score, low, high float64) tier {
	switch {
	case score < low:
		return tierLocal
	case score > high:
		return tierFrontier
	}
	return tierStandard
}

// formatScore is a score as x-arbstr-complexity shows it.
func formatScore(score float64) string {
	return strconv.FormatFloat(score, 'f', 2, 64)
}

// groupByTier splits providers by tier, keeping their order.
func groupByTier(providers []*provider) [tierCount][]*provider {
	var out [tierCount][]*provider
	for _, p := range providers {
		out[p.tier] = append(out[p.tier], p)
	}
	return out
}

// chooseTiered is choose with tiers (SPEC §14): the candidates of the needed
// tier come first, cheapest first, then those of each tier above it; a tier
// with no available candidate is skipped, so the request escalates, never
// down. Only when no tier at or above need has a free candidate does a
// provider held back by a 429 cooldown alone get its one try (the lowest
// tier's, as choose picks it). Policies and price caps apply in every tier,
// since each tier's candidates are choose's own.
func chooseTiered(byTier [tierCount][]*provider, policies []*policy, in selectionInput, need tier, available availability, now time.Time) (plan, *apiError) {
	var ranks []ranked
	var pol *policy
	var held *plan
	var unhealthy, excluded, tooLarge *apiError
	for t := need; t < tierCount; t++ {
		if len(byTier[t]) == 0 {
			continue
		}
		pl, err := choose(byTier[t], policies, in, available, now)
		switch {
		case err == nil && pl.pastCooldown:
			if held == nil {
				held = &pl
			}
		case err == nil:
			pol = pl.policy
			for _, r := range pl.every {
				r.level = int8(t - need)
				ranks = append(ranks, r)
			}
		case err.code == "model_not_found":
		case err.code == "providers_unavailable":
			if unhealthy == nil || err.retryAfter < unhealthy.retryAfter {
				unhealthy = err
			}
		case err.code == "no_provider_for_policy":
			excluded = err
		case err.code == "context_length_exceeded":
			// A higher tier's context windows may be larger.
			if tooLarge == nil {
				tooLarge = err
			}
		default:
			return plan{}, err // the policy header's errors: the same in every tier
		}
	}
	switch {
	case len(ranks) > 0:
		return plan{policy: pol, queue: newCandidateQueue(ranks, in.model), available: available, every: ranks}, nil
	case held != nil:
		return *held, nil
	case unhealthy != nil:
		return plan{}, unhealthy
	case excluded != nil:
		return plan{}, excluded
	case tooLarge != nil:
		return plan{}, tooLarge
	}
	for t := tierLocal; t < need; t++ {
		for _, p := range byTier[t] {
			if p.api == in.api && p.serves(in.model) {
				return plan{}, errNoProviderOfTier(in.model, need)
			}
		}
	}
	return plan{}, errModelNotFound(in.model, in.api)
}

func errNoProviderOfTier(model string, need tier) *apiError {
	return &apiError{status: http.StatusBadRequest,
		message: fmt.Sprintf("no provider of tier %s or above serves the model %q, and this request needs tier %s; send %s: %s to allow a lower tier, or give a provider of the model 'tier %s'",
			need, model, need, complexityHeader, [tierCount]string{"low", "medium", "high"}[max(need-1, 0)], need),
		errType: "invalid_request_error", param: "model", code: "no_provider_for_tier"}
}

// choosePlan chooses the providers of a request: by price alone, or, when
// routing by tier, among the tier its complexity (or X-Arbstr-Complexity)
// needs and those above. It records the score on the exchange and in the
// x-arbstr-complexity header.
func (h *Handler) choosePlan(ex *exchange, in selectionInput) (plan, *apiError) {
	now := time.Now()
	if !h.tiered {
		return choose(h.providers, h.policies, in, h.health.snapshot(), now)
	}
	need, overridden, apiErr := complexityOverride(ex.r)
	if apiErr != nil {
		return plan{}, apiErr
	}
	if h.scorer != nil {
		score := h.scorer.score(measure(ex.facts))
		ex.complexity = &score
		ex.w.Header().Set(headerComplexity, formatScore(score))
		if !overridden {
			need = tierFor(score, h.scorer.low, h.scorer.high)
		}
	}
	if need == tierAny {
		return choose(h.providers, h.policies, in, h.health.snapshot(), now)
	}
	return chooseTiered(h.byTier, h.policies, in, need, h.health.snapshot(), now)
}

// complexityText is the score as placeholders show it; "" without one.
func (ex *exchange) complexityText() string {
	if ex.complexity == nil {
		return ""
	}
	return formatScore(*ex.complexity)
}

// checkFrontierTier refuses a complexity block that could send requests to
// a tier nobody has: a score above high needs a frontier provider.
func (h *Handler) checkFrontierTier() error {
	if h.Complexity == nil {
		return nil
	}
	s := newScorer(h.Complexity)
	if s.high >= 1 {
		return nil // no score is above 1
	}
	for _, p := range h.Providers {
		if p.Tier == tierFrontier.String() {
			return nil
		}
	}
	return fmt.Errorf("arbstr: complexity: requests scoring above high (%v) need a provider with 'tier frontier', and none has it; mark one 'tier frontier' or set 'high 1'", s.high)
}
