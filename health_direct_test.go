package arbstr

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Tests of SPEC §7 "never worse than direct" (issue 10): cooldowns passed
// when nothing else is left, cooldowns capped, health per model bounded by
// least-recently-used eviction, and the admin reset.

// ---- unit tests on a fake clock ----

func TestHealthCooldownOnlyHold(t *testing.T) {
	t.Run("cooldown alone: held, but may be passed", func(t *testing.T) {
		reg, p, clk := hlRegistry(t, 1, time.Minute)
		reg.coolDown(p, "m", clk.Now().Add(time.Second))
		h := reg.holdAt(p, "m", clk.Now())
		if h.free() || !h.cooldownOnly || !h.until.Equal(clk.Now().Add(time.Second)) {
			t.Fatalf("hold = %+v; want held by the cooldown alone until +1s", h)
		}
		if _, ok := reg.begin(p, "m", false); ok {
			t.Fatalf("begin granted during a cooldown")
		}
		tk, ok := reg.begin(p, "m", true)
		if !ok || !tk.pastCooldown || tk.probe {
			t.Fatalf("begin past the cooldown: ok=%v ticket=%+v; want a plain one-try attempt", ok, tk)
		}
	})
	t.Run("open circuit: never passed", func(t *testing.T) {
		reg, p, clk := hlRegistry(t, 1, time.Minute)
		hlFail(t, reg, p, "m", classServer)
		reg.coolDown(p, "m", clk.Now().Add(2*time.Minute))
		if h := reg.holdAt(p, "m", clk.Now()); h.cooldownOnly {
			t.Fatalf("hold = %+v; an open circuit is not a cooldown alone", h)
		}
		if _, ok := reg.begin(p, "m", true); ok {
			t.Fatalf("begin past the cooldown went through an open circuit")
		}
	})
	t.Run("probe in flight: never passed", func(t *testing.T) {
		reg, p, clk := hlRegistry(t, 1, time.Second)
		hlFail(t, reg, p, "m", classServer)
		clk.Advance(time.Second)
		if _, ok := reg.begin(p, "m", false); !ok {
			t.Fatalf("no probe granted once the circuit half-opened")
		}
		reg.coolDown(p, "m", clk.Now().Add(time.Minute))
		if h := reg.holdAt(p, "m", clk.Now()); h.cooldownOnly {
			t.Fatalf("hold = %+v; a probe in flight is not a cooldown alone", h)
		}
		if _, ok := reg.begin(p, "m", true); ok {
			t.Fatalf("a second attempt went past the cooldown while the probe holds the circuit")
		}
	})
}

func TestHealthCooldownCappedAtCooldownMax(t *testing.T) {
	reg, p, clk := hlRegistry(t, 3, time.Minute)
	now := clk.Now()
	asked := now.Add(999999999 * time.Second) // Retry-After: 999999999, year 2056
	reg.coolDown(p, "m", asked)
	if _, at := reg.available(p, "m"); !at.Equal(now.Add(defaultCooldownMax)) {
		t.Fatalf("cooldown ends %v; want cooldown_max (5m) from now, %v", at, now.Add(defaultCooldownMax))
	}
	st := reg.byName[p.name].status(now)
	if len(st.Health) != 1 || !st.Health[0].CooldownRequestedUntil.Equal(asked) || st.CooldownMax != "5m0s" {
		t.Errorf("admin status %+v; want cooldown_requested_until %v and cooldown_max 5m0s", st, asked)
	}
	clk.Advance(defaultCooldownMax)
	if ok, _ := reg.available(p, "m"); !ok {
		t.Fatalf("still cooling down after cooldown_max")
	}
	if st := reg.byName[p.name].status(clk.Now()); !st.Health[0].CooldownRequestedUntil.IsZero() {
		t.Errorf("an ended cooldown still shows cooldown_requested_until: %+v", st.Health[0])
	}
}

// A config loaded with a lower cooldown_max cuts cooldowns already running:
// what an older config allowed does not outlive it.
func TestHealthLoadCapsRunningCooldowns(t *testing.T) {
	reg, p, _ := hlRegistry(t, 3, time.Minute)
	reg.now = time.Now // loadHealthRegistry below reads the real clock
	reg.coolDown(p, "m", time.Now().Add(4*time.Minute))
	settings := newBreakerSettings(nil)
	settings.cooldownMax = 10 * time.Second
	reg2 := loadHealthRegistry([]*provider{p}, settings)
	defer reg2.release()
	_, at := reg2.available(p, "m")
	if left := time.Until(at); left > 10*time.Second || left < 5*time.Second {
		t.Fatalf("after loading cooldown_max 10s the cooldown still has %v left", left)
	}
}

// hlAnyModel returns a registry for an any-model provider that also names
// one model in its config.
func hlAnyModel(t *testing.T, failures int) (*healthRegistry, *provider) {
	t.Helper()
	p, err := newProvider(&Provider{Name: "hl-any", URL: "http://hl-any.invalid/" + t.Name(),
		Model: map[string]string{"pinned": "pinned-up", "*": "any-up"}}, caddy.NewReplacer())
	if err != nil {
		t.Fatal(err)
	}
	reg := loadHealthRegistry([]*provider{p}, newBreakerSettings(&BreakerConfig{Failures: failures, Open: caddy.Duration(time.Minute)}))
	t.Cleanup(reg.release)
	return reg, p
}

func TestHealthModelEntriesBoundedLeastRecentlyUsed(t *testing.T) {
	reg, p := hlAnyModel(t, 1)
	hlFail(t, reg, p, "pinned", classServer) // a model the config names
	hlFail(t, reg, p, "real", classServer)   // a client's model, kept busy below
	for i := range 1000 {
		hlFail(t, reg, p, fmt.Sprintf("made-up-%d", i), classNotFound)
		if i%100 == 0 {
			reg.available(p, "real") // a request for it: recently used
		}
	}
	ph := reg.byName[p.name]
	ph.mu.Lock()
	n := len(ph.models)
	_, pinned := ph.models["pinned"]
	_, real := ph.models["real"]
	_, oldest := ph.models["made-up-0"]
	_, newest := ph.models["made-up-999"]
	ph.mu.Unlock()
	if n > maxModelsPerProvider+1 {
		t.Errorf("%d health entries after 1000 invented names; want at most %d + the configured model", n, maxModelsPerProvider)
	}
	if !pinned || !real || !newest || oldest {
		t.Errorf("kept: pinned=%v real=%v newest=%v oldest=%v; want the configured, the recently used and the newest kept, the oldest dropped",
			pinned, real, newest, oldest)
	}
	if ok, _ := reg.available(p, "real"); ok {
		t.Errorf("the recently used model lost its open circuit to eviction")
	}
}

func TestHealthNotFoundForOneModelLeavesOthersAlone(t *testing.T) {
	reg, p := hlAnyModel(t, 1)
	for i := range 300 {
		hlFail(t, reg, p, fmt.Sprintf("made-up-%d", i), classNotFound)
	}
	for _, model := range []string{"pinned", "a-real-model"} {
		if ok, at := reg.available(p, model); !ok {
			t.Errorf("%s unavailable until %v after 404s for 300 other names", model, at)
		}
		if tk, ok := reg.begin(p, model, false); !ok || tk.probe {
			t.Errorf("%s: begin ok=%v; want a plain attempt", model, ok)
		}
	}
}

// ---- through Caddy ----

// hlSeededRateLimiter answers 429 with Retry-After: 1 to a seeded random
// 10 % of requests and hlOK to the rest, counting both.
type hlSeededRateLimiter struct {
	mu      sync.Mutex
	rng     *rand.Rand
	limited int
	served  int
}

func (s *hlSeededRateLimiter) serve(w http.ResponseWriter, r *http.Request, n int64) {
	s.mu.Lock()
	limit := s.rng.IntN(10) == 0
	if limit {
		s.limited++
	} else {
		s.served++
	}
	s.mu.Unlock()
	if limit {
		hlStatus(429, "Retry-After", "1")(w, r, n)
		return
	}
	hlOK(w, r, n)
}

// One provider that rate limits a random 10 % of requests: a client talking
// to it directly succeeds ~90 % of the time, and so must a client of
// arbstr. (Before: one 429 cooled the only provider down for everyone, and
// every request in the next second got 503.)
func TestHealthOneRateLimitedProviderNeverWorseThanDirectIntegration(t *testing.T) {
	limiter := &hlSeededRateLimiter{rng: rand.New(rand.NewPCG(10, 429))}
	up := hlNewUpstream(t, limiter.serve)
	// attempts 1: a 429 is not waited out but cools the provider down.
	tc := startCaddy(t, hlHealthSite(hlProviderBlock("alpha", up.base(), "", "gpt-hl", 1, 1, 0), 3, "30s", ""))

	const requests = 200
	ok, limited, other := 0, 0, map[int]int{}
	for range requests {
		resp := tc.Post("/v1/chat/completions", hlChat("gpt-hl", false))
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			limited++
			if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 {
				t.Errorf("429 with Retry-After %q; want the provider's 1 s", resp.Header.Get("Retry-After"))
			}
		default:
			other[resp.StatusCode]++
		}
	}
	if calls := up.calls.Load(); calls != requests {
		t.Errorf("the provider got %d calls for %d requests; a direct client makes one each", calls, requests)
	}
	direct := float64(limiter.served) / float64(limiter.served+limiter.limited)
	rate := float64(ok) / requests
	t.Logf("through arbstr: %d ok, %d 429, others %v; the provider's own success rate %.3f", ok, limited, other, direct)
	if rate < 0.85 || rate < direct {
		t.Errorf("success rate %.3f through arbstr; want ≥ 0.85 and ≥ a direct client's %.3f (others: %v)", rate, direct, other)
	}
}

// An any-model provider answers 404 for model names a client made up. Those
// names must not crowd a real model out of health tracking, nor open its
// breaker: it is still served.
func TestHealthMadeUpModelsDoNotLockOutRealModelIntegration(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Model string `json:"model"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		if strings.HasPrefix(req.Model, "made-up-") {
			hlStatus(404)(w, r, 0)
			return
		}
		hlOK(w, r, 0)
	}))
	t.Cleanup(up.Close)
	tc := startCaddy(t, hlHealthSite(hlProviderBlock("alpha", up.URL+"/v1", "", "", 1, 1, 0), 1, "30s", ""))

	notRelayed := map[int]int{}
	for i := range 300 {
		resp := tc.Post("/v1/chat/completions", hlChat(fmt.Sprintf("made-up-%d", i), false))
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway {
			notRelayed[resp.StatusCode]++
		}
	}
	if len(notRelayed) > 0 {
		t.Errorf("made-up models answered %v; want 502 (the provider's 404) for each, its own breaker", notRelayed)
	}
	resp := tc.Post("/v1/chat/completions", hlChat("gpt-real", false))
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("a real model after 300 invented ones: %d %s; want 200", resp.StatusCode, body)
	}
	list, _ := hlAdminProviders(t, tc)
	if p := hlFind(list, "alpha", up.URL); p == nil || len(p.Health) > maxModelsPerProvider {
		t.Errorf("admin API shows %d health entries; want at most %d", len(p.Health), maxModelsPerProvider)
	}
}

// hlAdminPost sends POST to the admin API and decodes its JSON answer.
func hlAdminPost(t *testing.T, tc *testCaddy, method, path string) (int, map[string]any, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, tc.Admin+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("%s %s: %d, not JSON: %s", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, body, resp.Header
}

// Retry-After: 999999999 cools the provider down for cooldown_max (5m by
// default), not until the 2050s; the admin API says so, and POST
// /arbstr/providers/reset ends it.
func TestHealthHugeRetryAfterCappedAndResetIntegration(t *testing.T) {
	var huge sync.Once
	cheap := hlNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		answered := false
		huge.Do(func() {
			hlStatus(429, "Retry-After", "999999999")(w, r, n)
			answered = true
		})
		if !answered {
			hlOK(w, r, n)
		}
	})
	dear := hlNewUpstream(t, hlOK)
	providers := hlProviderBlock("alpha", cheap.base(), "", "gpt-hl", 1, 1, 0) +
		hlProviderBlock("beta", dear.base(), "", "gpt-hl", 9, 9, 0)
	tc := startCaddy(t, hlHealthSite(providers, 3, "30s", ""))

	for i := range 2 {
		resp := tc.Post("/v1/chat/completions", hlChat("gpt-hl", false))
		if resp.StatusCode != 200 || resp.Header.Get(headerProvider) != "beta" {
			t.Fatalf("request %d: %d from %q; want 200 from beta while alpha cools down", i, resp.StatusCode, resp.Header.Get(headerProvider))
		}
	}
	list, raw := hlAdminProviders(t, tc)
	alpha := hlFind(list, "alpha", cheap.URL)
	if alpha == nil || len(alpha.Health) != 1 {
		t.Fatalf("alpha's health missing:\n%s", raw)
	}
	h := alpha.Health[0]
	if left := time.Until(h.CooldownUntil); left > defaultCooldownMax || left < defaultCooldownMax-time.Minute {
		t.Errorf("cooldown_until %v is %v away; want cooldown_max (5m) at most", h.CooldownUntil, left)
	}
	if h.CooldownRequestedUntil.Year() < 2050 || alpha.CooldownMax != "5m0s" {
		t.Errorf("cooldown_requested_until %v, cooldown_max %q; want the provider's 2050s ask and 5m0s shown", h.CooldownRequestedUntil, alpha.CooldownMax)
	}

	status, body, _ := hlAdminPost(t, tc, http.MethodPost, "/arbstr/providers/reset?provider=alpha&model=gpt-hl")
	if status != 200 || fmt.Sprint(body["reset"]) != fmt.Sprintf("[map[model:gpt-hl provider:alpha url:%s]]", cheap.base()) {
		t.Fatalf("reset: %d %v; want 200 listing alpha/gpt-hl", status, body)
	}
	resp := tc.Post("/v1/chat/completions", hlChat("gpt-hl", false))
	if resp.StatusCode != 200 || resp.Header.Get(headerProvider) != "alpha" {
		t.Fatalf("after the reset: %d from %q; want 200 from alpha", resp.StatusCode, resp.Header.Get(headerProvider))
	}
	list, _ = hlAdminProviders(t, tc)
	if h := hlFind(list, "alpha", cheap.URL).Health[0]; !h.CooldownUntil.IsZero() || h.Successes != 1 {
		t.Errorf("alpha after reset and one success: %+v", h)
	}
}

func TestAdminResetIntegration(t *testing.T) {
	bad := hlNewUpstream(t, hlStatus(500))
	good := hlNewUpstream(t, hlOK)
	providers := hlProviderBlock("alpha", bad.base(), "", "gpt-hl other", 1, 1, 0) +
		hlProviderBlock("beta", good.base(), "", "gpt-hl", 9, 9, 0)
	tc := startCaddy(t, hlHealthSite(providers, 1, "30s", ""))
	tc.Post("/v1/chat/completions", hlChat("gpt-hl", false)) // alpha fails: open
	tc.Post("/v1/chat/completions", hlChat("gpt-hl", false)) // beta only
	if n := bad.calls.Load(); n != 1 {
		t.Fatalf("alpha got %d calls, want 1 (open after one failure)", n)
	}

	for _, tcase := range []struct {
		path, want string
	}{
		{"/arbstr/providers/reset?provider=nobody", `no provider named "nobody"`},
		{"/arbstr/providers/reset?provider=alpha&model=gpt-nope", `provider "alpha" does not serve model "gpt-nope"`},
	} {
		status, body, _ := hlAdminPost(t, tc, http.MethodPost, tcase.path)
		if msg, _ := body["error"].(string); status != http.StatusNotFound || !strings.Contains(msg, tcase.want) {
			t.Errorf("POST %s: %d %v; want 404 with an error saying %s", tcase.path, status, body, tcase.want)
		}
	}
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
		status, body, hdr := hlAdminPost(t, tc, method, "/arbstr/providers/reset")
		if status != http.StatusMethodNotAllowed || hdr.Get("Allow") != "POST" || body["error"] == nil {
			t.Errorf("%s /arbstr/providers/reset: %d Allow %q %v; want 405, Allow POST and an error", method, status, hdr.Get("Allow"), body)
		}
	}
	if n := bad.calls.Load(); n != 1 {
		t.Fatalf("a refused reset let alpha be tried: %d calls", n)
	}

	// Without parameters: everything. The open circuit is closed, counts kept.
	status, body, _ := hlAdminPost(t, tc, http.MethodPost, "/arbstr/providers/reset")
	if status != 200 || len(body["reset"].([]any)) != 2 {
		t.Fatalf("reset all: %d %v; want alpha/gpt-hl and beta/gpt-hl", status, body)
	}
	list, raw := hlAdminProviders(t, tc)
	if h := hlFind(list, "alpha", bad.URL).Health[0]; h.State != "closed" || h.ConsecutiveFailures != 0 || h.Failures != 1 {
		t.Errorf("alpha after reset: %+v; want closed, 0 consecutive, 1 failure counted\n%s", h, raw)
	}
	tc.Post("/v1/chat/completions", hlChat("gpt-hl", false))
	if n := bad.calls.Load(); n != 2 {
		t.Errorf("alpha got %d calls; after the reset it should be tried again", n)
	}
}

// The 429 arbstr sends when every provider rate limits names no longer a
// wait than cooldown_max: arbstr tries the provider again by then.
func TestHealthRateLimitedAnswerRetryAfterCappedIntegration(t *testing.T) {
	up := hlNewUpstream(t, hlStatus(429, "Retry-After", "999999999"))
	tc := startCaddy(t, hlHealthSite(hlProviderBlock("alpha", up.base(), "", "gpt-hl", 1, 1, 0), 3, "30s", "\tcooldown_max 2m\n"))
	for i := range 2 {
		resp := tc.Post("/v1/chat/completions", hlChat("gpt-hl", false))
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "120" {
			t.Errorf("request %d: %d Retry-After %q; want 429 with cooldown_max's 120", i, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}
	if n := up.calls.Load(); n != 2 {
		t.Errorf("the provider got %d calls; want one per request, as a direct client", n)
	}
}
