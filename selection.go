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
	api        providerAPI
	urls       [protocolCount]string // the endpoint of each protocol, from baseURL
	modelsURL  string
	apiKey     string
	redactKey  []byte // apiKey, when long enough to be redacted from relayed answers
	anyModel   bool
	served     map[string]bool
	upstream   map[string]string
	wildcard   string // upstream name for any model, from `model * name`
	inputRate  float64
	outputRate float64
	baseFee    float64
	prefill    bool // continues a partial assistant message (§13)
	context    int  // context window in tokens; 0: unknown
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
		modelsURL:  base + "/models",
		apiKey:     key,
		served:     map[string]bool{},
		upstream:   map[string]string{},
		inputRate:  p.InputRate,
		outputRate: p.OutputRate,
		baseFee:    p.BaseFee,
		prefill:    p.Prefill,
		context:    p.Context,
	}
	if rp.tier, err = parseTier(p.Tier); err != nil {
		return nil, fmt.Errorf("arbstr: provider %q: %v", p.Name, err)
	}
	if rp.api, err = parseProviderAPI(p.API); err != nil {
		return nil, fmt.Errorf("arbstr: provider %q: %v", p.Name, err)
	}
	for _, proto := range protocols {
		rp.urls[proto.id()] = base + proto.path()
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
	if len(key) >= minRedactedKey {
		rp.redactKey = []byte(key)
	}
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
	api          providerAPI // the providers that speak the request's API
	model        string
	policyHeader string // X-Arbstr-Policy, "" when absent
	lastUserText string // lower-cased
	inTokens     int
	outTokens    int
	// contextNeed is the context window the request needs, in tokens: body
	// bytes / 3 (the safe side of the usual 4) plus the requested output.
	contextNeed int
}

// availability answers whether a provider may be tried for a model now, and
// if not, when and why not.
type availability func(p *provider, model string) hold

// plan is the outcome of choose: the providers to try, cheapest first, and
// the policy that applied. The candidates are ordered lazily: a request
// usually needs only the first, and with a thousand providers sorting them
// all would cost more than the rest of the request.
type plan struct {
	policy *policy
	queue  candidateQueue
	// available filters the candidates as they are taken (nil: all are).
	available availability
	// every holds all the candidates, taken or not, available or not.
	every []ranked
	// pastCooldown: every candidate was held back by a 429 cooldown alone,
	// so the one whose cooldown ends first is tried once anyway (SPEC §7:
	// never worse than talking to it directly).
	pastCooldown bool
}

// next returns the cheapest candidate not returned yet that is available,
// or nil when none is left.
func (pl *plan) next() *provider {
	for {
		r, ok := pl.queue.pop()
		if !ok {
			return nil
		}
		if pl.available == nil {
			return r.p
		}
		if pl.available(r.p, pl.queue.model).free() {
			return r.p
		}
	}
}

// all returns every candidate, in order. It is for tests and error
// messages: it orders them all.
func (pl plan) all() []*provider {
	pl.queue.ranks = slices.Clone(pl.queue.ranks)
	var out []*provider
	for p := pl.next(); p != nil; p = pl.next() {
		out = append(out, p)
	}
	return out
}

// ordered returns every candidate, taken or not, cheapest first. Only a
// continuation needs them all in order (continuation.go).
func (pl *plan) ordered() []*provider {
	ranks := slices.Clone(pl.every)
	slices.SortFunc(ranks, func(a, b ranked) int {
		switch {
		case cheaper(a, b):
			return -1
		case cheaper(b, a):
			return 1
		}
		return 0
	})
	out := make([]*provider, len(ranks))
	for i, r := range ranks {
		out[i] = r.p
	}
	return out
}

// ranked is a candidate and its expected cost.
type ranked struct {
	p    *provider
	cost float64
	// level orders tiers before cost when routing by tier (chooseTiered):
	// 0 for the needed tier, 1 for the next one up…; always 0 otherwise.
	level int8
}

// cheaper is the candidates' order: tier level, expected cost, then name, so
// that equal costs come in the same order every time.
func cheaper(a, b ranked) bool {
	if a.level != b.level {
		return a.level < b.level
	}
	if a.cost != b.cost {
		return a.cost < b.cost
	}
	return a.p.name < b.p.name
}

// candidateQueue is a binary min-heap of candidates by cheaper: built in
// O(n), each candidate taken in O(log n).
type candidateQueue struct {
	ranks []ranked
	model string
}

func newCandidateQueue(ranks []ranked, model string) candidateQueue {
	q := candidateQueue{ranks: ranks, model: model}
	for i := len(ranks)/2 - 1; i >= 0; i-- {
		q.down(i)
	}
	return q
}

// pop takes the cheapest candidate.
func (q *candidateQueue) pop() (ranked, bool) {
	n := len(q.ranks) - 1
	if n < 0 {
		return ranked{}, false
	}
	// Swapped, not overwritten: the backing array keeps every candidate
	// (plan.every).
	q.ranks[0], q.ranks[n] = q.ranks[n], q.ranks[0]
	top := q.ranks[n]
	q.ranks = q.ranks[:n]
	q.down(0)
	return top, true
}

func (q *candidateQueue) down(i int) {
	h := q.ranks
	for {
		least := i
		if l := 2*i + 1; l < len(h) && cheaper(h[l], h[least]) {
			least = l
		}
		if r := 2*i + 2; r < len(h) && cheaper(h[r], h[least]) {
			least = r
		}
		if least == i {
			return
		}
		h[i], h[least] = h[least], h[i]
		i = least
	}
}

// choose applies SPEC §4: policy, candidates, expected-cost order. It is pure
// apart from the availability snapshot it is handed. Only the candidates
// taken from the plan are ordered and checked for availability (all of them
// when none is available, to say when one will be).
func choose(providers []*provider, policies []*policy, in selectionInput, available availability, now time.Time) (plan, *apiError) {
	pol, perr := matchPolicy(policies, in)
	if perr != nil {
		return plan{}, perr
	}
	ranks := make([]ranked, 0, len(providers))
	servedBySomeone, passedPolicy := false, false
	largestContext := 0 // of the providers whose window is too small
	for _, p := range providers {
		if p.api != in.api || !p.serves(in.model) {
			continue
		}
		servedBySomeone = true
		if pol != nil && pol.maxOutputRate > 0 && p.outputRate > pol.maxOutputRate {
			continue
		}
		passedPolicy = true
		if p.context > 0 && p.context < in.contextNeed {
			largestContext = max(largestContext, p.context)
			continue
		}
		ranks = append(ranks, ranked{p: p, cost: p.expectedCost(in.inTokens, in.outTokens)})
	}
	switch {
	case !servedBySomeone:
		return plan{}, errModelNotFound(in.model, in.api)
	case !passedPolicy:
		return plan{}, errPolicyExcludesAll(pol.name, in.model)
	case len(ranks) == 0:
		return plan{}, errContextTooSmall(in.model, in.contextNeed, largestContext)
	}
	pl := plan{policy: pol, queue: newCandidateQueue(ranks, in.model), available: available, every: ranks}
	// The first available candidate decides between a plan and a 503.
	if available == nil || pl.peekAvailable() {
		return pl, nil
	}
	soonest, until, onlyCooldowns := soonestHeld(pl.providers(), in.model, available)
	if onlyCooldowns {
		one := []ranked{{p: soonest}}
		return plan{policy: pol, queue: newCandidateQueue(one, in.model), every: one, pastCooldown: true}, nil
	}
	return plan{}, errAllUnhealthy(in.model, until.Sub(now))
}

// soonestHeld finds, among candidates that are all held back, the one free
// first (ties by name), when that is, and whether 429 cooldowns alone hold
// every one of them back.
func soonestHeld(providers []*provider, model string, available availability) (soonest *provider, until time.Time, onlyCooldowns bool) {
	onlyCooldowns = true
	for _, p := range providers {
		h := available(p, model)
		onlyCooldowns = onlyCooldowns && (h.free() || h.cooldownOnly)
		if soonest == nil || h.until.Before(until) || (h.until.Equal(until) && p.name < soonest.name) {
			soonest, until = p, h.until
		}
	}
	return soonest, until, onlyCooldowns
}

// providers lists every candidate, taken or not, available or not, in no
// particular order.
func (pl *plan) providers() []*provider {
	out := make([]*provider, len(pl.every))
	for i, r := range pl.every {
		out[i] = r.p
	}
	return out
}

// peekAvailable drops the unavailable candidates at the head of the queue
// and reports whether an available one is left there.
func (pl *plan) peekAvailable() bool {
	q := &pl.queue
	for len(q.ranks) > 0 {
		if pl.available(q.ranks[0].p, q.model).free() {
			return true
		}
		q.pop()
	}
	return false
}

// firstRetry is when the first of the providers may be tried again.
func firstRetry(providers []*provider, model string, available availability) time.Time {
	var first time.Time
	for _, p := range providers {
		if h := available(p, model); !h.free() && (first.IsZero() || h.until.Before(first)) {
			first = h.until
		}
	}
	return first
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
func selectionInputFor(r *http.Request, proto protocol, facts *requestFacts, keywordPolicies bool) selectionInput {
	in := selectionInput{
		api:          proto.api(),
		model:        facts.model,
		policyHeader: strings.TrimSpace(r.Header.Get(policyHeader)),
		inTokens:     facts.textBytes / 4,
		outTokens:    facts.expectedOutput(defaultOutputTokens),
		contextNeed:  len(facts.body)/3 + facts.maxTokens,
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
