package arbstr

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/arbstr/caddy-arbstr/internal/pgtest"
	"github.com/arbstr/caddy-arbstr/ledger"
)

// TestMain keeps Caddy's data directory (the default ledger, the instance
// id) out of the user's home: every test Caddy without an arbstr global
// block records its requests there.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "arbstr-test-data-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("XDG_DATA_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startLedgerCaddy is startCaddy with lines added to the global options.
func startLedgerCaddy(t *testing.T, global, siteBody string) *testCaddy {
	t.Helper()
	tc := newTestCaddy(t)
	tc.loadGlobal(global, siteBody)
	t.Cleanup(func() { _ = caddy.Stop() })
	return tc
}

// loadGlobal (re)loads the config with global option lines.
func (tc *testCaddy) loadGlobal(global, siteBody string) {
	tc.t.Helper()
	cf := strings.Replace(tc.caddyfile(siteBody), "\tgrace_period 1s\n", "\tgrace_period 1s\n"+global+"\n", 1)
	if err := caddy.Load(adaptCaddyfile(tc.t, cf), true); err != nil {
		tc.t.Fatalf("loading config: %v\n%s", err, cf)
	}
	http.DefaultClient.CloseIdleConnections()
	tc.reloadedAt = time.Now()
	tc.waitReady()
}

// ledgerSite has three stand-in providers on the test Caddy itself:
// cheap (always 500), mid and dear, and arbstr under /v1/.
func ledgerSite(port int) string {
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	return fmt.Sprintf(`handle /cheap/* {
	arbstr_standin {
		fail_status 500
	}
}
handle /mid/* {
	arbstr_standin {
		name mid
	}
}
handle /dear/* {
	arbstr_standin {
		name dear
	}
}
handle /claude/* {
	arbstr_standin {
		name claude
	}
}
handle /v1/* {
	arbstr {
		provider claude {
			url %[1]s/claude/v1
			api anthropic
			input_rate 3000
			output_rate 15000
		}
		provider cheap {
			url %[1]s/cheap/v1
			input_rate 100
			output_rate 100
		}
		provider mid {
			url %[1]s/mid/v1
			input_rate 1000
			output_rate 3000
			base_fee 1
		}
		provider dear {
			url %[1]s/dear/v1
			input_rate 20000
			output_rate 60000
			base_fee 2
		}
		policy code {
			max_output_rate 5000
		}
		retry {
			attempts 1
			backoff 10ms
		}
		breaker {
			failures 1000
		}
		timeout 5s
	}
}`, base)
}

// flushLedger waits until every queued row of the running config is stored.
func flushLedger(t *testing.T) *App {
	t.Helper()
	app := activeApp.Load()
	if app == nil || app.ledger == nil {
		t.Fatal("no running arbstr app with a ledger")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := app.ledger.writer.Flush(ctx); err != nil {
		t.Fatalf("flushing the ledger: %v", err)
	}
	return app
}

// adminGet GETs an admin path and decodes its JSON into v; it returns the status.
func adminGet(t *testing.T, tc *testCaddy, path string, v any) int {
	t.Helper()
	resp, err := http.Get(tc.Admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil && resp.StatusCode == http.StatusOK {
		decodeJSON(t, resp, v)
	} else if v != nil {
		body, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
		}
	}
	return resp.StatusCode
}

type statsAnswer struct {
	Since  *time.Time     `json:"since"`
	Until  time.Time      `json:"until"`
	Total  ledger.Totals  `json:"total"`
	Groups []ledger.Group `json:"groups"`
	Error  string         `json:"error"`
}

type requestsAnswer struct {
	Requests   []ledger.Row `json:"requests"`
	NextCursor string       `json:"next_cursor"`
	Error      string       `json:"error"`
}

const ledgerChat = `{"model":"m1","messages":[{"role":"user","content":"count the sheep in this field please"}]%s}`

// A mixed run (plain with fallback, streaming, refused) lands in the
// ledger once per request, with the cost the client was told and what the
// dearest qualifying provider would have charged; stats add up the rows.
func TestLedgerRecordsEveryRequest(t *testing.T) {
	db := filepath.Join(t.TempDir(), "ledger.db")
	tc := startLedgerCaddy(t, "arbstr {\n\tledger sqlite "+db+"\n\tclient_id {http.request.header.X-User}\n}", "")
	tc.loadGlobal("arbstr {\n\tledger sqlite "+db+"\n\tclient_id {http.request.header.X-User}\n}", ledgerSite(tc.Port))

	plain := tc.Post("/v1/chat/completions", fmt.Sprintf(ledgerChat, ""), "X-User", "alice")
	plainBody, _ := io.ReadAll(plain.Body)
	if plain.StatusCode != 200 || plain.Header.Get(headerProvider) != "mid" {
		t.Fatalf("plain: %d from %q: %s", plain.StatusCode, plain.Header.Get(headerProvider), plainBody)
	}
	stream := tc.Post("/v1/chat/completions", fmt.Sprintf(ledgerChat, `,"stream":true`), "X-User", "bob", policyHeader, "code")
	streamBody, _ := io.ReadAll(stream.Body)
	if stream.StatusCode != 200 || !strings.Contains(string(streamBody), "[DONE]") {
		t.Fatalf("stream: %d %s", stream.StatusCode, streamBody)
	}
	refused := tc.Post("/v1/chat/completions", fmt.Sprintf(ledgerChat, ""), policyHeader, "nope")
	if refused.StatusCode != 400 {
		t.Fatalf("unknown policy: %d, want 400", refused.StatusCode)
	}
	flushLedger(t)

	var page requestsAnswer
	if code := adminGet(t, tc, "/arbstr/requests", &page); code != 200 {
		t.Fatalf("GET /arbstr/requests: %d %s", code, page.Error)
	}
	if len(page.Requests) != 3 {
		t.Fatalf("%d rows, want 3: %+v", len(page.Requests), page.Requests)
	}
	byID := map[string]ledger.Row{}
	for _, r := range page.Requests {
		byID[r.ID] = r
	}
	instance := instanceID()
	p := byID[plain.Header.Get(headerRequestID)]
	told, _ := strconv.ParseFloat(plain.Header.Get(headerCost), 64)
	if p.Provider != "mid" || p.Client != "alice" || p.Outcome != "ok" || p.Status != 200 || p.Stream ||
		p.Attempts != 2 || p.Retries != "1/cheap" || p.Model != "m1" || p.UpstreamModel != "m1" || p.Instance != instance || instance == "" {
		t.Errorf("plain row %+v", p)
	}
	if p.PromptTokens == 0 || p.CompletionTokens == 0 || math.Abs(p.CostSats-told) > 0.005 {
		t.Errorf("plain row tokens %d/%d cost %v; the client was told %v", p.PromptTokens, p.CompletionTokens, p.CostSats, told)
	}
	if want := float64(p.PromptTokens)*20000/1e6 + float64(p.CompletionTokens)*60000/1e6 + 2; math.Abs(p.DearestCostSats-want) > 1e-9 {
		t.Errorf("plain row dearest %v, want %v (the same tokens at dear)", p.DearestCostSats, want)
	}
	if p.FirstEventMS != nil {
		t.Errorf("a plain request has no first event, got %d", *p.FirstEventMS)
	}
	if p.Endpoint != "chat" {
		t.Errorf("plain row endpoint %q, want chat", p.Endpoint)
	}

	s := byID[stream.Header.Get(headerRequestID)]
	if s.Provider != "mid" || s.Client != "bob" || s.Policy != "code" || !s.Stream || s.Outcome != "ok" || s.FirstEventMS == nil {
		t.Errorf("stream row %+v", s)
	}
	streamTold := stream.Trailer.Get(headerCost)
	if want := float64(s.PromptTokens)*1000/1e6 + float64(s.CompletionTokens)*3000/1e6 + 1; s.CompletionTokens == 0 ||
		math.Abs(s.CostSats-want) > 1e-9 || strconv.FormatFloat(s.CostSats, 'f', 2, 64) != streamTold {
		t.Errorf("stream row cost %v for %d/%d tokens; the client was told %q", s.CostSats, s.PromptTokens, s.CompletionTokens, streamTold)
	}
	// The policy caps the output rate at 5000: dear did not qualify, so
	// the dearest that did is mid itself.
	if s.DearestCostSats != s.CostSats {
		t.Errorf("stream row dearest %v, want %v (dear was excluded by the policy)", s.DearestCostSats, s.CostSats)
	}

	r := byID[refused.Header.Get(headerRequestID)]
	if r.Provider != "" || r.CostSats != 0 || r.Status != 400 || r.Outcome != "error" || r.ErrorCode == "" || r.Attempts != 0 {
		t.Errorf("refused row %+v", r)
	}

	var st statsAnswer
	if code := adminGet(t, tc, "/arbstr/stats?group_by=provider,client", &st); code != 200 {
		t.Fatalf("stats: %d %s", code, st.Error)
	}
	var sum ledger.Totals
	for _, row := range page.Requests {
		sum.Requests++
		sum.PromptTokens += row.PromptTokens
		sum.CompletionTokens += row.CompletionTokens
		sum.CostSats += row.CostSats
		sum.DearestCostSats += row.DearestCostSats
	}
	got := st.Total
	if got.Requests != 3 || got.Succeeded != 2 || got.Failed != 1 || got.PromptTokens != sum.PromptTokens ||
		got.CompletionTokens != sum.CompletionTokens || math.Abs(got.CostSats-sum.CostSats) > 1e-9 ||
		math.Abs(got.DearestCostSats-sum.DearestCostSats) > 1e-9 || math.Abs(got.SavedSats-(sum.DearestCostSats-sum.CostSats)) > 1e-9 {
		t.Errorf("stats total %+v; the rows sum to %+v", got, sum)
	}
	if len(st.Groups) != 3 || st.Groups[0].Key["provider"] != "" || st.Groups[1].Key["client"] != "alice" ||
		st.Groups[2].Key["provider"] != "mid" || st.Groups[2].Key["client"] != "bob" || st.Since != nil {
		t.Errorf("stats groups %+v", st.Groups)
	}
}

// The admin API refuses what it does not understand with a 400 that says
// what it takes, and pages through rows newest first.
func TestLedgerAdminQueries(t *testing.T) {
	tc := startLedgerCaddy(t, "arbstr {\n\tledger sqlite "+filepath.Join(t.TempDir(), "l.db")+"\n}", "")
	tc.loadGlobal("arbstr {\n\tledger sqlite "+filepath.Join(t.TempDir(), "l.db")+"\n}", ledgerSite(tc.Port))
	var ids []string
	for range 5 {
		resp := tc.Post("/v1/chat/completions", fmt.Sprintf(ledgerChat, ""))
		io.Copy(io.Discard, resp.Body)
		ids = append(ids, resp.Header.Get(headerRequestID))
	}
	flushLedger(t)

	var seen []string
	cursor := ""
	for range 4 {
		var page requestsAnswer
		path := "/arbstr/requests?limit=2&provider=mid"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		if code := adminGet(t, tc, path, &page); code != 200 {
			t.Fatalf("%s: %d %s", path, code, page.Error)
		}
		for _, r := range page.Requests {
			seen = append(seen, r.ID)
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	if len(seen) != 5 || seen[0] != ids[4] || seen[4] != ids[0] {
		t.Fatalf("pages gave %v, want %v newest first", seen, ids)
	}

	for _, c := range []struct{ path, says string }{
		{"/arbstr/stats?group_by=provider;drop", "semicolon"},
		{"/arbstr/stats?group_by=provider,drop", "group_by"},
		{"/arbstr/stats?since=yesterday", "since"},
		{"/arbstr/stats?since=1h&until=2h", "before"},
		{"/arbstr/stats?providr=mid", "unknown parameter"},
		{"/arbstr/requests?limit=5000", "limit"},
		{"/arbstr/requests?cursor=xyz", "cursor"},
	} {
		var ans statsAnswer
		if code := adminGet(t, tc, c.path, &ans); code != 400 || !strings.Contains(ans.Error, c.says) {
			t.Errorf("%s: %d %q, want 400 saying %q", c.path, code, ans.Error, c.says)
		}
	}
	var st statsAnswer
	if code := adminGet(t, tc, "/arbstr/stats?since=1h&group_by=hour", &st); code != 200 || st.Total.Requests != 5 ||
		len(st.Groups) < 1 || st.Since == nil || time.Since(*st.Since) < 59*time.Minute {
		t.Fatalf("last hour by hour: %d %+v", code, st)
	}
	if code := adminGet(t, tc, "/arbstr/stats?endpoint=chat&group_by=endpoint", &st); code != 200 || st.Total.Requests != 5 ||
		len(st.Groups) != 1 || st.Groups[0].Key["endpoint"] != "chat" {
		t.Fatalf("chat requests by endpoint: %d %+v", code, st)
	}
	if code := adminGet(t, tc, "/arbstr/stats?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z", &st); code != 200 || st.Total.Requests != 0 {
		t.Fatalf("a day without rows: %d %+v", code, st.Total)
	}
}

// Every API's requests land in the ledger under their endpoint, with the
// cost their client was told; stats group them by endpoint.
func TestLedgerRecordsEachAPI(t *testing.T) {
	global := "arbstr {\n\tledger sqlite " + filepath.Join(t.TempDir(), "ledger.db") + "\n}"
	tc := startLedgerCaddy(t, global, "")
	tc.loadGlobal(global, ledgerSite(tc.Port))
	told := map[string]float64{}
	for _, c := range []struct{ endpoint, path, body string }{
		{"embeddings", "/v1/embeddings", `{"model":"m1","input":["count the sheep","in this field"]}`},
		{"responses", "/v1/responses", `{"model":"m1","input":"count the sheep","stream":true}`},
		{"messages", "/v1/messages", `{"model":"m1","max_tokens":100,"messages":[{"role":"user","content":"count the sheep"}]}`},
	} {
		resp := tc.Post(c.path, c.body, "anthropic-version", "2023-06-01")
		body, _ := io.ReadAll(resp.Body)
		cost := resp.Header.Get(headerCost)
		if cost == "" {
			cost = resp.Trailer.Get(headerCost)
		}
		if resp.StatusCode != 200 || cost == "" {
			t.Fatalf("%s: %d, cost %q: %s", c.path, resp.StatusCode, cost, body)
		}
		told[c.endpoint], _ = strconv.ParseFloat(cost, 64)
	}
	flushLedger(t)

	var page requestsAnswer
	if code := adminGet(t, tc, "/arbstr/requests", &page); code != 200 || len(page.Requests) != 3 {
		t.Fatalf("GET /arbstr/requests: %d, %d rows %s", code, len(page.Requests), page.Error)
	}
	for _, r := range page.Requests {
		want, ok := told[r.Endpoint]
		if !ok || math.Abs(r.CostSats-want) > 0.005 || r.Outcome != "ok" {
			t.Errorf("row endpoint %q cost %v outcome %q; the clients were told %v", r.Endpoint, r.CostSats, r.Outcome, told)
		}
		if wantProvider := map[string]string{"messages": "claude"}[r.Endpoint]; wantProvider != "" && r.Provider != wantProvider {
			t.Errorf("%s row served by %q, want %q", r.Endpoint, r.Provider, wantProvider)
		}
		if r.Endpoint == "embeddings" && r.CompletionTokens != 0 {
			t.Errorf("embeddings row has %d output tokens", r.CompletionTokens)
		}
	}
	var st statsAnswer
	if code := adminGet(t, tc, "/arbstr/stats?group_by=endpoint", &st); code != 200 || len(st.Groups) != 3 || st.Total.Requests != 3 {
		t.Fatalf("stats by endpoint: %d %+v", code, st)
	}
}

// A reload to the same store keeps the queue; a reload to another store
// flushes the old one. No row is lost either way.
func TestLedgerReloadLosesNoRow(t *testing.T) {
	dir := t.TempDir()
	first, second := filepath.Join(dir, "a.db"), filepath.Join(dir, "b.db")
	global := func(db string) string { return "arbstr {\n\tledger sqlite " + db + "\n}" }
	tc := startLedgerCaddy(t, global(first), "")
	tc.loadGlobal(global(first), ledgerSite(tc.Port))

	var wg sync.WaitGroup
	var mu sync.Mutex
	answered := 0
	load := func(n int) {
		defer wg.Done()
		client := &http.Client{Timeout: 10 * time.Second}
		for range n {
			resp, err := client.Post(tc.URL+"/v1/chat/completions", "application/json", strings.NewReader(fmt.Sprintf(ledgerChat, "")))
			if err != nil {
				continue // cut by the reload before arbstr saw it
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				mu.Lock()
				answered++
				mu.Unlock()
			}
		}
	}
	wg.Add(2)
	go load(20)
	go load(20)
	tc.loadGlobal(global(first), ledgerSite(tc.Port)+"\n") // same store
	wg.Wait()
	tc.loadGlobal(global(second), ledgerSite(tc.Port)) // the old store is flushed and closed

	old, err := ledger.Open(context.Background(), ledger.DriverSQLite, first)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	st, err := old.Stats(context.Background(), ledger.StatsQuery{Filter: ledger.Filter{Match: map[string]string{"outcome": "ok"}}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Total.Requests != int64(answered) || answered == 0 {
		t.Fatalf("%d answered requests, %d rows in the store after the reloads", answered, st.Total.Requests)
	}
}

// togglingProxy forwards TCP to a target until it is switched off; then it
// cuts every connection and refuses new ones, like a database that went away.
type togglingProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]bool
}

func newTogglingProxy(t *testing.T, target string) *togglingProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &togglingProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { ln.Close(); p.setDown(true) })
	go p.serve()
	return p
}

func (p *togglingProxy) addr() string { return p.ln.Addr().String() }

func (p *togglingProxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

func (p *togglingProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		go func() { io.Copy(up, c); up.Close() }()
		go func() { io.Copy(c, up); c.Close() }()
	}
}

// With PostgreSQL unreachable from the start, every request is still
// answered; the rows wait in the queue and arrive once it is back. A second
// instance on the same database is seen in the first one's stats.
func TestLedgerPostgresDownAndShared(t *testing.T) {
	dsn := pgtest.Database(t)
	proxy := newTogglingProxy(t, "127.0.0.1:5432")
	proxy.setDown(true)
	proxied := strings.Replace(dsn, "127.0.0.1:5432", proxy.addr(), 1)
	global := "arbstr {\n\tledger postgres \"" + proxied + "\"\n}"
	tc := startLedgerCaddy(t, global, "")
	tc.loadGlobal(global, ledgerSite(tc.Port))

	var ids []string
	for range 6 {
		resp := tc.Post("/v1/chat/completions", fmt.Sprintf(ledgerChat, ""))
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("with the database down: %d, want 200", resp.StatusCode)
		}
		ids = append(ids, resp.Header.Get(headerRequestID))
	}
	var st statsAnswer
	if code := adminGet(t, tc, "/arbstr/stats", &st); code != 503 || !strings.Contains(st.Error, "reachable") {
		t.Fatalf("stats with the database down: %d %q, want 503", code, st.Error)
	}

	proxy.setDown(false)
	flushLedger(t)

	// Another instance writes to the same database directly.
	other, err := ledger.Open(context.Background(), ledger.DriverPostgres, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Insert(context.Background(), []ledger.Row{{ID: "other-1", Time: time.Now(), Instance: "other-host",
		Provider: "mid", Outcome: "ok", Status: 200, CostSats: 7, DearestCostSats: 9}}); err != nil {
		t.Fatal(err)
	}
	if code := adminGet(t, tc, "/arbstr/stats?group_by=provider", &st); code != 200 || st.Total.Requests != 7 {
		t.Fatalf("stats after the database came back: %d %+v, want the 6 queued rows and the other instance's", code, st)
	}
	var page requestsAnswer
	adminGet(t, tc, "/arbstr/requests?instance=other-host", &page)
	if len(page.Requests) != 1 || page.Requests[0].ID != "other-1" {
		t.Fatalf("rows of the other instance: %+v", page.Requests)
	}
	adminGet(t, tc, "/arbstr/requests?instance="+instanceID(), &page)
	if len(page.Requests) != 6 || page.Requests[5].ID != ids[0] {
		t.Fatalf("rows of this instance: %d, want all 6 written after the outage", len(page.Requests))
	}

	// Cut again in the middle of a run of requests, with connections open.
	for i := range 10 {
		if i == 5 {
			proxy.setDown(true)
		}
		resp := tc.Post("/v1/chat/completions", fmt.Sprintf(ledgerChat, ""))
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d with the database cut: %d, want 200", i, resp.StatusCode)
		}
	}
	proxy.setDown(false)
	flushLedger(t)
	adminGet(t, tc, "/arbstr/requests?instance="+instanceID(), &page)
	if len(page.Requests) != 16 {
		t.Fatalf("rows of this instance after the second outage: %d, want 16", len(page.Requests))
	}
}

// Without the arbstr global block the ledger is on, in SQLite under
// Caddy's data directory; `ledger off` turns it off.
func TestLedgerDefaultsAndOff(t *testing.T) {
	tc := startCaddy(t, "")
	tc.Load(ledgerSite(tc.Port))
	resp := tc.Post("/v1/chat/completions", fmt.Sprintf(ledgerChat, ""))
	io.Copy(io.Discard, resp.Body)
	flushLedger(t)
	if _, err := os.Stat(filepath.Join(caddy.AppDataDir(), "arbstr", "ledger.db")); err != nil {
		t.Fatalf("default ledger file: %v", err)
	}
	var page requestsAnswer
	if code := adminGet(t, tc, "/arbstr/requests?limit=1", &page); code != 200 || len(page.Requests) != 1 ||
		page.Requests[0].ID != resp.Header.Get(headerRequestID) {
		t.Fatalf("default ledger: %d %+v", code, page)
	}

	tc.loadGlobal("arbstr {\n\tledger off\n}", ledgerSite(tc.Port))
	resp = tc.Post("/v1/chat/completions", fmt.Sprintf(ledgerChat, ""))
	if resp.StatusCode != 200 {
		t.Fatalf("with the ledger off: %d", resp.StatusCode)
	}
	var st statsAnswer
	if code := adminGet(t, tc, "/arbstr/stats", &st); code != 404 || !strings.Contains(st.Error, "ledger is off") {
		t.Fatalf("stats with the ledger off: %d %q", code, st.Error)
	}
}

// The global option becomes apps.arbstr; mistakes name their line.
func TestLedgerGlobalOption(t *testing.T) {
	site := "http://127.0.0.1:1 {\n\trespond ok\n}\n"
	cfg, err := tryAdapt("{\n\tarbstr {\n\t\tledger postgres {env.DB_URL}\n\t\tretention 30d\n\t\tclient_id {http.auth.user.id}\n\t\tqueue 500\n\t}\n}\n" + site)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Apps struct {
			Arbstr App `json:"arbstr"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &got); err != nil {
		t.Fatal(err)
	}
	a := got.Apps.Arbstr
	if a.Ledger == nil || a.Ledger.Driver != "postgres" || a.Ledger.DSN != "{env.DB_URL}" ||
		time.Duration(a.Retention) != 30*24*time.Hour || a.ClientID != "{http.auth.user.id}" || a.Queue != 500 {
		t.Fatalf("apps.arbstr = %s", cfg)
	}
	for _, c := range []struct{ body, says string }{
		{"ledger mysql x", "unknown ledger store"},
		{"ledger postgres", "connection URL"},
		{"ledger", "sqlite [path], postgres <url> or off"},
		{"retention soon", "retention"},
		{"queue -3", "queue"},
		{"budgets x", "unknown arbstr global option"},
	} {
		_, err := tryAdapt("{\n\tarbstr {\n\t\t" + c.body + "\n\t}\n}\n" + site)
		if err == nil || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), "Caddyfile:3") {
			t.Errorf("%q: %v, want an error at Caddyfile:3 saying %q", c.body, err, c.says)
		}
	}
}

// docs/ledger.md's Caddyfile examples adapt, and its JSON example is the
// app's JSON.
func TestLedgerDocExamples(t *testing.T) {
	doc, err := os.ReadFile("docs/ledger.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	blocks := 0
	for _, lang := range []string{"caddyfile", "json"} {
		rest := text
		for {
			_, after, ok := strings.Cut(rest, "```"+lang+"\n")
			if !ok {
				break
			}
			block, tail, _ := strings.Cut(after, "```")
			rest = tail
			blocks++
			if lang == "caddyfile" {
				if _, err := tryAdapt(block); err != nil {
					t.Errorf("docs/ledger.md example does not adapt: %v\n%s", err, block)
				}
				continue
			}
			var cfg struct {
				Apps struct {
					Arbstr json.RawMessage `json:"arbstr"`
				} `json:"apps"`
			}
			if err := json.Unmarshal([]byte(block), &cfg); err != nil {
				t.Fatalf("docs/ledger.md JSON example: %v", err)
			}
			dec := json.NewDecoder(strings.NewReader(string(cfg.Apps.Arbstr)))
			dec.DisallowUnknownFields()
			var app App
			if err := dec.Decode(&app); err != nil || app.Ledger == nil || app.Queue != 10000 {
				t.Errorf("docs/ledger.md JSON example is not the app's JSON: %v %+v", err, app)
			}
		}
	}
	if blocks < 2 {
		t.Fatalf("found %d examples in docs/ledger.md", blocks)
	}
}
