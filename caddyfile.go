package arbstr

import (
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("arbstr", parseCaddyfile)
	// Before respond, so that a site can answer other paths with respond or
	// reverse_proxy and needs no order or route block for arbstr.
	httpcaddyfile.RegisterDirectiveOrder("arbstr", httpcaddyfile.Before, "respond")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var handler Handler
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return &handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	arbstr {
//		provider <name> {
//			url          <base URL>            # /chat/completions, /embeddings, /responses, /messages, /models are appended
//			api          openai|anthropic       # the provider's API; default openai
//			api_key      <key or placeholder>   # default: env ARBSTR_<NAME>_API_KEY
//			models       <public model names...> # omitted: any model
//			model        <public name|*> <upstream name>
//			input_rate   <sats per 1M input tokens>
//			output_rate  <sats per 1M output tokens>
//			base_fee     <sats per request>
//			prefill                             # continues a partial assistant message (finishes broken streams)
//			context      <tokens>               # context window; larger requests skip this provider
//			tier         local|standard|frontier   # default standard
//			discover     [<interval>]           # read models from GET {url}/models; default 5m
//		}
//		policy <name> {
//			allowed_models  <models...>
//			max_output_rate <sats per 1M output tokens>
//			keywords        <words...>
//		}
//		retry {
//			attempts        <tries per provider>       # default 3
//			backoff         <durations...>             # default exponential with jitter
//			fallbacks       <number|all>               # default all
//			retry_after_max <duration>                 # default 5s
//		}
//		breaker {
//			failures <consecutive failures>  # default 3
//			open     <duration>              # default 30s
//		}
//		timeout             <duration>  # default 30s
//		attempt_timeout     <duration>  # default: the rest of timeout
//		first_event_timeout <duration>  # default 10s
//		stream_idle_timeout <duration>  # default 60s
//		max_body            <size>      # default 16MB
//		cooldown_max        <duration>  # default 5m: longest a 429 keeps a provider away
//		continuations       <n>         # broken streams finished by a prefill provider; default 2, 0 off
//		complexity {                      # route by request complexity to provider tiers
//			low     <score 0..1>            # default 0.3: below it, tier local suffices
//			high    <score 0..1>            # default 0.7: above it, tier frontier is needed
//			weights <signal> <0..1> ...     # signals prompt code reasoning depth output;
//			                                # defaults 0.55 0.45 0.6 0.35 0.5
//		}
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	policyLines := map[string]string{}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "provider":
			err = h.parseProvider(d)
		case "policy":
			place := fmt.Sprintf("%s:%d", d.File(), d.Line())
			if err = h.parsePolicy(d); err == nil {
				policyLines[h.Policies[len(h.Policies)-1].Name] = place
			}
		case "retry":
			err = h.parseRetry(d)
		case "breaker":
			err = h.parseBreaker(d)
		case "timeout", "attempt_timeout", "first_event_timeout", "stream_idle_timeout", "cooldown_max":
			err = h.parseTimeout(d)
		case "max_body":
			err = h.parseMaxBody(d)
		case "continuations":
			var n int
			if n, err = intArg(d, 0); err == nil {
				h.Continuations = &n
			}
		case "complexity":
			err = h.parseComplexity(d)
		default:
			return d.Errf("unknown subdirective %q; expected provider, policy, retry, breaker, timeout, attempt_timeout, first_event_timeout, stream_idle_timeout, max_body, cooldown_max, continuations or complexity", d.Val())
		}
		if err != nil {
			return err
		}
	}
	for _, p := range h.Policies {
		for _, m := range p.AllowedModels {
			if !h.anyProviderServes(m) {
				return fmt.Errorf("%s: policy %q allows model %q but no provider serves it; add it to a provider's models or remove it",
					policyLines[p.Name], p.Name, m)
			}
		}
	}
	return nil
}

func (h *Handler) parseProvider(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.Errf("provider needs a name: provider <name> { url ... }")
	}
	p := &Provider{Name: d.Val()}
	if d.NextArg() {
		return d.ArgErr()
	}
	for _, other := range h.Providers {
		if other.Name == p.Name {
			return d.Errf("duplicate provider name %q; provider names must be unique", p.Name)
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := p.parseOption(d); err != nil {
			return err
		}
	}
	if p.URL == "" {
		return d.Errf("provider %q has no url; add 'url https://host/v1' to its block", p.Name)
	}
	h.Providers = append(h.Providers, p)
	return nil
}

func (p *Provider) parseOption(d *caddyfile.Dispenser) error {
	switch opt := d.Val(); opt {
	case "url":
		v, err := singleArg(d)
		if err != nil {
			return err
		}
		u, perr := url.Parse(v)
		if perr != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
			return d.Errf("provider %q: url %q is not an http(s) URL; write it like https://host/v1", p.Name, v)
		}
		p.URL = v
	case "api_key":
		v, err := singleArg(d)
		if err != nil {
			return err
		}
		p.APIKey = v
	case "models":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.Errf("models needs at least one model name")
		}
		p.Models = append(p.Models, args...)
	case "model":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("model takes two arguments: <public name or *> <upstream name>")
		}
		if p.Model == nil {
			p.Model = map[string]string{}
		}
		p.Model[args[0]] = args[1]
	case "input_rate", "output_rate", "base_fee":
		v, err := rateArg(d)
		if err != nil {
			return err
		}
		switch opt {
		case "input_rate":
			p.InputRate = v
		case "output_rate":
			p.OutputRate = v
		default:
			p.BaseFee = v
		}
	case "prefill":
		if d.NextArg() {
			return d.Errf("prefill is a bare flag and takes no argument")
		}
		p.Prefill = true
	case "context":
		n, err := intArg(d, 1)
		if err != nil {
			return err
		}
		p.Context = n
	case "api":
		v, err := singleArg(d)
		if err != nil {
			return err
		}
		if _, aerr := parseProviderAPI(v); aerr != nil || v == "" {
			return d.Errf("provider %q: api %q is not known; use openai (the default) or anthropic", p.Name, v)
		}
		p.API = v
	case "tier":
		v, err := singleArg(d)
		if err != nil {
			return err
		}
		if _, terr := parseTier(v); terr != nil {
			return d.Errf("provider %q: %v", p.Name, terr)
		}
		p.Tier = v
	case "discover":
		args := d.RemainingArgs()
		interval := caddy.Duration(0)
		switch len(args) {
		case 0:
		case 1:
			dur, perr := caddy.ParseDuration(args[0])
			if perr != nil || dur <= 0 {
				return d.Errf("discover: %q is not a duration like 30s or 5m", args[0])
			}
			interval = caddy.Duration(dur)
		default:
			return d.Errf("discover takes at most one argument: the interval, e.g. 'discover 5m'")
		}
		p.Discover = &interval
	default:
		return d.Errf("unknown provider option %q; expected url, api_key, models, model, input_rate, output_rate, base_fee, prefill, context, tier or discover", opt)
	}
	return nil
}

func (h *Handler) parsePolicy(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.Errf("policy needs a name: policy <name> { ... }")
	}
	p := &Policy{Name: d.Val()}
	if d.NextArg() {
		return d.ArgErr()
	}
	for _, other := range h.Policies {
		if other.Name == p.Name {
			return d.Errf("duplicate policy name %q; policy names must be unique", p.Name)
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "allowed_models":
			p.AllowedModels = append(p.AllowedModels, d.RemainingArgs()...)
		case "max_output_rate":
			v, err := rateArg(d)
			if err != nil {
				return err
			}
			p.MaxOutputRate = v
		case "keywords":
			p.Keywords = append(p.Keywords, d.RemainingArgs()...)
		default:
			return d.Errf("unknown policy option %q; expected allowed_models, max_output_rate or keywords", d.Val())
		}
	}
	h.Policies = append(h.Policies, p)
	return nil
}

func (h *Handler) parseRetry(d *caddyfile.Dispenser) error {
	if h.Retry == nil {
		h.Retry = &RetryConfig{}
	}
	r := h.Retry
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "attempts":
			n, err := intArg(d, 1)
			if err != nil {
				return err
			}
			r.Attempts = n
		case "backoff":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("backoff needs at least one duration, e.g. 'backoff 250ms 1s'")
			}
			r.Backoff = nil
			for _, a := range args {
				dur, err := caddy.ParseDuration(a)
				if err != nil || dur < 0 {
					return d.Errf("backoff: %q is not a duration like 500ms or 2s", a)
				}
				r.Backoff = append(r.Backoff, caddy.Duration(dur))
			}
		case "fallbacks":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			var f Fallbacks
			if err := f.parse(v); err != nil {
				return d.Err(err.Error())
			}
			r.Fallbacks = &f
		case "retry_after_max":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			r.RetryAfterMax = dur
		default:
			return d.Errf("unknown retry option %q; expected attempts, backoff, fallbacks or retry_after_max", d.Val())
		}
	}
	return nil
}

func (h *Handler) parseBreaker(d *caddyfile.Dispenser) error {
	if h.Breaker == nil {
		h.Breaker = &BreakerConfig{}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "failures":
			n, err := intArg(d, 1)
			if err != nil {
				return err
			}
			h.Breaker.Failures = n
		case "open":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			h.Breaker.Open = dur
		default:
			return d.Errf("unknown breaker option %q; expected failures or open", d.Val())
		}
	}
	return nil
}

func (h *Handler) parseTimeout(d *caddyfile.Dispenser) error {
	name := d.Val()
	dur, err := durationArg(d)
	if err != nil {
		return err
	}
	switch name {
	case "timeout":
		h.Timeout = dur
	case "attempt_timeout":
		h.AttemptTimeout = dur
	case "first_event_timeout":
		h.FirstEventTimeout = dur
	case "stream_idle_timeout":
		h.StreamIdleTimeout = dur
	case "cooldown_max":
		h.CooldownMax = dur
	}
	return nil
}

func (h *Handler) parseMaxBody(d *caddyfile.Dispenser) error {
	v, err := singleArg(d)
	if err != nil {
		return err
	}
	size, perr := humanize.ParseBytes(v)
	if perr != nil || size == 0 || size > 1<<40 {
		return d.Errf("max_body: %q is not a size like 16MB or 512KB", v)
	}
	h.MaxBody = int64(size)
	return nil
}

func singleArg(d *caddyfile.Dispenser) (string, error) {
	name := d.Val()
	args := d.RemainingArgs()
	if len(args) != 1 {
		return "", d.Errf("%s takes exactly one argument", name)
	}
	return args[0], nil
}

func rateArg(d *caddyfile.Dispenser) (float64, error) {
	name := d.Val()
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	f, perr := strconv.ParseFloat(v, 64)
	if perr != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, d.Errf("%s: %q is not a number ≥ 0 (sats)", name, v)
	}
	return f, nil
}

func intArg(d *caddyfile.Dispenser, minimum int) (int, error) {
	name := d.Val()
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	n, perr := strconv.Atoi(v)
	if perr != nil || n < minimum {
		return 0, d.Errf("%s: %q is not a whole number ≥ %d", name, v, minimum)
	}
	return n, nil
}

func durationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	dur, perr := caddy.ParseDuration(v)
	if perr != nil || dur < 0 {
		return 0, d.Errf("%s: %q is not a duration like 500ms, 10s or 1m", name, v)
	}
	return caddy.Duration(dur), nil
}

func (h *Handler) parseComplexity(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	if h.Complexity == nil {
		h.Complexity = &ComplexityConfig{}
	}
	c := h.Complexity
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "low", "high":
			v, err := unitArg(d, opt)
			if err != nil {
				return err
			}
			if opt == "low" {
				c.Low = &v
			} else {
				c.High = &v
			}
		case "weights":
			if err := c.parseWeights(d); err != nil {
				return err
			}
		default:
			return d.Errf("unknown complexity option %q; expected low, high or weights", opt)
		}
	}
	if err := c.validate(); err != nil {
		return d.Errf("%v", err)
	}
	return nil
}

func (c *ComplexityConfig) parseWeights(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) == 0 || len(args)%2 != 0 {
		return d.Errf("weights takes pairs: <signal> <weight>, e.g. 'weights code 0.5 reasoning 0.7'; signals: prompt, code, reasoning, depth, output")
	}
	if c.Weights == nil {
		c.Weights = &ComplexityWeights{}
	}
	fields := c.Weights.fields()
	for i := 0; i < len(args); i += 2 {
		idx := slices.Index(complexitySignalNames[:], args[i])
		if idx < 0 {
			return d.Errf("weights: unknown signal %q; expected prompt, code, reasoning, depth or output", args[i])
		}
		v, err := strconv.ParseFloat(args[i+1], 64)
		if err != nil || !inUnit(v) {
			return d.Errf("weights: %s: %q is not a number in [0, 1]", args[i], args[i+1])
		}
		*fields[idx] = &v
	}
	return nil
}

func unitArg(d *caddyfile.Dispenser, name string) (float64, error) {
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	f, perr := strconv.ParseFloat(v, 64)
	if perr != nil || !inUnit(f) {
		return 0, d.Errf("%s: %q is not a number in [0, 1]", name, v)
	}
	return f, nil
}
