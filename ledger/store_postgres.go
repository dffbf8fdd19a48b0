package ledger

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// copyRows is the statement that feeds a batch to COPY, in the order of
// rowColumns.
const copyRows = "COPY requests (" + rowColumns + ") FROM STDIN"

// asyncCommit begins a transaction that commits without waiting for its
// WAL flush. The ledger's rows are only in memory until they are written
// anyway: this risks the same few milliseconds of rows on a database
// crash, and saves the server a flush per batch (docs/ledger.md). One
// round trip, as a simple query.
var asyncCommit = pgx.TxOptions{BeginQuery: "BEGIN; SET LOCAL synchronous_commit = off"}

// insertPostgres writes a batch and its rollups in one transaction. The
// rows go in with COPY, in its text format, which costs the server less
// than half of what an INSERT of the same rows does (no per-row executor,
// no conflict check) and the client almost nothing: the server shares the
// CPU with Caddy on small machines (docs/performance.md). COPY cannot
// skip rows stored already, so a batch that meets one (a batch retried
// after a commit whose answer was lost) is written again with the insert
// that skips them.
func (s *SQLStore) insertPostgres(ctx context.Context, rows []Row) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(driverConn any) error {
		pc, ok := driverConn.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("ledger: postgres connection is a %T, not pgx's", driverConn)
		}
		err := pgx.BeginTxFunc(ctx, pc.Conn(), asyncCommit, func(tx pgx.Tx) error {
			data := bytes.NewReader(copyText(rows))
			if _, err := tx.Conn().PgConn().CopyFrom(ctx, data, copyRows); err != nil {
				return err
			}
			return upsertRollupsPostgres(ctx, tx, rows)
		})
		if !isStoredAlready(err) {
			return err
		}
		return pgx.BeginTxFunc(ctx, pc.Conn(), asyncCommit, func(tx pgx.Tx) error {
			inserted, err := insertSkipping(ctx, tx, rows)
			if err != nil {
				return err
			}
			return upsertRollupsPostgres(ctx, tx, inserted)
		})
	})
}

// copyText is rows in COPY's text format: one line per row, columns in
// the order of rowColumns, separated by tabs, \N for NULL.
func copyText(rows []Row) []byte {
	buf := make([]byte, 0, len(rows)*256)
	for _, r := range rows {
		buf = appendCopyString(buf, r.ID)
		buf = append(buf, '\t')
		buf = strconv.AppendInt(buf, r.Time.UnixMicro(), 10)
		for _, v := range [...]string{r.Instance, r.Client, r.Policy, r.Model, r.Provider, r.UpstreamModel} {
			buf = append(buf, '\t')
			buf = appendCopyString(buf, v)
		}
		buf = append(buf, '\t')
		buf = strconv.AppendBool(buf, r.Stream)
		buf = appendCopyInt(buf, int64(r.Status))
		buf = append(buf, '\t')
		buf = appendCopyString(buf, r.Outcome)
		buf = appendCopyInt(buf, int64(r.Attempts))
		buf = append(buf, '\t')
		buf = appendCopyString(buf, r.Retries)
		buf = appendCopyInt(buf, r.PromptTokens)
		buf = appendCopyInt(buf, r.CompletionTokens)
		buf = appendCopyFloat(buf, r.CostSats)
		buf = appendCopyFloat(buf, r.DearestCostSats)
		buf = appendCopyInt(buf, r.LatencyMS)
		if r.FirstEventMS != nil {
			buf = appendCopyInt(buf, *r.FirstEventMS)
		} else {
			buf = append(buf, "\t\\N"...)
		}
		buf = append(buf, '\t')
		buf = appendCopyString(buf, r.ErrorCode)
		buf = appendCopyInt(buf, int64(r.Continuations))
		if r.Complexity != nil {
			buf = appendCopyFloat(buf, *r.Complexity)
		} else {
			buf = append(buf, "\t\\N"...)
		}
		for _, v := range [...]string{r.Tier, endpointOf(r)} {
			buf = append(buf, '\t')
			buf = appendCopyString(buf, v)
		}
		buf = append(buf, '\n')
	}
	return buf
}

// appendCopyInt appends a tab and v.
func appendCopyInt(buf []byte, v int64) []byte {
	return strconv.AppendInt(append(buf, '\t'), v, 10)
}

// appendCopyFloat appends a tab and v, exactly (the shortest text that
// reads back as the same float8).
func appendCopyFloat(buf []byte, v float64) []byte {
	buf = append(buf, '\t')
	switch {
	case math.IsNaN(v):
		return append(buf, "NaN"...)
	case math.IsInf(v, 1):
		return append(buf, "Infinity"...)
	case math.IsInf(v, -1):
		return append(buf, "-Infinity"...)
	}
	return strconv.AppendFloat(buf, v, 'g', -1, 64)
}

// appendCopyString appends s with COPY's escapes for the backslash and
// the characters that end a column or a row. s is valid UTF-8 without NUL
// (validText).
func appendCopyString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			buf = append(buf, '\\', '\\')
		case '\t':
			buf = append(buf, '\\', 't')
		case '\n':
			buf = append(buf, '\\', 'n')
		case '\r':
			buf = append(buf, '\\', 'r')
		default:
			buf = append(buf, c)
		}
	}
	return buf
}

// isStoredAlready says err is the unique violation of a row whose time and
// id are stored already.
func isStoredAlready(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.TableName == "requests"
}

// insertSkipping writes rows with one statement of one array per column,
// skipping those stored already, and returns those it wrote: a row
// stored already must not be counted in the rollups twice.
func insertSkipping(ctx context.Context, tx pgx.Tx, rows []Row) ([]Row, error) {
	result, err := tx.Query(ctx, insertArrays, columnArrays(rows)...)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(result, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	written := make(map[string]bool, len(ids))
	for _, id := range ids {
		written[id] = true
	}
	inserted := make([]Row, 0, len(ids))
	// The first row of an id is the one written; a later one in the same
	// batch was skipped.
	for _, r := range rows {
		if written[r.ID] {
			inserted = append(inserted, r)
			delete(written, r.ID)
		}
	}
	return inserted, nil
}

// insertArrays is PostgreSQL's insert of a batch given as column arrays,
// in the order of rowColumns.
const insertArrays = "INSERT INTO requests (" + rowColumns + ") SELECT * FROM unnest(" +
	"$1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], " +
	"$9::boolean[], $10::bigint[], $11::text[], $12::bigint[], $13::text[], $14::bigint[], $15::bigint[], " +
	"$16::float8[], $17::float8[], $18::bigint[], $19::bigint[], $20::text[], $21::bigint[], $22::float8[], " +
	"$23::text[], $24::text[]) ON CONFLICT (time, id) DO NOTHING RETURNING id"

// columnArrays turns rows into the arrays of insertArrays.
func columnArrays(rows []Row) []any {
	n := len(rows)
	texts := make([][]string, 12)
	for i := range texts {
		texts[i] = make([]string, n)
	}
	ints := make([][]int64, 7)
	for i := range ints {
		ints[i] = make([]int64, n)
	}
	stream := make([]bool, n)
	cost, dearest := make([]float64, n), make([]float64, n)
	firstEvent, complexity := make([]*int64, n), make([]*float64, n)
	for i, r := range rows {
		for j, v := range []string{r.ID, r.Instance, r.Client, r.Policy, r.Model, r.Provider, r.UpstreamModel,
			r.Outcome, r.Retries, r.ErrorCode, r.Tier, endpointOf(r)} {
			texts[j][i] = v
		}
		for j, v := range []int64{r.Time.UnixMicro(), int64(r.Status), int64(r.Attempts), r.PromptTokens,
			r.CompletionTokens, r.LatencyMS, int64(r.Continuations)} {
			ints[j][i] = v
		}
		stream[i], cost[i], dearest[i] = r.Stream, r.CostSats, r.DearestCostSats
		firstEvent[i], complexity[i] = r.FirstEventMS, r.Complexity
	}
	return []any{texts[0], ints[0], texts[1], texts[2], texts[3], texts[4], texts[5], texts[6],
		stream, ints[1], texts[7], ints[2], texts[8], ints[3], ints[4],
		cost, dearest, ints[5], firstEvent, texts[9], ints[6], complexity,
		texts[10], texts[11]}
}

// upsertRollupsPostgres adds rows to their hours' and days' rollups: one
// upsert per period and key, in statements of up to rollupBatch keys.
func upsertRollupsPostgres(ctx context.Context, tx pgx.Tx, rows []Row) error {
	for _, table := range rollupTables {
		keys, sums := rollupsOf(rows, table.period)
		for start := 0; start < len(keys); start += rollupBatch {
			part := keys[start:min(start+rollupBatch, len(keys))]
			args := make([]any, 0, len(part)*rollupColumnCount)
			for _, k := range part {
				args = append(args, rollupArgs(k, sums[k])...)
			}
			if _, err := tx.Exec(ctx, rollupUpsert(table.name, len(part), true), args...); err != nil {
				return err
			}
		}
	}
	return nil
}
