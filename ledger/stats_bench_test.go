package ledger

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/arbstr/caddy-arbstr/internal/pgtest"
)

// BenchmarkStats times GET /arbstr/stats's queries over a filled ledger:
// totals and groups by provider, over all rows and over the last day.
// Rows: ARBSTR_BENCH_ROWS (default 100000), spread evenly over 30 days.
// Run: ARBSTR_BENCH_ROWS=1000000 go test -run '^$' -bench Stats -benchtime 3x ./ledger/
func BenchmarkStats(b *testing.B) {
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("ARBSTR_BENCH_ROWS")); err == nil && v > 0 {
		n = v
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
					Provider: providers[i%4], Model: "m", Outcome: "ok", PromptTokens: 100, CompletionTokens: 50,
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
