package ledger

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arbstr/caddy-arbstr/internal/pgtest"
)

// eachStore runs a test against a fresh SQLite store and a fresh
// PostgreSQL store: both must behave the same.
func eachStore(t *testing.T, test func(t *testing.T, s *SQLStore)) {
	t.Run("sqlite", func(t *testing.T) {
		s, err := Open(context.Background(), DriverSQLite, filepath.Join(t.TempDir(), "sub", "ledger.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		test(t, s)
	})
	t.Run("postgres", func(t *testing.T) {
		s, err := Open(context.Background(), DriverPostgres, pgtest.Database(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		test(t, s)
	})
}

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func ptr[T any](v T) *T { return &v }

// sampleRows: three providers over two days, one failure, one stream.
func sampleRows() []Row {
	return []Row{
		{ID: "r1", Time: t0, Instance: "i1", Client: "alice", Policy: "code", Model: "m1", Provider: "alpha", UpstreamModel: "up-m1",
			Status: 200, Outcome: "ok", Attempts: 1, PromptTokens: 100, CompletionTokens: 50, CostSats: 2, DearestCostSats: 5, LatencyMS: 100},
		{ID: "r2", Time: t0.Add(time.Minute), Instance: "i1", Client: "bob", Model: "m1", Provider: "beta", Stream: true,
			Status: 200, Outcome: "ok", Attempts: 2, Retries: "1/alpha", PromptTokens: 10, CompletionTokens: 5, CostSats: 1, DearestCostSats: 1.5,
			LatencyMS: 300, FirstEventMS: ptr[int64](40), Complexity: ptr(0.25), Tier: "local", Continuations: 1},
		{ID: "r3", Time: t0.Add(2 * time.Hour), Instance: "i2", Client: "alice", Model: "m2", Status: 502, Outcome: "error",
			Attempts: 3, Retries: "3/alpha", LatencyMS: 900, ErrorCode: "upstream_failed"},
		{ID: "r4", Time: t0.Add(26 * time.Hour), Instance: "i2", Client: "alice", Model: "m1", Provider: "alpha",
			Status: 200, Outcome: "ok", Attempts: 1, PromptTokens: 1, CompletionTokens: 1, CostSats: 0.5, DearestCostSats: 0.5, LatencyMS: 200,
			Endpoint: "embeddings"},
	}
}

func TestStoreRoundTrip(t *testing.T) {
	eachStore(t, func(t *testing.T, s *SQLStore) {
		ctx := context.Background()
		rows := sampleRows()
		if err := s.Insert(ctx, rows); err != nil {
			t.Fatal(err)
		}
		// A retried batch writes nothing twice.
		if err := s.Insert(ctx, rows[:2]); err != nil {
			t.Fatal(err)
		}
		page, err := s.Requests(ctx, RequestsQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Rows) != 4 || page.NextCursor != "" {
			t.Fatalf("got %d rows, cursor %q; want 4 and none", len(page.Rows), page.NextCursor)
		}
		// ...nor counts them twice in the rollups.
		if st, err := s.Stats(ctx, StatsQuery{}); err != nil || st.Total.Requests != 4 || st.Total.CostSats != 3.5 {
			t.Fatalf("stats after a retried batch: %+v, %v; want 4 requests costing 3.5", st.Total, err)
		}
		for i, want := range []string{"r4", "r3", "r2", "r1"} {
			if page.Rows[i].ID != want {
				t.Fatalf("row %d is %s, want %s (newest first)", i, page.Rows[i].ID, want)
			}
		}
		got, want := page.Rows[2], rows[1]
		if got.Time != want.Time || got.Stream != want.Stream || got.Retries != want.Retries || *got.FirstEventMS != 40 ||
			*got.Complexity != 0.25 || got.Tier != "local" || got.Continuations != 1 || got.CostSats != 1 || got.DearestCostSats != 1.5 ||
			got.UpstreamModel != want.UpstreamModel || got.Attempts != 2 || got.Status != 200 {
			t.Fatalf("row r2 came back as %+v, want %+v", got, want)
		}
		if page.Rows[3].FirstEventMS != nil || page.Rows[3].Complexity != nil {
			t.Fatalf("r1 has no first event or complexity, got %+v", page.Rows[3])
		}
		// A row that names no endpoint is a chat request.
		if page.Rows[0].Endpoint != "embeddings" || page.Rows[3].Endpoint != "chat" {
			t.Fatalf("endpoints r4 %q, r1 %q; want embeddings and chat", page.Rows[0].Endpoint, page.Rows[3].Endpoint)
		}
	})
}

// Any text a row may carry comes back as it went in: the characters that
// delimit COPY's columns and rows, escapes, exact floats, NULLs. Bytes
// PostgreSQL refuses in text (a NUL, invalid UTF-8, e.g. from a client id
// taken from a header) become U+FFFD instead of keeping the batch out.
func TestStoreKeepsAnyText(t *testing.T) {
	eachStore(t, func(t *testing.T, s *SQLStore) {
		ctx := context.Background()
		rows := []Row{
			{ID: "tabs", Time: t0, Client: "tab\there", Model: "new\nline\r", Provider: `back\slash\N`, Retries: "1/ü€",
				ErrorCode: "\\.", Tier: "", CostSats: 0.1 + 0.2, DearestCostSats: 1e-300, Complexity: ptr(1.0 / 3), FirstEventMS: ptr[int64](0)},
			{ID: "bad", Time: t0.Add(time.Second), Client: "bad\xff\x00id", Model: "m"},
		}
		if err := s.Insert(ctx, rows); err != nil {
			t.Fatalf("insert: %v", err)
		}
		page, err := s.Requests(ctx, RequestsQuery{})
		if err != nil || len(page.Rows) != 2 {
			t.Fatalf("got %d rows, %v; want 2", len(page.Rows), err)
		}
		got, want := page.Rows[1], rows[0]
		if got.Client != want.Client || got.Model != want.Model || got.Provider != want.Provider || got.Retries != want.Retries ||
			got.ErrorCode != want.ErrorCode || got.CostSats != want.CostSats || got.DearestCostSats != want.DearestCostSats ||
			*got.Complexity != *want.Complexity || *got.FirstEventMS != 0 {
			t.Fatalf("row came back as\n%+v\nwant\n%+v", got, want)
		}
		if c := page.Rows[0].Client; c != "bad\uFFFD\uFFFDid" {
			t.Fatalf("client %q, want the bad bytes as U+FFFD", c)
		}
	})
}

func TestStoreStats(t *testing.T) {
	eachStore(t, func(t *testing.T, s *SQLStore) {
		ctx := context.Background()
		if err := s.Insert(ctx, sampleRows()); err != nil {
			t.Fatal(err)
		}
		st, err := s.Stats(ctx, StatsQuery{GroupBy: []string{"provider"}})
		if err != nil {
			t.Fatal(err)
		}
		want := Totals{Requests: 4, Succeeded: 3, Failed: 1, PromptTokens: 111, CompletionTokens: 56,
			CostSats: 3.5, DearestCostSats: 7, SavedSats: 3.5, LatencyMSP50: approx(200), LatencyMSP95: approx(900)}
		if st.Total != want {
			t.Fatalf("total %+v, want %+v", st.Total, want)
		}
		if len(st.Groups) != 3 {
			t.Fatalf("groups %+v, want 3 (\"\", alpha, beta)", st.Groups)
		}
		alpha := st.Groups[1]
		if alpha.Key["provider"] != "alpha" || alpha.Requests != 2 || alpha.CostSats != 2.5 || alpha.SavedSats != 3 ||
			alpha.LatencyMSP50 != approx(100) || alpha.LatencyMSP95 != approx(200) {
			t.Fatalf("alpha group %+v", alpha)
		}

		st, err = s.Stats(ctx, StatsQuery{GroupBy: []string{"day", "client"},
			Filter: Filter{Since: t0, Until: t0.Add(48 * time.Hour), Match: map[string]string{"model": "m1"}}})
		if err != nil {
			t.Fatal(err)
		}
		if st.Total.Requests != 3 || len(st.Groups) != 3 {
			t.Fatalf("m1 by day and client: %+v", st)
		}
		g := st.Groups[0]
		if g.Key["day"] != "2026-12-01T00:00:00Z" || g.Key["client"] != "alice" || g.Requests != 1 {
			t.Fatalf("first group %+v", g)
		}
		if st.Groups[2].Key["day"] != "2026-12-02T00:00:00Z" {
			t.Fatalf("last group %+v", st.Groups[2])
		}

		st, err = s.Stats(ctx, StatsQuery{GroupBy: []string{"endpoint"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Groups) != 2 || st.Groups[0].Key["endpoint"] != "chat" || st.Groups[0].Requests != 3 ||
			st.Groups[1].Key["endpoint"] != "embeddings" || st.Groups[1].Requests != 1 || st.Groups[1].CostSats != 0.5 {
			t.Fatalf("by endpoint: %+v", st.Groups)
		}
		st, err = s.Stats(ctx, StatsQuery{Filter: Filter{Match: map[string]string{"endpoint": "embeddings"}}})
		if err != nil || st.Total.Requests != 1 || st.Total.PromptTokens != 1 {
			t.Fatalf("endpoint=embeddings: %+v, %v", st.Total, err)
		}

		st, err = s.Stats(ctx, StatsQuery{GroupBy: []string{"hour"}, Filter: Filter{Until: t0}})
		if err != nil {
			t.Fatal(err)
		}
		if st.Total != (Totals{}) || len(st.Groups) != 0 {
			t.Fatalf("no rows before t0, got %+v", st)
		}
	})
}

func TestStoreRefusesUnknownColumns(t *testing.T) {
	eachStore(t, func(t *testing.T, s *SQLStore) {
		ctx := context.Background()
		_, err := s.Stats(ctx, StatsQuery{GroupBy: []string{"provider; DROP TABLE requests"}})
		if !errors.Is(err, ErrBadQuery) {
			t.Fatalf("group by an unknown key: %v, want ErrBadQuery", err)
		}
		_, err = s.Requests(ctx, RequestsQuery{Filter: Filter{Match: map[string]string{"cost_sats > 0 OR id": "x"}}})
		if !errors.Is(err, ErrBadQuery) {
			t.Fatalf("filter on an unknown column: %v, want ErrBadQuery", err)
		}
		_, err = s.Requests(ctx, RequestsQuery{Cursor: "not-a-cursor"})
		if !errors.Is(err, ErrBadQuery) {
			t.Fatalf("bad cursor: %v, want ErrBadQuery", err)
		}
		// A value is a parameter, never SQL.
		if err := s.Insert(ctx, sampleRows()); err != nil {
			t.Fatal(err)
		}
		page, err := s.Requests(ctx, RequestsQuery{Filter: Filter{Match: map[string]string{"client": "x' OR '1'='1"}}})
		if err != nil || len(page.Rows) != 0 {
			t.Fatalf("quoted value: %d rows, %v", len(page.Rows), err)
		}
	})
}

func TestStorePagination(t *testing.T) {
	eachStore(t, func(t *testing.T, s *SQLStore) {
		ctx := context.Background()
		var rows []Row
		for i := range 25 {
			// Pairs share a microsecond: the cursor must tell them apart.
			rows = append(rows, Row{ID: fmt.Sprintf("id-%02d", i), Time: t0.Add(time.Duration(i/2) * time.Microsecond), Outcome: "ok"})
		}
		if err := s.Insert(ctx, rows); err != nil {
			t.Fatal(err)
		}
		var seen []string
		cursor := ""
		for pages := 0; ; pages++ {
			if pages > 10 {
				t.Fatal("pagination does not end")
			}
			page, err := s.Requests(ctx, RequestsQuery{Limit: 10, Cursor: cursor})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range page.Rows {
				seen = append(seen, r.ID)
			}
			if page.NextCursor == "" {
				break
			}
			cursor = page.NextCursor
		}
		if len(seen) != 25 {
			t.Fatalf("saw %d rows over the pages, want 25: %v", len(seen), seen)
		}
		for i, id := range seen {
			if want := fmt.Sprintf("id-%02d", 24-i); id != want {
				t.Fatalf("row %d is %s, want %s", i, id, want)
			}
		}
		if _, err := s.Requests(ctx, RequestsQuery{Limit: MaxLimit + 1}); !errors.Is(err, ErrBadQuery) {
			t.Fatalf("limit over the maximum: %v", err)
		}
	})
}

func TestStoreDeleteBefore(t *testing.T) {
	eachStore(t, func(t *testing.T, s *SQLStore) {
		ctx := context.Background()
		if err := s.Insert(ctx, sampleRows()); err != nil {
			t.Fatal(err)
		}
		n, err := s.DeleteBefore(ctx, t0.Add(time.Hour))
		if err != nil || n != 2 {
			t.Fatalf("deleted %d, %v; want 2", n, err)
		}
		st, err := s.Stats(ctx, StatsQuery{})
		if err != nil || st.Total.Requests != 2 {
			t.Fatalf("after retention: %+v, %v", st.Total, err)
		}
	})
}

// Two processes starting at once on one database migrate it once.
func TestMigrationsConcurrentAndVersioned(t *testing.T) {
	for _, driver := range []string{DriverSQLite, DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			dsn := filepath.Join(t.TempDir(), "ledger.db")
			if driver == DriverPostgres {
				dsn = pgtest.Database(t)
			}
			var wg sync.WaitGroup
			errs := make([]error, 4)
			stores := make([]*SQLStore, 4)
			for i := range stores {
				wg.Go(func() { stores[i], errs[i] = Open(context.Background(), driver, dsn) })
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("open %d: %v", i, err)
				}
				if err := stores[i].ensureMigrated(context.Background()); err != nil {
					t.Fatalf("open %d: %v", i, err)
				}
				defer stores[i].Close()
			}
			list, _ := migrationsFor(driver)
			var n, maxV int
			err := stores[0].DB().QueryRow("SELECT COUNT(*), MAX(version) FROM schema_migrations").Scan(&n, &maxV)
			if err != nil || n != len(list) || maxV != list[len(list)-1].version {
				t.Fatalf("schema_migrations has %d rows up to %d (%v); want %d", n, maxV, err, len(list))
			}
		})
	}
}

// Both stores get the same migrations, so that their schemas stay one.
func TestMigrationsMatchAcrossDrivers(t *testing.T) {
	a, err := migrationsFor(DriverSQLite)
	if err != nil {
		t.Fatal(err)
	}
	b, err := migrationsFor(DriverPostgres)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != len(b) {
		t.Fatalf("sqlite has %d migrations, postgres %d", len(a), len(b))
	}
	for i := range a {
		if a[i].name != b[i].name {
			t.Fatalf("migration %d: sqlite %s, postgres %s", i, a[i].name, b[i].name)
		}
	}
}

func TestOpenRefusesUnknownDriver(t *testing.T) {
	_, err := Open(context.Background(), "mysql", "x")
	if err == nil || !containsAll(err.Error(), "mysql", "sqlite or postgres") {
		t.Fatalf("got %v", err)
	}
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// The ledger's PostgreSQL connections run without JIT compilation unless
// the URL asks for it.
func TestPostgresJITOffUnlessAsked(t *testing.T) {
	dsn := pgtest.Database(t) // a URL with a query string
	for _, c := range []struct{ dsn, want string }{{dsn, "off"}, {dsn + "&jit=on", "on"}} {
		s, err := Open(context.Background(), DriverPostgres, c.dsn)
		if err != nil {
			t.Fatal(err)
		}
		var got string
		err = s.DB().QueryRow("SHOW jit").Scan(&got)
		s.Close()
		if err != nil || got != c.want {
			t.Errorf("jit with %q: %q, %v; want %q", strings.TrimPrefix(c.dsn, dsn), got, err, c.want)
		}
	}
}
