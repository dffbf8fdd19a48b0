package ledger

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// rowColumns are the columns Insert writes and Requests reads, in order.
const rowColumns = "id, time, instance, client, policy, model, provider, upstream_model, stream, status, outcome, " +
	"attempts, retries, prompt_tokens, completion_tokens, cost_sats, dearest_cost_sats, latency_ms, first_event_ms, " +
	"error_code, continuations, complexity, tier, endpoint"

const rowColumnCount = 24

// insertBatch is the most rows the writer inserts in one transaction.
// Each transaction has a fixed cost (in PostgreSQL's case, in both
// processes: about 1 ms of CPU); under load, a batch fills within the
// linger, and 1024 rather than 256 rows a batch took the writer's CPU per
// row from 13 µs to 8 µs (PostgreSQL, client and server) and from 9 µs to
// 8 µs (SQLite): go test -run '^$' -bench Insert ./ledger/ with
// ARBSTR_BENCH_BATCH=256.
const insertBatch = 1024

// Insert writes rows in one transaction, with their hourly and daily
// rollups; rows already stored (the same time and id) are skipped and not
// counted again.
func (s *SQLStore) Insert(ctx context.Context, rows []Row) error {
	if len(rows) == 0 {
		return nil
	}
	if err := s.ensureMigrated(ctx); err != nil {
		return err
	}
	rows = validText(rows)
	if s.driver == DriverPostgres {
		return s.insertPostgres(ctx, rows)
	}
	return s.insertSQLite(ctx, rows)
}

// validText returns rows whose strings are valid UTF-8 without NUL bytes,
// which PostgreSQL refuses in text: a client id taken from a header may
// hold either, and one such row must not keep its batch out for good.
// Such bytes become U+FFFD, in both stores alike. rows itself comes back
// when every string is clean, as it nearly always is.
func validText(rows []Row) []Row {
	var out []Row
	for i := range rows {
		r := rows[i]
		changed := false
		for _, p := range []*string{&r.ID, &r.Instance, &r.Client, &r.Policy, &r.Model, &r.Provider, &r.UpstreamModel,
			&r.Outcome, &r.Retries, &r.ErrorCode, &r.Tier, &r.Endpoint} {
			if utf8.ValidString(*p) && strings.IndexByte(*p, 0) < 0 {
				continue
			}
			*p = strings.ReplaceAll(strings.ToValidUTF8(*p, "\uFFFD"), "\x00", "\uFFFD")
			changed = true
		}
		if changed {
			if out == nil {
				out = slices.Clone(rows)
			}
			out[i] = r
		}
	}
	if out == nil {
		return rows
	}
	return out
}

// insertSQLite writes rows in chunks; when a chunk meets a row stored
// already (a retried batch) it starts over row by row, which tells which
// ones went in.
func (s *SQLStore) insertSQLite(ctx context.Context, rows []Row) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	inserted, err := s.insertChunks(ctx, tx, rows)
	if errors.Is(err, errChunkSkipped) {
		tx.Rollback()
		if tx, err = s.db.BeginTx(ctx, nil); err != nil {
			return err
		}
		defer tx.Rollback()
		inserted, err = s.insertEach(ctx, tx, rows)
	}
	if err != nil {
		return err
	}
	if err := s.upsertRollupsSQLite(ctx, tx, inserted); err != nil {
		return err
	}
	return tx.Commit()
}

// insertRow inserts one row, skipping one already stored.
var insertRow = "INSERT INTO requests (" + rowColumns + ") VALUES (?" + strings.Repeat(",?", rowColumnCount-1) + ") ON CONFLICT (time, id) DO NOTHING"

// sqliteChunk is how many rows one SQLite insert statement writes. SQLite
// runs in this process: a prepared statement of a few rows spreads the
// per-statement work (driver call, bindings reset, VDBE start and halt)
// over them, while a statement as long as a batch would cost more to
// parse than it saves.
const sqliteChunk = 32

// errChunkSkipped says a chunk insert skipped rows stored already.
var errChunkSkipped = errors.New("ledger: rows of the batch were stored already")

// insertChunks writes rows sqliteChunk at a time with one prepared
// statement, the rest one by one. A chunk reports only how many rows it
// wrote, so when one skipped a row (a retried batch) it returns
// errChunkSkipped and the caller redoes the batch with insertEach.
func (s *SQLStore) insertChunks(ctx context.Context, tx *sql.Tx, rows []Row) ([]Row, error) {
	full := len(rows) - len(rows)%sqliteChunk
	if full > 0 {
		stmt, err := s.txStmt(ctx, tx, insertChunk)
		if err != nil {
			return nil, err
		}
		args := make([]any, 0, sqliteChunk*rowColumnCount)
		for start := 0; start < full; start += sqliteChunk {
			args = args[:0]
			for _, r := range rows[start : start+sqliteChunk] {
				args = appendRowArgs(args, r)
			}
			res, err := stmt.ExecContext(ctx, args...)
			if err != nil {
				return nil, err
			}
			if n, err := res.RowsAffected(); err != nil {
				return nil, err
			} else if n != sqliteChunk {
				return nil, errChunkSkipped
			}
		}
	}
	rest, err := s.insertEach(ctx, tx, rows[full:])
	if err != nil {
		return nil, err
	}
	if len(rest) != len(rows)-full {
		return nil, errChunkSkipped
	}
	return rows, nil
}

// insertChunk inserts sqliteChunk rows, skipping those already stored.
var insertChunk = "INSERT INTO requests (" + rowColumns + ") VALUES " +
	strings.TrimSuffix(strings.Repeat("(?"+strings.Repeat(",?", rowColumnCount-1)+"),", sqliteChunk), ",") +
	" ON CONFLICT (time, id) DO NOTHING"

// insertEach runs the one-row insert for every row with one prepared
// statement and returns the rows it wrote.
func (s *SQLStore) insertEach(ctx context.Context, tx *sql.Tx, rows []Row) ([]Row, error) {
	stmt, err := s.txStmt(ctx, tx, s.Rebind(insertRow))
	if err != nil {
		return nil, err
	}
	inserted := make([]Row, 0, len(rows))
	for _, r := range rows {
		res, err := stmt.ExecContext(ctx, rowArgs(r)...)
		if err != nil {
			return nil, err
		}
		if n, err := res.RowsAffected(); err != nil {
			return nil, err
		} else if n == 1 {
			inserted = append(inserted, r)
		}
	}
	return inserted, nil
}

func rowArgs(r Row) []any {
	return appendRowArgs(make([]any, 0, rowColumnCount), r)
}

// appendRowArgs appends a row's values in the order of rowColumns.
func appendRowArgs(args []any, r Row) []any {
	var firstEvent, complexity any
	if r.FirstEventMS != nil {
		firstEvent = *r.FirstEventMS
	}
	if r.Complexity != nil {
		complexity = *r.Complexity
	}
	return append(args, r.ID, r.Time.UnixMicro(), r.Instance, r.Client, r.Policy, r.Model, r.Provider, r.UpstreamModel,
		r.Stream, r.Status, r.Outcome, r.Attempts, r.Retries, r.PromptTokens, r.CompletionTokens, r.CostSats,
		r.DearestCostSats, r.LatencyMS, firstEvent, r.ErrorCode, r.Continuations, complexity, r.Tier, endpointOf(r))
}

// DefaultEndpoint is the endpoint of a row that names none: rows written
// before the column existed were all chat requests.
const DefaultEndpoint = "chat"

func endpointOf(r Row) string {
	if r.Endpoint == "" {
		return DefaultEndpoint
	}
	return r.Endpoint
}

func scanRow(rows *sql.Rows) (Row, error) {
	var r Row
	var us int64
	var firstEvent sql.NullInt64
	var complexity sql.NullFloat64
	err := rows.Scan(&r.ID, &us, &r.Instance, &r.Client, &r.Policy, &r.Model, &r.Provider, &r.UpstreamModel,
		&r.Stream, &r.Status, &r.Outcome, &r.Attempts, &r.Retries, &r.PromptTokens, &r.CompletionTokens, &r.CostSats,
		&r.DearestCostSats, &r.LatencyMS, &firstEvent, &r.ErrorCode, &r.Continuations, &complexity, &r.Tier, &r.Endpoint)
	if err != nil {
		return r, err
	}
	r.Time = time.UnixMicro(us).UTC()
	if firstEvent.Valid {
		r.FirstEventMS = &firstEvent.Int64
	}
	if complexity.Valid {
		r.Complexity = &complexity.Float64
	}
	return r, nil
}

// where builds the WHERE clause of a filter. Column names come only from
// FilterColumns; values are always parameters.
func (f Filter) where() (string, []any, error) {
	var conds []string
	var args []any
	if !f.Since.IsZero() {
		conds = append(conds, "time >= ?")
		args = append(args, f.Since.UnixMicro())
	}
	if !f.Until.IsZero() {
		conds = append(conds, "time < ?")
		args = append(args, f.Until.UnixMicro())
	}
	keys := make([]string, 0, len(f.Match))
	for k := range f.Match {
		keys = append(keys, k)
	}
	slices.Sort(keys) // a stable statement text, for the statement cache
	for _, k := range keys {
		if !slices.Contains(FilterColumns, k) {
			return "", nil, fmt.Errorf("%w: cannot filter on %q; use one of %s", ErrBadQuery, k, strings.Join(FilterColumns, ", "))
		}
		conds = append(conds, k+" = ?")
		args = append(args, f.Match[k])
	}
	if len(conds) == 0 {
		return "", nil, nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args, nil
}

// groupExpr is the SQL expression of a group key, from a fixed table.
func groupExpr(key string) (string, bool) {
	switch key {
	case "provider", "model", "policy", "client", "endpoint":
		return key, true
	case "day":
		return "(time / 86400000000) * 86400000000", true
	case "hour":
		return "(time / 3600000000) * 3600000000", true
	}
	return "", false
}

// Stats sums the rows a query selects. Whole hours of the range come from
// the hourly rollups, the partial hours at its edges from the rows
// themselves; both are merged here, so counts, tokens and costs are the
// rows' sums and the percentiles come from the merged latency histogram.
func (s *SQLStore) Stats(ctx context.Context, q StatsQuery) (Stats, error) {
	out := Stats{Groups: []Group{}}
	var exprs []string
	seen := map[string]bool{}
	for _, k := range q.GroupBy {
		e, ok := groupExpr(k)
		if !ok {
			return out, fmt.Errorf("%w: cannot group by %q; use any of %s", ErrBadQuery, k, strings.Join(GroupColumns, ", "))
		}
		if seen[k] {
			return out, fmt.Errorf("%w: group_by names %q twice", ErrBadQuery, k)
		}
		seen[k] = true
		exprs = append(exprs, e)
	}
	if _, _, err := q.where(); err != nil {
		return out, err
	}
	if err := s.ensureMigrated(ctx); err != nil {
		return out, err
	}
	acc := statsAcc{keys: q.GroupBy, groups: map[string]*groupAcc{}}
	// Daily rollups cannot tell the hours of a day apart.
	days := !slices.Contains(q.GroupBy, "hour")
	for _, sp := range splitRange(q.Since, q.Until, days) {
		f := q.Filter
		f.Since, f.Until = sp.from, sp.to
		var err error
		if sp.rollups == nil {
			err = s.sumRows(ctx, &acc, exprs, f)
		} else {
			err = s.sumRollups(ctx, &acc, exprs, f, *sp.rollups)
		}
		if err != nil {
			return out, err
		}
	}
	out.Total, out.Groups = acc.result()
	return out, nil
}

// span is a part of a stats range, [from, to) (zero: open), and the
// rollups that answer it: nil for the rows themselves.
type span struct {
	from, to time.Time
	rollups  *rollupTable
}

// splitRange splits [since, until) into the whole days inside it (when
// days is true), answered from daily rollups; the other whole hours, from
// hourly rollups; and the partial hours at its edges, from rows.
func splitRange(since, until time.Time, days bool) []span {
	whole, edges := splitHours(since, until)
	var out []span
	for _, e := range edges {
		out = append(out, span{from: e[0], to: e[1]})
	}
	if whole == nil {
		return out
	}
	from, to := whole[0], whole[1]
	dayFrom, dayTo := from, to
	if !from.IsZero() && !from.Truncate(24*time.Hour).Equal(from) {
		dayFrom = from.Truncate(24 * time.Hour).Add(24 * time.Hour)
	}
	if !to.IsZero() {
		dayTo = to.Truncate(24 * time.Hour)
	}
	if !days || (!dayFrom.IsZero() && !dayTo.IsZero() && !dayFrom.Before(dayTo)) {
		return append(out, span{from: from, to: to, rollups: &hourlyRollups})
	}
	if !dayFrom.Equal(from) {
		out = append(out, span{from: from, to: dayFrom, rollups: &hourlyRollups})
	}
	if !dayTo.Equal(to) {
		out = append(out, span{from: dayTo, to: to, rollups: &hourlyRollups})
	}
	return append(out, span{from: dayFrom, to: dayTo, rollups: &dailyRollups})
}

// splitHours splits [since, until) (zero: open) into the whole hours
// inside it, answered from rollups (nil when there are none), and the
// partial hours at its edges, answered from rows. Times are cut to the
// microsecond first, as the rows' times are.
func splitHours(since, until time.Time) (whole *[2]time.Time, edges [][2]time.Time) {
	if !since.IsZero() {
		since = time.UnixMicro(since.UnixMicro()).UTC()
	}
	if !until.IsZero() {
		until = time.UnixMicro(until.UnixMicro()).UTC()
	}
	from, to := since, until
	if !from.IsZero() && !from.Truncate(time.Hour).Equal(from) {
		from = from.Truncate(time.Hour).Add(time.Hour)
	}
	if !to.IsZero() {
		to = to.Truncate(time.Hour)
	}
	if !from.IsZero() && !to.IsZero() && !from.Before(to) {
		return nil, [][2]time.Time{{since, until}}
	}
	if from != since {
		edges = append(edges, [2]time.Time{since, from})
	}
	if to != until {
		edges = append(edges, [2]time.Time{to, until})
	}
	return &[2]time.Time{from, to}, edges
}

// statsAcc merges partial sums by group key.
type statsAcc struct {
	keys   []string
	groups map[string]*groupAcc
}

// groupAcc is the running sums of one group.
type groupAcc struct {
	key                                             []string
	requests, succeeded, promptTokens, completionTk int64
	cost, dearest                                   float64
	hist                                            histogram
}

// group returns the sums of the group whose key values are vals.
func (a *statsAcc) group(vals []any) *groupAcc {
	key := make([]string, len(vals))
	for i, v := range vals {
		key[i] = keyString(a.keys[i], v)
	}
	id := strings.Join(key, "\x00")
	g := a.groups[id]
	if g == nil {
		g = &groupAcc{key: key}
		a.groups[id] = g
	}
	return g
}

// result is the total and the groups in key order (day and hour keys are
// RFC 3339 times, which sort as times).
func (a *statsAcc) result() (Totals, []Group) {
	var all groupAcc
	list := make([]*groupAcc, 0, len(a.groups))
	for _, g := range a.groups {
		all.add(g)
		list = append(list, g)
	}
	groups := []Group{}
	if len(a.keys) > 0 {
		slices.SortFunc(list, func(x, y *groupAcc) int { return slices.Compare(x.key, y.key) })
		for _, g := range list {
			out := Group{Key: make(map[string]string, len(a.keys)), Totals: g.totals()}
			for i, k := range a.keys {
				out.Key[k] = g.key[i]
			}
			groups = append(groups, out)
		}
	}
	return all.totals(), groups
}

func (g *groupAcc) add(o *groupAcc) {
	g.requests += o.requests
	g.succeeded += o.succeeded
	g.promptTokens += o.promptTokens
	g.completionTk += o.completionTk
	g.cost += o.cost
	g.dearest += o.dearest
	for i, c := range o.hist {
		g.hist[i] += c
	}
}

func (g *groupAcc) totals() Totals {
	return Totals{Requests: g.requests, Succeeded: g.succeeded, Failed: g.requests - g.succeeded,
		PromptTokens: g.promptTokens, CompletionTokens: g.completionTk, CostSats: g.cost, DearestCostSats: g.dearest,
		SavedSats: g.dearest - g.cost, LatencyMSP50: g.hist.percentile(50), LatencyMSP95: g.hist.percentile(95)}
}

// sumsSQL are the sums both stats queries select after the group keys:
// over rows, count is COUNT(*) and one 1; over rollups, SUM(requests) and
// requests.
func sumsSQL(count, one string) string {
	return "CAST(COALESCE(" + count + ", 0) AS BIGINT), " +
		"CAST(COALESCE(SUM(CASE WHEN outcome IN ('ok', 'continued') THEN " + one + " ELSE 0 END), 0) AS BIGINT), " +
		"CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT), " +
		"CAST(COALESCE(SUM(cost_sats), 0) AS DOUBLE PRECISION), CAST(COALESCE(SUM(dearest_cost_sats), 0) AS DOUBLE PRECISION)"
}

// groupSQL is the SELECT list's group keys and the GROUP BY clause of the
// keys and extra more columns after them.
func groupSQL(exprs []string, extra int) (sel, groupBy string) {
	var b strings.Builder
	for i, e := range exprs {
		fmt.Fprintf(&b, "%s AS g%d, ", e, i)
	}
	n := len(exprs) + extra
	if n == 0 {
		return b.String(), ""
	}
	ords := make([]string, n)
	for i := range ords {
		ords[i] = strconv.Itoa(i + 1)
	}
	return b.String(), " GROUP BY " + strings.Join(ords, ", ")
}

// sumRollups adds the rollups in table of the whole periods f selects.
func (s *SQLStore) sumRollups(ctx context.Context, acc *statsAcc, exprs []string, f Filter, table rollupTable) error {
	where, args, err := f.where()
	if err != nil {
		return err
	}
	sel, groupBy := groupSQL(exprs, 0)
	var hist strings.Builder
	for _, c := range histColumns() {
		fmt.Fprintf(&hist, ", CAST(COALESCE(SUM(%s), 0) AS BIGINT)", c)
	}
	query := "SELECT " + sel + sumsSQL("SUM(requests)", "requests") + hist.String() + " FROM " + table.name + where + groupBy
	return s.scanSums(ctx, acc, len(exprs), query, args, nil, latencyBuckets, func(part *groupAcc, counts []int64) {
		copy(part.hist[:], counts)
	})
}

// sumRows adds the rows f selects, their latencies counted by bucket.
func (s *SQLStore) sumRows(ctx context.Context, acc *statsAcc, exprs []string, f Filter) error {
	where, args, err := f.where()
	if err != nil {
		return err
	}
	sel, groupBy := groupSQL(exprs, 1)
	query := "SELECT " + sel + latencyBucketSQL() + ", " + sumsSQL("COUNT(*)", "1") + " FROM requests" + where + groupBy
	var bucket int64
	return s.scanSums(ctx, acc, len(exprs), query, args, []any{&bucket}, 0, func(part *groupAcc, _ []int64) {
		part.hist[bucket] = part.requests
	})
}

// scanSums runs a stats query whose rows are: the group keys, the columns
// pre scans into, the sums of sumsSQL, then post more numbers, and adds
// each row to its group after fill has completed it.
func (s *SQLStore) scanSums(ctx context.Context, acc *statsAcc, nkeys int, query string, args, pre []any, post int,
	fill func(part *groupAcc, post []int64)) error {
	rows, err := s.db.QueryContext(ctx, s.Rebind(query), args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	keyVals := make([]any, nkeys)
	extra := make([]int64, post)
	dest := make([]any, 0, nkeys+len(pre)+6+post)
	for i := range keyVals {
		dest = append(dest, &keyVals[i])
	}
	dest = append(dest, pre...)
	var part groupAcc
	dest = append(dest, &part.requests, &part.succeeded, &part.promptTokens, &part.completionTk, &part.cost, &part.dearest)
	for i := range extra {
		dest = append(dest, &extra[i])
	}
	for rows.Next() {
		part = groupAcc{}
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		if part.requests == 0 {
			continue // the one row of an ungrouped query over nothing
		}
		fill(&part, extra)
		acc.group(keyVals).add(&part)
	}
	return rows.Err()
}

// keyString renders a group key's value: text as it is, day and hour
// buckets as the RFC 3339 time they start.
func keyString(key string, v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case int64:
		if key == "day" || key == "hour" {
			return time.UnixMicro(x).UTC().Format(time.RFC3339)
		}
		return strconv.FormatInt(x, 10)
	case []byte:
		return string(x)
	case string:
		return x
	}
	return fmt.Sprint(v)
}

// Requests lists rows newest first. The cursor is the (time, id) of the
// last row of the previous page, so pages stay stable while rows arrive.
func (s *SQLStore) Requests(ctx context.Context, q RequestsQuery) (Page, error) {
	page := Page{Rows: []Row{}}
	limit := q.Limit
	switch {
	case limit == 0:
		limit = DefaultLimit
	case limit < 0 || limit > MaxLimit:
		return page, fmt.Errorf("%w: limit must be between 1 and %d", ErrBadQuery, MaxLimit)
	}
	where, args, err := q.where()
	if err != nil {
		return page, err
	}
	if q.Cursor != "" {
		ms, id, err := decodeCursor(q.Cursor)
		if err != nil {
			return page, err
		}
		cond := "(time < ? OR (time = ? AND id < ?))"
		if where == "" {
			where = " WHERE " + cond
		} else {
			where += " AND " + cond
		}
		args = append(args, ms, ms, id)
	}
	if err := s.ensureMigrated(ctx); err != nil {
		return page, err
	}
	query := "SELECT " + rowColumns + " FROM requests" + where + " ORDER BY time DESC, id DESC LIMIT " + strconv.Itoa(limit+1)
	rows, err := s.db.QueryContext(ctx, s.Rebind(query), args...)
	if err != nil {
		return page, err
	}
	defer rows.Close()
	for rows.Next() {
		r, err := scanRow(rows)
		if err != nil {
			return page, err
		}
		page.Rows = append(page.Rows, r)
	}
	if err := rows.Err(); err != nil {
		return page, err
	}
	if len(page.Rows) > limit {
		page.Rows = page.Rows[:limit]
		last := page.Rows[limit-1]
		page.NextCursor = encodeCursor(last.Time.UnixMicro(), last.ID)
	}
	return page, nil
}

func encodeCursor(ms int64, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(ms, 10) + ":" + id))
}

func decodeCursor(c string) (int64, string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil {
		msText, id, ok := strings.Cut(string(raw), ":")
		if ms, perr := strconv.ParseInt(msText, 10, 64); ok && perr == nil {
			return ms, id, nil
		}
	}
	return 0, "", fmt.Errorf("%w: the cursor is not one this server gave out; use next_cursor of the previous page", ErrBadQuery)
}

// DeleteBefore deletes the rows, and their rollups, of the hours that
// ended by t: retention works in whole hours, so that the rollups always
// sum exactly the rows that are kept (a row stays up to an hour longer).
// The daily rollups of the day the cut falls in are summed again from the
// hours it keeps.
func (s *SQLStore) DeleteBefore(ctx context.Context, t time.Time) (int64, error) {
	if err := s.ensureMigrated(ctx); err != nil {
		return 0, err
	}
	cut := t.Truncate(time.Hour).UnixMicro()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, s.Rebind("DELETE FROM requests WHERE time < ?"), cut)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, err
	}
	for _, table := range rollupTables {
		if _, err := tx.ExecContext(ctx, s.Rebind("DELETE FROM "+table.name+" WHERE time < ?"), cut); err != nil {
			return 0, err
		}
	}
	if day := cut - mod(cut, dayMicros); day != cut {
		if _, err := tx.ExecContext(ctx, s.Rebind(rebuildDaySQL), day, cut, day+dayMicros); err != nil {
			return 0, err
		}
	}
	return n, tx.Commit()
}

// Interface guard
var _ Store = (*SQLStore)(nil)
