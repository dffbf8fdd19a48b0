package arbstr

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSelectionLazyOrder: with many providers, the candidates come in the
// order of a full sort by expected cost then name (ties included), the
// unavailable ones left out, and only those handed out are checked for
// availability.
func TestSelectionLazyOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now()
	for round := range 20 {
		n := 1 + rng.IntN(300)
		providers := make([]*provider, n)
		health := cfgHealth{}
		for i := range providers {
			// Few distinct rates: many ties, decided by name.
			name := fmt.Sprintf("p%03d-%d", rng.IntN(1000), i)
			providers[i] = cfgProv(t, Provider{Name: name, Models: []string{"m"},
				InputRate: float64(rng.IntN(4) * 100), OutputRate: float64(rng.IntN(3) * 100), BaseFee: float64(rng.IntN(2))})
			if rng.IntN(4) == 0 {
				health[name] = cfgOpen(now.Add(time.Minute))
			}
		}
		var want []string
		sorted := slices.Clone(providers)
		slices.SortFunc(sorted, func(a, b *provider) int {
			ca, cb := a.expectedCost(1, 256), b.expectedCost(1, 256)
			if ca != cb {
				if ca < cb {
					return -1
				}
				return 1
			}
			return strings.Compare(a.name, b.name)
		})
		for _, p := range sorted {
			if _, down := health[p.name]; !down {
				want = append(want, p.name)
			}
		}
		in := selectionInput{model: "m", inTokens: 1, outTokens: 256}
		pl, apiErr := choose(providers, nil, in, health.available, now)
		if len(want) == 0 {
			if apiErr == nil || apiErr.status != 503 {
				t.Fatalf("round %d: all down, got %v", round, apiErr)
			}
			continue
		}
		if apiErr != nil {
			t.Fatalf("round %d: %v", round, apiErr.message)
		}
		if got := cfgNames(pl.all()); !slices.Equal(got, want) {
			t.Fatalf("round %d: candidates\n%v\nwant\n%v", round, got, want)
		}
		checked := 0
		pl.available = func(p *provider, model string) hold {
			checked++
			return health.available(p, model)
		}
		if first := pl.next(); first == nil || first.name != want[0] {
			t.Fatalf("round %d: first candidate %v, want %s", round, first, want[0])
		}
		if checked != 1 {
			t.Errorf("round %d: %d availability checks of %d providers to hand out the first", round, checked, n)
		}
	}
}

// chooseSortingAll is choose as it was before it ordered candidates lazily:
// every candidate checked for availability, then all sorted. It is the
// baseline of BenchmarkChoose.
func chooseSortingAll(providers []*provider, policies []*policy, in selectionInput, available availability, now time.Time) ([]*provider, *apiError) {
	pol, perr := matchPolicy(policies, in)
	if perr != nil {
		return nil, perr
	}
	type ranked struct {
		p    *provider
		cost float64
	}
	var ranks []ranked
	servedBySomeone, passedPolicy := false, false
	var firstRetry time.Time
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
				if firstRetry.IsZero() || h.until.Before(firstRetry) {
					firstRetry = h.until
				}
				continue
			}
		}
		ranks = append(ranks, ranked{p: p, cost: p.expectedCost(in.inTokens, in.outTokens)})
	}
	switch {
	case !servedBySomeone:
		return nil, errModelNotFound(in.model, in.api)
	case !passedPolicy:
		return nil, errPolicyExcludesAll(pol.name, in.model)
	case len(ranks) == 0:
		return nil, errAllUnhealthy(in.model, firstRetry.Sub(now))
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
	out := make([]*provider, len(ranks))
	for i, r := range ranks {
		out[i] = r.p
	}
	return out, nil
}
