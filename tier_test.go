package arbstr

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"
)

func TestTierChooseTiered(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	soon, later := now.Add(10*time.Second), now.Add(time.Minute)
	// Within a tier the dearer provider is listed first, so the order seen
	// is choose's price order, not the config's. The local tier is the
	// cheapest and frontier the dearest, except "bargain", a frontier
	// provider cheaper than every other: tiers come before price.
	byTier := groupByTier([]*provider{
		cfgProv(t, Provider{Name: "local-b", Tier: "local", Models: []string{"m", "small"}, OutputRate: 2}),
		cfgProv(t, Provider{Name: "local-a", Tier: "local", Models: []string{"m", "small"}, OutputRate: 1}),
		cfgProv(t, Provider{Name: "std", Models: []string{"m"}, OutputRate: 50}),
		cfgProv(t, Provider{Name: "front-dear", Tier: "frontier", Models: []string{"m"}, OutputRate: 900}),
		cfgProv(t, Provider{Name: "bargain", Tier: "frontier", Models: []string{"m"}, OutputRate: 0.5}),
	})
	policies := []*policy{newPolicy(&Policy{Name: "cap", MaxOutputRate: 100})}
	cases := []struct {
		name   string
		model  string
		policy string
		need   tier
		health cfgHealth
		want   []string
		past   bool
		status int
		code   string
	}{
		{name: "local: every tier, lowest tier first, cheapest first within", need: tierLocal,
			want: []string{"local-a", "local-b", "std", "bargain", "front-dear"}},
		{name: "standard: never a local one", need: tierStandard, want: []string{"std", "bargain", "front-dear"}},
		{name: "frontier: frontier only", need: tierFrontier, want: []string{"bargain", "front-dear"}},
		{name: "local circuits open: escalate to standard", need: tierLocal,
			health: cfgHealth{"local-a": cfgOpen(later), "local-b": cfgOpen(later)}, want: []string{"std", "bargain", "front-dear"}},
		{name: "one local open: the other local first", need: tierLocal,
			health: cfgHealth{"local-a": cfgOpen(later)}, want: []string{"local-b", "std", "bargain", "front-dear"}},
		{name: "standard open: escalate to frontier", need: tierStandard,
			health: cfgHealth{"std": cfgOpen(later)}, want: []string{"bargain", "front-dear"}},
		{name: "locals and standard open: escalate twice", need: tierLocal,
			health: cfgHealth{"local-a": cfgOpen(later), "local-b": cfgOpen(later), "std": cfgOpen(later)}, want: []string{"bargain", "front-dear"}},
		{name: "locals cooling down: a free higher tier beats pushing through a cooldown", need: tierLocal,
			health: cfgHealth{"local-a": cfgCooling(soon), "local-b": cfgCooling(later)}, want: []string{"std", "bargain", "front-dear"}},
		{name: "every tier cooling down: the lowest tier's first cooldown to end is tried", need: tierLocal,
			health: cfgHealth{"local-a": cfgCooling(later), "local-b": cfgCooling(soon), "std": cfgCooling(soon),
				"bargain": cfgCooling(soon), "front-dear": cfgCooling(soon)}, want: []string{"local-b"}, past: true},
		{name: "never down: frontier open, locals free, 503", need: tierFrontier,
			health: cfgHealth{"bargain": cfgOpen(later), "front-dear": cfgOpen(soon)}, status: 503, code: "providers_unavailable"},
		{name: "never down: standard and frontier open, 503", need: tierStandard,
			health: cfgHealth{"std": cfgOpen(later), "bargain": cfgOpen(later), "front-dear": cfgOpen(later)}, status: 503, code: "providers_unavailable"},
		{name: "price cap applies in every tier", need: tierStandard, policy: "cap", want: []string{"std", "bargain"}},
		{name: "price cap and escalation", need: tierStandard, policy: "cap",
			health: cfgHealth{"std": cfgOpen(later)}, want: []string{"bargain"}},
		{name: "price cap excludes the whole frontier tier", need: tierFrontier, policy: "cap",
			health: cfgHealth{"bargain": cfgOpen(later)}, status: 503, code: "providers_unavailable"},
		{name: "model only local, request needs frontier: 400 naming the tier", model: "small", need: tierFrontier,
			status: 400, code: "no_provider_for_tier"},
		{name: "model nobody serves: 404", model: "nope", need: tierLocal, status: 404, code: "model_not_found"},
		{name: "unknown policy: 400", need: tierLocal, policy: "nope", status: 400, code: "unknown_policy"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			model := tc.model
			if model == "" {
				model = "m"
			}
			in := selectionInput{model: model, policyHeader: tc.policy, inTokens: 10, outTokens: 1000}
			pl, apiErr := chooseTiered(byTier, policies, in, tc.need, tc.health.available, now)
			if tc.status != 0 {
				if apiErr == nil {
					t.Fatalf("got plan %v, want error %d %s", cfgNames(pl.all()), tc.status, tc.code)
				}
				if apiErr.status != tc.status || apiErr.code != tc.code {
					t.Fatalf("got error %d %s (%s), want %d %s", apiErr.status, apiErr.code, apiErr.message, tc.status, tc.code)
				}
				return
			}
			if apiErr != nil {
				t.Fatalf("unexpected error %d %s", apiErr.status, apiErr.message)
			}
			if got := cfgNames(pl.all()); !slices.Equal(got, tc.want) || pl.pastCooldown != tc.past {
				t.Errorf("got %v (pastCooldown %v), want %v (pastCooldown %v)", got, pl.pastCooldown, tc.want, tc.past)
			}
		})
	}
}

func TestTierFor(t *testing.T) {
	for _, tc := range []struct {
		score float64
		want  tier
	}{{0, tierLocal}, {0.29, tierLocal}, {0.3, tierStandard}, {0.5, tierStandard}, {0.7, tierStandard}, {0.71, tierFrontier}, {1, tierFrontier}} {
		if got := tierFor(tc.score, 0.3, 0.7); got != tc.want {
			t.Errorf("tierFor(%v) = %s, want %s", tc.score, got, tc.want)
		}
	}
}

func TestTierComplexityOverride(t *testing.T) {
	for _, tc := range []struct {
		header string
		want   tier
		ok     bool
		bad    bool
	}{{"", tierAny, false, false}, {"low", tierLocal, true, false}, {" Medium ", tierStandard, true, false},
		{"HIGH", tierFrontier, true, false}, {"0.9", tierAny, false, true}, {"extreme", tierAny, false, true}} {
		r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
		if tc.header != "" {
			r.Header.Set(complexityHeader, tc.header)
		}
		got, ok, apiErr := complexityOverride(r)
		if got != tc.want || ok != tc.ok || (apiErr != nil) != tc.bad {
			t.Errorf("%q: got %s %v %v, want %s %v bad=%v", tc.header, got, ok, apiErr, tc.want, tc.ok, tc.bad)
		}
		if apiErr != nil && apiErr.status != http.StatusBadRequest {
			t.Errorf("%q: status %d, want 400", tc.header, apiErr.status)
		}
	}
}

func TestTierCaddyfileAdaptsToJSON(t *testing.T) {
	got := cfgAdaptedHandler(t, `arbstr {
		provider ollama {
			url http://127.0.0.1:11434/v1
			tier local
			discover
		}
		provider big {
			url http://127.0.0.1:1/v1
			tier frontier
			discover 30s
		}
		complexity {
			low 0.25
			high 0.8
			weights code 0.7 depth 0
		}
	}`)
	b, _ := json.Marshal(map[string]any{"providers": got["providers"], "complexity": got["complexity"]})
	want := `{"complexity":{"high":0.8,"low":0.25,"weights":{"code":0.7,"depth":0}},` +
		`"providers":[{"discover":0,"name":"ollama","tier":"local","url":"http://127.0.0.1:11434/v1"},` +
		`{"discover":30000000000,"name":"big","tier":"frontier","url":"http://127.0.0.1:1/v1"}]}`
	if string(b) != want {
		t.Errorf("adapted JSON\n got %s\nwant %s", b, want)
	}
}

// A request larger than a tier's context windows escalates to a tier that
// can hold it; when none can, it is refused before any call.
func TestTierContextTooSmallEscalates(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	byTier := groupByTier([]*provider{
		cfgProv(t, Provider{Name: "local", Tier: "local", Models: []string{"m"}, Context: 100}),
		cfgProv(t, Provider{Name: "front", Tier: "frontier", Models: []string{"m"}, Context: 2000}),
	})
	in := selectionInput{model: "m", inTokens: 1, outTokens: 256, contextNeed: 1000}
	pl, apiErr := chooseTiered(byTier, nil, in, tierLocal, nil, now)
	if apiErr != nil {
		t.Fatalf("got %v, want the frontier provider", apiErr.message)
	}
	if got := cfgNames(pl.all()); len(got) != 1 || got[0] != "front" {
		t.Fatalf("candidates %v, want [front]", got)
	}
	in.contextNeed = 5000
	if _, apiErr = chooseTiered(byTier, nil, in, tierLocal, nil, now); apiErr == nil || apiErr.code != "context_length_exceeded" || apiErr.status != 400 {
		t.Fatalf("got %+v, want 400 context_length_exceeded", apiErr)
	}
}
