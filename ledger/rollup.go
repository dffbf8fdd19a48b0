package ledger

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Hourly and daily rollups (tables requests_hourly, requests_daily) let
// stats over millions of rows answer in milliseconds: Insert adds every new
// row to its hour's and its day's rollup in the same transaction, so
// rollups and rows always agree, and Stats reads daily rollups for the
// whole days of a range, hourly ones for the other whole hours and rows
// only for the partial hours at its edges.
//
// A rollup row is keyed by its hour and every column a Filter or a group
// may name, so that any filter and grouping can be answered from rollups.

// rollupKeyColumns are the text columns of a rollup's key, beside its
// hour (the column time, the hour's start in microseconds, as in requests).
var rollupKeyColumns = []string{"provider", "model", "policy", "client", "endpoint", "outcome", "instance"}

// hourMicros and dayMicros are an hour and a day in the unit of the time
// columns.
const (
	hourMicros = 3600_000_000
	dayMicros  = 24 * hourMicros
)

// rollupTable is a table of rollups and the period each of its rows sums.
type rollupTable struct {
	name   string
	period int64
}

// The rollup tables, finest first. Their names are the only table names
// rollup queries are built with.
var (
	hourlyRollups = rollupTable{"requests_hourly", hourMicros}
	dailyRollups  = rollupTable{"requests_daily", dayMicros}
	rollupTables  = []rollupTable{hourlyRollups, dailyRollups}
)

// latencyEdges are the upper bounds (exclusive, in ms) of the latency
// histogram's buckets: bucket 0 holds 0 ms, bucket i holds
// [latencyEdges[i-1], latencyEdges[i]), the last bucket everything from
// 4194304 ms (70 min) up. Past 10 ms the edges are 2^(k/3) ms: each bucket
// is 26 % wider than the one before it, so a percentile reported as the
// bucket's geometric middle is within 12.5 % of the exact value. The columns
// h00…h67 of requests_hourly hold the counts; changing the edges needs a
// migration that rebuilds them (TestRollupMigrationMatchesBuckets checks).
var latencyEdges = [...]int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 16, 20, 25, 32, 40, 51, 64, 81, 102, 128, 161,
	203, 256, 323, 406, 512, 645, 813, 1024, 1290, 1625, 2048, 2580, 3251, 4096, 5161, 6502, 8192, 10321, 13004, 16384,
	20643, 26008, 32768, 41285, 52016, 65536, 82570, 104032, 131072, 165140, 208064, 262144, 330281, 416128, 524288,
	660561, 832255, 1048576, 1321123, 1664511, 2097152, 2642246, 3329021, 4194304}

// latencyBuckets is the number of histogram buckets.
const latencyBuckets = len(latencyEdges) + 1

// histogram counts requests per latency bucket.
type histogram [latencyBuckets]int64

// latencyBucket is the bucket a latency falls in.
func latencyBucket(ms int64) int {
	return sort.Search(len(latencyEdges), func(i int) bool { return ms < latencyEdges[i] })
}

// bucketValue is the latency reported for a bucket: its geometric middle,
// or its lower edge when it holds one value (or is the open last one).
func bucketValue(b int) int64 {
	if b == 0 {
		return 0
	}
	lo := latencyEdges[b-1]
	if b == len(latencyEdges) {
		return lo
	}
	hi := latencyEdges[b]
	return min(max(int64(math.Round(math.Sqrt(float64(lo)*float64(hi)))), lo), hi-1)
}

// percentile is the nearest-rank p-th percentile of the histogram, as the
// value of the bucket that holds it.
func (h *histogram) percentile(p int64) int64 {
	var n int64
	for _, c := range h {
		n += c
	}
	if n == 0 {
		return 0
	}
	rank := (n*p + 99) / 100
	var seen int64
	for b, c := range h {
		if seen += c; seen >= rank {
			return bucketValue(b)
		}
	}
	return bucketValue(latencyBuckets - 1)
}

// histColumns lists the bucket columns: h00, h01, …
func histColumns() []string {
	cols := make([]string, latencyBuckets)
	for i := range cols {
		cols[i] = fmt.Sprintf("h%02d", i)
	}
	return cols
}

// latencyBucketSQL is the SQL expression of latency_ms's bucket, the same
// as latencyBucket.
func latencyBucketSQL() string {
	var b strings.Builder
	b.WriteString("CASE")
	for i, e := range latencyEdges {
		fmt.Fprintf(&b, " WHEN latency_ms < %d THEN %d", e, i)
	}
	fmt.Fprintf(&b, " ELSE %d END", len(latencyEdges))
	return b.String()
}

// rollupKey is the key of one rollup row; start is its period's start.
type rollupKey struct {
	start                                                        int64
	provider, model, policy, client, endpoint, outcome, instance string
}

// rollup is the sums of one rollup row.
type rollup struct {
	requests, promptTokens, completionTokens int64
	cost, dearest                            float64
	hist                                     histogram
}

// rollupsOf sums rows by period and key, the keys sorted so that
// concurrent writers (several Caddy instances on one PostgreSQL) lock
// rollup rows in the same order and never deadlock.
func rollupsOf(rows []Row, period int64) ([]rollupKey, map[rollupKey]*rollup) {
	sums := map[rollupKey]*rollup{}
	var keys []rollupKey
	for _, r := range rows {
		us := r.Time.UnixMicro()
		k := rollupKey{start: us - mod(us, period), provider: r.Provider, model: r.Model, policy: r.Policy,
			client: r.Client, endpoint: endpointOf(r), outcome: r.Outcome, instance: r.Instance}
		s := sums[k]
		if s == nil {
			s = &rollup{}
			sums[k] = s
			keys = append(keys, k)
		}
		s.requests++
		s.promptTokens += r.PromptTokens
		s.completionTokens += r.CompletionTokens
		s.cost += r.CostSats
		s.dearest += r.DearestCostSats
		s.hist[latencyBucket(r.LatencyMS)]++
	}
	slices.SortFunc(keys, func(a, b rollupKey) int {
		return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(a.provider, b.provider), cmp.Compare(a.model, b.model),
			cmp.Compare(a.policy, b.policy), cmp.Compare(a.client, b.client), cmp.Compare(a.endpoint, b.endpoint),
			cmp.Compare(a.outcome, b.outcome), cmp.Compare(a.instance, b.instance))
	})
	return keys, sums
}

// mod is the floored remainder, so that times before 1970 fall in the hour
// that starts before them, as in SQL's (time / h) * h for positive times.
func mod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}

// rollupColumns are the columns an upsert writes, in order.
var rollupColumns = "time, " + strings.Join(rollupKeyColumns, ", ") +
	", requests, prompt_tokens, completion_tokens, cost_sats, dearest_cost_sats, " + strings.Join(histColumns(), ", ")

const rollupColumnCount = 1 + 7 + 5 + latencyBuckets

// rollupSums are the columns of a rollup that are sums.
var rollupSums = append([]string{"requests", "prompt_tokens", "completion_tokens", "cost_sats", "dearest_cost_sats"}, histColumns()...)

// rollupConflict adds a rollup's sums to the row its key already has in
// table. The whole statement is one atomic INSERT … ON CONFLICT in both
// databases, so instances writing one hour at once all count.
func rollupConflict(table string) string {
	var b strings.Builder
	b.WriteString(" ON CONFLICT (time, " + strings.Join(rollupKeyColumns, ", ") + ") DO UPDATE SET ")
	for i, c := range rollupSums {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s = %s.%s + excluded.%s", c, table, c, c)
	}
	return b.String()
}

func rollupArgs(k rollupKey, s *rollup) []any {
	args := make([]any, 0, rollupColumnCount)
	args = append(args, k.start, k.provider, k.model, k.policy, k.client, k.endpoint, k.outcome, k.instance,
		s.requests, s.promptTokens, s.completionTokens, s.cost, s.dearest)
	for _, c := range s.hist {
		args = append(args, c)
	}
	return args
}

// rollupBatch bounds the rollup rows of one PostgreSQL upsert statement
// (81 parameters each; PostgreSQL takes at most 65535).
const rollupBatch = 256

// rollupUpsert is the upsert of n rollup rows into table, its parameters
// written ? or, for PostgreSQL, $1, $2, … (it is long: not rebound on
// every batch).
func rollupUpsert(table string, n int, numbered bool) string {
	var b strings.Builder
	b.WriteString("INSERT INTO " + table + " (" + rollupColumns + ") VALUES ")
	p := 0
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		for j := range rollupColumnCount {
			if j > 0 {
				b.WriteByte(',')
			}
			p++
			if numbered {
				b.WriteByte('$')
				b.WriteString(strconv.Itoa(p))
			} else {
				b.WriteByte('?')
			}
		}
		b.WriteByte(')')
	}
	b.WriteString(rollupConflict(table))
	return b.String()
}

// upsertRollupsSQLite adds the rows a batch inserted to their hours' and
// days' rollups: one upsert per period and key, however many rows share
// it, with one prepared statement per table (SQLite parses in this
// process's CPU).
func (s *SQLStore) upsertRollupsSQLite(ctx context.Context, tx *sql.Tx, rows []Row) error {
	for _, table := range rollupTables {
		keys, sums := rollupsOf(rows, table.period)
		stmt, err := s.txStmt(ctx, tx, rollupUpsert(table.name, 1, false))
		if err != nil {
			return err
		}
		for _, k := range keys {
			if _, err := stmt.ExecContext(ctx, rollupArgs(k, sums[k])...); err != nil {
				return err
			}
		}
	}
	return nil
}

// rebuildDaySQL recomputes the daily rollups of the day that starts at
// the first parameter from the hourly rollups of [second, third): after
// retention has cut into a day, its daily rollups sum the hours it kept.
var rebuildDaySQL = func() string {
	keys := strings.Join(rollupKeyColumns, ", ")
	sums := make([]string, len(rollupSums))
	set := make([]string, len(rollupSums))
	for i, c := range rollupSums {
		sums[i] = "SUM(" + c + ")"
		set[i] = c + " = excluded." + c
	}
	return "INSERT INTO " + dailyRollups.name + " (" + rollupColumns + ") SELECT CAST(? AS BIGINT), " + keys + ", " +
		strings.Join(sums, ", ") + " FROM " + hourlyRollups.name + " WHERE time >= ? AND time < ? GROUP BY " + keys +
		" ON CONFLICT (time, " + keys + ") DO UPDATE SET " + strings.Join(set, ", ")
}()
