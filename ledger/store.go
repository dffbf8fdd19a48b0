package ledger

import (
	"context"
	"database/sql"
	"encoding/base64"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// rowColumns are the columns Insert writes and Requests reads, in order.
const rowColumns = "id, time, instance, client, policy, model, provider, upstream_model, stream, status, outcome, " +
	"attempts, retries, prompt_tokens, completion_tokens, cost_sats, dearest_cost_sats, latency_ms, first_event_ms, " +
	"error_code, continuations, complexity, tier, endpoint"

const rowColumnCount = 24

// insertBatch bounds the rows of one INSERT statement, well under both
// drivers' limits on parameters.
const insertBatch = 256

// Insert writes rows in batches within one transaction; ids already stored
// are skipped.
func (s *SQLStore) Insert(ctx context.Context, rows []Row) error {
	if len(rows) == 0 {
		return nil
	}
	if err := s.ensureMigrated(ctx); err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if s.Driver() == "sqlite" {
		// SQLite runs in this process: one prepared single-row statement
		// costs less CPU than parsing a statement of thousands of
		// parameters per batch.
		if err := insertEach(ctx, tx, s.Rebind(insertRow), rows); err != nil {
			return err
		}
		return tx.Commit()
	}
	for start := 0; start < len(rows); start += insertBatch {
		part := rows[start:min(start+insertBatch, len(rows))]
		var q strings.Builder
		q.WriteString("INSERT INTO requests (" + rowColumns + ") VALUES ")
		args := make([]any, 0, len(part)*rowColumnCount)
		for i, r := range part {
			if i > 0 {
				q.WriteByte(',')
			}
			q.WriteString("(?" + strings.Repeat(",?", rowColumnCount-1) + ")")
			args = append(args, rowArgs(r)...)
		}
		q.WriteString(" ON CONFLICT (id) DO NOTHING")
		if _, err := tx.ExecContext(ctx, s.Rebind(q.String()), args...); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// insertRow inserts one row, skipping an id already stored.
var insertRow = "INSERT INTO requests (" + rowColumns + ") VALUES (?" + strings.Repeat(",?", rowColumnCount-1) + ") ON CONFLICT (id) DO NOTHING"

// insertEach runs the one-row insert for every row with one prepared statement.
func insertEach(ctx context.Context, tx *sql.Tx, query string, rows []Row) error {
	stmt, err := tx.PrepareContext(ctx, query)
	if err != nil {
		return err
	}
	defer stmt.Close()
	for _, r := range rows {
		if _, err := stmt.ExecContext(ctx, rowArgs(r)...); err != nil {
			return err
		}
	}
	return nil
}

func rowArgs(r Row) []any {
	var firstEvent, complexity any
	if r.FirstEventMS != nil {
		firstEvent = *r.FirstEventMS
	}
	if r.Complexity != nil {
		complexity = *r.Complexity
	}
	return []any{r.ID, r.Time.UnixMicro(), r.Instance, r.Client, r.Policy, r.Model, r.Provider, r.UpstreamModel,
		r.Stream, r.Status, r.Outcome, r.Attempts, r.Retries, r.PromptTokens, r.CompletionTokens, r.CostSats,
		r.DearestCostSats, r.LatencyMS, firstEvent, r.ErrorCode, r.Continuations, complexity, r.Tier, endpointOf(r)}
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

// Stats sums rows in one pass per answer: totals, then groups. The
// percentiles are nearest-rank over latency_ms, computed with window
// functions that both SQLite and PostgreSQL have.
func (s *SQLStore) Stats(ctx context.Context, q StatsQuery) (Stats, error) {
	var out Stats
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
	where, args, err := q.where()
	if err != nil {
		return out, err
	}
	if err := s.ensureMigrated(ctx); err != nil {
		return out, err
	}
	totals, err := s.sums(ctx, nil, nil, where, args)
	if err != nil {
		return out, err
	}
	out.Total = totals[0].Totals
	out.Groups = []Group{}
	if len(exprs) > 0 {
		if out.Groups, err = s.sums(ctx, q.GroupBy, exprs, where, args); err != nil {
			return out, err
		}
	}
	return out, nil
}

// sums runs the aggregate query for the given group keys (none: one total).
func (s *SQLStore) sums(ctx context.Context, keys, exprs []string, where string, args []any) ([]Group, error) {
	var inner, outer, partition strings.Builder
	for i, e := range exprs {
		fmt.Fprintf(&inner, "%s AS g%d, ", e, i)
		fmt.Fprintf(&outer, "g%d, ", i)
		if i > 0 {
			partition.WriteString(", ")
		}
		fmt.Fprintf(&partition, "%s", e)
	}
	over := "(ORDER BY latency_ms)"
	count := "COUNT(*) OVER ()"
	if len(exprs) > 0 {
		over = "(PARTITION BY " + partition.String() + " ORDER BY latency_ms)"
		count = "COUNT(*) OVER (PARTITION BY " + partition.String() + ")"
	}
	query := "SELECT " + outer.String() + `COUNT(*),
		CAST(COALESCE(SUM(CASE WHEN outcome IN ('ok', 'continued') THEN 1 ELSE 0 END), 0) AS BIGINT),
		CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT),
		CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT),
		CAST(COALESCE(SUM(cost_sats), 0) AS DOUBLE PRECISION),
		CAST(COALESCE(SUM(dearest_cost_sats), 0) AS DOUBLE PRECISION),
		CAST(COALESCE(MAX(CASE WHEN rn = (n * 50 + 99) / 100 THEN latency_ms END), 0) AS BIGINT),
		CAST(COALESCE(MAX(CASE WHEN rn = (n * 95 + 99) / 100 THEN latency_ms END), 0) AS BIGINT)
		FROM (SELECT ` + inner.String() + `outcome, prompt_tokens, completion_tokens, cost_sats, dearest_cost_sats, latency_ms,
			ROW_NUMBER() OVER ` + over + ` AS rn, ` + count + ` AS n
			FROM requests` + where + `) AS f`
	if len(exprs) > 0 {
		g := strings.TrimSuffix(outer.String(), ", ")
		query += " GROUP BY " + g + " ORDER BY " + g
	}
	rows, err := s.db.QueryContext(ctx, s.Rebind(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Group
	for rows.Next() {
		keyVals := make([]any, len(keys))
		dest := make([]any, 0, len(keys)+8)
		for i := range keys {
			dest = append(dest, &keyVals[i])
		}
		var t Totals
		dest = append(dest, &t.Requests, &t.Succeeded, &t.PromptTokens, &t.CompletionTokens,
			&t.CostSats, &t.DearestCostSats, &t.LatencyMSP50, &t.LatencyMSP95)
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		t.Failed = t.Requests - t.Succeeded
		t.SavedSats = t.DearestCostSats - t.CostSats
		g := Group{Totals: t}
		if len(keys) > 0 {
			g.Key = make(map[string]string, len(keys))
			for i, k := range keys {
				g.Key[k] = keyString(k, keyVals[i])
			}
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(keys) == 0 && len(out) == 0 {
		out = append(out, Group{})
	}
	return out, nil
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

// DeleteBefore deletes rows older than t.
func (s *SQLStore) DeleteBefore(ctx context.Context, t time.Time) (int64, error) {
	if err := s.ensureMigrated(ctx); err != nil {
		return 0, err
	}
	res, err := s.db.ExecContext(ctx, s.Rebind("DELETE FROM requests WHERE time < ?"), t.UnixMicro())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// Interface guard
var _ Store = (*SQLStore)(nil)
