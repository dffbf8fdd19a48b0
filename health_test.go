package arbstr

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// ---- helpers shared by health_test.go, admin_test.go, metrics_test.go and
// observability_test.go (prefix hl) ----

// hlClock is a settable clock for healthRegistry.now.
type hlClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *hlClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *hlClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// hlRegistry returns a health registry for one provider on a fake clock,
// released at the end of the test.
func hlRegistry(t *testing.T, failures int, open time.Duration) (*healthRegistry, *provider, *hlClock) {
	t.Helper()
	p, err := newProvider(&Provider{Name: "hl-unit", URL: "http://hl-unit.invalid/" + t.Name(),
		Models: []string{"m", "other"}}, caddy.NewReplacer())
	if err != nil {
		t.Fatal(err)
	}
	reg := loadHealthRegistry([]*provider{p}, newBreakerSettings(&BreakerConfig{Failures: failures, Open: caddy.Duration(open)}))
	clk := &hlClock{t: time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)}
	reg.now = clk.Now
	t.Cleanup(reg.release)
	return reg, p, clk
}

// hlFail records one attempt with the given outcome.
func hlFail(t *testing.T, reg *healthRegistry, p *provider, model string, class failureClass) {
	t.Helper()
	tk, ok := reg.begin(p, model, false)
	if !ok {
		t.Fatalf("begin refused before recording %s", class)
	}
	reg.finish(tk, class)
}

// hlUpstream is a provider stand-in that counts the requests it got.
type hlUpstream struct {
	*httptest.Server
	calls atomic.Int64
	mu    sync.Mutex
	seen  []*http.Request
}

// hlNewUpstream serves fn, handing it the 1-based number of the call.
func hlNewUpstream(t *testing.T, fn func(w http.ResponseWriter, r *http.Request, n int64)) *hlUpstream {
	t.Helper()
	u := &hlUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		n := u.calls.Add(1)
		u.mu.Lock()
		u.seen = append(u.seen, r.Clone(r.Context()))
		u.mu.Unlock()
		fn(w, r, n)
	}))
	t.Cleanup(u.Close)
	return u
}

// authorization is the Authorization header of the i-th request received.
func (u *hlUpstream) authorization(t *testing.T, i int) string {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if i >= len(u.seen) {
		t.Fatalf("upstream got %d requests, no request %d", len(u.seen), i)
	}
	return u.seen[i].Header.Get("Authorization")
}

// base is the provider URL to configure.
func (u *hlUpstream) base() string { return u.URL + "/v1" }

// hlCompletion is a successful non-streaming answer: 10 tokens in, 20 out.
const hlCompletion = `{"id":"chatcmpl-hl","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}`

func hlOK(w http.ResponseWriter, _ *http.Request, _ int64) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, hlCompletion)
}

// hlStreamOK answers a stream of two chunks, usage (10 in, 20 out) and [DONE].
func hlStreamOK(w http.ResponseWriter, _ *http.Request, _ int64) {
	w.Header().Set("Content-Type", "text/event-stream")
	for _, ev := range []string{
		`{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hel"}}]}`,
		`{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}`,
		`{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}`,
		`[DONE]`,
	} {
		_, _ = fmt.Fprintf(w, "data: %s\n\n", ev)
		w.(http.Flusher).Flush()
	}
}

// hlStatus answers every call with status and an OpenAI-style error body;
// hdr are header name/value pairs.
func hlStatus(status int, hdr ...string) func(http.ResponseWriter, *http.Request, int64) {
	return func(w http.ResponseWriter, _ *http.Request, _ int64) {
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Set(hdr[i], hdr[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = fmt.Fprintf(w, `{"error":{"message":"upstream says %d","type":"server_error"}}`, status)
	}
}

// hlChat is a small chat completion body for model.
func hlChat(model string, stream bool) string {
	return fmt.Sprintf(`{"model":%q,"stream":%t,"messages":[{"role":"user","content":"hi there"}]}`, model, stream)
}

// hlProviderBlock is a provider block of an arbstr directive.
func hlProviderBlock(name, url, key, models string, inRate, outRate, baseFee float64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\tprovider %s {\n\t\turl %s\n", name, url)
	if key != "" {
		fmt.Fprintf(&b, "\t\tapi_key %s\n", key)
	}
	if models != "" {
		fmt.Fprintf(&b, "\t\tmodels %s\n", models)
	}
	fmt.Fprintf(&b, "\t\tinput_rate %g\n\t\toutput_rate %g\n\t\tbase_fee %g\n\t}\n", inRate, outRate, baseFee)
	return b.String()
}

// hlAdminProviders fetches GET /arbstr/providers.
func hlAdminProviders(t *testing.T, tc *testCaddy) ([]hlProviderJSON, string) {
	t.Helper()
	resp, err := http.Get(tc.Admin + "/arbstr/providers")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /arbstr/providers: %d %s", resp.StatusCode, raw)
	}
	var out []hlProviderJSON
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("GET /arbstr/providers: %v\n%s", err, raw)
	}
	return out, string(raw)
}

// hlProviderJSON is one element of GET /arbstr/providers as a client reads it.
type hlProviderJSON struct {
	Name        string   `json:"name"`
	URL         string   `json:"url"`
	Models      []string `json:"models"`
	AnyModel    bool     `json:"any_model"`
	InputRate   float64  `json:"input_rate"`
	OutputRate  float64  `json:"output_rate"`
	BaseFee     float64  `json:"base_fee"`
	CooldownMax string   `json:"cooldown_max"`
	Health      []struct {
		Model                  string    `json:"model"`
		State                  string    `json:"state"`
		OpenUntil              time.Time `json:"open_until"`
		CooldownUntil          time.Time `json:"cooldown_until"`
		CooldownRequestedUntil time.Time `json:"cooldown_requested_until"`
		ConsecutiveFailures    int       `json:"consecutive_failures"`
		Failures               int       `json:"failures"`
		Successes              int       `json:"successes"`
		LastErrorClass         string    `json:"last_error_class"`
		LastFailureAt          time.Time `json:"last_failure_at"`
	} `json:"health"`
}

// hlFind returns the provider with this name and URL prefix, or nil.
func hlFind(list []hlProviderJSON, name, urlPrefix string) *hlProviderJSON {
	for i := range list {
		if list[i].Name == name && strings.HasPrefix(list[i].URL, urlPrefix) {
			return &list[i]
		}
	}
	return nil
}

// ---- unit tests of the breaker and cooldowns ----

func TestHealthBreakerOpensAfterConsecutiveCountedFailures(t *testing.T) {
	const open = 30 * time.Second
	cases := map[string]failureClass{
		"connection": classConnection,
		"timeout":    classTimeout,
	}
	for _, status := range []int{500, 502, 503, 504, 529, 408, 401, 402, 403, 404} {
		cases[strconv.Itoa(status)] = classifyStatus(status)
	}
	for name, class := range cases {
		t.Run(name, func(t *testing.T) {
			reg, p, clk := hlRegistry(t, 3, open)
			for i := 0; i < 2; i++ {
				hlFail(t, reg, p, "m", class)
			}
			if ok, _ := reg.available(p, "m"); !ok {
				t.Fatalf("open after 2 of 3 failures")
			}
			hlFail(t, reg, p, "m", class)
			ok, at := reg.available(p, "m")
			if ok {
				t.Fatalf("still available after 3 consecutive %s failures", class)
			}
			if want := clk.Now().Add(open); !at.Equal(want) {
				t.Errorf("available says %v, want the end of the open period %v", at, want)
			}
			if _, ok := reg.begin(p, "m", false); ok {
				t.Errorf("begin allowed an attempt on an open circuit")
			}
			// The breaker is per model: another model of the provider is fine.
			if ok, _ := reg.available(p, "other"); !ok {
				t.Errorf("another model of the provider is refused too")
			}
		})
	}
}

func TestHealthBreakerIgnoresNonCountingOutcomes(t *testing.T) {
	cases := map[string]failureClass{
		"client gone": classClientGone,
		"deadline":    classDeadline,
	}
	for _, status := range []int{429, 400, 413, 422} {
		cases[strconv.Itoa(status)] = classifyStatus(status)
	}
	for name, class := range cases {
		t.Run(name, func(t *testing.T) {
			reg, p, _ := hlRegistry(t, 2, time.Minute)
			for i := 0; i < 10; i++ {
				hlFail(t, reg, p, "m", class)
			}
			if ok, _ := reg.available(p, "m"); !ok {
				t.Fatalf("10 %s outcomes opened the circuit", class)
			}
			if tk, ok := reg.begin(p, "m", false); !ok || tk.probe {
				t.Fatalf("begin after %s outcomes: ok=%v probe=%v; want a plain attempt", class, ok, tk != nil && tk.probe)
			}
		})
	}
}

func TestHealthBreakerSuccessResetsConsecutiveCount(t *testing.T) {
	reg, p, _ := hlRegistry(t, 3, time.Minute)
	for round := 0; round < 3; round++ {
		hlFail(t, reg, p, "m", classServer)
		hlFail(t, reg, p, "m", classServer)
		hlFail(t, reg, p, "m", classNone)
	}
	if ok, _ := reg.available(p, "m"); !ok {
		t.Fatalf("failures separated by successes opened the circuit")
	}
}

// hlOpenAndWait opens the circuit of model m and lets its open period pass.
func hlOpenAndWait(t *testing.T, reg *healthRegistry, p *provider, clk *hlClock, open time.Duration) {
	t.Helper()
	for i := 0; i < reg.settings.failures; i++ {
		hlFail(t, reg, p, "m", classConnection)
	}
	if ok, _ := reg.available(p, "m"); ok {
		t.Fatalf("circuit did not open")
	}
	clk.Advance(open - time.Millisecond)
	if _, ok := reg.begin(p, "m", false); ok {
		t.Fatalf("begin allowed before the open period ended")
	}
	clk.Advance(time.Millisecond)
}

func TestHealthHalfOpenLetsExactlyOneProbe(t *testing.T) {
	const open = 10 * time.Second
	reg, p, clk := hlRegistry(t, 2, open)
	hlOpenAndWait(t, reg, p, clk, open)
	if ok, _ := reg.available(p, "m"); !ok {
		t.Fatalf("half-open circuit not available for a probe")
	}

	const n = 64
	var (
		start   = make(chan struct{})
		wg      sync.WaitGroup
		granted atomic.Int32
		probes  atomic.Int32
		tickets = make(chan *ticket, n)
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if tk, ok := reg.begin(p, "m", false); ok {
				granted.Add(1)
				if tk.probe {
					probes.Add(1)
				}
				tickets <- tk
			}
		}()
	}
	close(start)
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	// Nobody waits for the probe: every refused caller returns at once,
	// while the probe is still out.
	select {
	case <-finished:
	case <-time.After(2 * time.Second):
		t.Fatal("callers of begin are blocked while a probe is out")
	}
	if granted.Load() != 1 || probes.Load() != 1 {
		t.Fatalf("%d of %d concurrent callers got through (%d as probe); want exactly one probe", granted.Load(), n, probes.Load())
	}
	if ok, at := reg.available(p, "m"); ok || !at.After(clk.Now()) {
		t.Errorf("available while the probe is out: ok=%v at=%v; want refused with a later time", ok, at)
	}
	reg.finish(<-tickets, classNone)
}

func TestHealthProbeSuccessCloses(t *testing.T) {
	const open = 10 * time.Second
	reg, p, clk := hlRegistry(t, 2, open)
	hlOpenAndWait(t, reg, p, clk, open)
	tk, ok := reg.begin(p, "m", false)
	if !ok || !tk.probe {
		t.Fatalf("no probe granted")
	}
	if st := reg.finish(tk, classNone); st != circuitClosed {
		t.Fatalf("state after a good probe: %s", st)
	}
	for i := 0; i < 5; i++ {
		tk, ok := reg.begin(p, "m", false)
		if !ok || tk.probe {
			t.Fatalf("attempt %d after the circuit closed: ok=%v probe=%v", i, ok, tk != nil && tk.probe)
		}
	}
	// Closed means the count starts over: one failure does not reopen it.
	hlFail(t, reg, p, "m", classServer)
	if ok, _ := reg.available(p, "m"); !ok {
		t.Errorf("a single failure after closing reopened the circuit")
	}
}

func TestHealthProbeFailureReopens(t *testing.T) {
	const open = 10 * time.Second
	reg, p, clk := hlRegistry(t, 3, open)
	hlOpenAndWait(t, reg, p, clk, open)
	tk, ok := reg.begin(p, "m", false)
	if !ok || !tk.probe {
		t.Fatalf("no probe granted")
	}
	if st := reg.finish(tk, classServer); st != circuitOpen {
		t.Fatalf("state after a failed probe: %s; want open", st)
	}
	ok, at := reg.available(p, "m")
	if ok || !at.Equal(clk.Now().Add(open)) {
		t.Fatalf("after a failed probe: ok=%v at=%v; want refused until %v", ok, at, clk.Now().Add(open))
	}
	clk.Advance(open)
	if tk, ok := reg.begin(p, "m", false); !ok || !tk.probe {
		t.Fatalf("no new probe after the second open period")
	}
}

func TestHealthAbandonedProbeFreesCircuit(t *testing.T) {
	const open = 10 * time.Second
	reg, p, clk := hlRegistry(t, 2, open)
	hlOpenAndWait(t, reg, p, clk, open)
	first, ok := reg.begin(p, "m", false)
	if !ok || !first.probe {
		t.Fatalf("no probe granted")
	}
	if _, ok := reg.begin(p, "m", false); ok {
		t.Fatalf("a second probe was granted while the first is out")
	}
	reg.abandon(first)
	second, ok := reg.begin(p, "m", false)
	if !ok || !second.probe {
		t.Fatalf("the next request did not get the probe after the first was abandoned")
	}
	// Abandoning the first again must not free the second's probe.
	reg.abandon(first)
	if _, ok := reg.begin(p, "m", false); ok {
		t.Fatalf("a stale abandon freed the probe of another request")
	}
	// Abandoning a finished ticket changes nothing either.
	reg.finish(second, classServer)
	reg.abandon(second)
	if ok, _ := reg.available(p, "m"); ok {
		t.Fatalf("abandon after a failed probe reopened nothing but made the circuit available")
	}
}

func TestHealthProbeLeaseExpires(t *testing.T) {
	const open = 10 * time.Second
	reg, p, clk := hlRegistry(t, 2, open)
	hlOpenAndWait(t, reg, p, clk, open)
	if tk, ok := reg.begin(p, "m", false); !ok || !tk.probe {
		t.Fatalf("no probe granted")
	}
	lease := reg.settings.probeLease
	if lease <= 0 {
		t.Fatalf("probe lease is %v", lease)
	}
	clk.Advance(lease - time.Second)
	if _, ok := reg.begin(p, "m", false); ok {
		t.Fatalf("probe taken again before the lease of the lost one expired")
	}
	clk.Advance(time.Second)
	if tk, ok := reg.begin(p, "m", false); !ok || !tk.probe {
		t.Fatalf("lease of a lost probe expired, but no new probe was granted")
	}
}

func TestHealthCooldownExtendsNeverShortens(t *testing.T) {
	reg, p, clk := hlRegistry(t, 3, time.Minute)
	t0 := clk.Now()
	reg.coolDown(p, "m", t0.Add(10*time.Second))
	if ok, at := reg.available(p, "m"); ok || !at.Equal(t0.Add(10*time.Second)) {
		t.Fatalf("after a 10s cooldown: ok=%v at=%v", ok, at)
	}
	reg.coolDown(p, "m", t0.Add(5*time.Second))
	if _, at := reg.available(p, "m"); !at.Equal(t0.Add(10 * time.Second)) {
		t.Fatalf("a shorter hint changed the cooldown end to %v", at)
	}
	reg.coolDown(p, "m", t0.Add(20*time.Second))
	if _, at := reg.available(p, "m"); !at.Equal(t0.Add(20 * time.Second)) {
		t.Fatalf("a longer hint did not extend the cooldown: %v", at)
	}
	if _, ok := reg.begin(p, "m", false); ok {
		t.Fatalf("begin allowed during a cooldown")
	}
	if ok, _ := reg.available(p, "other"); !ok {
		t.Errorf("a cooldown of one model refused another")
	}
	clk.Advance(20*time.Second - time.Millisecond)
	if ok, _ := reg.available(p, "m"); ok {
		t.Fatalf("available before the cooldown ended")
	}
	clk.Advance(time.Millisecond)
	if ok, _ := reg.available(p, "m"); !ok {
		t.Fatalf("not available once the cooldown ended")
	}
	if tk, ok := reg.begin(p, "m", false); !ok || tk.probe {
		t.Fatalf("after a cooldown alone, begin: ok=%v probe=%v; want a plain attempt", ok, tk != nil && tk.probe)
	}
}

// available must name the time at which the provider may really be tried:
// with both an open circuit and a cooldown, the later of the two.
func TestHealthAvailableReportsWhenItMayBeTried(t *testing.T) {
	const open = 30 * time.Second
	t.Run("open longer than cooldown", func(t *testing.T) {
		reg, p, clk := hlRegistry(t, 1, open)
		hlFail(t, reg, p, "m", classServer)
		reg.coolDown(p, "m", clk.Now().Add(5*time.Second))
		_, at := reg.available(p, "m")
		if want := clk.Now().Add(open); !at.Equal(want) {
			t.Fatalf("available says %v; the circuit stays open until %v", at, want)
		}
	})
	t.Run("cooldown longer than open", func(t *testing.T) {
		reg, p, clk := hlRegistry(t, 1, open)
		hlFail(t, reg, p, "m", classServer)
		reg.coolDown(p, "m", clk.Now().Add(time.Minute))
		_, at := reg.available(p, "m")
		if want := clk.Now().Add(time.Minute); !at.Equal(want) {
			t.Fatalf("available says %v; the cooldown lasts until %v", at, want)
		}
	})
	t.Run("closed and no cooldown", func(t *testing.T) {
		reg, p, _ := hlRegistry(t, 1, open)
		if ok, at := reg.available(p, "m"); !ok || !at.IsZero() {
			t.Fatalf("fresh provider: ok=%v at=%v", ok, at)
		}
	})
}

// ---- integration through Caddy ----

// hlHealthSite is an arbstr site with failures-to-open and open period given.
func hlHealthSite(providers string, failures int, open string, extra string) string {
	return fmt.Sprintf(`arbstr {
%s	retry {
		attempts 1
		backoff 10ms
		retry_after_max 1s
	}
	breaker {
		failures %d
		open %s
	}
	timeout 2s
%s}
`, providers, failures, open, extra)
}

func TestHealthOpenProviderIsSkippedIntegration(t *testing.T) {
	bad := hlNewUpstream(t, hlStatus(500))
	good := hlNewUpstream(t, hlOK)
	providers := hlProviderBlock("alpha", bad.base(), "hl-key-a", "gpt-hl", 1, 1, 0) +
		hlProviderBlock("beta", good.base(), "hl-key-b", "gpt-hl", 100, 100, 5)
	tc := startCaddy(t, hlHealthSite(providers, 2, "30s", ""))

	for i := 1; i <= 6; i++ {
		resp := tc.Post("/v1/chat/completions", hlChat("gpt-hl", false))
		if resp.StatusCode != 200 || resp.Header.Get(headerProvider) != "beta" {
			t.Fatalf("request %d: %d from %q; want 200 from beta", i, resp.StatusCode, resp.Header.Get(headerProvider))
		}
		wantRetries := ""
		if i <= 2 {
			wantRetries = "1/alpha"
		}
		if got := resp.Header.Get(headerRetries); got != wantRetries {
			t.Errorf("request %d: %s = %q; want %q", i, headerRetries, got, wantRetries)
		}
	}
	if n := bad.calls.Load(); n != 2 {
		t.Errorf("the failing provider got %d requests; its circuit should have opened after 2", n)
	}
	if n := good.calls.Load(); n != 6 {
		t.Errorf("the healthy provider got %d requests, want 6", n)
	}
}

func TestHealthAllUnavailableGets503Integration(t *testing.T) {
	bad := hlNewUpstream(t, hlStatus(502))
	tc := startCaddy(t, hlHealthSite(hlProviderBlock("alpha", bad.base(), "hl-key-a", "gpt-hl", 1, 1, 0), 2, "30s", ""))
	for i := 0; i < 2; i++ {
		if resp := tc.Post("/v1/chat/completions", hlChat("gpt-hl", false)); resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("request %d: %d, want 502 while the provider is still tried", i, resp.StatusCode)
		}
	}
	for _, stream := range []bool{false, true} {
		resp := tc.Post("/v1/chat/completions", hlChat("gpt-hl", stream))
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("stream=%v: %d, want 503 with the only provider's circuit open", stream, resp.StatusCode)
		}
		ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if err != nil || ra < 25 || ra > 30 {
			t.Errorf("stream=%v: Retry-After %q; want the ~30 s until the circuit half-opens", stream, resp.Header.Get("Retry-After"))
		}
		if resp.Header.Get(headerRequestID) == "" {
			t.Errorf("stream=%v: 503 without %s", stream, headerRequestID)
		}
		var body struct {
			Error struct {
				Message string  `json:"message"`
				Type    string  `json:"type"`
				Param   *string `json:"param"`
				Code    string  `json:"code"`
			} `json:"error"`
		}
		decodeJSON(t, resp, &body)
		if body.Error.Message == "" || body.Error.Type == "" || body.Error.Code == "" {
			t.Errorf("stream=%v: 503 body is not an OpenAI-style error: %+v", stream, body)
		}
	}
	if n := bad.calls.Load(); n != 2 {
		t.Errorf("provider got %d requests; want none after its circuit opened", n)
	}
}

func TestHealthRateLimitCoolsDownIntegration(t *testing.T) {
	limited := hlNewUpstream(t, hlStatus(429, "Retry-After", "30"))
	dear := hlNewUpstream(t, hlOK)
	providers := hlProviderBlock("alpha", limited.base(), "hl-key-a", "gpt-hl", 1, 1, 0) +
		hlProviderBlock("beta", dear.base(), "hl-key-b", "gpt-hl", 9, 9, 0)
	tc := startCaddy(t, hlHealthSite(providers, 1, "1s", ""))
	first := tc.Post("/v1/chat/completions", hlChat("gpt-hl", false))
	if first.StatusCode != 200 || first.Header.Get(headerRetries) != "1/alpha" {
		t.Fatalf("first request: %d, %s %q; want 200 from beta after alpha's 429", first.StatusCode, headerRetries, first.Header.Get(headerRetries))
	}
	resp := tc.Post("/v1/chat/completions", hlChat("gpt-hl", false))
	if resp.StatusCode != 200 || resp.Header.Get(headerProvider) != "beta" || resp.Header.Get(headerRetries) != "" {
		t.Fatalf("while alpha cools down: %d from %q (%s %q); want 200 from beta alone",
			resp.StatusCode, resp.Header.Get(headerProvider), headerRetries, resp.Header.Get(headerRetries))
	}
	if n := limited.calls.Load(); n != 1 {
		t.Errorf("provider got %d requests; the 429 should keep it away while another can serve (and not count as a breaker failure)", n)
	}
	list, _ := hlAdminProviders(t, tc)
	p := hlFind(list, "alpha", limited.URL)
	if p == nil || len(p.Health) != 1 {
		t.Fatalf("admin API lacks alpha's health: %+v", p)
	}
	h := p.Health[0]
	if h.State != "closed" || h.ConsecutiveFailures != 0 || h.LastErrorClass != "rate_limited" {
		t.Errorf("after one 429: %+v; want closed, no consecutive failures, last error rate_limited", h)
	}
	if left := time.Until(h.CooldownUntil); left < 25*time.Second || left > 31*time.Second {
		t.Errorf("cooldown_until %v is %v away; want about 30 s", h.CooldownUntil, left)
	}
}

func TestHealthStateAcrossReloadIntegration(t *testing.T) {
	bad := hlNewUpstream(t, hlStatus(500))
	good := hlNewUpstream(t, hlOK)
	alpha := hlProviderBlock("alpha", bad.base(), "hl-key-a", "gpt-hl", 1, 1, 0)
	beta := hlProviderBlock("beta", good.base(), "hl-key-b", "gpt-hl", 100, 100, 5)
	tc := startCaddy(t, hlHealthSite(alpha+beta, 2, "30s", ""))
	for i := 0; i < 2; i++ {
		tc.Post("/v1/chat/completions", hlChat("gpt-hl", false))
	}
	if n := bad.calls.Load(); n != 2 {
		t.Fatalf("alpha got %d requests before the reload, want 2", n)
	}
	alphaState := func() *hlProviderJSON {
		list, _ := hlAdminProviders(t, tc)
		return hlFind(list, "alpha", bad.URL)
	}
	if p := alphaState(); p == nil || len(p.Health) != 1 || p.Health[0].State != "open" {
		t.Fatalf("before the reload alpha should be open: %+v", p)
	}

	// A reload that changes an unrelated option keeps the open circuit.
	tc.Load(hlHealthSite(alpha+beta, 2, "30s", "\tmax_body 1MB\n"))
	for i := 0; i < 3; i++ {
		resp := tc.Post("/v1/chat/completions", hlChat("gpt-hl", false))
		if resp.StatusCode != 200 || resp.Header.Get(headerProvider) != "beta" {
			t.Fatalf("after the reload: %d from %q; want 200 from beta", resp.StatusCode, resp.Header.Get(headerProvider))
		}
	}
	if n := bad.calls.Load(); n != 2 {
		t.Errorf("alpha got %d requests; its open circuit was lost in the reload", n)
	}
	if p := alphaState(); p == nil || len(p.Health) != 1 || p.Health[0].State != "open" {
		t.Fatalf("after the reload alpha should still be open: %+v", p)
	}

	// A provider removed from the config is dropped, state and all.
	tc.Load(hlHealthSite(beta, 2, "30s", ""))
	deadline := time.Now().Add(3 * time.Second)
	for alphaState() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("alpha still listed after it was removed from the config")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Added back, it starts with a clean slate and is tried again.
	tc.Load(hlHealthSite(alpha+beta, 2, "30s", ""))
	if p := alphaState(); p == nil || len(p.Health) != 0 {
		t.Fatalf("alpha added back should have no health history: %+v", p)
	}
	tc.Post("/v1/chat/completions", hlChat("gpt-hl", false))
	if n := bad.calls.Load(); n != 3 {
		t.Errorf("alpha got %d requests; once re-added it should be tried again", n)
	}
}
