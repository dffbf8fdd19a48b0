package arbstr

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// healthPool holds provider health across config reloads: a reload
// provisions the new handler (taking a reference) before the old one is
// cleaned up (dropping its reference), so state of providers that stay in
// the config survives, and state of removed providers is dropped.
var healthPool = caddy.NewUsagePool()

// breakerSettings are the provisioned breaker options.
type breakerSettings struct {
	failures int
	open     time.Duration
	// probeLease bounds how long one probe may hold the half-open circuit, in
	// case its request is lost without reporting back.
	probeLease time.Duration
	// cooldownMax caps a 429's cooldown, whatever the provider's hint.
	cooldownMax time.Duration
}

func newBreakerSettings(c *BreakerConfig) breakerSettings {
	s := breakerSettings{failures: defaultBreakerFailures, open: defaultBreakerOpen, cooldownMax: defaultCooldownMax}
	if c != nil && c.Failures > 0 {
		s.failures = c.Failures
	}
	if c != nil && c.Open > 0 {
		s.open = time.Duration(c.Open)
	}
	s.probeLease = 2 * time.Minute
	return s
}

// circuitState is the state of one breaker.
type circuitState int

const (
	circuitClosed circuitState = iota
	circuitOpen
	circuitHalfOpen // open period over: one probe may go, or is going
)

func (s circuitState) String() string {
	return [...]string{"closed", "open", "half_open"}[s]
}

// modelHealth is the breaker and cooldown of one provider for one model.
type modelHealth struct {
	consecutive   int
	open          bool
	openUntil     time.Time
	probing       bool
	probeUntil    time.Time
	cooldownUntil time.Time
	// cooldownAsked is the end the provider asked for when cooldown_max cut
	// it short (zero otherwise), shown in the admin API.
	cooldownAsked time.Time
	failures      int
	successes     int
	lastClass     failureClass
	lastFailureAt time.Time
	lastUsed      uint64 // ordinal of the last use, for least-recently-used eviction
}

func (m *modelHealth) state(now time.Time) circuitState {
	switch {
	case !m.open:
		return circuitClosed
	case now.Before(m.openUntil):
		return circuitOpen
	}
	return circuitHalfOpen
}

// hold is whether, and why, a provider may not be tried for a model now.
type hold struct {
	// until is when it may be tried again; zero: now.
	until time.Time
	// cooldownOnly: a 429 cooldown alone holds it back (its circuit is
	// closed, or half open with no probe in flight), so a request with
	// nowhere else to go may still try it once, as a direct client would.
	cooldownOnly bool
}

func (h hold) free() bool { return h.until.IsZero() }

func (m *modelHealth) hold(now time.Time) hold {
	var byCircuit time.Time
	switch m.state(now) {
	case circuitOpen:
		byCircuit = m.openUntil
	case circuitHalfOpen:
		if m.probing && now.Before(m.probeUntil) {
			byCircuit = now.Add(time.Second)
		}
	}
	if !now.Before(m.cooldownUntil) {
		return hold{until: byCircuit}
	}
	// An open circuit may outlast the cooldown: name the later end, or
	// Retry-After would send clients back too early.
	if byCircuit.After(m.cooldownUntil) {
		return hold{until: byCircuit}
	}
	return hold{until: m.cooldownUntil, cooldownOnly: byCircuit.IsZero()}
}

// providerHealth is the pooled health of one provider (by name and URL).
type providerHealth struct {
	mu     sync.Mutex
	models map[string]*modelHealth
	uses   uint64       // counts uses of models, for lastUsed
	info   providerInfo // the latest config seen, for the admin API
}

// Destruct implements caddy.Destructor.
func (*providerHealth) Destruct() error { return nil }

// maxModelsPerProvider bounds the health kept for the models a provider was
// asked for beyond those its config names (an any-model provider's come from
// clients): past it, the least recently used entry is dropped.
const maxModelsPerProvider = 256

// lookup returns the health kept for a model, nil when none, and marks it
// used. Health is kept per model name: a provider can be down for one model
// and fine for another, and a name it does not know (404) is that name's
// business alone.
func (ph *providerHealth) lookup(model string) *modelHealth {
	m := ph.models[model]
	if m != nil {
		ph.uses++
		m.lastUsed = ph.uses
	}
	return m
}

// entry returns the health of a model, creating it. Models p's config names
// are always kept; others (client input) are bounded by evicting the least
// recently used, so invented names can neither grow the map nor crowd out a
// real model.
func (ph *providerHealth) entry(p *provider, model string) *modelHealth {
	if m := ph.lookup(model); m != nil {
		return m
	}
	if !p.listed(model) {
		ph.evictBeyond(p, maxModelsPerProvider-1)
	}
	ph.uses++
	m := &modelHealth{lastUsed: ph.uses}
	ph.models[model] = m
	return m
}

// evictBeyond drops least recently used entries of models p's config does
// not name until at most keep are left.
func (ph *providerHealth) evictBeyond(p *provider, keep int) {
	for {
		n, lru := 0, ""
		var lruUse uint64
		for name, m := range ph.models {
			if p.listed(name) {
				continue
			}
			if n == 0 || m.lastUsed < lruUse {
				lru, lruUse = name, m.lastUsed
			}
			n++
		}
		if n <= keep {
			return
		}
		delete(ph.models, lru)
	}
}

// providerInfo is what the admin API shows of a provider's config; never the key.
type providerInfo struct {
	Name       string   `json:"name"`
	URL        string   `json:"url"`
	Models     []string `json:"models"`
	AnyModel   bool     `json:"any_model"`
	InputRate  float64  `json:"input_rate"`
	OutputRate float64  `json:"output_rate"`
	BaseFee    float64  `json:"base_fee"`
	// CooldownMax is the longest a 429 keeps this provider away (cooldown_max
	// of the config that loaded it last), e.g. "5m0s".
	CooldownMax string `json:"cooldown_max"`
	// Tier is the provider's tier: local, standard or frontier.
	Tier string `json:"tier"`
	// API is the wire API the provider speaks: openai or anthropic.
	API string `json:"api"`
	// Prefill: the provider finishes broken chat streams (SPEC §13).
	Prefill bool `json:"prefill"`
	// Context is the provider's context window in tokens; 0: unknown.
	Context int `json:"context"`
	// Discovery is the state of model discovery, for providers with discover.
	Discovery *discoveryStatus `json:"discovery,omitempty"`
}

// healthRegistry is one handler's view of the pooled provider health.
type healthRegistry struct {
	settings breakerSettings
	byName   map[string]*providerHealth
	keys     []string
	now      func() time.Time
}

func healthKey(p *provider) string { return p.name + "\x00" + p.baseURL }

func loadHealthRegistry(providers []*provider, settings breakerSettings) *healthRegistry {
	reg := &healthRegistry{settings: settings, byName: map[string]*providerHealth{}, now: time.Now}
	for _, p := range providers {
		key := healthKey(p)
		v, _ := healthPool.LoadOrStore(key, &providerHealth{models: map[string]*modelHealth{}})
		ph := v.(*providerHealth)
		ph.mu.Lock()
		ph.info = p.info()
		ph.info.CooldownMax = settings.cooldownMax.String()
		ph.capCooldowns(reg.now(), settings.cooldownMax)
		ph.mu.Unlock()
		reg.byName[p.name] = ph
		reg.keys = append(reg.keys, key)
	}
	return reg
}

// capCooldowns shortens cooldowns that end more than max from now: a config
// loaded with a lower cooldown_max applies to cooldowns already running.
func (ph *providerHealth) capCooldowns(now time.Time, max time.Duration) {
	limit := now.Add(max)
	for _, m := range ph.models {
		if m.cooldownUntil.After(limit) {
			if m.cooldownAsked.IsZero() {
				m.cooldownAsked = m.cooldownUntil
			}
			m.cooldownUntil = limit
		}
	}
}

func (p *provider) info() providerInfo {
	models, anyModel := p.modelNames()
	if models == nil {
		models = []string{}
	}
	return providerInfo{Name: p.name, URL: p.baseURL, Models: models, AnyModel: anyModel,
		InputRate: p.inputRate, OutputRate: p.outputRate, BaseFee: p.baseFee, Tier: p.tier.String(),
		API: p.api.String(), Prefill: p.prefill, Context: p.context}
}

func (reg *healthRegistry) release() {
	for _, k := range reg.keys {
		_, _ = healthPool.Delete(k)
	}
	reg.keys = nil
}

// available tells whether p may be tried for model now; if not, when.
func (reg *healthRegistry) available(p *provider, model string) (bool, time.Time) {
	h := reg.holdAt(p, model, reg.now())
	return h.free(), h.until
}

// snapshot is availability at one instant, for choosing among many
// providers with one reading of the clock.
func (reg *healthRegistry) snapshot() availability {
	now := reg.now()
	return func(p *provider, model string) hold { return reg.holdAt(p, model, now) }
}

func (reg *healthRegistry) holdAt(p *provider, model string, now time.Time) hold {
	ph := reg.byName[p.name]
	ph.mu.Lock()
	defer ph.mu.Unlock()
	m := ph.lookup(model)
	if m == nil {
		return hold{}
	}
	return m.hold(now)
}

// ticket is the permission to send one attempt to a provider; a probe ticket
// holds the half-open circuit until it is finished.
type ticket struct {
	ph    *providerHealth
	p     *provider
	model string
	probe bool
	// pastCooldown: the attempt goes through a 429 cooldown because no
	// candidate was free (SPEC §7); it gets one try, never a retry.
	pastCooldown bool
	done         bool
}

// begin asks to send an attempt. It fails when the circuit is open, or half
// open with its one probe already taken, or (unless pastCooldown) the
// provider is cooling down: the caller moves on, nobody waits.
func (reg *healthRegistry) begin(p *provider, model string, pastCooldown bool) (*ticket, bool) {
	ph := reg.byName[p.name]
	now := reg.now()
	ph.mu.Lock()
	defer ph.mu.Unlock()
	m := ph.entry(p, model)
	t := &ticket{ph: ph, p: p, model: model, pastCooldown: pastCooldown}
	if now.Before(m.cooldownUntil) && !pastCooldown {
		return nil, false
	}
	switch m.state(now) {
	case circuitOpen:
		return nil, false
	case circuitHalfOpen:
		if m.probing && now.Before(m.probeUntil) {
			return nil, false
		}
		m.probing = true
		m.probeUntil = now.Add(reg.settings.probeLease)
		t.probe = true
	}
	return t, true
}

// finish records an attempt's outcome. Success closes the circuit; a failure
// that counts (SPEC §7) may open it; anything else only frees the probe.
// It returns the circuit state afterwards.
func (reg *healthRegistry) finish(t *ticket, class failureClass) circuitState {
	now := reg.now()
	t.ph.mu.Lock()
	defer t.ph.mu.Unlock()
	m := t.ph.entry(t.p, t.model)
	if t.probe && !t.done {
		m.probing = false
	}
	t.done = true
	switch {
	case class == classNone:
		m.consecutive = 0
		m.open = false
		m.successes++
	case class.countsAgainstBreaker():
		m.consecutive++
		m.failures++
		m.lastClass = class
		m.lastFailureAt = now
		if t.probe || m.consecutive >= reg.settings.failures {
			m.open = true
			m.openUntil = now.Add(reg.settings.open)
		}
	case class != classClientGone && class != classDeadline:
		m.failures++
		m.lastClass = class
		m.lastFailureAt = now
	}
	return m.state(now)
}

// committed closes a half-open circuit whose probe's stream has just
// committed: the provider answers again, and others may use it while the
// probe's answer goes on. The consecutive failure count is left to the
// stream's outcome, so a provider whose streams always break still opens.
func (reg *healthRegistry) committed(t *ticket) {
	if !t.probe || t.done {
		return
	}
	t.ph.mu.Lock()
	defer t.ph.mu.Unlock()
	if m := t.ph.lookup(t.model); m != nil {
		m.open = false
		m.probing = false
	}
	t.done = true
}

// abandon frees a probe whose attempt never reported (client gone, deadline,
// a bug): the circuit stays half open for the next request to probe.
func (reg *healthRegistry) abandon(t *ticket) {
	if t == nil || t.done {
		return
	}
	t.ph.mu.Lock()
	defer t.ph.mu.Unlock()
	if m := t.ph.lookup(t.model); m != nil && t.probe {
		m.probing = false
	}
	t.done = true
}

// coolDown keeps p away from model until at least until, but no longer than
// cooldown_max from now: a provider's hint of years must not lock it out
// (state survives reloads). A shorter hint never shortens a cooldown.
func (reg *healthRegistry) coolDown(p *provider, model string, until time.Time) {
	ph := reg.byName[p.name]
	now := reg.now()
	ph.mu.Lock()
	defer ph.mu.Unlock()
	m := ph.entry(p, model)
	asked := time.Time{}
	if limit := now.Add(reg.settings.cooldownMax); until.After(limit) {
		asked, until = until, limit
	}
	if until.After(m.cooldownUntil) {
		m.cooldownUntil = until
		m.cooldownAsked = asked
	}
}

// modelStatus is the admin API's view of one provider and model.
type modelStatus struct {
	Model         string    `json:"model"`
	State         string    `json:"state"`
	OpenUntil     time.Time `json:"open_until,omitzero"`
	CooldownUntil time.Time `json:"cooldown_until,omitzero"`
	// CooldownRequestedUntil is the end the provider asked for when
	// cooldown_max cut the cooldown short.
	CooldownRequestedUntil time.Time `json:"cooldown_requested_until,omitzero"`
	ConsecutiveFailures    int       `json:"consecutive_failures"`
	Failures               int       `json:"failures"`
	Successes              int       `json:"successes"`
	LastErrorClass         string    `json:"last_error_class,omitempty"`
	LastFailureAt          time.Time `json:"last_failure_at,omitzero"`
}

// providerStatus is the admin API's view of one provider.
type providerStatus struct {
	providerInfo
	Health []modelStatus `json:"health"`
}

func (ph *providerHealth) status(now time.Time) providerStatus {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	st := providerStatus{providerInfo: ph.info, Health: []modelStatus{}}
	for name, m := range ph.models {
		ms := modelStatus{Model: name, State: m.state(now).String(), ConsecutiveFailures: m.consecutive,
			Failures: m.failures, Successes: m.successes, LastFailureAt: m.lastFailureAt}
		if m.open {
			ms.OpenUntil = m.openUntil
		}
		if now.Before(m.cooldownUntil) {
			ms.CooldownUntil = m.cooldownUntil
			ms.CooldownRequestedUntil = m.cooldownAsked
		}
		if m.lastClass != classNone {
			ms.LastErrorClass = m.lastClass.String()
		}
		st.Health = append(st.Health, ms)
	}
	sort.Slice(st.Health, func(i, j int) bool { return st.Health[i].Model < st.Health[j].Model })
	return st
}

// allProviderStatus lists every provider of every loaded config, by name.
func allProviderStatus(now time.Time) []providerStatus {
	var out []providerStatus
	healthPool.Range(func(_, v any) bool {
		out = append(out, v.(*providerHealth).status(now))
		return true
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].URL < out[j].URL
	})
	return out
}

// resetTarget names health entries an operator cleared.
type resetTarget struct {
	Provider string `json:"provider"`
	URL      string `json:"url"`
	Model    string `json:"model"`
}

// resetHealth closes the breakers and ends the cooldowns of every provider
// (or the one named) for every model (or the one named), keeping the counts
// of past failures and successes. It lists what it cleared, or says that no
// loaded config has the provider, or the provider's model, it names.
func resetHealth(providerName, model string) ([]resetTarget, error) {
	var matched []*providerHealth
	healthPool.Range(func(_, v any) bool {
		ph := v.(*providerHealth)
		ph.mu.Lock()
		name := ph.info.Name
		ph.mu.Unlock()
		if providerName == "" || name == providerName {
			matched = append(matched, ph)
		}
		return true
	})
	if providerName != "" && len(matched) == 0 {
		return nil, fmt.Errorf("no provider named %q is configured; GET %s lists the providers", providerName, adminProvidersPath)
	}
	if providerName != "" && model != "" && !slices.ContainsFunc(matched, func(ph *providerHealth) bool { return ph.servesModel(model) }) {
		return nil, fmt.Errorf("provider %q does not serve model %q; GET %s lists its models", providerName, model, adminProvidersPath)
	}
	cleared := []resetTarget{}
	for _, ph := range matched {
		cleared = append(cleared, ph.reset(model)...)
	}
	slices.SortFunc(cleared, func(a, b resetTarget) int {
		return cmp.Or(cmp.Compare(a.Provider, b.Provider), cmp.Compare(a.URL, b.URL), cmp.Compare(a.Model, b.Model))
	})
	return cleared, nil
}

func (ph *providerHealth) servesModel(model string) bool {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	return ph.info.AnyModel || slices.Contains(ph.info.Models, model)
}

// reset clears the breaker and cooldown of one model ("" for all) and lists
// the entries it cleared.
func (ph *providerHealth) reset(model string) []resetTarget {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	var out []resetTarget
	for name, m := range ph.models {
		if model != "" && name != model {
			continue
		}
		m.consecutive = 0
		m.open, m.openUntil = false, time.Time{}
		m.probing, m.probeUntil = false, time.Time{}
		m.cooldownUntil, m.cooldownAsked = time.Time{}, time.Time{}
		out = append(out, resetTarget{Provider: ph.info.Name, URL: ph.info.URL, Model: name})
	}
	return out
}
