package arbstr

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// cfgProv provisions a provider as Provision would.
func cfgProv(t testing.TB, p Provider) *provider {
	t.Helper()
	if p.URL == "" {
		p.URL = "http://127.0.0.1:1/v1"
	}
	rp, err := newProvider(&p, caddy.NewReplacer())
	if err != nil {
		t.Fatal(err)
	}
	return rp
}

// cfgInput builds choose's input the way serveChat does: from the body via
// inspectRequest and from the X-Arbstr-Policy header.
func cfgInput(t testing.TB, policyHdr, body string) selectionInput {
	t.Helper()
	facts, apiErr := inspectRequest([]byte(body))
	if apiErr != nil {
		t.Fatalf("inspectRequest(%s): %v", body, apiErr)
	}
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(body))
	if policyHdr != "" {
		r.Header.Set(policyHeader, policyHdr)
	}
	return selectionInputFor(r, protocols[protoChat], facts, true)
}

// cfgChat is a request body for model whose messages are given as
// role/content pairs (content as raw JSON), plus extra top-level members.
func cfgChat(model string, extra string, msgs ...string) string {
	var parts []string
	for i := 0; i+1 < len(msgs); i += 2 {
		parts = append(parts, fmt.Sprintf(`{"role":%q,"content":%s}`, msgs[i], msgs[i+1]))
	}
	if extra != "" {
		extra = "," + extra
	}
	return fmt.Sprintf(`{"model":%q,"messages":[%s]%s}`, model, strings.Join(parts, ","), extra)
}

func cfgNames(ps []*provider) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.name
	}
	return out
}

func cfgPolicies() []*policy {
	return []*policy{
		newPolicy(&Policy{Name: "code", AllowedModels: []string{"gpt-4o"}, Keywords: []string{"Code", "DEBUG"}}),
		newPolicy(&Policy{Name: "cheap", MaxOutputRate: 100, Keywords: []string{" debug ", "summarize"}}),
		newPolicy(&Policy{Name: "mini", AllowedModels: []string{"gpt-4o-mini"}, Keywords: []string{"hello"}}),
	}
}

func TestSelectionMatchPolicy(t *testing.T) {
	user := func(text string) string { return fmt.Sprintf("%q", text) }
	cases := []struct {
		name     string
		header   string
		body     string
		want     string // policy name, "" for none
		wantCode string // error code, "" for none
	}{
		{"header names a policy", "cheap", cfgChat("gpt-4o", "", "user", user("hi")), "cheap", ""},
		{"header wins over keywords", "cheap", cfgChat("gpt-4o", "", "user", user("please debug this code")), "cheap", ""},
		{"header is exact: case differs", "Cheap", cfgChat("gpt-4o", "", "user", user("hi")), "", "unknown_policy"},
		{"header names unknown policy", "nope", cfgChat("gpt-4o", "", "user", user("hi")), "", "unknown_policy"},
		{"header policy excludes the model", "code", cfgChat("gpt-4o-mini", "", "user", user("hi")), "", "model_not_allowed"},
		{"keyword, case-insensitive", "", cfgChat("gpt-4o", "", "user", user("Please dEbUg this")), "code", ""},
		{"first policy in config order wins", "", cfgChat("gpt-4o", "", "user", user("debug and summarize")), "code", ""},
		{"keyword policy excluding the model is skipped", "", cfgChat("gpt-4o-mini", "", "user", user("debug it")), "cheap", ""},
		{"skipped policy is not an error when nothing else matches", "", cfgChat("gpt-4o-mini", "", "user", user("show me code")), "", ""},
		{"later keyword of a later policy", "", cfgChat("gpt-4o", "", "user", user("SUMMARIZE this")), "cheap", ""},
		{"no keyword", "", cfgChat("gpt-4o", "", "user", user("tell me a story")), "", ""},
		{"only the last user message counts", "", cfgChat("gpt-4o", "",
			"user", user("debug this"), "assistant", user("ok"), "user", user("thanks")), "", ""},
		{"assistant and system text do not count", "", cfgChat("gpt-4o", "",
			"system", user("you debug code"), "user", user("thanks"), "assistant", user("summarize")), "", ""},
		{"last user message with content parts", "", cfgChat("gpt-4o", "",
			"user", user("thanks"), "user", `[{"type":"image_url","image_url":{"url":"http://x/debug.png"}},{"type":"text","text":"now SUMMARIZE"}]`), "cheap", ""},
		{"escaped text is decoded before matching", "", cfgChat("gpt-4o", "", "user", `"de\u0062ug"`), "code", ""},
		{"no user message", "", cfgChat("gpt-4o", "", "system", user("debug")), "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pol, apiErr := matchPolicy(cfgPolicies(), cfgInput(t, tc.header, tc.body))
			if tc.wantCode != "" {
				if apiErr == nil {
					t.Fatalf("got policy %v, want error %s", pol, tc.wantCode)
				}
				if apiErr.status != http.StatusBadRequest || apiErr.code != tc.wantCode {
					t.Errorf("error = %d %s (%s), want 400 %s", apiErr.status, apiErr.code, apiErr.message, tc.wantCode)
				}
				return
			}
			if apiErr != nil {
				t.Fatalf("unexpected error %d %s: %s", apiErr.status, apiErr.code, apiErr.message)
			}
			got := ""
			if pol != nil {
				got = pol.name
			}
			if got != tc.want {
				t.Errorf("policy = %q, want %q", got, tc.want)
			}
		})
	}
}

// cfgHealth is an availability snapshot: providers listed are held back as
// given; the others are free.
type cfgHealth map[string]hold

func (h cfgHealth) available(p *provider, model string) hold { return h[p.name] }

// cfgOpen holds a provider back until t by an open circuit (or a probe in
// flight); cfgCooling by a 429 cooldown alone.
func cfgOpen(t time.Time) hold    { return hold{until: t} }
func cfgCooling(t time.Time) hold { return hold{until: t, cooldownOnly: true} }

func TestSelectionChoose(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	// Rates chosen so that each cost term is whole sats at round sizes:
	// 1e6 sats per 1M tokens is 1 sat per token.
	providers := func(t *testing.T) []*provider {
		return []*provider{
			// cost = in_tokens: cheapest for tiny prompts.
			cfgProv(t, Provider{Name: "per-in", Models: []string{"flip-in"}, InputRate: 1e6}),
			// cost = 1 flat.
			cfgProv(t, Provider{Name: "flat", Models: []string{"flip-in", "flip-out"}, BaseFee: 1}),
			// cost = out_tokens / 256.
			cfgProv(t, Provider{Name: "per-out", Models: []string{"flip-out"}, OutputRate: 1e6 / 256}),
			cfgProv(t, Provider{Name: "zeta", Models: []string{"tie"}, InputRate: 10, OutputRate: 10, BaseFee: 1}),
			cfgProv(t, Provider{Name: "alpha", Models: []string{"tie"}, InputRate: 10, OutputRate: 10, BaseFee: 1}),
			cfgProv(t, Provider{Name: "mid", Models: []string{"tie"}, InputRate: 10, OutputRate: 10, BaseFee: 1}),
			cfgProv(t, Provider{Name: "dear", Models: []string{"gpt-4o"}, InputRate: 1000, OutputRate: 5000}),
			cfgProv(t, Provider{Name: "cheap", Models: []string{"gpt-4o"}, InputRate: 100, OutputRate: 500}),
			cfgProv(t, Provider{Name: "mapped", Model: map[string]string{"gpt-4o": "openai/gpt-4o"}, InputRate: 500, OutputRate: 50}),
		}
	}
	policies := []*policy{
		newPolicy(&Policy{Name: "cap", MaxOutputRate: 500}),
		newPolicy(&Policy{Name: "tight", MaxOutputRate: 1}),
	}
	text := func(n int) string { return fmt.Sprintf("%q", strings.Repeat("a", n)) }
	cases := []struct {
		name      string
		header    string
		body      string
		health    cfgHealth
		want      []string
		past      bool // want plan.pastCooldown
		status    int
		code      string
		retryWait string // Retry-After header
	}{
		// in_tokens = text bytes / 4, integer division, so 3 bytes are 0
		// tokens, 4 bytes 1 token, 8 bytes 2 tokens.
		{name: "in_tokens 0: per-token input cheapest", body: cfgChat("flip-in", "", "user", text(3)), want: []string{"per-in", "flat"}},
		{name: "in_tokens 1: per-token ties flat, name decides", body: cfgChat("flip-in", "", "user", text(4)),
			want: []string{"flat", "per-in"}},
		{name: "in_tokens 2: flat cheapest", body: cfgChat("flip-in", "", "user", text(8)), want: []string{"flat", "per-in"}},
		{name: "text of every message counts", body: cfgChat("flip-in", "", "system", text(2), "user", text(2), "assistant", text(4)),
			want: []string{"flat", "per-in"}},
		{name: "content parts count their text", body: cfgChat("flip-in", "", "user", `[{"type":"text","text":"aa"},{"type":"text","text":"aaaaaa"}]`),
			want: []string{"flat", "per-in"}},
		// out_tokens: max_tokens, else max_completion_tokens, else 256.
		{name: "default 256 out tokens: per-out ties flat", body: cfgChat("flip-out", "", "user", text(0)), want: []string{"flat", "per-out"}},
		{name: "max_tokens 255: per-out cheaper", body: cfgChat("flip-out", `"max_tokens":255`, "user", text(0)), want: []string{"per-out", "flat"}},
		{name: "max_tokens 300: flat cheaper", body: cfgChat("flip-out", `"max_tokens":300`, "user", text(0)), want: []string{"flat", "per-out"}},
		{name: "max_completion_tokens 10: per-out cheaper", body: cfgChat("flip-out", `"max_completion_tokens":10`, "user", text(0)),
			want: []string{"per-out", "flat"}},
		{name: "max_completion_tokens 4096: flat cheaper", body: cfgChat("flip-out", `"max_completion_tokens":4096`, "user", text(0)),
			want: []string{"flat", "per-out"}},
		{name: "ties by name ascending", body: cfgChat("tie", "", "user", text(40)), want: []string{"alpha", "mid", "zeta"}},
		{name: "short answer: output price matters less", body: cfgChat("gpt-4o", `"max_tokens":1`, "user", text(4000)),
			want: []string{"cheap", "mapped", "dear"}},
		{name: "long answer: cheap output wins", body: cfgChat("gpt-4o", `"max_tokens":4000`, "user", text(40)),
			want: []string{"mapped", "cheap", "dear"}},
		{name: "max_output_rate cap (inclusive)", header: "cap", body: cfgChat("gpt-4o", `"max_tokens":4000`, "user", text(40)),
			want: []string{"mapped", "cheap"}},
		{name: "unhealthy providers are left out", body: cfgChat("gpt-4o", `"max_tokens":4000`, "user", text(40)),
			health: cfgHealth{"mapped": cfgOpen(now.Add(time.Minute))}, want: []string{"cheap", "dear"}},
		{name: "model served by nobody", body: cfgChat("claude", "", "user", text(4)), status: 404, code: "model_not_found"},
		{name: "model served by nobody even if all are down", body: cfgChat("claude", "", "user", text(4)),
			health: cfgHealth{"cheap": cfgOpen(now.Add(time.Minute)), "dear": cfgOpen(now.Add(time.Minute)), "mapped": cfgOpen(now.Add(time.Minute))},
			status: 404, code: "model_not_found"},
		{name: "policy leaves nobody", header: "tight", body: cfgChat("gpt-4o", "", "user", text(4)), status: 400, code: "no_provider_for_policy"},
		{name: "all unhealthy: Retry-After until the first may be tried", body: cfgChat("tie", "", "user", text(4)),
			health: cfgHealth{"zeta": cfgOpen(now.Add(9 * time.Second)), "alpha": cfgOpen(now.Add(3200 * time.Millisecond)), "mid": cfgOpen(now.Add(time.Minute))},
			status: 503, code: "providers_unavailable", retryWait: "4"},
		{name: "all unhealthy, almost over: Retry-After at least 1", body: cfgChat("flip-in", "", "user", text(4)),
			health: cfgHealth{"per-in": cfgOpen(now.Add(200 * time.Millisecond)), "flat": cfgOpen(now.Add(time.Minute))},
			status: 503, code: "providers_unavailable", retryWait: "1"},
		{name: "policy-capped survivors all unhealthy", header: "cap", body: cfgChat("gpt-4o", "", "user", text(4)),
			health: cfgHealth{"cheap": cfgOpen(now.Add(2 * time.Second)), "mapped": cfgOpen(now.Add(5 * time.Second))},
			status: 503, code: "providers_unavailable", retryWait: "2"},
		// SPEC §7, never worse than direct: held back by cooldowns alone,
		// the one whose cooldown ends first is still tried, once.
		{name: "all cooling down: the first free is tried anyway", body: cfgChat("tie", "", "user", text(4)),
			health: cfgHealth{"zeta": cfgCooling(now.Add(9 * time.Second)), "alpha": cfgCooling(now.Add(3200 * time.Millisecond)), "mid": cfgCooling(now.Add(time.Minute))},
			want:   []string{"alpha"}, past: true},
		{name: "all cooling down, same end: name decides", body: cfgChat("tie", "", "user", text(4)),
			health: cfgHealth{"zeta": cfgCooling(now.Add(time.Second)), "mid": cfgCooling(now.Add(time.Second)), "alpha": cfgCooling(now.Add(2 * time.Second))},
			want:   []string{"mid"}, past: true},
		{name: "all cooling down, cheapest ends last: ending first wins", body: cfgChat("gpt-4o", `"max_tokens":4000`, "user", text(40)),
			health: cfgHealth{"mapped": cfgCooling(now.Add(time.Minute)), "cheap": cfgCooling(now.Add(time.Second)), "dear": cfgCooling(now.Add(2 * time.Second))},
			want:   []string{"cheap"}, past: true},
		{name: "one free, the others cooling: no cooldown is passed", body: cfgChat("tie", "", "user", text(4)),
			health: cfgHealth{"alpha": cfgCooling(now.Add(time.Second)), "mid": cfgCooling(now.Add(time.Second))},
			want:   []string{"zeta"}},
		{name: "cooling and open: an open circuit is never passed", body: cfgChat("tie", "", "user", text(4)),
			health: cfgHealth{"zeta": cfgCooling(now.Add(time.Second)), "alpha": cfgOpen(now.Add(3200 * time.Millisecond)), "mid": cfgCooling(now.Add(time.Minute))},
			status: 503, code: "providers_unavailable", retryWait: "1"},
		{name: "all cooling down under a policy: a capped provider is never tried", header: "cap", body: cfgChat("gpt-4o", "", "user", text(4)),
			health: cfgHealth{"dear": cfgCooling(now.Add(time.Second)), "cheap": cfgCooling(now.Add(5 * time.Second)), "mapped": cfgCooling(now.Add(2 * time.Second))},
			want:   []string{"mapped"}, past: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var avail availability
			if tc.health != nil {
				avail = tc.health.available
			}
			pl, apiErr := choose(providers(t), policies, cfgInput(t, tc.header, tc.body), avail, now)
			if tc.status != 0 {
				if apiErr == nil {
					t.Fatalf("got candidates %v, want %d %s", cfgNames(pl.all()), tc.status, tc.code)
				}
				rec := httptest.NewRecorder()
				apiErr.write(rec, nil)
				var body struct {
					Error struct {
						Code, Type string
					}
				}
				_ = json.Unmarshal(rec.Body.Bytes(), &body)
				if rec.Code != tc.status || body.Error.Code != tc.code {
					t.Errorf("answer = %d %s, want %d %s: %s", rec.Code, body.Error.Code, tc.status, tc.code, rec.Body)
				}
				if got := rec.Header().Get("Retry-After"); got != tc.retryWait {
					t.Errorf("Retry-After = %q, want %q", got, tc.retryWait)
				}
				return
			}
			if apiErr != nil {
				t.Fatalf("unexpected error %d %s: %s", apiErr.status, apiErr.code, apiErr.message)
			}
			if got := cfgNames(pl.all()); !slices.Equal(got, tc.want) {
				t.Errorf("candidates = %v, want %v", got, tc.want)
			}
			if pl.pastCooldown != tc.past {
				t.Errorf("pastCooldown = %v, want %v", pl.pastCooldown, tc.past)
			}
		})
	}
}

// TestSelectionChooseModelServing covers which providers serve a model:
// a models list, a model mapping, a wildcard mapping, or nothing (any).
func TestSelectionChooseModelServing(t *testing.T) {
	cfgs := []Provider{
		{Name: "listed", Models: []string{"m1"}, BaseFee: 1},
		{Name: "mapped", Model: map[string]string{"m2": "vendor/m2"}, BaseFee: 2},
		{Name: "listed-and-mapped", Models: []string{"m1"}, Model: map[string]string{"m3": "x"}, BaseFee: 3},
		{Name: "wildcard", Models: []string{"m1"}, Model: map[string]string{"*": "llama"}, BaseFee: 4},
		{Name: "open", BaseFee: 5},
	}
	var ps []*provider
	for _, c := range cfgs {
		ps = append(ps, cfgProv(t, c))
	}
	for model, want := range map[string][]string{
		"m1":    {"listed", "listed-and-mapped", "wildcard", "open"},
		"m2":    {"mapped", "wildcard", "open"},
		"m3":    {"listed-and-mapped", "wildcard", "open"},
		"other": {"wildcard", "open"},
	} {
		pl, apiErr := choose(ps, nil, cfgInput(t, "", cfgChat(model, "", "user", `"hi"`)), nil, time.Now())
		if apiErr != nil {
			t.Fatalf("%s: %s", model, apiErr.message)
		}
		if got := cfgNames(pl.all()); !slices.Equal(got, want) {
			t.Errorf("%s: candidates %v, want %v", model, got, want)
		}
		// Config validation (policy allowed_models) must agree with routing.
		for i, c := range cfgs {
			if got := servesModel(c.Models, c.Model, model); got != ps[i].serves(model) {
				t.Errorf("%s/%s: servesModel = %v but provider.serves = %v", c.Name, model, got, ps[i].serves(model))
			}
		}
	}
}

// TestSelectionChooseDoesNotDependOnConfigOrder guards the tie-break: a
// stable sort over config order would pass the tie test above by accident
// if providers happened to be listed by name.
func TestSelectionChooseDoesNotDependOnConfigOrder(t *testing.T) {
	in := cfgInput(t, "", cfgChat("m", "", "user", `"hello world"`))
	var ps []*provider
	for _, n := range []string{"d", "b", "a", "c"} {
		ps = append(ps, cfgProv(t, Provider{Name: n, InputRate: 5, OutputRate: 5, BaseFee: 2}))
	}
	for range 4 {
		pl, apiErr := choose(ps, nil, in, nil, time.Now())
		if apiErr != nil {
			t.Fatal(apiErr.message)
		}
		if got := cfgNames(pl.all()); !slices.Equal(got, []string{"a", "b", "c", "d"}) {
			t.Fatalf("config order %v gave %v, want a b c d", cfgNames(ps), got)
		}
		ps = append(ps[1:], ps[0])
	}
}

// cfgCountingUpstream counts the chat completions it answers.
type cfgCountingUpstream struct {
	srv    *httptest.Server
	mu     sync.Mutex
	models []string
}

func cfgNewCountingUpstream(t *testing.T) *cfgCountingUpstream {
	u := &cfgCountingUpstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Model string `json:"model"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		u.mu.Lock()
		u.models = append(u.models, req.Model)
		u.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, cfgCompletion)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *cfgCountingUpstream) calls() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.models)
}

func TestSelectionCaddyCheapestAndPolicy(t *testing.T) {
	alpha, beta := cfgNewCountingUpstream(t), cfgNewCountingUpstream(t)
	// alpha is cheaper for a usual request (0.256 vs 5.03 sats) but its
	// output rate is over the thrifty policy's cap.
	tc := startCaddy(t, fmt.Sprintf(`arbstr {
		provider beta {
			url %s/v1
			models gpt-4o
			output_rate 100
			base_fee 5
		}
		provider alpha {
			url %s/v1
			models gpt-4o
			model gpt-4o alpha-gpt-4o
			output_rate 1000
		}
		policy thrifty {
			max_output_rate 500
			keywords BUDGET
		}
		policy strict {
			allowed_models gpt-4o
			keywords never-used
		}
		retry {
			backoff 10ms
		}
		timeout 2s
	}`, beta.srv.URL, alpha.srv.URL))

	post := func(content string, header ...string) *http.Response {
		t.Helper()
		return tc.Post("/v1/chat/completions", cfgChat("gpt-4o", "", "user", fmt.Sprintf("%q", content)), header...)
	}
	expect := func(resp *http.Response, provider string, alphaCalls, betaCalls int) {
		t.Helper()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		if got := resp.Header.Get("x-arbstr-provider"); got != provider {
			t.Errorf("x-arbstr-provider = %q, want %q", got, provider)
		}
		if a, b := len(alpha.calls()), len(beta.calls()); a != alphaCalls || b != betaCalls {
			t.Errorf("upstream calls alpha=%d beta=%d, want %d and %d", a, b, alphaCalls, betaCalls)
		}
	}

	expect(post("hello"), "alpha", 1, 0)
	if got := alpha.calls()[0]; got != "alpha-gpt-4o" {
		t.Errorf("alpha got model %q, want its upstream name alpha-gpt-4o", got)
	}
	expect(post("on a budget, please"), "beta", 1, 1)
	expect(post("hello", policyHeader, "thrifty"), "beta", 1, 2)
	expect(post("no keyword here", policyHeader, "strict"), "alpha", 2, 2)

	resp := post("hello", policyHeader, "missing")
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown policy header: status %d, want 400", resp.StatusCode)
	}
	resp = tc.Post("/v1/chat/completions", cfgChat("gpt-5", "", "user", `"hello"`))
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unserved model: status %d, want 404", resp.StatusCode)
	}
	if a, b := len(alpha.calls()), len(beta.calls()); a != 2 || b != 2 {
		t.Errorf("refused requests reached upstreams: alpha=%d beta=%d, want 2 and 2", a, b)
	}
}
