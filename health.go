package arbstr

import (
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
}

func newBreakerSettings(c *BreakerConfig) breakerSettings {
	s := breakerSettings{failures: defaultBreakerFailures, open: defaultBreakerOpen}
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
	failures      int
	successes     int
	lastClass     failureClass
	lastFailureAt time.Time
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

// providerHealth is the pooled health of one provider (by name and URL).
type providerHealth struct {
	mu     sync.Mutex
	models map[string]*modelHealth
	info   providerInfo // the latest config seen, for the admin API
}

// Destruct implements caddy.Destructor.
func (*providerHealth) Destruct() error { return nil }

// maxModelsPerProvider bounds the health kept for a provider that serves
// any model, whose model names come from clients.
const maxModelsPerProvider = 256

// key is the name health is kept under: the model's own (a provider can be
// down for one model and fine for another), or "*" for the models of an
// any-model provider beyond the first maxModelsPerProvider it was asked for,
// so that client input cannot grow the map without bound.
func (ph *providerHealth) key(p *provider, model string) string {
	if _, tracked := ph.models[model]; tracked || p.served[model] || len(ph.models) < maxModelsPerProvider {
		return model
	}
	return "*"
}

func (ph *providerHealth) model(name string) *modelHealth {
	m := ph.models[name]
	if m == nil {
		m = &modelHealth{}
		ph.models[name] = m
	}
	return m
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
		ph.mu.Unlock()
		reg.byName[p.name] = ph
		reg.keys = append(reg.keys, key)
	}
	return reg
}

func (p *provider) info() providerInfo {
	models := make([]string, 0, len(p.served))
	for m := range p.served {
		models = append(models, m)
	}
	sort.Strings(models)
	return providerInfo{Name: p.name, URL: p.baseURL, Models: models, AnyModel: p.anyModel,
		InputRate: p.inputRate, OutputRate: p.outputRate, BaseFee: p.baseFee}
}

func (reg *healthRegistry) release() {
	for _, k := range reg.keys {
		_, _ = healthPool.Delete(k)
	}
	reg.keys = nil
}

// available tells whether p may be tried for model now; if not, when.
func (reg *healthRegistry) available(p *provider, model string) (bool, time.Time) {
	return reg.availableAt(p, model, reg.now())
}

// snapshot is available at one instant, for choosing among many providers
// with one reading of the clock.
func (reg *healthRegistry) snapshot() availability {
	now := reg.now()
	return func(p *provider, model string) (bool, time.Time) { return reg.availableAt(p, model, now) }
}

func (reg *healthRegistry) availableAt(p *provider, model string, now time.Time) (bool, time.Time) {
	ph := reg.byName[p.name]
	ph.mu.Lock()
	defer ph.mu.Unlock()
	model = ph.key(p, model)
	m := ph.models[model]
	if m == nil {
		return true, time.Time{}
	}
	if now.Before(m.cooldownUntil) {
		// An open circuit may outlast the cooldown: name the later end, or
		// Retry-After would send clients back too early.
		if m.state(now) == circuitOpen && m.openUntil.After(m.cooldownUntil) {
			return false, m.openUntil
		}
		return false, m.cooldownUntil
	}
	switch m.state(now) {
	case circuitOpen:
		return false, m.openUntil
	case circuitHalfOpen:
		if m.probing && now.Before(m.probeUntil) {
			return false, now.Add(time.Second)
		}
	}
	return true, time.Time{}
}

// ticket is the permission to send one attempt to a provider; a probe ticket
// holds the half-open circuit until it is finished.
type ticket struct {
	ph    *providerHealth
	model string
	probe bool
	done  bool
}

// begin asks to send an attempt. It fails when the circuit is open, or half
// open with its one probe already taken: the caller moves on, nobody waits.
func (reg *healthRegistry) begin(p *provider, model string) (*ticket, bool) {
	ph := reg.byName[p.name]
	now := reg.now()
	ph.mu.Lock()
	defer ph.mu.Unlock()
	model = ph.key(p, model)
	m := ph.model(model)
	t := &ticket{ph: ph, model: model}
	if now.Before(m.cooldownUntil) {
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
	m := t.ph.model(t.model)
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
	m := t.ph.model(t.model)
	m.open = false
	m.probing = false
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
	if t.probe {
		t.ph.model(t.model).probing = false
	}
	t.done = true
}

// coolDown keeps p away from model until at least until; a shorter hint
// never shortens an existing cooldown.
func (reg *healthRegistry) coolDown(p *provider, model string, until time.Time) {
	ph := reg.byName[p.name]
	ph.mu.Lock()
	defer ph.mu.Unlock()
	model = ph.key(p, model)
	m := ph.model(model)
	if until.After(m.cooldownUntil) {
		m.cooldownUntil = until
	}
}

// modelStatus is the admin API's view of one provider and model.
type modelStatus struct {
	Model               string    `json:"model"`
	State               string    `json:"state"`
	OpenUntil           time.Time `json:"open_until,omitzero"`
	CooldownUntil       time.Time `json:"cooldown_until,omitzero"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	Failures            int       `json:"failures"`
	Successes           int       `json:"successes"`
	LastErrorClass      string    `json:"last_error_class,omitempty"`
	LastFailureAt       time.Time `json:"last_failure_at,omitzero"`
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
