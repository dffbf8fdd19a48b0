package dashboard

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// chromiumPath is where Debian's chromium package puts the browser;
// scripts/install-chromium.sh installs it.
const chromiumPath = "/usr/bin/chromium"

// chromiumFlags run the browser headless and quiet: no GPU, no sandbox (tests
// may run as root in a container), and no network traffic of its own.
var chromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
	"--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
}

// needChromium skips the test when the browser is missing, unless
// ARBSTR_REQUIRE_BROWSER is set (scripts/test.sh sets it): then it fails.
func needChromium(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err == nil {
		return
	}
	if os.Getenv("ARBSTR_REQUIRE_BROWSER") != "" {
		t.Fatalf("%s is missing and ARBSTR_REQUIRE_BROWSER is set: run scripts/install-chromium.sh", chromiumPath)
	}
	t.Skipf("browser test skipped: %s is missing (install it with scripts/install-chromium.sh; "+
		"set ARBSTR_REQUIRE_BROWSER=1 to make this a failure)", chromiumPath)
}

// dumpDOM loads url in headless chromium and returns the DOM after the page's
// script has run for budget of virtual time (the browser's clock runs ahead
// when idle and waits for pending fetches, so this takes far less real time).
func dumpDOM(t *testing.T, url string, budget time.Duration) string {
	t.Helper()
	needChromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{}, chromiumFlags...)
	args = append(args,
		"--user-data-dir="+t.TempDir(),
		"--virtual-time-budget="+strconv.FormatInt(budget.Milliseconds(), 10),
		"--dump-dom", url)
	cmd := exec.CommandContext(ctx, chromiumPath, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	t.Logf("chromium --dump-dom took %v", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	if len(out) == 0 {
		t.Fatalf("chromium printed no DOM; its log:\n%s", stderr.String())
	}
	return string(out)
}

// fixture is a stand-in for the admin API: /arbstr/dashboard is the real
// handler; stats, requests and budgets answer with §17 shapes. It records
// every request so that tests can see what the page asked for.
type fixture struct {
	*httptest.Server
	t        *testing.T
	stats    func(groupBy string) (int, any)
	requests func(cursor string) (int, any)
	budgets  func() (int, any)

	mu   sync.Mutex
	seen []string // method, path and query of every request
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{t: t}
	mux := http.NewServeMux()
	mux.Handle("/arbstr/dashboard", Handler())
	mux.HandleFunc("/arbstr/stats", func(w http.ResponseWriter, r *http.Request) {
		f.answer(w, func() (int, any) { return f.stats(r.URL.Query().Get("group_by")) })
	})
	mux.HandleFunc("/arbstr/requests", func(w http.ResponseWriter, r *http.Request) {
		f.answer(w, func() (int, any) { return f.requests(r.URL.Query().Get("cursor")) })
	})
	mux.HandleFunc("/arbstr/budgets", func(w http.ResponseWriter, r *http.Request) {
		f.answer(w, f.budgets)
	})
	f.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.seen = append(f.seen, r.Method+" "+r.URL.RequestURI())
		if r.Header.Get("Authorization") != "" {
			f.seen = append(f.seen, "with Authorization: "+r.Method+" "+r.URL.RequestURI())
		}
		f.mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

// start starts serving; set the answers before, so that the server's
// goroutines see them (the browser in between hides that order from the race
// detector).
func (f *fixture) start() *fixture {
	f.Start() // httptest listens on 127.0.0.1
	return f
}

func (f *fixture) answer(w http.ResponseWriter, fn func() (int, any)) {
	status, body := fn()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(body); err != nil {
		f.t.Errorf("fixture: %v", err)
	}
}

func (f *fixture) requestsSeen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string{}, f.seen...)
}

// xssName is a provider name that would run script if the page put API
// strings into HTML.
const xssName = `<img src=x onerror="document.title='pwned'">`

// total is one §11 stats total (or group, with key).
func total(key map[string]any, requests, failed int, cost, dearest, p50, p95 float64) map[string]any {
	m := map[string]any{
		"requests": requests, "succeeded": requests - failed, "failed": failed,
		"prompt_tokens": requests * 100, "completion_tokens": requests * 50,
		"cost_sats": cost, "dearest_cost_sats": dearest, "saved_sats": dearest - cost,
		"latency_ms_p50": p50, "latency_ms_p95": p95,
	}
	if key != nil {
		m["key"] = key
	}
	return m
}

// filledFixture answers like a ledger with two providers (one with a hostile
// name), a page of requests and one more, and two budgets.
func filledFixture(t *testing.T) *fixture { return filledFixtureNamed(t, xssName) }

// filledFixtureNamed is filledFixture with second as the second provider's name.
func filledFixtureNamed(t *testing.T, second string) *fixture {
	// The hostile fixture also has a model name that is markup.
	model := "llama-3.1-70b"
	if second == xssName {
		model = "<b>bold-model</b>"
	}
	f := newFixture(t)
	hour := time.Now().UTC().Truncate(time.Hour)
	day := time.Now().UTC().Truncate(24 * time.Hour)
	f.stats = func(groupBy string) (int, any) {
		resp := map[string]any{
			"since": hour.Add(-24 * time.Hour).Format(time.RFC3339), "until": time.Now().UTC().Format(time.RFC3339),
			"total":  total(nil, 1234, 34, 45678, 58023, 812, 2950),
			"groups": []any{},
		}
		switch groupBy {
		case "":
		case "provider":
			resp["groups"] = []any{
				total(map[string]any{"provider": "cheapcloud"}, 1000, 10, 30000, 42000, 640, 2100),
				total(map[string]any{"provider": second}, 200, 4, 15678, 16023, 1502, 4711),
				total(map[string]any{"provider": ""}, 34, 20, 0, 0, 0, 0),
			}
		case "hour,provider":
			resp["groups"] = []any{
				total(map[string]any{"hour": hour.Add(-2 * time.Hour).Format(time.RFC3339), "provider": "cheapcloud"}, 600, 5, 14000, 20000, 600, 2000),
				total(map[string]any{"hour": hour.Add(-1 * time.Hour).Format(time.RFC3339), "provider": "cheapcloud"}, 400, 5, 16000, 22000, 700, 2200),
				total(map[string]any{"hour": hour.Add(-1 * time.Hour).Format(time.RFC3339), "provider": second}, 200, 4, 15678, 16023, 1502, 4711),
			}
		case "day,provider":
			resp["groups"] = []any{
				total(map[string]any{"day": day.AddDate(0, 0, -3).Format("2006-01-02"), "provider": "cheapcloud"}, 700, 5, 20000, 30000, 600, 2000),
				total(map[string]any{"day": day.Format("2006-01-02"), "provider": "cheapcloud"}, 300, 5, 10000, 12000, 700, 2200),
			}
		default:
			return http.StatusBadRequest, map[string]string{"error": "group_by " + groupBy + " is not in the fixture"}
		}
		return http.StatusOK, resp
	}
	f.requests = func(cursor string) (int, any) {
		switch cursor {
		case "":
			return http.StatusOK, map[string]any{
				"requests": []any{
					requestRow("req-0002", hour.Add(-20*time.Minute), "cheapcloud", "gpt-4o-mini", "ok", 200, 12.5, 20),
					requestRow("req-0001", hour.Add(-30*time.Minute), second, model, "error", 502, 0, 0),
				},
				"next_cursor": "c2",
			}
		case "c2":
			return http.StatusOK, map[string]any{
				"requests": []any{
					requestRow("req-0000", hour.Add(-40*time.Minute), "cheapcloud", "older-model", "ok", 200, 3, 4),
				},
				"next_cursor": "",
			}
		}
		return http.StatusBadRequest, map[string]string{"error": "unknown cursor"}
	}
	f.budgets = func() (int, any) {
		return http.StatusOK, map[string]any{"budgets": []any{
			map[string]any{"name": "daily-per-user", "per": "client", "key": "alice", "period": "day",
				"period_start": day.Format(time.RFC3339), "limit": 50000, "spent": 31000, "reserved": 4000},
			map[string]any{"name": "monthly-all", "per": "global", "key": "", "period": "month",
				"period_start": day.Format(time.RFC3339), "limit": 1000000, "spent": 45678, "reserved": 0},
		}}
	}
	return f.start()
}

func requestRow(id string, at time.Time, provider, model, outcome string, status int, cost, dearest float64) map[string]any {
	return map[string]any{
		"id": id, "time": at.Format(time.RFC3339Nano), "instance": "i-1", "client": "alice", "policy": "default",
		"model": model, "provider": provider, "upstream_model": model, "stream": true, "status": status,
		"outcome": outcome, "attempts": 1, "retries": 0, "prompt_tokens": 120, "completion_tokens": 48,
		"cost_sats": cost, "dearest_cost_sats": dearest, "latency_ms": 950, "first_event_ms": 210, "error_code": "",
	}
}

// text returns the text content of the element with the given id in a
// serialized DOM (its first text run, enough for the value cells).
func text(t *testing.T, dom, id string) string {
	t.Helper()
	m := regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `"[^>]*>([^<]*)<`).FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("no element #%s in the DOM", id)
	}
	return m[1]
}

func mustContain(t *testing.T, dom string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(dom, w) {
			t.Errorf("the rendered page lacks %q", w)
		}
	}
}

func TestDashboardInBrowserShowsTheLedger(t *testing.T) {
	f := filledFixture(t)
	// 25 s of virtual time: the first load and two refreshes (every 10 s).
	dom := dumpDOM(t, f.URL+"/arbstr/dashboard", 25*time.Second)

	if !strings.Contains(dom, `data-state="ready"`) {
		t.Fatalf("page did not reach the ready state:\n%s", dom)
	}
	for id, want := range map[string]string{
		"t-requests": "1,234", "t-succeeded": "1,200", "t-failed": "34", "t-cost": "45,678",
		"t-dearest": "58,023", "t-saved": "12,345", "t-saved-pct": "21.3 %",
	} {
		if got := text(t, dom, id); got != want {
			t.Errorf("#%s shows %q; want %q", id, got, want)
		}
	}
	// Charts drew bars and legends with the providers; the hostile name is text.
	escaped := `&lt;img src=x onerror="document.title='pwned'"&gt;`
	mustContain(t, dom,
		`<span class="legend-item">`, "cheapcloud", escaped, "(none answered)",
		"cheapcloud · ", // a bar's tooltip in the spend chart
		"p95", "4,711",  // latency of the second provider
		"succeeded", "990 / 10", // outcomes of cheapcloud
	)
	for _, id := range []string{"spend-chart", "saved-chart", "outcomes-chart", "latency-chart"} {
		if !regexp.MustCompile(`id="` + id + `"><svg[^>]*>.*?<rect`).MatchString(dom) {
			t.Errorf("#%s has no bars", id)
		}
	}
	// Budgets: both rows with their figures and a bar.
	mustContain(t, dom, "daily-per-user", "<td>alice</td>", "50,000", "31,000", "4,000", "15,000",
		"monthly-all", "<td>(none)</td>", "1,000,000", `class="bar"`)
	// Requests: the first page, newest first, with "load more" offered.
	mustContain(t, dom, "req-0002", "gpt-4o-mini", "&lt;b&gt;bold-model&lt;/b&gt;", "7.5")
	if strings.Index(dom, "req-0002") > strings.Index(dom, "req-0001") {
		t.Error("requests are not newest first")
	}
	if strings.Contains(dom, `id="more" hidden`) {
		t.Error("the load-more button is hidden although next_cursor is set")
	}
	// Nothing from the API became markup, and nothing ran.
	if strings.Contains(dom, "<img") || strings.Contains(dom, "<b>") || strings.Contains(dom, "pwned</title>") {
		t.Error("an API string was rendered as HTML")
	}

	seen := strings.Join(f.requestsSeen(), "\n")
	for _, want := range []string{
		"GET /arbstr/dashboard", "GET /arbstr/stats?since=24h\n",
		"GET /arbstr/stats?since=24h&group_by=hour%2Cprovider", "GET /arbstr/stats?since=24h&group_by=provider",
		"GET /arbstr/requests?limit=50", "GET /arbstr/budgets",
	} {
		if !strings.Contains(seen+"\n", want) {
			t.Errorf("the page never asked for %q; it asked:\n%s", want, seen)
		}
	}
	if n := strings.Count(seen, "GET /arbstr/budgets"); n < 2 {
		t.Errorf("budgets fetched %d times in 25 s; want the first load and at least one refresh", n)
	}
	for _, r := range f.requestsSeen() {
		if !regexp.MustCompile(`^GET /arbstr/(dashboard|stats|requests|budgets)\b`).MatchString(r) {
			t.Errorf("the page asked for %q", r)
		}
	}
}

// A range of days groups the time series by day.
func TestDashboardInBrowserRangeOfDays(t *testing.T) {
	f := filledFixture(t)
	dom := dumpDOM(t, f.URL+"/arbstr/dashboard#7d", 3*time.Second)
	if !strings.Contains(dom, `data-state="ready"`) {
		t.Fatalf("page did not reach the ready state:\n%s", dom)
	}
	seen := strings.Join(f.requestsSeen(), "\n")
	if !strings.Contains(seen, "GET /arbstr/stats?since=7d&group_by=day%2Cprovider") {
		t.Errorf("the 7d range did not ask for day,provider groups; it asked:\n%s", seen)
	}
	if !strings.Contains(dom, `data-range="7d" aria-pressed="true"`) {
		t.Error("the 7d button is not shown as chosen")
	}
	mustContain(t, dom, time.Now().UTC().Format("2006-01-02")) // today's bucket on the x axis
}

func TestDashboardInBrowserEmptyLedger(t *testing.T) {
	f := newFixture(t)
	f.stats = func(string) (int, any) {
		return http.StatusOK, map[string]any{"since": "2026-12-01T00:00:00Z", "until": "2026-12-02T00:00:00Z",
			"total": total(nil, 0, 0, 0, 0, 0, 0), "groups": []any{}}
	}
	f.requests = func(string) (int, any) { return http.StatusOK, map[string]any{"requests": []any{}} }
	f.budgets = func() (int, any) { return http.StatusNotFound, map[string]string{"error": "not found"} }
	f.start()
	dom := dumpDOM(t, f.URL+"/arbstr/dashboard", 3*time.Second)

	if !strings.Contains(dom, `data-state="ready"`) {
		t.Fatalf("page did not reach the ready state:\n%s", dom)
	}
	if got := text(t, dom, "t-requests"); got != "0" {
		t.Errorf("requests total shows %q; want 0", got)
	}
	if got := text(t, dom, "t-saved-pct"); got != "–" {
		t.Errorf("saved %% with nothing spent shows %q; want –", got)
	}
	mustContain(t, dom, "No spend in the last 24h.", "No savings in the last 24h.", "No requests in this range.",
		"No answered requests in this range.", "No budgets configured.", "No requests recorded yet.")
	if !strings.Contains(dom, `id="more" hidden`) {
		t.Error("load more is offered on an empty ledger")
	}
	if !strings.Contains(dom, `id="banner" class="banner" role="alert" hidden`) {
		t.Error("an error banner shows for an empty ledger")
	}
}

func TestDashboardInBrowserShowsErrors(t *testing.T) {
	f := newFixture(t)
	f.stats = func(string) (int, any) {
		return http.StatusInternalServerError, map[string]string{"error": "ledger store: <connection refused>"}
	}
	f.requests = func(string) (int, any) {
		return http.StatusServiceUnavailable, map[string]string{"error": "ledger is off"}
	}
	f.budgets = func() (int, any) { return http.StatusOK, map[string]any{"budgets": []any{}} }
	f.start()
	dom := dumpDOM(t, f.URL+"/arbstr/dashboard", 3*time.Second)

	if !strings.Contains(dom, `data-state="error"`) {
		t.Fatalf("page is not in the error state:\n%s", dom)
	}
	mustContain(t, dom,
		"Could not load stats (HTTP 500): ledger store: &lt;connection refused&gt;",
		"Could not load requests (HTTP 503): ledger is off",
		"No budgets configured.")
	if strings.Contains(dom, `id="banner" class="banner" role="alert" hidden`) {
		t.Error("the error banner is hidden")
	}
	if got := text(t, dom, "t-requests"); got != "–" {
		t.Errorf("requests total shows %q without stats; want –", got)
	}
}
