package ledger

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/arbstr/caddy-arbstr/internal/pgtest"
)

// BenchmarkStats times GET /arbstr/stats's queries over a filled ledger:
// totals and groups by provider, over all rows and over the last day.
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
			dsn := filepath.Join(b.TempDir(), "bench.db")
			if driver == DriverPostgres {
				dsn = pgtest.Database(b)
			}
			s, err := Open(context.Background(), driver, dsn)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
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
		})
	}
}

// BenchmarkInsert times the writer's work per row: batches of 256 rows
// (what the writer sends under load) into a fresh store, rollups included.
// Run: go test -run '^$' -bench Insert ./ledger/
func BenchmarkInsert(b *testing.B) {
	for _, driver := range []string{DriverSQLite, DriverPostgres} {
		b.Run(driver, func(b *testing.B) {
			dsn := filepath.Join(b.TempDir(), "bench.db")
			if driver == DriverPostgres {
				dsn = pgtest.Database(b)
			}
			s, err := Open(context.Background(), driver, dsn)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			now := time.Now()
			batch := make([]Row, benchBatch())
			n := 0
			cpu0 := cpuTime()
			for b.Loop() {
				for i := range batch {
					n++
					// Request ids are random: inserts land all over the id index.
					batch[i] = Row{ID: fmt.Sprintf("arb-%016x", uint64(n)*0x9E3779B97F4A7C15), Time: now.Add(time.Duration(n) * time.Millisecond), Instance: "i1",
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

func benchBatch() int {
	if v, err := strconv.Atoi(os.Getenv("ARBSTR_BENCH_BATCH")); err == nil && v > 0 {
		return v
	}
	return insertBatch
}
