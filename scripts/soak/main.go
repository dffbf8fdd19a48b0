// Command soak puts a Caddy running arbstr under mixed streaming and
// non-streaming load, in front of stand-in providers that fail in every way
// the stand-in knows, and checks what a client would notice:
//
//   - every request ends in a success or a documented error (a status of the
//     documented set, with an OpenAI-shaped error body);
//   - no truncated stream passes for a complete one: a stream without
//     [DONE] carries an error event and/or ends in an aborted connection;
//   - a complete answer is the provider's whole answer, nothing lost or
//     doubled, and no malformed event reaches the client;
//   - the router's goroutines and memory come back near their baseline
//     once the load is over.
//
// With -mode reload, it reloads the router's config (POST /load on the admin
// endpoint, what `caddy reload` does) while the load runs, and checks that
// no request fails, that in-flight streams end with [DONE], and that the
// breaker state of an unchanged provider survives the reloads.
//
// It only ever talks to 127.0.0.1, runs for a bounded time and a bounded
// number of requests, and stops the Caddy processes it started.
// scripts/soak.sh and scripts/reload-under-load.sh run it.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type options struct {
	mode          string
	caddyBin      string
	workDir       string
	duration      time.Duration
	concurrency   int
	maxRequests   int64
	streamShare   float64
	settle        time.Duration
	grace         string
	reloadEvery   time.Duration
	streamEvents  int
	streamPace    time.Duration
	allowCut      bool
	idempotencyID bool
}

func main() {
	var o options
	flag.StringVar(&o.mode, "mode", "soak", "soak (faulty providers) or reload (config reloads under load)")
	flag.StringVar(&o.caddyBin, "caddy", "bin/caddy", "the Caddy binary with arbstr")
	flag.StringVar(&o.workDir, "workdir", "", "where configs and logs go (default: a new temporary directory)")
	flag.DurationVar(&o.duration, "duration", 3*time.Minute, "how long the load runs")
	flag.IntVar(&o.concurrency, "concurrency", 16, "requests in flight at most")
	flag.Int64Var(&o.maxRequests, "max-requests", 400000, "requests sent at most")
	flag.Float64Var(&o.streamShare, "stream-share", 0.5, "share of streaming requests")
	flag.DurationVar(&o.settle, "settle", 150*time.Second, "how long to wait for goroutines to return to the baseline")
	flag.StringVar(&o.grace, "grace", "10s", "the router's grace_period (\"\" or 0: none, Caddy's default)")
	flag.DurationVar(&o.reloadEvery, "reload-every", time.Second, "reload mode: time between reloads")
	flag.IntVar(&o.streamEvents, "stream-events", 20, "reload mode: content events per stream")
	flag.DurationVar(&o.streamPace, "stream-pace", 100*time.Millisecond, "reload mode: time between stream events")
	flag.BoolVar(&o.allowCut, "allow-cut", false, "reload mode: streams cut by a reload (visibly) are counted, not failures")
	flag.BoolVar(&o.idempotencyID, "idempotency-key", true, "send an Idempotency-Key, as SDKs do, so that Go's client may resend a request on a keep-alive connection the server closed")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "soak: FAIL:", err)
		os.Exit(1)
	}
}

// standin is one stand-in provider and its prices at the router.
type standin struct {
	name       string
	directives []string // arbstr_standin options
	inputRate  float64
	outputRate float64
	baseFee    float64
	models     string // the router's models line; "" serves any model
	faulty     bool   // every chat request it gets is a fault
	streamOnly bool   // only its streaming requests get the fault
	port       int
}

func (s *standin) answer() string {
	return "Soak answer from " + s.name + ", in several small pieces."
}

// soakStandins fail in every way the stand-in can. The hard-failing ones
// are the cheapest for every request (both their rates are below 1000), in
// an order that depends on each request's size because their input and
// output rates run opposite ways; then the one that fails its first 500
// requests; then those with stream anomalies; the healthy one is dearest.
func soakStandins() []*standin {
	return []*standin{
		{name: "s-503", directives: []string{"fail_status 503"}, inputRate: 100, outputRate: 800, baseFee: 0.01, faulty: true},
		{name: "s-429", directives: []string{"fail_status 429", "retry_after 2s"}, inputRate: 200, outputRate: 700, baseFee: 0.02, faulty: true},
		{name: "s-reset", directives: []string{"fault reset"}, inputRate: 300, outputRate: 600, baseFee: 0.03, faulty: true},
		{name: "s-stall", directives: []string{"fault stall", "fault_after 2"}, inputRate: 400, outputRate: 500, baseFee: 0.04, faulty: true},
		{name: "s-cut", directives: []string{"fault cut", "fault_after 3"}, inputRate: 500, outputRate: 400, baseFee: 0.05, faulty: true},
		{name: "s-hang", directives: []string{"fault hang"}, inputRate: 600, outputRate: 300, baseFee: 0.06, faulty: true},
		{name: "s-errevent", directives: []string{"fault error_event"}, inputRate: 700, outputRate: 200, baseFee: 0.07, faulty: true},
		{name: "s-failfirst", directives: []string{"fail_status 500", "fail_first 500"}, inputRate: 950, outputRate: 950, baseFee: 0.1},
		{name: "s-nofinish", directives: []string{"fault no_finish"}, inputRate: 1000, outputRate: 1000, baseFee: 0.2, streamOnly: true},
		{name: "s-malformed", directives: []string{"fault malformed", "fault_after 2"}, inputRate: 1000, outputRate: 1400, baseFee: 0.3, streamOnly: true},
		{name: "s-nodone", directives: []string{"fault no_done"}, inputRate: 1400, outputRate: 1000, baseFee: 0.3, streamOnly: true},
		{name: "s-healthy", inputRate: 5000, outputRate: 5000, baseFee: 1},
	}
}

// reloadStandins are healthy (the reload test allows no failure), with
// streams of a few seconds, plus a failing provider that gets no traffic
// during the reloads: its breaker state must survive them unchanged.
func reloadStandins(o options) []*standin {
	pace := []string{fmt.Sprintf("events %d", o.streamEvents), "pace " + o.streamPace.String()}
	return []*standin{
		{name: "rl-cheap", directives: pace, inputRate: 1000, outputRate: 2000, models: "rl-model"},
		{name: "rl-backup", directives: pace, inputRate: 3000, outputRate: 6000, baseFee: 1, models: "rl-model"},
		{name: "rl-ghost", directives: []string{"fail_status 503"}, inputRate: 1, outputRate: 1, models: "ghost-model", faulty: true},
	}
}

func run(o options) error {
	if o.concurrency < 1 || o.maxRequests < 1 || o.duration <= 0 {
		return errors.New("concurrency, max-requests and duration must be positive")
	}
	if o.workDir == "" {
		d, err := os.MkdirTemp("", "arbstr-soak-")
		if err != nil {
			return err
		}
		o.workDir = d
	}
	var standins []*standin
	if o.mode == "reload" {
		standins = reloadStandins(o)
	} else {
		o.mode = "soak"
		standins = soakStandins()
		for _, s := range standins {
			// Listed, not "any model": health is kept per listed model,
			// while a provider serving any model has one breaker for all.
			s.models = strings.Join(soakModels, " ")
			if s.faulty {
				// Only failing providers serve these: every request for
				// them ends in one of arbstr's own errors (502, 503, 504).
				s.models += " " + strings.Join(doomedModels, " ")
			}
		}
	}
	for _, s := range standins {
		s.port = freePort()
	}
	routerPort, adminPort := freePort(), freePort()
	r := &rig{o: o, standins: standins, routerURL: fmt.Sprintf("http://127.0.0.1:%d", routerPort),
		adminURL: fmt.Sprintf("http://127.0.0.1:%d", adminPort)}

	providersFile := filepath.Join(o.workDir, "providers.Caddyfile")
	if err := os.WriteFile(providersFile, []byte(providersCaddyfile(standins)), 0o644); err != nil {
		return err
	}
	r.routerFiles = [2]string{filepath.Join(o.workDir, "router-a.Caddyfile"), filepath.Join(o.workDir, "router-b.Caddyfile")}
	for i, f := range r.routerFiles {
		if err := os.WriteFile(f, []byte(r.routerCaddyfile(routerPort, adminPort, i)), 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("soak: mode %s, configs and logs in %s\n", o.mode, o.workDir)

	providers, err := startCaddy(o.caddyBin, providersFile, filepath.Join(o.workDir, "providers.log"))
	if err != nil {
		return err
	}
	defer providers.stop()
	router, err := startCaddy(o.caddyBin, r.routerFiles[0], filepath.Join(o.workDir, "router.log"))
	if err != nil {
		return err
	}
	defer router.stop()
	r.router = router
	for _, s := range standins {
		if err := waitHTTP(fmt.Sprintf("http://127.0.0.1:%d/v1/standin/requests", s.port), 20*time.Second); err != nil {
			return fmt.Errorf("stand-in %s: %w", s.name, err)
		}
	}
	if err := waitHTTP(r.routerURL+"/v1/models", 20*time.Second); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	return r.soak()
}

// rig is one run: the processes, the client and the tallies.
type rig struct {
	o           options
	standins    []*standin
	routerURL   string
	adminURL    string
	routerFiles [2]string
	router      *process
	client      *http.Client

	seq      atomic.Int64
	mu       sync.Mutex
	outcomes map[string]int64
	failures []string
	nFailed  int64
}

func (r *rig) soak() error {
	r.outcomes = map[string]int64{}
	r.client = &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: r.o.concurrency,
		DisableCompression:  true,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}}
	admin := &http.Client{Timeout: 10 * time.Second}

	time.Sleep(time.Second) // let start-up work finish before the baseline
	before, err := r.sample(admin)
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	var ghostBefore json.RawMessage
	if r.o.mode == "reload" {
		if ghostBefore, err = r.breakGhost(admin); err != nil {
			return fmt.Errorf("ghost provider: %w", err)
		}
	}
	for _, s := range r.standins {
		if _, err := standinRequests(admin, s, http.MethodDelete); err != nil {
			return fmt.Errorf("resetting %s's counter: %w", s.name, err)
		}
	}
	fmt.Printf("soak: baseline: %s\n", before)

	ctx, cancel := context.WithTimeout(context.Background(), r.o.duration)
	defer cancel()
	var peak atomic.Int64
	peak.Store(before.rssKB)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // RSS peak and progress
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if kb := rssKB(r.router.cmd.Process.Pid); kb > peak.Load() {
					peak.Store(kb)
				}
				if time.Since(last) >= 30*time.Second {
					last = time.Now()
					fmt.Printf("soak: %d requests so far, %d failed\n", r.seq.Load(), atomic.LoadInt64(&r.nFailed))
				}
			}
		}
	}()
	reloads := &reloadTally{}
	if r.o.mode == "reload" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.reloadLoop(ctx, admin, reloads)
		}()
	}
	start := time.Now()
	var workers sync.WaitGroup
	for range r.o.concurrency {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for ctx.Err() == nil {
				n := r.seq.Add(1)
				if n > r.o.maxRequests {
					r.seq.Add(-1)
					return
				}
				r.one(n)
			}
		}()
	}
	workers.Wait()
	elapsed := time.Since(start)
	cancel()
	wg.Wait()
	r.client.CloseIdleConnections()

	right, _ := r.sample(admin)
	fmt.Printf("soak: load over after %s; right after: %s (peak RSS %d MB)\n", elapsed.Round(time.Second), right, peak.Load()/1024)

	var checks []string
	if r.o.mode == "reload" {
		checks = append(checks, r.checkReloads(admin, reloads, ghostBefore)...)
	}
	after, waited := r.settleDown(admin, before)
	faults, anomalies, perStandin := r.faultCounts(admin)

	fmt.Println()
	fmt.Println("== soak results")
	fmt.Printf("mode:            %s (grace_period %s)\n", r.o.mode, r.o.grace)
	fmt.Printf("duration:        %s, concurrency %d\n", elapsed.Round(time.Second), r.o.concurrency)
	fmt.Printf("requests:        %d (%.0f/s)\n", r.seq.Load(), float64(r.seq.Load())/elapsed.Seconds())
	fmt.Printf("faults injected: %d hard faults, plus ~%d streams with a stream-only fault\n", faults, anomalies)
	fmt.Printf("stand-in requests: %s\n", perStandin)
	if r.o.mode == "reload" {
		fmt.Printf("reloads:         %d ok, %d failed\n", reloads.ok.Load(), reloads.failed.Load())
	}
	fmt.Println("outcomes:")
	keys := make([]string, 0, len(r.outcomes))
	for k := range r.outcomes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("  %-58s %d\n", k, r.outcomes[k])
	}
	fmt.Printf("goroutines:      baseline %d, right after %d, after settling %d (%s)\n", before.goroutines, right.goroutines, after.goroutines, waited.Round(time.Second))
	fmt.Printf("RSS:             baseline %d MB, peak %d MB, after settling %d MB\n", before.rssKB/1024, peak.Load()/1024, after.rssKB/1024)
	fmt.Printf("heap in use:     baseline %d MB, after settling %d MB\n", before.heapInuse>>20, after.heapInuse>>20)

	// The goroutines of a finished request are all gone once idle
	// keep-alive connections have timed out; a little slack covers Caddy's
	// own background work.
	if after.goroutines > before.goroutines+15 {
		checks = append(checks, fmt.Sprintf("goroutines did not return to the baseline: %d before, %d after %s", before.goroutines, after.goroutines, waited.Round(time.Second)))
	}
	// Go returns memory to the OS lazily, so RSS gets wide slack; a leak
	// of what a request holds would grow far past it over a soak. The live
	// heap (measured after a forced GC) gets less.
	if after.rssKB > before.rssKB+160*1024 {
		checks = append(checks, fmt.Sprintf("RSS did not come back near the baseline: %d MB before, %d MB after", before.rssKB/1024, after.rssKB/1024))
	}
	if after.heapInuse > before.heapInuse+32<<20 {
		checks = append(checks, fmt.Sprintf("the live heap did not come back near the baseline: %d MB before, %d MB after", before.heapInuse>>20, after.heapInuse>>20))
	}
	if faults == 0 && r.o.mode == "soak" {
		checks = append(checks, "no fault was injected: the soak tested nothing")
	}
	for _, f := range r.failures {
		fmt.Println("  failure:", f)
	}
	fmt.Printf("failures:        %d\n", atomic.LoadInt64(&r.nFailed))
	for _, c := range checks {
		fmt.Println("check failed:", c)
	}
	if n := atomic.LoadInt64(&r.nFailed); n > 0 || len(checks) > 0 {
		return fmt.Errorf("%d failed request(s), %d failed check(s)", n, len(checks))
	}
	fmt.Println("soak: PASS")
	return nil
}

// ---------------------------------------------------------------------------
// Configs

func providersCaddyfile(standins []*standin) string {
	var b strings.Builder
	b.WriteString("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n}\n")
	for _, s := range standins {
		fmt.Fprintf(&b, "http://127.0.0.1:%d {\n\tarbstr_standin {\n\t\tname %s\n\t\tanswer %q\n", s.port, s.name, s.answer())
		for _, d := range s.directives {
			fmt.Fprintf(&b, "\t\t%s\n", d)
		}
		b.WriteString("\t}\n}\n")
	}
	return b.String()
}

// routerCaddyfile is the router's config; variant 1 differs from 0 only in
// the first provider's output rate (what a reload changes).
func (r *rig) routerCaddyfile(port, adminPort, variant int) string {
	var b strings.Builder
	grace := ""
	if r.o.grace != "" && r.o.grace != "0" {
		grace = "\tgrace_period " + r.o.grace + "\n" // none: Caddy waits for ever
	}
	fmt.Fprintf(&b, "{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n%s}\n", adminPort, grace)
	fmt.Fprintf(&b, "http://127.0.0.1:%d {\n\tarbstr {\n", port)
	for i, s := range r.standins {
		out := s.outputRate
		if i == 0 && variant == 1 {
			out += 100
		}
		fmt.Fprintf(&b, "\t\tprovider %s {\n\t\t\turl http://127.0.0.1:%d/v1\n\t\t\tapi_key soak-key-%s\n", s.name, s.port, s.name)
		if s.models != "" {
			fmt.Fprintf(&b, "\t\t\tmodels %s\n", s.models)
		}
		fmt.Fprintf(&b, "\t\t\tinput_rate %g\n\t\t\toutput_rate %g\n\t\t\tbase_fee %g\n\t\t}\n", s.inputRate, out, s.baseFee)
	}
	if r.o.mode == "reload" {
		// Streams take seconds: the timeouts must not cut healthy ones.
		b.WriteString("\t\tretry {\n\t\t\tattempts 2\n\t\t\tbackoff 10ms\n\t\t}\n")
		b.WriteString("\t\tbreaker {\n\t\t\tfailures 3\n\t\t\topen 10m\n\t\t}\n")
		b.WriteString("\t\ttimeout 10s\n\t\tfirst_event_timeout 2s\n\t\tstream_idle_timeout 5s\n")
	} else {
		// Small timeouts, so that hanging and stalling providers are given
		// up quickly, and a short open period, so that they keep being
		// probed (each probe is one more fault injected).
		b.WriteString("\t\tretry {\n\t\t\tattempts 2\n\t\t\tbackoff 5ms 10ms\n\t\t\tretry_after_max 100ms\n\t\t}\n")
		b.WriteString("\t\tbreaker {\n\t\t\tfailures 3\n\t\t\topen 300ms\n\t\t}\n")
		b.WriteString("\t\ttimeout 4s\n\t\tattempt_timeout 400ms\n\t\tfirst_event_timeout 400ms\n\t\tstream_idle_timeout 600ms\n\t\tmax_body 64KB\n")
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// ---------------------------------------------------------------------------
// One request

// soakModels: the breaker is kept per provider and model, so several
// models multiply the probes of failing providers.
var soakModels = []string{"soak-0", "soak-1", "soak-2", "soak-3", "soak-4", "soak-5", "soak-6", "soak-7"}

// doomedModels are served by failing providers only.
var doomedModels = []string{"doomed-0", "doomed-1"}

type plan struct {
	stream   bool
	badJSON  bool
	cancel   bool // a streaming client that leaves after the first event
	tooLarge bool
	body     []byte
}

func (r *rig) newPlan() plan {
	var p plan
	x := rand.Float64()
	switch {
	case r.o.mode == "soak" && x < 0.02:
		p.badJSON = true
		p.body = []byte(`{"model":"soak-0","messages":[{"role":"user","content":"unfinished`)
		return p
	case r.o.mode == "soak" && x < 0.03:
		p.tooLarge = true
		p.body = []byte(`{"model":"soak-0","messages":[{"role":"user","content":"` + strings.Repeat("x", 70<<10) + `"}]}`)
		return p
	}
	p.stream = rand.Float64() < r.o.streamShare
	p.cancel = r.o.mode == "soak" && p.stream && rand.Float64() < 0.04
	model := "rl-model"
	if r.o.mode == "soak" {
		model = soakModels[rand.IntN(len(soakModels))]
		if rand.Float64() < 0.05 {
			model = doomedModels[rand.IntN(len(doomedModels))]
		}
	}
	msg := strings.Repeat("word ", 1+rand.IntN(400))
	req := map[string]any{
		"model":    model,
		"stream":   p.stream,
		"messages": []map[string]any{{"role": "system", "content": "be brief"}, {"role": "user", "content": msg}},
	}
	if mt := []int{0, 16, 256, 4096}[rand.IntN(4)]; mt > 0 {
		req["max_tokens"] = mt
	}
	p.body, _ = json.Marshal(req)
	return p
}

func (r *rig) one(n int64) {
	p := r.newPlan()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, r.routerURL+"/v1/chat/completions", bytes.NewReader(p.body))
	req.Header.Set("Content-Type", "application/json")
	if r.o.idempotencyID {
		req.Header.Set("Idempotency-Key", fmt.Sprintf("soak-%d", n))
	}
	start := time.Now()
	resp, err := r.client.Do(req)
	if err != nil {
		r.fail(n, "no response after %s: %v", time.Since(start).Round(time.Millisecond), err)
		return
	}
	defer resp.Body.Close()
	if resp.Header.Get("x-arbstr-request-id") == "" {
		r.fail(n, "status %d without x-arbstr-request-id", resp.StatusCode)
		return
	}
	switch {
	case p.badJSON:
		r.expectError(n, resp, "bad JSON", http.StatusBadRequest)
	case p.tooLarge:
		r.expectError(n, resp, "too large", http.StatusRequestEntityTooLarge)
	case resp.StatusCode != http.StatusOK:
		if r.o.mode == "reload" {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
			r.fail(n, "status %d during reloads: %s", resp.StatusCode, body)
			return
		}
		// docs/failures-and-streaming.md "Failures, retries and fallback": 502 every candidate
		// failed, 503 every candidate open or cooling down, 504 deadline,
		// 429 every failure was a 429.
		r.expectError(n, resp, "valid request", http.StatusBadGateway, http.StatusServiceUnavailable,
			http.StatusGatewayTimeout, http.StatusTooManyRequests)
	case p.stream:
		r.checkStream(n, resp, p, cancel)
	default:
		r.checkCompletion(n, resp)
	}
}

func (r *rig) count(outcome string) {
	r.mu.Lock()
	r.outcomes[outcome]++
	r.mu.Unlock()
}

func (r *rig) fail(n int64, format string, args ...any) {
	atomic.AddInt64(&r.nFailed, 1)
	msg := fmt.Sprintf("request %d: ", n) + fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.outcomes["FAILED"]++
	if len(r.failures) < 25 {
		r.failures = append(r.failures, msg)
	}
	r.mu.Unlock()
}

// expectError checks one of arbstr's error answers: a documented status,
// the OpenAI error shape, and the headers SPEC §6 asks for.
func (r *rig) expectError(n int64, resp *http.Response, what string, statuses ...int) {
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		r.fail(n, "%s: status %d, body unreadable: %v", what, resp.StatusCode, err)
		return
	}
	ok := false
	for _, s := range statuses {
		ok = ok || resp.StatusCode == s
	}
	if !ok {
		r.fail(n, "%s: undocumented status %d: %s", what, resp.StatusCode, body)
		return
	}
	var shape struct {
		Error map[string]json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &shape) != nil || shape.Error == nil {
		r.fail(n, "%s: status %d with a body that is not an OpenAI error: %s", what, resp.StatusCode, body)
		return
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, has := shape.Error[k]; !has {
			r.fail(n, "%s: status %d, error body without %q: %s", what, resp.StatusCode, k, body)
			return
		}
	}
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusGatewayTimeout:
		if resp.Header.Get("x-should-retry") != "false" {
			r.fail(n, "%d without x-should-retry: false", resp.StatusCode)
			return
		}
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		if resp.Header.Get("Retry-After") == "" {
			r.fail(n, "%d without Retry-After", resp.StatusCode)
			return
		}
	}
	var code string
	_ = json.Unmarshal(shape.Error["code"], &code)
	r.count(fmt.Sprintf("%d %s (%s)", resp.StatusCode, code, what))
}

func (r *rig) expectedAnswer(provider string) (string, bool) {
	for _, s := range r.standins {
		if s.name == provider {
			if r.o.mode == "reload" {
				return "", true // events cycle the words; checked by count
			}
			return s.answer(), true
		}
	}
	return "", false
}

func (r *rig) checkCompletion(n int64, resp *http.Response) {
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		r.fail(n, "200 with a body cut short: %v", err)
		return
	}
	provider := resp.Header.Get("x-arbstr-provider")
	want, known := r.expectedAnswer(provider)
	if !known {
		r.fail(n, "200 from unknown provider %q", provider)
		return
	}
	var c struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(body, &c); err != nil || len(c.Choices) != 1 {
		r.fail(n, "200 from %s with a body that is not a completion: %v: %.200s", provider, err, body)
		return
	}
	if want != "" && c.Choices[0].Message.Content != want {
		r.fail(n, "200 from %s with answer %q, want %q", provider, c.Choices[0].Message.Content, want)
		return
	}
	if resp.Header.Get("x-arbstr-cost-sats") == "" {
		r.fail(n, "200 from %s without x-arbstr-cost-sats", provider)
		return
	}
	r.count("200 complete (non-streaming)")
}

// checkStream reads a committed stream to its end and classifies it.
func (r *rig) checkStream(n int64, resp *http.Response, p plan, cancel context.CancelFunc) {
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		r.fail(n, "stream answered 200 with Content-Type %q", ct)
		return
	}
	provider := resp.Header.Get("x-arbstr-provider")
	want, known := r.expectedAnswer(provider)
	if !known {
		r.fail(n, "stream from unknown provider %q", provider)
		return
	}
	var (
		content    strings.Builder
		pieces     int
		done       bool
		errorEvent bool
		afterEnd   bool // anything after [DONE] or the error event
		malformed  string
	)
	br := bufio.NewReader(resp.Body)
	var readErr error
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			if err != io.EOF || line != "" {
				readErr = err
			}
			break
		}
		line = strings.TrimSuffix(line, "\n")
		data, isData := strings.CutPrefix(line, "data: ")
		if !isData {
			continue // blank lines and the cost comment
		}
		if done || errorEvent {
			afterEnd = true
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var chunk struct {
			Error   json.RawMessage `json:"error"`
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			malformed = data
			continue
		}
		if len(chunk.Error) > 0 && string(chunk.Error) != "null" {
			errorEvent = true
			continue
		}
		for _, c := range chunk.Choices {
			if c.Delta.Content != "" {
				pieces++
				content.WriteString(c.Delta.Content)
			}
		}
		if p.cancel && pieces > 0 {
			cancel()
			r.count("client left mid-stream (intended)")
			return
		}
	}
	switch {
	case malformed != "":
		r.fail(n, "stream from %s forwarded a malformed event: %q", provider, malformed)
	case afterEnd:
		r.fail(n, "stream from %s has events after its end ([DONE] %v, error event %v)", provider, done, errorEvent)
	case done && errorEvent:
		r.fail(n, "stream from %s has both an error event and [DONE]", provider)
	case done && readErr != nil:
		r.fail(n, "stream from %s ended with [DONE] and then a read error: %v", provider, readErr)
	case done:
		if want != "" && content.String() != want {
			r.fail(n, "complete stream from %s with answer %q, want %q", provider, content.String(), want)
			return
		}
		if r.o.mode == "reload" && pieces != r.o.streamEvents {
			r.fail(n, "complete stream from %s with %d content events, want %d", provider, pieces, r.o.streamEvents)
			return
		}
		r.count("200 stream complete with [DONE]")
	case errorEvent && readErr != nil:
		if r.o.mode == "reload" {
			r.fail(n, "stream from %s broke during reloads (error event)", provider)
			return
		}
		r.count("200 stream broken: error event + aborted connection")
	case errorEvent:
		r.fail(n, "stream from %s: error event but the connection ended cleanly", provider)
	case readErr != nil:
		if r.o.mode == "reload" && r.o.allowCut {
			r.count("200 stream cut by the reload: aborted connection")
			return
		}
		if r.o.mode == "reload" {
			r.fail(n, "stream from %s cut during reloads after %d pieces: %v", provider, pieces, readErr)
			return
		}
		r.count("200 stream broken: aborted connection only")
	default:
		r.fail(n, "stream from %s ended cleanly without [DONE] nor error event after %d pieces: truncation passes for success", provider, pieces)
	}
}

// ---------------------------------------------------------------------------
// Reloads

type reloadTally struct{ ok, failed atomic.Int64 }

// reloadLoop alternates the two router configs, as `caddy reload` would.
func (r *rig) reloadLoop(ctx context.Context, admin *http.Client, tally *reloadTally) {
	tick := time.NewTicker(r.o.reloadEvery)
	defer tick.Stop()
	variant := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		variant = 1 - variant
		cfg, err := os.ReadFile(r.routerFiles[variant])
		if err != nil {
			tally.failed.Add(1)
			continue
		}
		req, _ := http.NewRequest(http.MethodPost, r.adminURL+"/load", bytes.NewReader(cfg))
		req.Header.Set("Content-Type", "text/caddyfile")
		resp, err := admin.Do(req)
		if err != nil {
			tally.failed.Add(1)
			fmt.Println("soak: reload failed:", err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			tally.failed.Add(1)
			fmt.Printf("soak: reload answered %d: %s\n", resp.StatusCode, body)
			continue
		}
		tally.ok.Add(1)
	}
}

// breakGhost sends the ghost provider failing requests (before the load),
// and returns its health as the admin API shows it.
func (r *rig) breakGhost(admin *http.Client) (json.RawMessage, error) {
	for range 2 {
		req, _ := http.NewRequest(http.MethodPost, r.routerURL+"/v1/chat/completions",
			strings.NewReader(`{"model":"ghost-model","messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := r.client.Do(req)
		if err != nil {
			return nil, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway && resp.StatusCode != http.StatusServiceUnavailable {
			return nil, fmt.Errorf("ghost-model answered %d, want 502 or 503", resp.StatusCode)
		}
	}
	h, err := r.providerHealth(admin, "rl-ghost")
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(h, []byte(`"failures":`)) || bytes.Contains(h, []byte(`"failures":0`)) {
		return nil, fmt.Errorf("the ghost provider has no failures recorded: %s", h)
	}
	fmt.Printf("soak: rl-ghost health before the reloads: %s\n", h)
	return h, nil
}

// providerHealth is a provider's "health" array from GET /arbstr/providers.
func (r *rig) providerHealth(admin *http.Client, name string) (json.RawMessage, error) {
	list, err := r.providers(admin)
	if err != nil {
		return nil, err
	}
	for _, p := range list {
		if p.Name == name {
			return p.Health, nil
		}
	}
	return nil, fmt.Errorf("provider %s is not in the admin API", name)
}

type adminProvider struct {
	Name       string          `json:"name"`
	OutputRate float64         `json:"output_rate"`
	Health     json.RawMessage `json:"health"`
}

func (r *rig) providers(admin *http.Client) ([]adminProvider, error) {
	resp, err := admin.Get(r.adminURL + "/arbstr/providers")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /arbstr/providers: %d", resp.StatusCode)
	}
	var list []adminProvider
	err = json.NewDecoder(resp.Body).Decode(&list)
	return list, err
}

func (r *rig) checkReloads(admin *http.Client, tally *reloadTally, ghostBefore json.RawMessage) []string {
	var checks []string
	if tally.ok.Load() == 0 {
		checks = append(checks, "no reload happened")
	}
	if tally.failed.Load() > 0 {
		checks = append(checks, fmt.Sprintf("%d reload(s) failed", tally.failed.Load()))
	}
	ghostAfter, err := r.providerHealth(admin, "rl-ghost")
	switch {
	case err != nil:
		checks = append(checks, err.Error())
	case !bytes.Equal(ghostBefore, ghostAfter):
		checks = append(checks, fmt.Sprintf("rl-ghost's health changed across reloads:\n  before %s\n  after  %s", ghostBefore, ghostAfter))
	default:
		fmt.Printf("soak: rl-ghost health after %d reloads: unchanged\n", tally.ok.Load())
	}
	// The running config must be the last one loaded.
	list, err := r.providers(admin)
	if err == nil {
		want := r.standins[0].outputRate
		if tally.ok.Load()%2 == 1 {
			want += 100
		}
		for _, p := range list {
			if p.Name == r.standins[0].name && p.OutputRate != want {
				checks = append(checks, fmt.Sprintf("after the reloads %s has output_rate %g, want %g", p.Name, p.OutputRate, want))
			}
		}
	}
	return checks
}

// ---------------------------------------------------------------------------
// Process state

type sample struct {
	goroutines int
	rssKB      int64
	heapInuse  uint64
}

func (s sample) String() string {
	return fmt.Sprintf("%d goroutines, RSS %d MB, heap in use %d MB", s.goroutines, s.rssKB/1024, s.heapInuse>>20)
}

func (r *rig) sample(admin *http.Client) (sample, error) {
	var s sample
	resp, err := admin.Get(r.adminURL + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return s, err
	}
	first, _ := bufio.NewReader(resp.Body).ReadString('\n')
	resp.Body.Close()
	// "goroutine profile: total 57"
	if i := strings.LastIndexByte(strings.TrimSpace(first), ' '); i >= 0 {
		s.goroutines, err = strconv.Atoi(strings.TrimSpace(first)[i+1:])
	}
	if err != nil || s.goroutines == 0 {
		return s, fmt.Errorf("goroutine profile: %q: %v", first, err)
	}
	s.rssKB = rssKB(r.router.cmd.Process.Pid)
	// The heap profile with gc=1 runs a garbage collection first, so that
	// the heap figure is live data, not garbage waiting for the next GC.
	if resp, err := admin.Get(r.adminURL + "/debug/pprof/heap?gc=1"); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if resp, err := admin.Get(r.adminURL + "/debug/vars"); err == nil {
		var vars struct {
			Memstats struct {
				HeapInuse uint64 `json:"HeapInuse"`
			} `json:"memstats"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&vars)
		resp.Body.Close()
		s.heapInuse = vars.Memstats.HeapInuse
	}
	return s, nil
}

// settleDown waits for the router's goroutines to come back near the
// baseline: idle upstream connections close after the transport's idle
// timeout (90s), taking their goroutines with them.
func (r *rig) settleDown(admin *http.Client, before sample) (sample, time.Duration) {
	start := time.Now()
	var s sample
	for {
		s, _ = r.sample(admin)
		if s.goroutines <= before.goroutines+5 || time.Since(start) >= r.o.settle {
			return s, time.Since(start)
		}
		time.Sleep(2 * time.Second)
	}
}

func rssKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// faultCounts sums the chat requests of stand-ins that fault on each one,
// plus the failing part of fail_first; anomalies counts (estimates, from
// the streaming share) the requests of stream-only faults; parts lists
// every stand-in's count.
func (r *rig) faultCounts(admin *http.Client) (faults, anomalies int64, parts string) {
	var list []string
	for _, s := range r.standins {
		n, err := standinRequests(admin, s, http.MethodGet)
		if err != nil {
			list = append(list, s.name+"=?")
			continue
		}
		list = append(list, fmt.Sprintf("%s=%d", s.name, n))
		switch {
		case s.faulty:
			faults += n
		case strings.Contains(strings.Join(s.directives, " "), "fail_first"):
			faults += min(n, 500)
		case s.streamOnly:
			anomalies += int64(float64(n) * r.o.streamShare)
		}
	}
	return faults, anomalies, strings.Join(list, " ")
}

func standinRequests(c *http.Client, s *standin, method string) (int64, error) {
	req, _ := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d/v1/standin/requests", s.port), nil)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var v struct {
		Requests int64 `json:"requests"`
	}
	err = json.NewDecoder(resp.Body).Decode(&v)
	return v.Requests, err
}

// ---------------------------------------------------------------------------
// Processes

type process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startCaddy(bin, config, logFile string) (*process, error) {
	out, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", config, "--adapter", "caddyfile")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		out.Close()
		close(p.done)
	}()
	return p, nil
}

// stop asks Caddy to exit (SIGTERM: graceful), then kills it if it lingers.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func waitHTTP(url string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready: %v", url, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
