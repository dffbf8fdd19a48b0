package arbstr

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults for every option that may be left out. The README lists them too.
const (
	defaultTimeout           = 30 * time.Second
	defaultFirstEventTimeout = 10 * time.Second
	defaultStreamIdleTimeout = 60 * time.Second
	defaultMaxBody           = 16_000_000 // 16MB, counted as Caddy counts sizes
	defaultAttempts          = 3
	defaultRetryAfterMax     = 5 * time.Second
	defaultBreakerFailures   = 3
	defaultBreakerOpen       = 30 * time.Second
	defaultCooldownMax       = 5 * time.Minute
	defaultOutputTokens      = 256
	defaultContinuations     = 2
	defaultDiscoverInterval  = 5 * time.Minute
)

// Handler is an OpenAI-compatible LLM router. For every chat completion it
// picks the cheapest provider that qualifies, forwards the request, and when
// that provider fails it retries and falls back to the next-cheapest one
// within one deadline. It answers paths ending in /chat/completions and
// /models; every other request goes to the next handler.
type Handler struct {
	// Providers are the OpenAI-compatible upstreams to route between.
	Providers []*Provider `json:"providers,omitempty"`

	// Policies constrain which models and prices a request may use. A request
	// names one with the X-Arbstr-Policy header, or the first policy with a
	// keyword found in its last user message applies.
	Policies []*Policy `json:"policies,omitempty"`

	// Retry controls retries on one provider and fallback to the next ones.
	Retry *RetryConfig `json:"retry,omitempty"`

	// Breaker controls the circuit breaker kept per provider and model.
	Breaker *BreakerConfig `json:"breaker,omitempty"`

	// Timeout is the deadline of a whole non-streaming request, all attempts
	// and waits included, and of a stream until its first event. Default: 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// AttemptTimeout bounds one non-streaming attempt, so that a provider that
	// never answers leaves time for the next one. Default: 0, meaning the rest
	// of the request's deadline.
	AttemptTimeout caddy.Duration `json:"attempt_timeout,omitempty"`

	// FirstEventTimeout is how long a streaming provider may take to produce
	// its first event before the next provider is tried. Default: 10s.
	FirstEventTimeout caddy.Duration `json:"first_event_timeout,omitempty"`

	// StreamIdleTimeout ends a committed stream with an error event when its
	// provider sends nothing for this long. Default: 60s.
	StreamIdleTimeout caddy.Duration `json:"stream_idle_timeout,omitempty"`

	// MaxBody is the largest request body accepted, in bytes; larger ones get
	// 413. Default: 16MB (16,000,000 bytes).
	MaxBody int64 `json:"max_body,omitempty"`

	// CooldownMax caps how long a 429's Retry-After (or retry-after-ms) may
	// keep a provider away from a model, whatever the provider asks for; it
	// also caps the Retry-After arbstr sends when every provider is rate
	// limiting. Cooldowns already running are cut to it when a config is
	// loaded. Default: 5m.
	CooldownMax caddy.Duration `json:"cooldown_max,omitempty"`

	// Continuations is how many times one broken stream may be finished by
	// another provider that has Prefill (SPEC §13). 0 turns continuation
	// off. Default (unset): 2.
	Continuations *int `json:"continuations,omitempty"`

	// Complexity, when set, routes each request by its complexity score to
	// a provider tier (see Provider.Tier and docs/routing.md).
	Complexity *ComplexityConfig `json:"complexity,omitempty"`

	providers []*provider
	// byTier groups providers by tier; tiered: some provider names a tier
	// or the complexity block is set, so requests are routed by tier.
	byTier    [tierCount][]*provider
	tiered    bool
	scorer    *scorer
	discovery *discovery
	policies  []*policy
	// keywordPolicies: some policy is chosen by keywords, so requests'
	// user text must be read.
	keywordPolicies bool
	continuations   int // Continuations with its default applied
	retry           retrySettings
	breaker         breakerSettings
	health          *healthRegistry
	metrics         *arbstrMetrics
	client          *http.Client
	app             *App // the arbstr app: the ledger, shared by every handler
	logger          *zap.Logger
}

// Provider is one OpenAI-compatible upstream and its prices.
type Provider struct {
	// Name identifies the provider in headers, logs, metrics and the admin API.
	Name string `json:"name"`

	// URL is the base URL of the API, e.g. https://api.example/v1; the
	// path of each API (/chat/completions, /embeddings, /responses,
	// /messages) and /models are appended to it.
	URL string `json:"url"`

	// APIKey is sent as a bearer token (in x-api-key with `api anthropic`). Placeholders such as {env.KEY} and
	// {file./run/secrets/key} are resolved at provision time. When empty, the
	// environment variable ARBSTR_<NAME>_API_KEY is used if set.
	APIKey string `json:"api_key,omitempty"`

	// Models are the public model names this provider serves. Empty (and no
	// Model mapping) means any model.
	Models []string `json:"models,omitempty"`

	// Model maps a public model name to the name sent upstream. The key "*"
	// serves any model and always sends its value upstream.
	Model map[string]string `json:"model,omitempty"`

	// InputRate is the price in satoshis per 1M input tokens.
	InputRate float64 `json:"input_rate,omitempty"`

	// OutputRate is the price in satoshis per 1M output tokens.
	OutputRate float64 `json:"output_rate,omitempty"`

	// BaseFee is the price in satoshis of each request.
	BaseFee float64 `json:"base_fee,omitempty"`

	// Prefill says the provider continues a partial assistant message placed
	// last in messages, so that it can finish a stream another provider
	// broke (SPEC §13).
	Prefill bool `json:"prefill,omitempty"`

	// Context is the provider's context window in tokens. A request whose
	// estimated input (body bytes / 3) plus requested output (max_tokens or
	// max_completion_tokens) is larger is not sent to it. 0: unknown, never
	// skipped.
	Context int `json:"context,omitempty"`

	// API is the wire API the provider speaks: "openai" (the default: chat
	// completions, embeddings, responses) or "anthropic" (Anthropic
	// Messages: /messages is appended to URL, and the key goes in
	// x-api-key). A request goes only to providers of its API.
	API string `json:"api,omitempty"`

	// Tier is the provider's class: "local", "standard" (the default) or
	// "frontier". With a complexity block, easy requests may go to local
	// providers and hard ones need frontier providers.
	Tier string `json:"tier,omitempty"`

	// Discover, when set, reads the models the provider serves from its
	// GET /models at start and then every Discover (0: every 5m). The list
	// replaces Models, which then only filters it; a failed read keeps the
	// last good list.
	Discover *caddy.Duration `json:"discover,omitempty"`
}

// Policy is a named set of constraints on provider choice.
type Policy struct {
	// Name is matched exactly against the X-Arbstr-Policy request header.
	Name string `json:"name"`

	// AllowedModels, when set, are the only models a request under this
	// policy may use.
	AllowedModels []string `json:"allowed_models,omitempty"`

	// MaxOutputRate excludes providers whose output rate (sats per 1M
	// tokens) is higher. 0 means no cap.
	MaxOutputRate float64 `json:"max_output_rate,omitempty"`

	// Keywords select this policy when one of them occurs, ignoring case, in
	// the last user message of a request without X-Arbstr-Policy.
	Keywords []string `json:"keywords,omitempty"`
}

// RetryConfig controls retries and fallback.
type RetryConfig struct {
	// Attempts is the number of tries on one provider before moving to the
	// next. Default: 3.
	Attempts int `json:"attempts,omitempty"`

	// Backoff lists the waits between tries on the same provider; the last
	// one repeats. Default: exponential from 100ms, doubling up to 2s, with
	// jitter.
	Backoff []caddy.Duration `json:"backoff,omitempty"`

	// Fallbacks is how many further providers may be tried after the first:
	// a number, or "all" (the default).
	Fallbacks *Fallbacks `json:"fallbacks,omitempty"`

	// RetryAfterMax is the longest Retry-After a 429 may ask for and still be
	// waited out on the same provider; longer hints move on at once and cool
	// the provider down. Default: 5s.
	RetryAfterMax caddy.Duration `json:"retry_after_max,omitempty"`
}

// BreakerConfig controls the circuit breaker kept per provider and model.
type BreakerConfig struct {
	// Failures is the number of consecutive failures that opens the circuit.
	// Default: 3.
	Failures int `json:"failures,omitempty"`

	// Open is how long an open circuit stays open before one probe request
	// is let through. Default: 30s.
	Open caddy.Duration `json:"open,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.arbstr",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves secrets, applies defaults and attaches the reload-safe
// health registry and metrics.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.applyDefaults()
	repl := caddy.NewReplacer()
	h.providers = make([]*provider, 0, len(h.Providers))
	for _, p := range h.Providers {
		rp, err := newProvider(p, repl)
		if err != nil {
			return err
		}
		h.providers = append(h.providers, rp)
	}
	h.policies = make([]*policy, 0, len(h.Policies))
	for _, p := range h.Policies {
		h.policies = append(h.policies, newPolicy(p))
	}
	h.keywordPolicies = hasKeywords(h.policies)
	h.byTier = groupByTier(h.providers)
	h.scorer = newScorer(h.Complexity)
	h.tiered = h.Complexity != nil || h.anyTierLine()
	h.health = loadHealthRegistry(h.providers, h.breaker)
	m, err := loadMetrics(ctx)
	if err != nil {
		return err
	}
	h.metrics = m
	h.client = newUpstreamClient()
	if h.app, err = loadApp(ctx); err != nil {
		return err
	}
	h.discovery = startDiscovery(h.providers, h.client, h.health, h.logger)
	return nil
}

func (h *Handler) anyTierLine() bool {
	for _, p := range h.Providers {
		if p.Tier != "" {
			return true
		}
	}
	return false
}

func (h *Handler) applyDefaults() {
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(defaultTimeout)
	}
	if h.FirstEventTimeout == 0 {
		h.FirstEventTimeout = caddy.Duration(defaultFirstEventTimeout)
	}
	if h.StreamIdleTimeout == 0 {
		h.StreamIdleTimeout = caddy.Duration(defaultStreamIdleTimeout)
	}
	if h.MaxBody == 0 {
		h.MaxBody = defaultMaxBody
	}
	h.continuations = defaultContinuations
	if h.Continuations != nil {
		h.continuations = *h.Continuations
	}
	h.retry = newRetrySettings(h.Retry)
	h.breaker = newBreakerSettings(h.Breaker)
	if h.CooldownMax > 0 {
		h.breaker.cooldownMax = time.Duration(h.CooldownMax)
	}
}

// Validate refuses configurations that cannot work, naming the fix.
func (h *Handler) Validate() error {
	if len(h.Providers) == 0 {
		return fmt.Errorf("arbstr: no providers configured; add at least one 'provider NAME { url ... }'")
	}
	names := map[string]bool{}
	for _, p := range h.Providers {
		if err := p.validate(); err != nil {
			return err
		}
		if names[p.Name] {
			return fmt.Errorf("arbstr: duplicate provider name %q; provider names must be unique", p.Name)
		}
		names[p.Name] = true
	}
	policyNames := map[string]bool{}
	for _, p := range h.Policies {
		if p.Name == "" {
			return fmt.Errorf("arbstr: a policy has no name")
		}
		if policyNames[p.Name] {
			return fmt.Errorf("arbstr: duplicate policy name %q; policy names must be unique", p.Name)
		}
		policyNames[p.Name] = true
		if p.MaxOutputRate < 0 {
			return fmt.Errorf("arbstr: policy %q: max_output_rate must not be negative", p.Name)
		}
		for _, m := range p.AllowedModels {
			if !h.anyProviderServes(m) {
				return fmt.Errorf("arbstr: policy %q allows model %q but no provider serves it; add it to a provider's models or remove it", p.Name, m)
			}
		}
	}
	if err := h.Complexity.validate(); err != nil {
		return err
	}
	if err := h.checkFrontierTier(); err != nil {
		return err
	}
	if err := h.Retry.validate(); err != nil {
		return err
	}
	if err := h.Breaker.validate(); err != nil {
		return err
	}
	for name, d := range map[string]caddy.Duration{
		"timeout": h.Timeout, "attempt_timeout": h.AttemptTimeout,
		"first_event_timeout": h.FirstEventTimeout, "stream_idle_timeout": h.StreamIdleTimeout,
		"cooldown_max": h.CooldownMax,
	} {
		if d < 0 {
			return fmt.Errorf("arbstr: %s must not be negative", name)
		}
	}
	if h.MaxBody < 0 {
		return fmt.Errorf("arbstr: max_body must not be negative")
	}
	if h.Continuations != nil && *h.Continuations < 0 {
		return fmt.Errorf("arbstr: continuations must not be negative; 0 turns continuation off")
	}
	return nil
}

func (h *Handler) anyProviderServes(model string) bool {
	for _, p := range h.Providers {
		if servesModel(p.Models, p.Model, model) {
			return true
		}
	}
	return false
}

func (p *Provider) validate() error {
	if p.Name == "" {
		return fmt.Errorf("arbstr: a provider has no name")
	}
	if p.URL == "" {
		return fmt.Errorf("arbstr: provider %q has no url; set 'url https://host/v1'", p.Name)
	}
	u, err := url.Parse(p.URL)
	// Hostname, not Host: "http://:8080" has a port but no host.
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return fmt.Errorf("arbstr: provider %q: url %q is not an http(s) URL; write it like https://host/v1", p.Name, p.URL)
	}
	if u.User != nil {
		return fmt.Errorf("arbstr: provider %q: url must not contain credentials; use api_key", p.Name)
	}
	if strings.ContainsAny(p.URL, "?#") {
		// /chat/completions is appended to the URL: after a query or a
		// fragment it would not be part of the path. The query is not
		// quoted: it may hold a key.
		return fmt.Errorf("arbstr: provider %q: url %s has a query or fragment (after ? or #); give the base URL only, like https://host/v1", p.Name, u.Scheme+"://"+u.Host+u.Path)
	}
	if _, err := parseTier(p.Tier); err != nil {
		return fmt.Errorf("arbstr: provider %q: %v", p.Name, err)
	}
	api, err := parseProviderAPI(p.API)
	if err != nil {
		return fmt.Errorf("arbstr: provider %q: %v", p.Name, err)
	}
	if api == apiAnthropic && p.Prefill {
		return fmt.Errorf("arbstr: provider %q: prefill continues chat completions, which an `api anthropic` provider does not serve; remove prefill", p.Name)
	}
	if p.Discover != nil && *p.Discover < 0 {
		return fmt.Errorf("arbstr: provider %q: discover interval must not be negative", p.Name)
	}
	for field, v := range map[string]float64{"input_rate": p.InputRate, "output_rate": p.OutputRate, "base_fee": p.BaseFee} {
		if v < 0 {
			return fmt.Errorf("arbstr: provider %q: %s must not be negative", p.Name, field)
		}
	}
	if p.Context < 0 {
		return fmt.Errorf("arbstr: provider %q: context must be a number of tokens ≥ 0", p.Name)
	}
	return nil
}

func (r *RetryConfig) validate() error {
	if r == nil {
		return nil
	}
	if r.Attempts < 0 {
		return fmt.Errorf("arbstr: retry attempts must be at least 1")
	}
	for _, b := range r.Backoff {
		if b < 0 {
			return fmt.Errorf("arbstr: retry backoff must not be negative")
		}
	}
	if r.RetryAfterMax < 0 {
		return fmt.Errorf("arbstr: retry retry_after_max must not be negative")
	}
	if r.Fallbacks != nil && r.Fallbacks.N < 0 && !r.Fallbacks.All {
		return fmt.Errorf("arbstr: retry fallbacks must be a number ≥ 0 or 'all'")
	}
	return nil
}

func (b *BreakerConfig) validate() error {
	if b == nil {
		return nil
	}
	if b.Failures < 0 {
		return fmt.Errorf("arbstr: breaker failures must be at least 1")
	}
	if b.Open < 0 {
		return fmt.Errorf("arbstr: breaker open must not be negative")
	}
	return nil
}

// Cleanup releases this config's hold on the shared health state, so that
// state of providers removed from the config is dropped.
func (h *Handler) Cleanup() error {
	// Discovery first: it stops its goroutines and waits for them, so none
	// outlives this config or uses the health it releases.
	h.discovery.stop()
	if h.health != nil {
		h.health.release()
	}
	if h.client != nil {
		// In-flight requests keep theirs; idle ones would linger for 90s.
		h.client.CloseIdleConnections()
	}
	return nil
}

// newUpstreamClient returns the HTTP client used for providers. It never
// follows redirects (a redirect would resend the provider key elsewhere) and
// keeps enough idle connections for a busy router.
func newUpstreamClient() *http.Client {
	transport := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{
		Transport: transport,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// apiKeyEnvName is the environment variable consulted for a provider without
// api_key: ARBSTR_<NAME>_API_KEY, with '-' and spaces turned into '_'.
func apiKeyEnvName(provider string) string {
	n := strings.ToUpper(provider)
	n = strings.NewReplacer("-", "_", " ", "_").Replace(n)
	return "ARBSTR_" + n + "_API_KEY"
}

func resolveAPIKey(p *Provider, repl *caddy.Replacer) (string, error) {
	if p.APIKey == "" {
		return os.Getenv(apiKeyEnvName(p.Name)), nil
	}
	// Unknown placeholders stay as written, so a literal key that happens to
	// contain braces works and never ends up quoted in an error.
	key, err := repl.ReplaceOrErr(p.APIKey, true, false)
	if err != nil {
		// Only a known placeholder ({env.X}, {file.path}) that came out
		// empty gets here: the message names it, and it holds no secret.
		return "", fmt.Errorf("arbstr: provider %q: api_key: %v; set the variable or fill the file", p.Name, err)
	}
	return key, nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
