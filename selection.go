package arbstr

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// provider is the provisioned form of a Provider: resolved key, parsed model
// table and precomputed URLs.
type provider struct {
	name       string
	baseURL    string
	chatURL    string
	modelsURL  string
	apiKey     string
	anyModel   bool
	served     map[string]bool
	upstream   map[string]string
	wildcard   string // upstream name for any model, from `model * name`
	inputRate  float64
	outputRate float64
	baseFee    float64
	tier       tier
	// discover is the interval of model discovery (0: off); discovered
	// holds its last good list, nil until one arrived.
	discover   time.Duration
	modelsLine map[string]bool // the `models` line, filtering discovered models
	discovered atomic.Pointer[map[string]bool]
}

func newProvider(p *Provider, repl *caddy.Replacer) (*provider, error) {
	key, err := resolveAPIKey(p, repl)
	if err != nil {
		return nil, err
	}
	base := strings.TrimRight(p.URL, "/")
	rp := &provider{
		name:       p.Name,
		baseURL:    base,
		chatURL:    base + "/chat/completions",
		modelsURL:  base + "/models",
		apiKey:     key,
		served:     map[string]bool{},
		upstream:   map[string]string{},
		inputRate:  p.InputRate,
		outputRate: p.OutputRate,
		baseFee:    p.BaseFee,
	}
	if rp.tier, err = parseTier(p.Tier); err != nil {
		return nil, fmt.Errorf("arbstr: provider %q: %v", p.Name, err)
	}
	if p.Discover != nil {
		rp.discover = cmp.Or(time.Duration(*p.Discover), defaultDiscoverInterval)
	}
	for _, m := range p.Models {
		rp.served[m] = true
		if rp.modelsLine == nil {
			rp.modelsLine = map[string]bool{}
		}
		rp.modelsLine[m] = true
	}
	for public, up := range p.Model {
		if public == "*" {
			rp.wildcard = up
			continue
		}
		rp.served[public] = true
		rp.upstream[public] = up
	}
	rp.anyModel = len(rp.served) == 0 || rp.wildcard != ""
	return rp, nil
}

// servesModel reports whether a provider configured with these models and
// model mapping serves the public model name.
func servesModel(models []string, mapping map[string]string, model string) bool {
	if len(models) == 0 && len(mapping) == 0 {
		return true
	}
	if _, ok := mapping["*"]; ok {
		return true
	}
	if _, ok := mapping[model]; ok {
		return true
	}
	return slices.Contains(models, model)
}

func (p *provider) serves(model string) bool {
	if d := p.discovered.Load(); d != nil {
		return (*d)[model] || p.mapped(model)
	}
	return p.anyModel || p.served[model]
}

// upstreamModel is the model name to send to this provider for a public name.
func (p *provider) upstreamModel(model string) string {
	if up, ok := p.upstream[model]; ok {
		return up
	}
	if p.wildcard != "" {
		return p.wildcard
	}
	return model
}

// expectedCost is the price in sats of a request of this size at this provider.
func (p *provider) expectedCost(inTokens, outTokens int) float64 {
	return float64(inTokens)*p.inputRate/1e6 + float64(outTokens)*p.outputRate/1e6 + p.baseFee
}

// policy is the provisioned form of a Policy.
type policy struct {
	name          string
	allowed       map[string]bool
	maxOutputRate float64
	keywords      []string // lower-cased
}

func newPolicy(p *Policy) *policy {
	rp := &policy{name: p.Name, maxOutputRate: p.MaxOutputRate}
	if len(p.AllowedModels) > 0 {
		rp.allowed = map[string]bool{}
		for _, m := range p.AllowedModels {
			rp.allowed[m] = true
		}
	}
	for _, k := range p.Keywords {
		if k = strings.TrimSpace(k); k != "" {
			rp.keywords = append(rp.keywords, strings.ToLower(k))
		}
	}
	return rp
}

func (p *policy) allows(model string) bool {
	return p.allowed == nil || p.allowed[model]
}

// selectionInput is what choose needs to know about one request.
type selectionInput struct {
	model        string
	policyHeader string // X-Arbstr-Policy, "" when absent
	lastUserText string // lower-cased
	inTokens     int
	outTokens    int
}

// availability answers whether a provider may be tried for a model now, and
// if not, when and why not.
type availability func(p *provider, model string) hold

// plan is the outcome of choose: the providers to try, cheapest first, and
// the policy that applied.
type plan struct {
	policy     *policy
	candidates []*provider
	// pastCooldown: every candidate was held back by a 429 cooldown alone,
	// so the one whose cooldown ends first is tried once anyway (SPEC §7:
	// never worse than talking to it directly).
	pastCooldown bool
}

// choose applies SPEC §4: policy, candidates, expected-cost order. It is pure
// apart from the availability snapshot it is handed.
func choose(providers []*provider, policies []*policy, in selectionInput, available availability, now time.Time) (plan, *apiError) {
	pol, perr := matchPolicy(policies, in)
	if perr != nil {
		return plan{}, perr
	}
	type ranked struct {
		p    *provider
		cost float64
	}
	var ranks []ranked
	servedBySomeone, passedPolicy := false, false
	var firstRetry time.Time
	var soonest *provider // the held-back candidate free first
	onlyCooldowns := true // every held-back candidate is held by a cooldown alone
	for _, p := range providers {
		if !p.serves(in.model) {
			continue
		}
		servedBySomeone = true
		if pol != nil && pol.maxOutputRate > 0 && p.outputRate > pol.maxOutputRate {
			continue
		}
		passedPolicy = true
		if available != nil {
			if h := available(p, in.model); !h.free() {
				onlyCooldowns = onlyCooldowns && h.cooldownOnly
				if firstRetry.IsZero() || h.until.Before(firstRetry) ||
					(h.until.Equal(firstRetry) && p.name < soonest.name) {
					firstRetry, soonest = h.until, p
				}
				continue
			}
		}
		ranks = append(ranks, ranked{p, p.expectedCost(in.inTokens, in.outTokens)})
	}
	switch {
	case !servedBySomeone:
		return plan{}, errModelNotFound(in.model)
	case !passedPolicy:
		return plan{}, errPolicyExcludesAll(pol.name, in.model)
	case len(ranks) == 0 && onlyCooldowns:
		return plan{policy: pol, candidates: []*provider{soonest}, pastCooldown: true}, nil
	case len(ranks) == 0:
		return plan{}, errAllUnhealthy(in.model, firstRetry.Sub(now))
	}
	slices.SortFunc(ranks, func(a, b ranked) int {
		switch {
		case a.cost < b.cost:
			return -1
		case a.cost > b.cost:
			return 1
		}
		return strings.Compare(a.p.name, b.p.name)
	})
	out := plan{policy: pol, candidates: make([]*provider, len(ranks))}
	for i, r := range ranks {
		out.candidates[i] = r.p
	}
	return out, nil
}

// matchPolicy finds the policy of a request: named by header (must exist and
// allow the model), or the first whose keyword occurs in the last user
// message and allows the model. No match is no policy.
func matchPolicy(policies []*policy, in selectionInput) (*policy, *apiError) {
	if in.policyHeader != "" {
		for _, p := range policies {
			if p.name == in.policyHeader {
				if !p.allows(in.model) {
					return nil, errPolicyForbidsModel(p.name, in.model)
				}
				return p, nil
			}
		}
		return nil, errUnknownPolicy(in.policyHeader)
	}
	if in.lastUserText == "" {
		return nil, nil
	}
	for _, p := range policies {
		if !p.allows(in.model) {
			continue
		}
		for _, k := range p.keywords {
			if strings.Contains(in.lastUserText, k) {
				return p, nil
			}
		}
	}
	return nil, nil
}

// policyHeader is the request header that names a policy.
const policyHeader = "X-Arbstr-Policy"

// selectionInputFor gathers what choose needs; the user's text is decoded
// only when keyword policies could match it.
func selectionInputFor(r *http.Request, facts *requestFacts, keywordPolicies bool) selectionInput {
	out := facts.maxTokens
	if out <= 0 {
		out = defaultOutputTokens
	}
	in := selectionInput{
		model:        facts.model,
		policyHeader: strings.TrimSpace(r.Header.Get(policyHeader)),
		inTokens:     facts.textBytes / 4,
		outTokens:    out,
	}
	if keywordPolicies && in.policyHeader == "" {
		in.lastUserText = facts.lastUserText()
	}
	return in
}

// hasKeywords reports whether any policy is chosen by keywords.
func hasKeywords(policies []*policy) bool {
	for _, p := range policies {
		if len(p.keywords) > 0 {
			return true
		}
	}
	return false
}
