package arbstr

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/arbstr/caddy-arbstr/standin"
)

// tierStandin serves a stand-in provider on a test server of its own.
func tierStandin(t *testing.T, s *standin.Provider) *httptest.Server {
	t.Helper()
	if err := s.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = s.ServeHTTP(w, r, nil)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// tierSeen is how many chat requests a stand-in has answered.
func tierSeen(t *testing.T, srv *httptest.Server) int {
	t.Helper()
	resp, err := http.Get(srv.URL + "/v1/standin/requests")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c struct{ Requests int }
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		t.Fatal(err)
	}
	return c.Requests
}

// tierConfig is a config of three stand-ins, one per tier, priced so that
// price alone would always choose local.
func tierConfig(local, standard, frontier *httptest.Server, extra string) string {
	return fmt.Sprintf(`header {
	defer
	X-Seen-Tier "{http.arbstr.tier}"
	X-Seen-Complexity "{http.arbstr.complexity}"
}
arbstr {
	provider local {
		url %s/v1
		tier local
		output_rate 1
	}
	provider standard {
		url %s/v1
		output_rate 10
	}
	provider frontier {
		url %s/v1
		tier frontier
		output_rate 100
	}
	complexity {
		low 0.3
		high 0.7
	}
	retry {
		attempts 1
		backoff 10ms
	}
	breaker {
		failures 1
		open 1m
	}
	%s
}`, local.URL, standard.URL, frontier.URL, extra)
}

const (
	tierEasy   = `What is the capital of France?`
	tierMedium = `Write a Python function that checks whether a string is a palindrome, ignoring punctuation and case.`
	tierHard   = `Design the architecture of a distributed rate limiter for a multi-region API gateway: compare token bucket and sliding window algorithms, analyze consistency and latency trade-offs, explain failure modes and write the Redis-backed implementation in Go.`
)

func tierChat(prompt string, maxTokens int) string {
	extra := ""
	if maxTokens > 0 {
		extra = fmt.Sprintf(`"max_tokens":%d`, maxTokens)
	}
	return cfgChat("standin", extra, "user", strconv.Quote(prompt))
}

// tierExpect checks that a request was served by provider, of tier, with a
// complexity header in [lo, hi], and that only that stand-in saw it.
func tierExpect(t *testing.T, resp *http.Response, provider, tier string) float64 {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if got := resp.Header.Get("x-arbstr-provider"); got != provider {
		t.Errorf("x-arbstr-provider = %q, want %q", got, provider)
	}
	if got := resp.Header.Get("x-arbstr-tier"); got != tier {
		t.Errorf("x-arbstr-tier = %q, want %q", got, tier)
	}
	if got := resp.Header.Get("X-Seen-Tier"); got != tier {
		t.Errorf("{http.arbstr.tier} = %q, want %q", got, tier)
	}
	c := resp.Header.Get("x-arbstr-complexity")
	score, err := strconv.ParseFloat(c, 64)
	if err != nil || score < 0 || score > 1 || len(c) != 4 {
		t.Errorf("x-arbstr-complexity = %q, want a score with two decimals in [0, 1]", c)
	}
	if got := resp.Header.Get("X-Seen-Complexity"); got != c {
		t.Errorf("{http.arbstr.complexity} = %q, want %q", got, c)
	}
	return score
}

func TestRoutingTiersByComplexityIntegration(t *testing.T) {
	local := tierStandin(t, &standin.Provider{Name: "local"})
	standard := tierStandin(t, &standin.Provider{Name: "standard"})
	frontier := tierStandin(t, &standin.Provider{Name: "frontier"})
	tc := startCaddy(t, tierConfig(local, standard, frontier, ""))
	metricsBefore := hlScrape(t, tc.Admin+"/metrics")
	seen := func() [3]int { return [3]int{tierSeen(t, local), tierSeen(t, standard), tierSeen(t, frontier)} }

	easy := tierExpect(t, tc.Post("/v1/chat/completions", tierChat(tierEasy, 0)), "local", "local")
	medium := tierExpect(t, tc.Post("/v1/chat/completions", tierChat(tierMedium, 0)), "standard", "standard")
	hard := tierExpect(t, tc.Post("/v1/chat/completions", tierChat(tierHard, 8000)), "frontier", "frontier")
	if got := seen(); got != [3]int{1, 1, 1} {
		t.Errorf("requests seen by local, standard, frontier = %v, want one each", got)
	}
	if !(easy < 0.3 && medium >= 0.3 && medium <= 0.7 && hard > 0.7) {
		t.Errorf("scores easy %.2f, medium %.2f, hard %.2f; want < 0.3, in [0.3, 0.7], > 0.7", easy, medium, hard)
	}
	metricsAfter := hlScrape(t, tc.Admin+"/metrics")
	for _, tier := range []string{"local", "standard", "frontier"} {
		if d := hlMetricDelta(metricsBefore, metricsAfter, "caddy_arbstr_tier_requests_total", hlL("tier", tier)); d != 1 {
			t.Errorf("caddy_arbstr_tier_requests_total{tier=%q} grew by %v, want 1", tier, d)
		}
	}

	t.Run("header overrides the score", func(t *testing.T) {
		tierExpect(t, tc.Post("/v1/chat/completions", tierChat(tierEasy, 0), complexityHeader, "high"), "frontier", "frontier")
		tierExpect(t, tc.Post("/v1/chat/completions", tierChat(tierHard, 8000), complexityHeader, "low"), "local", "local")
		tierExpect(t, tc.Post("/v1/chat/completions", tierChat(tierHard, 8000), complexityHeader, "medium"), "standard", "standard")
		if got := seen(); got != [3]int{2, 2, 2} {
			t.Errorf("requests seen = %v, want two each", got)
		}
	})

	t.Run("bad header value is a 400 that names the values", func(t *testing.T) {
		resp := tc.Post("/v1/chat/completions", tierChat(tierEasy, 0), complexityHeader, "0.9")
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "low, medium or high") {
			t.Errorf("status %d, body %s; want 400 naming low, medium or high", resp.StatusCode, body)
		}
		if got := seen(); got != [3]int{2, 2, 2} {
			t.Errorf("a refused request reached a provider: seen %v", got)
		}
	})
}

func TestRoutingEscalatesWhenTierBreakersOpenIntegration(t *testing.T) {
	local := tierStandin(t, &standin.Provider{Name: "local", FailStatus: 503})
	standard := tierStandin(t, &standin.Provider{Name: "standard"})
	frontier := tierStandin(t, &standin.Provider{Name: "frontier"})
	tc := startCaddy(t, tierConfig(local, standard, frontier, ""))

	// The local provider fails: the same request escalates to standard.
	resp := tc.Post("/v1/chat/completions", tierChat(tierEasy, 0))
	tierExpect(t, resp, "standard", "standard")
	if got := resp.Header.Get("x-arbstr-retries"); got != "1/local" {
		t.Errorf("x-arbstr-retries = %q, want 1/local", got)
	}
	// Its breaker is open now: easy requests go to standard without trying it.
	tierExpect(t, tc.Post("/v1/chat/completions", tierChat(tierEasy, 0)), "standard", "standard")
	if got := tierSeen(t, local); got != 1 {
		t.Errorf("local saw %d requests, want 1 (its breaker is open)", got)
	}
	// One tier up is enough: frontier was never needed.
	if got := tierSeen(t, frontier); got != 0 {
		t.Errorf("frontier saw %d requests, want 0", got)
	}
}

func TestRoutingHardRequestNeverFallsDownIntegration(t *testing.T) {
	local := tierStandin(t, &standin.Provider{Name: "local"})
	standard := tierStandin(t, &standin.Provider{Name: "standard"})
	frontier := tierStandin(t, &standin.Provider{Name: "frontier", FailStatus: 503})
	tc := startCaddy(t, tierConfig(local, standard, frontier, ""))
	resp := tc.Post("/v1/chat/completions", tierChat(tierHard, 8000))
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status %d, want 502: the only frontier provider failed", resp.StatusCode)
	}
	resp = tc.Post("/v1/chat/completions", tierChat(tierHard, 8000))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("status %d, Retry-After %q; want 503 with Retry-After: the frontier breaker is open", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if l, s := tierSeen(t, local), tierSeen(t, standard); l != 0 || s != 0 {
		t.Errorf("a hard request fell down to local (%d) or standard (%d)", l, s)
	}
}

func TestRoutingOffWithoutTiersIntegration(t *testing.T) {
	a := tierStandin(t, &standin.Provider{Name: "a"})
	tc := startCaddy(t, fmt.Sprintf("arbstr {\n\tprovider a {\n\t\turl %s/v1\n\t}\n}", a.URL))
	resp := tc.Post("/v1/chat/completions", tierChat(tierHard, 8000), complexityHeader, "not-checked")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200: without tiers or complexity the header is not read", resp.StatusCode)
	}
	for _, h := range []string{"x-arbstr-tier", "x-arbstr-complexity"} {
		if v, ok := resp.Header[http.CanonicalHeaderKey(h)]; ok {
			t.Errorf("%s = %q without tier routing; want none", h, v)
		}
	}
}

func TestRoutingAccessLogFieldsIntegration(t *testing.T) {
	local := tierStandin(t, &standin.Provider{Name: "local"})
	standard := tierStandin(t, &standin.Provider{Name: "standard"})
	frontier := tierStandin(t, &standin.Provider{Name: "frontier"})
	logPath := filepath.Join(t.TempDir(), "access.log")
	tc := startCaddy(t, fmt.Sprintf("log {\n\toutput file %s\n\tformat json\n}\n", logPath)+tierConfig(local, standard, frontier, ""))
	resp := tc.Post("/v1/chat/completions", tierChat(tierHard, 8000))
	_, _ = io.ReadAll(resp.Body)
	score, _ := strconv.ParseFloat(resp.Header.Get("x-arbstr-complexity"), 64)
	e := hlAccessEntry(t, logPath, resp.Header.Get(headerRequestID))
	if e["arbstr_tier"] != "frontier" {
		t.Errorf("arbstr_tier = %v, want frontier", e["arbstr_tier"])
	}
	if c, ok := e["arbstr_complexity"].(float64); !ok || formatScore(c) != formatScore(score) {
		t.Errorf("arbstr_complexity = %v, want the score %.2f as a number", e["arbstr_complexity"], score)
	}
}

func TestRoutingLedgerRowsIntegration(t *testing.T) {
	local := tierStandin(t, &standin.Provider{Name: "local"})
	standard := tierStandin(t, &standin.Provider{Name: "standard"})
	frontier := tierStandin(t, &standin.Provider{Name: "frontier"})
	db := filepath.Join(t.TempDir(), "ledger.db")
	tc := startLedgerCaddy(t, "arbstr {\n\tledger sqlite "+db+"\n}", tierConfig(local, standard, frontier, ""))
	resp := tc.Post("/v1/chat/completions", tierChat(tierHard, 8000))
	_, _ = io.ReadAll(resp.Body)
	score, _ := strconv.ParseFloat(resp.Header.Get("x-arbstr-complexity"), 64)
	flushLedger(t)
	var page requestsAnswer
	if code := adminGet(t, tc, "/arbstr/requests", &page); code != 200 || len(page.Requests) != 1 {
		t.Fatalf("GET /arbstr/requests: %d, %d rows (%s)", code, len(page.Requests), page.Error)
	}
	row := page.Requests[0]
	if row.Tier != "frontier" || row.Complexity == nil || formatScore(*row.Complexity) != formatScore(score) {
		t.Errorf("ledger row tier %q complexity %v, want frontier and %.2f", row.Tier, row.Complexity, score)
	}
}
