package ledger

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/arbstr/caddy-arbstr/internal/pgtest"
)

// BenchmarkStats times GET /arbstr/stats's queries over a filled ledger:
// totals and groups by provider, over all rows and over the last day; and
// GET /arbstr/requests's first page filtered by provider and by a client
// no row has.
// Rows: ARBSTR_BENCH_ROWS (default 100000), spread evenly over 30 days,
// from 4 providers and ARBSTR_BENCH_CLIENTS clients (default 1): each hour
// has 4 × clients rollup rows.
// Run: ARBSTR_BENCH_ROWS=1000000 go test -run '^$' -bench Stats -benchtime 3x ./ledger/
func BenchmarkStats(b *testing.B) {
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("ARBSTR_BENCH_ROWS")); err == nil && v > 0 {
		n = v
	}
	clients := 1
	if v, err := strconv.Atoi(os.Getenv("ARBSTR_BENCH_CLIENTS")); err == nil && v > 0 {
		clients = v
	}
	for _, driver := range []string{DriverSQLite, DriverPostgres} {
		b.Run(driver, func(b *testing.B) {
			s := benchStore(b, driver)
			now := time.Now()
			providers := []string{"alpha", "beta", "gamma", "delta"}
			batch := make([]Row, 0, 5000)
			for i := range n {
				batch = append(batch, Row{ID: fmt.Sprintf("r%08d", i), Time: now.Add(-time.Duration(float64(i) / float64(n) * float64(30*24*time.Hour))),
					Provider: providers[i%4], Client: "c" + strconv.Itoa(i/4%clients), Model: "m", Outcome: "ok", PromptTokens: 100, CompletionTokens: 50,
					CostSats: 1, DearestCostSats: 2, LatencyMS: int64(i % 3000)})
				if len(batch) == cap(batch) || i == n-1 {
					if err := s.Insert(context.Background(), batch); err != nil {
						b.Fatal(err)
					}
					batch = batch[:0]
				}
			}
			for _, c := range []struct {
				name  string
				since time.Time
			}{{"all", time.Time{}}, {"last24h", now.Add(-24 * time.Hour)}} {
				b.Run(c.name, func(b *testing.B) {
					for b.Loop() {
						st, err := s.Stats(context.Background(), StatsQuery{GroupBy: []string{"provider"}, Filter: Filter{Since: c.since}})
						if err != nil || st.Total.Requests == 0 {
							b.Fatal(err, st.Total)
						}
					}
				})
			}
			// GET /arbstr/requests, newest first: a page of a provider with
			// a quarter of the rows, and a filter no row matches, which reads
			// every row (no index serves it; docs/ledger.md).
			for _, c := range []struct {
				name, column, value string
				want                int
			}{{"requests-provider", "provider", "beta", DefaultLimit}, {"requests-unmatched", "client", "nobody", 0}} {
				b.Run(c.name, func(b *testing.B) {
					for b.Loop() {
						page, err := s.Requests(context.Background(), RequestsQuery{Filter: Filter{Match: map[string]string{c.column: c.value}}})
						if err != nil || len(page.Rows) != min(c.want, n) {
							b.Fatal(err, len(page.Rows))
						}
					}
				})
			}
		})
	}
}

// BenchmarkInsert times the writer's work per row: batches of insertBatch
// rows or ARBSTR_BENCH_BATCH (what the writer sends under load) into a
// fresh store, rollups included.
// Run: go test -run '^$' -bench Insert ./ledger/
func BenchmarkInsert(b *testing.B) {
	for _, driver := range []string{DriverSQLite, DriverPostgres} {
		b.Run(driver, func(b *testing.B) {
			s := benchStore(b, driver)
			now := time.Now()
			batch := make([]Row, benchBatch())
			n := 0
			cpu0, server0 := cpuTime(), postgresCPU()
			for b.Loop() {
				for i := range batch {
					n++
					// Request ids are random: inserts land all over the id index.
					batch[i] = Row{ID: "arb-" + strconv.FormatUint(uint64(n)*0x9E3779B97F4A7C15, 16), Time: now.Add(time.Duration(n) * time.Millisecond), Instance: "i1",
						Provider: "cheap", Model: "bench-model", UpstreamModel: "bench-model", Outcome: "ok", Status: 200, Attempts: 1,
						PromptTokens: 20, CompletionTokens: 9, CostSats: 0.0038, DearestCostSats: 0.05, LatencyMS: int64(n % 7)}
				}
				if err := s.Insert(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/row")
			// CPU time of this process: SQLite's work is Caddy's CPU, which
			// the bench's requests compete for; PostgreSQL's is not counted.
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(n), "cpu-ns/row")
			if driver == DriverPostgres {
				// The server's work: on a machine it shares with Caddy it
				// is taken from the requests as much as the client's.
				b.ReportMetric(float64((postgresCPU()-server0).Nanoseconds())/float64(n), "server-cpu-ns/row")
			}
		})
	}
}

// cpuTime is the user and system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchStore is a fresh store of driver, closed when the benchmark ends.
func benchStore(b *testing.B, driver string) *SQLStore {
	dsn := filepath.Join(b.TempDir(), "bench.db")
	if driver == DriverPostgres {
		dsn = pgtest.Database(b)
	}
	s, err := Open(context.Background(), driver, dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// postgresCPU is the user and system CPU time of this machine's PostgreSQL
// processes (every backend and the background writers), read from /proc;
// 0 where there is none to read.
func postgresCPU() time.Duration {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var ticks int64
	for _, p := range stats {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid … utime stime: fields 14 and 15, counted
		// after the command name, which may hold spaces.
		s := string(raw)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open || s[open+1:end] != "postgres" {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 13 {
			continue
		}
		utime, _ := strconv.ParseInt(f[11], 10, 64)
		stime, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += utime + stime
	}
	const clockTicks = 100 // USER_HZ on Linux
	return time.Duration(ticks) * time.Second / clockTicks
}

func benchBatch() int {
	if v, err := strconv.Atoi(os.Getenv("ARBSTR_BENCH_BATCH")); err == nil && v > 0 {
		return v
	}
	return insertBatch
}
