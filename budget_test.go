package arbstr

import (
	"bufio"
	"encoding/json"
	"fmt"
	"github.com/arbstr/caddy-arbstr/ledger"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/arbstr/caddy-arbstr/internal/pgtest"
)

// budgetCaddy starts an in-process Caddy whose global block holds the
// given arbstr app options, with one provider whose every request costs
// baseFee sats, and returns it.
func budgetCaddy(t *testing.T, appOptions string, upstream *rtUpstream, baseFee float64) *testCaddy {
	return budgetCaddyWith(t, appOptions, rtProvider("alpha", upstream.url(), baseFee))
}

// budgetCaddyWith is budgetCaddy with the provider block given.
func budgetCaddyWith(t *testing.T, appOptions, provider string) *testCaddy {
	t.Helper()
	tc := newTestCaddy(t)
	if err := caddy.Load(budgetConfigWith(t, tc, appOptions, provider, ""), true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	tc.waitReady()
	return tc
}

// budgetConfig is the JSON config of budgetCaddy; lease, when not "",
// sets the app's budget_lease (a JSON-only option).
func budgetConfig(t *testing.T, tc *testCaddy, appOptions string, upstream *rtUpstream, baseFee float64, lease string) []byte {
	t.Helper()
	return budgetConfigWith(t, tc, appOptions, rtProvider("alpha", upstream.url(), baseFee), lease)
}

func budgetConfigWith(t *testing.T, tc *testCaddy, appOptions, provider, lease string) []byte {
	t.Helper()
	cf := fmt.Sprintf(`{
	admin %s
	persist_config off
	auto_https off
	skip_install_trust
	grace_period 1s
	arbstr {
%s
	}
}
http://127.0.0.1:%d {
%s
}
`, tc.adminAddr, appOptions, tc.Port, rtSite(provider, rtFast))
	cfg := adaptCaddyfile(t, cf)
	if lease == "" {
		return cfg
	}
	var m map[string]any
	if err := json.Unmarshal(cfg, &m); err != nil {
		t.Fatal(err)
	}
	m["apps"].(map[string]any)["arbstr"].(map[string]any)["budget_lease"] = lease
	out, _ := json.Marshal(m)
	return out
}

// budgetState is one entry of GET /arbstr/budgets.
type budgetState struct {
	Name        string    `json:"name"`
	Per         string    `json:"per"`
	Key         string    `json:"key"`
	Period      string    `json:"period"`
	PeriodStart time.Time `json:"period_start"`
	Limit       float64   `json:"limit"`
	Spent       float64   `json:"spent"`
	Reserved    float64   `json:"reserved"`
}

func getBudgets(t *testing.T, admin string) []budgetState {
	t.Helper()
	resp, err := http.Get(admin + "/arbstr/budgets")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /arbstr/budgets: %d %s", resp.StatusCode, b)
	}
	var out struct {
		Budgets []budgetState `json:"budgets"`
	}
	decodeJSON(t, resp, &out)
	return out.Budgets
}

// budgetStores runs a test with the budget kept in SQLite and in PostgreSQL.
func budgetStores(t *testing.T, test func(t *testing.T, ledgerLine string)) {
	t.Run("sqlite", func(t *testing.T) {
		test(t, "ledger sqlite "+filepath.Join(t.TempDir(), "ledger.db"))
	})
	t.Run("postgres", func(t *testing.T) {
		test(t, "ledger postgres "+pgtest.Database(t))
	})
}

const budgetFive = `
		budget team {
			per    global
			limit  5
			period day
		}`

// Costs: every request costs the provider's base fee of 2 sats, worst case
// and actual alike (no token rates).
func TestBudgetSequentialRequestsStopAtLimit(t *testing.T) {
	budgetStores(t, func(t *testing.T, ledgerLine string) {
		up := rtNewUpstream(t, nil)
		tc := budgetCaddy(t, ledgerLine+budgetFive, up, 2)
		for i, left := range []string{"3", "1"} {
			resp := tc.Post("/v1/chat/completions", rtChat)
			rtExpectOK(t, resp, "alpha")
			if got := resp.Header.Get("x-arbstr-budget-remaining"); got != left {
				t.Errorf("request %d: x-arbstr-budget-remaining = %q, want %s", i+1, got, left)
			}
		}
		resp := tc.Post("/v1/chat/completions", rtChat)
		e := rtDecodeError(t, resp)
		if resp.StatusCode != 429 || e.Error.Type != "insufficient_quota" || e.Error.Code != "insufficient_quota" ||
			resp.Header.Get("x-should-retry") != "false" || resp.Header.Get("x-arbstr-budget-remaining") != "1" ||
			!strings.Contains(e.Error.Message, `"team"`) {
			t.Fatalf("3rd request: %d %+v x-should-retry=%q remaining=%q; want 429 insufficient_quota, x-should-retry false, 1 sat left",
				resp.StatusCode, e.Error, resp.Header.Get("x-should-retry"), resp.Header.Get("x-arbstr-budget-remaining"))
		}
		if n := up.count(); n != 2 {
			t.Errorf("the provider got %d requests, want 2: a refused request never reaches it", n)
		}
		list := getBudgets(t, tc.Admin)
		if len(list) != 1 || list[0].Name != "team" || list[0].Per != "global" || list[0].Period != "day" ||
			list[0].Limit != 5 || list[0].Spent != 4 || list[0].Reserved != 0 {
			t.Fatalf("/arbstr/budgets = %+v; want team: 4 of 5 spent", list)
		}
	})
}

// postConcurrently sends n chat requests at once, round robin over urls,
// and counts the answers by status.
func postConcurrently(t *testing.T, urls []string, n int) map[int]int {
	t.Helper()
	var mu sync.Mutex
	statuses := map[int]int{}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		url := urls[i%len(urls)]
		wg.Go(func() {
			<-start
			resp, err := http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(rtChat))
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			mu.Lock()
			statuses[resp.StatusCode]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	return statuses
}

// slowCompletion answers after a pause, so that concurrent requests are
// in flight together.
func slowCompletion(_ int, w http.ResponseWriter, _ *http.Request) {
	time.Sleep(200 * time.Millisecond)
	rtWriteCompletion(w)
}

func TestBudgetConcurrentRequestsSpendAtMostLimit(t *testing.T) {
	budgetStores(t, func(t *testing.T, ledgerLine string) {
		up := rtNewUpstream(t, slowCompletion)
		tc := budgetCaddy(t, ledgerLine+`
		budget team {
			per    global
			limit  10
			period total
		}`, up, 1)
		statuses := postConcurrently(t, []string{tc.URL}, 30)
		list := getBudgets(t, tc.Admin)
		if statuses[200] != 10 || statuses[429] != 20 || list[0].Spent != 10 || list[0].Reserved != 0 {
			t.Fatalf("30 concurrent requests against a budget for 10: %v, spent %v; want 10×200, 20×429, 10 sats spent",
				statuses, list[0].Spent)
		}
	})
}

func TestBudgetFailedRequestLeavesBudgetUnchanged(t *testing.T) {
	budgetStores(t, func(t *testing.T, ledgerLine string) {
		up := rtNewUpstream(t, rtStatus(500))
		tc := budgetCaddy(t, ledgerLine+budgetFive, up, 2)
		resp := tc.Post("/v1/chat/completions", rtChat)
		rtReadBody(t, resp)
		if resp.StatusCode != 502 || resp.Header.Get("x-arbstr-budget-remaining") != "3" {
			t.Fatalf("status %d, remaining %q; want 502 after admission with 3 sats left", resp.StatusCode, resp.Header.Get("x-arbstr-budget-remaining"))
		}
		if list := getBudgets(t, tc.Admin); list[0].Spent != 0 || list[0].Reserved != 0 {
			t.Fatalf("after a failed request: %+v; want nothing spent or reserved", list[0])
		}
	})
}

func TestBudgetKeysPerClientAndModel(t *testing.T) {
	up := rtNewUpstream(t, nil)
	tc := budgetCaddy(t, "ledger sqlite "+filepath.Join(t.TempDir(), "l.db")+`
		client_id {http.request.header.X-User}
		budget per-user {
			per    client
			limit  3
			period hour
		}
		budget per-model {
			per    model
			limit  100
			period month
			reserve_tokens 100
		}`, up, 2)
	for _, user := range []string{"ann", "bob"} {
		resp := tc.Post("/v1/chat/completions", rtChat, "X-User", user)
		rtExpectOK(t, resp, "alpha")
		if got := resp.Header.Get("x-arbstr-budget-remaining"); got != "1" {
			t.Errorf("%s: remaining %q, want 1 (the smaller room of the two budgets)", user, got)
		}
	}
	resp := tc.Post("/v1/chat/completions", rtChat, "X-User", "ann")
	if rtReadBody(t, resp); resp.StatusCode != 429 {
		t.Fatalf("ann's 2nd request: %d, want 429", resp.StatusCode)
	}
	got := map[string]budgetState{}
	for _, b := range getBudgets(t, tc.Admin) {
		got[b.Name+"/"+b.Key] = b
	}
	if got["per-user/ann"].Spent != 2 || got["per-user/bob"].Spent != 2 || got["per-model/gpt-4o"].Spent != 4 || len(got) != 3 {
		t.Fatalf("/arbstr/budgets: %+v", got)
	}
}

// A stream is settled at its end, at the cost of the usage it reported.
func TestBudgetStreamSettledAtActualCost(t *testing.T) {
	up := rtNewUpstream(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}`+"\n\n")
		io.WriteString(w, `data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":10,"total_tokens":1010}}`+"\n\n")
		io.WriteString(w, "data: [DONE]\n\n")
	})
	// The worst case is max_tokens 500 out at 1000 sats/M: 0.5 sats (input
	// is free); the stream reports 10 tokens out: 0.01 sats.
	tc := budgetCaddyWith(t, "ledger sqlite "+filepath.Join(t.TempDir(), "l.db")+`
		budget all {
			per    global
			limit  1000
			period week
		}`, rtProvider("alpha", up.url(), 0, "output_rate 1000"))
	resp := tc.Post("/v1/chat/completions", `{"model":"gpt-4o","stream":true,"max_tokens":500,"messages":[{"role":"user","content":"hello"}]}`)
	body := rtReadBody(t, resp)
	if resp.StatusCode != 200 || !strings.Contains(body, "[DONE]") || resp.Header.Get("x-arbstr-budget-remaining") != "999.5" {
		t.Fatalf("%d remaining=%q %s", resp.StatusCode, resp.Header.Get("x-arbstr-budget-remaining"), body)
	}
	if list := getBudgets(t, tc.Admin); list[0].Spent != 0.01 || list[0].Reserved != 0 {
		t.Fatalf("after the stream: %+v; want 0.01 sats spent (10 tokens at 1000 sats/M), nothing reserved", list[0])
	}
}

func TestBudgetStoreUnreachable(t *testing.T) {
	down := "ledger postgres postgres://postgres@127.0.0.1:" + fmt.Sprint(freePort(t)) + "/x?sslmode=disable&connect_timeout=2"
	up := rtNewUpstream(t, nil)
	tc := budgetCaddy(t, down+budgetFive, up, 1)
	resp := tc.Post("/v1/chat/completions", rtChat)
	e := rtDecodeError(t, resp)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || e.Error.Code != "budget_unavailable" || up.count() != 0 {
		t.Fatalf("store down: %d Retry-After=%q %+v, provider got %d; want 503 with Retry-After, nothing sent",
			resp.StatusCode, resp.Header.Get("Retry-After"), e.Error, up.count())
	}
	// A reload (which keeps the pooled store) to the same budget with fail_open.
	if err := caddy.Load(budgetConfig(t, tc, down+strings.Replace(budgetFive, "period day", "period day\n\t\t\tfail_open", 1), up, 1, ""), true); err != nil {
		t.Fatal(err)
	}
	http.DefaultClient.CloseIdleConnections()
	tc.reloadedAt = time.Now()
	resp = tc.Post("/v1/chat/completions", rtChat)
	rtExpectOK(t, resp, "alpha")
}

// Reloads keep spending: the state lives in the database.
func TestBudgetReloadKeepsSpending(t *testing.T) {
	up := rtNewUpstream(t, nil)
	ledgerLine := "ledger sqlite " + filepath.Join(t.TempDir(), "l.db")
	tc := budgetCaddy(t, ledgerLine+budgetFive, up, 2)
	rtExpectOK(t, tc.Post("/v1/chat/completions", rtChat), "alpha")
	if err := caddy.Load(budgetConfig(t, tc, ledgerLine+strings.Replace(budgetFive, "limit  5", "limit  6", 1), up, 2, ""), true); err != nil {
		t.Fatal(err)
	}
	http.DefaultClient.CloseIdleConnections()
	tc.reloadedAt = time.Now()
	resp := tc.Post("/v1/chat/completions", rtChat)
	rtExpectOK(t, resp, "alpha")
	if got := resp.Header.Get("x-arbstr-budget-remaining"); got != "2" {
		t.Fatalf("after a reload raising the limit to 6: remaining %q, want 2 (4 spent before and after)", got)
	}
}

func TestBudgetCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct{ block, want string }{
		{"budget {\n}", "needs a name"},
		{"budget b {\nper team\nlimit 1\nperiod day\n}", `per "team"`},
		{"budget b {\nper global\nlimit -1\nperiod day\n}", "positive whole number"},
		{"budget b {\nper global\nlimit 1\nperiod year\n}", `period "year"`},
		{"budget b {\nper global\nlimit 1\nperiod day\nceiling 2\n}", `unknown setting "ceiling"`},
		{"budget b {\nper global\nperiod day\n}", "limit must be a positive"},
	} {
		d := caddyfile.NewTestDispenser("arbstr {\n" + tc.block + "\n}")
		_, err := parseAppOption(d, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want an error saying %q", tc.block, err, tc.want)
		}
	}
	app := &App{Ledger: &LedgerConfig{Driver: "off"}, Budgets: []*BudgetConfig{{Name: "b", Per: "global", Limit: 1, Period: "day"}}}
	if err := app.provisionBudgets(); err == nil || !strings.Contains(err.Error(), "ledger is off") {
		t.Errorf("budgets without a ledger: %v", err)
	}
}

// ---------------------------------------------------------------------------
// Several Caddy processes on one PostgreSQL. The test binary runs itself
// as the second process (TestBudgetChildCaddy), with a JSON config.

const childConfigEnv = "ARBSTR_TEST_CHILD_CADDY_CONFIG"

// TestBudgetChildCaddy is not a test: run by startChildCaddy, it runs
// Caddy with the config in its environment until its stdin closes.
func TestBudgetChildCaddy(t *testing.T) {
	cfg := os.Getenv(childConfigEnv)
	if cfg == "" {
		t.Skip("runs only as the child process of a two-instance budget test")
	}
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	fmt.Println("child caddy running")
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = caddy.Stop()
}

// startChildCaddy runs cfg in a second process (with env added to its
// environment) and waits until it serves; the returned command may be
// killed by the test.
func startChildCaddy(t *testing.T, cfg []byte, tc *testCaddy, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestBudgetChildCaddy$", "-test.count=1", "-test.v")
	cmd.Env = append(append(os.Environ(), env...), childConfigEnv+"="+string(cfg))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "child caddy running") {
				ready <- true
			}
		}
		ready <- false
		io.Copy(io.Discard, stdout)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("the child Caddy did not start")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the child Caddy did not start within 30s")
	}
	tc.waitReady()
	return cmd
}

// childSite is a second site address set (ports) for the child process.
func childSite(t *testing.T) *testCaddy {
	tc := newTestCaddy(t)
	return tc
}

func TestBudgetTwoCaddyProcessesOnePostgres(t *testing.T) {
	up := rtNewUpstream(t, slowCompletion)
	options := "ledger postgres " + pgtest.Database(t) + `
		budget team {
			per    global
			limit  10
			period total
		}`
	parent := budgetCaddy(t, options, up, 1)
	child := childSite(t)
	startChildCaddy(t, budgetConfig(t, child, options, up, 1, ""), child)

	statuses := postConcurrently(t, []string{parent.URL, child.URL}, 30)
	for _, admin := range []string{parent.Admin, child.Admin} {
		list := getBudgets(t, admin)
		if statuses[200] != 10 || statuses[429] != 20 || list[0].Spent != 10 || list[0].Reserved != 0 {
			t.Fatalf("30 concurrent requests over two processes, budget for 10: %v, %s sees %v spent; want 10×200, 20×429, 10 sats",
				statuses, admin, list[0].Spent)
		}
	}
}

// A process killed mid-request never settles; its reservation lapses when
// its lease runs out and the other instance gets the budget back.
func TestBudgetKilledProcessReservationReleased(t *testing.T) {
	release := make(chan struct{})
	up := rtNewUpstream(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		rtWriteCompletion(w)
	})
	defer close(release)
	options := "ledger postgres " + pgtest.Database(t) + budgetFive
	parent := budgetCaddy(t, options, up, 5)
	child := childSite(t)
	cmd := startChildCaddy(t, budgetConfig(t, child, options, up, 5, "2s"), child)

	go func() {
		resp, err := http.Post(child.URL+"/v1/chat/completions", "application/json", strings.NewReader(rtChat))
		if err == nil {
			resp.Body.Close()
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for up.count() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if up.count() == 0 {
		t.Fatal("the child's request never reached the provider")
	}
	if list := getBudgets(t, parent.Admin); list[0].Reserved != 5 {
		t.Fatalf("while the child's request runs: %+v; want 5 sats reserved", list[0])
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	resp := parent.Post("/v1/chat/completions", rtChat)
	if rtReadBody(t, resp); resp.StatusCode != 429 {
		t.Fatalf("right after the kill: %d; want 429 (the reservation holds until its lease ends)", resp.StatusCode)
	}
	for time.Now().Before(deadline) {
		if list := getBudgets(t, parent.Admin); list[0].Reserved == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("the killed process's reservation still counts after its 2s lease")
}

// A client that leaves mid-stream ends the request; the provider reported
// no usage, so the whole reservation is charged (never less than could
// have been spent) and nothing stays reserved.
func TestBudgetClientGoneMidStreamSettles(t *testing.T) {
	release := make(chan struct{})
	up := rtNewUpstream(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}`+"\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	tc := budgetCaddyWith(t, "ledger sqlite "+filepath.Join(t.TempDir(), "l.db")+budgetFive,
		rtProvider("alpha", up.url(), 0, "output_rate 1000"))
	req, _ := http.NewRequest(http.MethodPost, tc.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"gpt-4o","stream":true,"max_tokens":2000,"messages":[{"role":"user","content":"hello"}]}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first event: %v, status %d", err, resp.StatusCode)
	}
	if list := getBudgets(t, tc.Admin); list[0].Reserved != 2 {
		t.Fatalf("while streaming: %+v; want 2 sats reserved (2000 tokens at 1000 sats/M)", list[0])
	}
	resp.Body.Close() // the client leaves
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if list := getBudgets(t, tc.Admin); list[0].Reserved == 0 {
			if list[0].Spent != 2 {
				t.Fatalf("after the client left: %+v; want the 2 reserved sats charged", list[0])
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the request of a client that left was never settled")
}

// The Caddyfile and the JSON config say the same.
func TestBudgetJSONConfig(t *testing.T) {
	cfg := adaptCaddyfile(t, `{
	arbstr {
		budget team {
			per            policy
			limit          500
			period         month
			reserve_tokens 1000
			fail_open
		}
	}
}
:8080 {
	respond ok
}`)
	var got struct {
		Apps struct {
			Arbstr struct {
				Budgets []BudgetConfig `json:"budgets"`
			} `json:"arbstr"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &got); err != nil {
		t.Fatal(err)
	}
	want := BudgetConfig{Name: "team", Per: "policy", Limit: 500, Period: "month", ReserveTokens: 1000, FailOpen: true}
	if len(got.Apps.Arbstr.Budgets) != 1 || got.Apps.Arbstr.Budgets[0] != want {
		t.Fatalf("apps.arbstr.budgets = %+v; want [%+v]\n%s", got.Apps.Arbstr.Budgets, want, cfg)
	}
}

// docs/budgets.md stays honest: its Caddyfile and JSON examples load.
func TestBudgetDocExamples(t *testing.T) {
	doc, err := os.ReadFile("docs/budgets.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```caddyfile\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	if len(blocks) == 0 {
		t.Fatal("no Caddyfile example in docs/budgets.md")
	}
	for _, b := range blocks {
		if _, err := tryAdapt(b[1]); err != nil {
			t.Errorf("example does not adapt: %v\n%s", err, b[1])
		}
	}
	jsonBlocks := regexp.MustCompile("(?s)```json\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	if len(jsonBlocks) < 2 {
		t.Fatal("want the JSON config and /arbstr/budgets examples")
	}
	var cfg struct {
		Apps struct {
			Arbstr App `json:"arbstr"`
		} `json:"apps"`
	}
	dec := json.NewDecoder(strings.NewReader(jsonBlocks[0][1]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil || len(cfg.Apps.Arbstr.Budgets) != 2 {
		t.Errorf("JSON example: %v, %d budgets", err, len(cfg.Apps.Arbstr.Budgets))
	}
	var list struct {
		Budgets []budgetState `json:"budgets"`
	}
	dec = json.NewDecoder(strings.NewReader(jsonBlocks[1][1]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&list); err != nil || len(list.Budgets) != 1 {
		t.Errorf("/arbstr/budgets example: %v", err)
	}
}

// Two Caddy processes on one PostgreSQL both write the ledger, and either
// answers for both (SPEC §11). The child has a data directory of its own,
// as a second host would, and so its own instance id.
func TestLedgerTwoCaddyProcessesOnePostgres(t *testing.T) {
	up := rtNewUpstream(t, nil)
	options := "ledger postgres " + pgtest.Database(t)
	parent := budgetCaddy(t, options, up, 1)
	child := childSite(t)
	startChildCaddy(t, budgetConfig(t, child, options, up, 1, ""), child, "XDG_DATA_HOME="+t.TempDir())
	for _, site := range []*testCaddy{parent, child} {
		for range 3 {
			resp := site.Post("/v1/chat/completions", rtChat)
			if rtReadBody(t, resp); resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: status %d", site.URL, resp.StatusCode)
			}
		}
	}
	for _, admin := range []string{parent.Admin, child.Admin} {
		rows := waitForLedgerRows(t, admin, 6)
		instances := map[string]int{}
		for _, r := range rows {
			instances[r.Instance]++
		}
		if len(instances) != 2 {
			t.Errorf("%s lists rows of instances %v; want 3 rows from each of two instances", admin, instances)
		}
		for id, n := range instances {
			if n != 3 {
				t.Errorf("%s: instance %s has %d rows, want 3", admin, id, n)
			}
		}
	}
}

// waitForLedgerRows polls GET /arbstr/requests until it lists want rows
// (rows are written off the request path) and returns them.
func waitForLedgerRows(t *testing.T, admin string, want int) []ledger.Row {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(admin + "/arbstr/requests?limit=100")
		if err != nil {
			t.Fatal(err)
		}
		var page struct {
			Requests []ledger.Row `json:"requests"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s/arbstr/requests: %v", admin, err)
		}
		if len(page.Requests) >= want || time.Now().After(deadline) {
			if len(page.Requests) != want {
				t.Fatalf("%s lists %d rows, want %d", admin, len(page.Requests), want)
			}
			return page.Requests
		}
		time.Sleep(50 * time.Millisecond) // polling the database, not synchronising goroutines
	}
}
