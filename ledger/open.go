package ledger

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"modernc.org/sqlite"             // database/sql driver "sqlite", pure Go
	sqlite3 "modernc.org/sqlite/lib"
)

// Drivers Open knows.
const (
	DriverSQLite   = "sqlite"
	DriverPostgres = "postgres"
)

//go:embed migrations
var migrationFiles embed.FS

// SQLStore is the Store of both drivers: the same schema and queries, with
// the few dialect differences (parameter markers, locking) kept here.
type SQLStore struct {
	db     *sql.DB
	driver string

	// migrated is set once the schema is current. A PostgreSQL that is
	// down at start is migrated on first use instead of failing the config.
	migrateMu sync.Mutex
	migrated  bool

	// stmts holds statements prepared once on the handle, by query text,
	// for the insert path: each batch reuses them instead of parsing a
	// long statement again (SQLite parses in this process's CPU).
	stmtsMu sync.Mutex
	stmts   map[string]*sql.Stmt
}

// Open returns the store of driver (sqlite or postgres) at dsn, its schema
// migrated. For sqlite, dsn is a file path (its directory is created). For
// postgres, dsn is a connection URL or keyword string; when the server is
// unreachable Open still succeeds and the schema is migrated on first use,
// so that a database outage never stops Caddy from starting.
func Open(ctx context.Context, driver, dsn string) (*SQLStore, error) {
	var db *sql.DB
	var err error
	switch driver {
	case DriverSQLite:
		if db, err = openSQLite(dsn); err == nil {
			if err = useWAL(ctx, db); err != nil {
				db.Close()
			}
		}
	case DriverPostgres:
		db, err = openPostgres(dsn)
	default:
		return nil, fmt.Errorf("ledger: unknown driver %q; use sqlite or postgres", driver)
	}
	if err != nil {
		return nil, fmt.Errorf("ledger: opening %s: %w", driver, err)
	}
	s := &SQLStore{db: db, driver: driver}
	if err := s.ensureMigrated(ctx); err != nil && driver == DriverSQLite {
		db.Close()
		return nil, err
	}
	return s, nil
}

// openPostgres opens a pool of up to 8 connections to dsn, with JIT
// compilation off unless dsn sets it: the ledger's queries are short, and
// PostgreSQL's JIT (on by default for queries it estimates costly) spent
// longer compiling a stats query's 73 sums than running it.
func openPostgres(dsn string) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if _, set := cfg.RuntimeParams["jit"]; !set {
		cfg.RuntimeParams["jit"] = "off"
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(8)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return db, nil
}

// openSQLite opens a SQLite file; busy_timeout makes a second process wait
// for the write lock instead of failing, and immediate transactions take
// it up front. useWAL then puts the file in WAL mode.
func openSQLite(file string) (*sql.DB, error) {
	if file == "" {
		return nil, fmt.Errorf("no database file given")
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, err
	}
	dsn := "file:" + file + "?_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	return sql.Open("sqlite", dsn)
}

// useWAL puts the database file in WAL mode, where readers never wait for
// the writer; the mode is kept in the file, for every connection. Switching
// a new file reads and then writes its header, and SQLite answers "database
// is locked" at once, without waiting, to a second process doing the same
// at that moment (two readers that both want to write): so it is tried
// again for up to the busy timeout.
func useWAL(ctx context.Context, db *sql.DB) error {
	deadline := time.Now().Add(10 * time.Second)
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		_, err := db.ExecContext(ctx, "PRAGMA journal_mode = WAL")
		var sqliteErr *sqlite.Error
		if err == nil || !errors.As(err, &sqliteErr) || sqliteErr.Code()&0xff != sqlite3.SQLITE_BUSY || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// DB is the database handle, for features that keep their own tables.
func (s *SQLStore) DB() *sql.DB { return s.db }

// Driver is sqlite or postgres.
func (s *SQLStore) Driver() string { return s.driver }

// Rebind turns the ? parameter markers of a query into the driver's own
// ($1, $2, … for PostgreSQL). Queries are written with ? only.
func (s *SQLStore) Rebind(query string) string {
	if s.driver != DriverPostgres {
		return query
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(query[i])
	}
	return b.String()
}

// Close closes the prepared statements and the database handle.
func (s *SQLStore) Close() error {
	s.stmtsMu.Lock()
	for _, st := range s.stmts {
		st.Close()
	}
	s.stmts = nil
	s.stmtsMu.Unlock()
	return s.db.Close()
}

// txStmt is query prepared within tx, reusing the statement prepared on
// the handle (and on tx's connection) by an earlier call.
func (s *SQLStore) txStmt(ctx context.Context, tx *sql.Tx, query string) (*sql.Stmt, error) {
	s.stmtsMu.Lock()
	defer s.stmtsMu.Unlock()
	st := s.stmts[query]
	if st == nil {
		var err error
		if st, err = s.db.PrepareContext(ctx, query); err != nil {
			return nil, err
		}
		if s.stmts == nil {
			s.stmts = map[string]*sql.Stmt{}
		}
		s.stmts[query] = st
	}
	return tx.StmtContext(ctx, st), nil
}

// ensureMigrated runs the migrations once; after a failure the next call
// tries again.
func (s *SQLStore) ensureMigrated(ctx context.Context) error {
	s.migrateMu.Lock()
	defer s.migrateMu.Unlock()
	if s.migrated {
		return nil
	}
	if err := migrate(ctx, s.db, s.driver); err != nil {
		return fmt.Errorf("ledger: migrating the %s schema: %w", s.driver, err)
	}
	s.migrated = true
	return nil
}

// migration is one embedded file, migrations/<driver>/NNNN_name.sql.
type migration struct {
	version int
	name    string
	sql     string
}

// migrationsFor lists a driver's migrations in version order. A file name
// must start with its version number: 0001_requests.sql, 0002_budgets.sql.
func migrationsFor(driver string) ([]migration, error) {
	dir := path.Join("migrations", driver)
	entries, err := fs.ReadDir(migrationFiles, dir)
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: the name must start with a version number, as in 0002_name.sql", name)
		}
		body, err := fs.ReadFile(migrationFiles, path.Join(dir, name))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: name, sql: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i := 1; i < len(out); i++ {
		if out[i].version == out[i-1].version {
			return nil, fmt.Errorf("migrations %s and %s share version %d", out[i-1].name, out[i].name, out[i].version)
		}
	}
	return out, nil
}

// migrate applies the migrations not yet in schema_migrations, each in its
// own transaction with its version row. Several processes may start at
// once: PostgreSQL serialises them with an advisory lock, SQLite with its
// write lock (immediate transactions), and each migration checks again
// inside its transaction whether another process applied it meanwhile.
func migrate(ctx context.Context, db *sql.DB, driver string) error {
	return migrateUpTo(ctx, db, driver, math.MaxInt)
}

// migrateUpTo applies the migrations up to version last (tests use it to
// build a database as an older release left it).
func migrateUpTo(ctx context.Context, db *sql.DB, driver string, last int) error {
	list, err := migrationsFor(driver)
	if err != nil {
		return err
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if driver == DriverPostgres {
		const lockKey = 7246110401 // arbstr ledger migrations
		if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
			return err
		}
		defer conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockKey)
	}
	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER NOT NULL PRIMARY KEY,
		name TEXT NOT NULL,
		applied_at BIGINT NOT NULL)`); err != nil {
		return err
	}
	mark := "?"
	if driver == DriverPostgres {
		mark = "$1"
	}
	for _, m := range list {
		if m.version > last {
			break
		}
		if err := applyMigration(ctx, conn, driver, mark, m); err != nil {
			return fmt.Errorf("%s: %w", m.name, err)
		}
	}
	return nil
}

func applyMigration(ctx context.Context, conn *sql.Conn, driver, mark string, m migration) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM schema_migrations WHERE version = "+mark, m.version).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return err
	}
	insert := "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)"
	if driver == DriverPostgres {
		insert = "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)"
	}
	if _, err := tx.ExecContext(ctx, insert, m.version, m.name, time.Now().UnixMilli()); err != nil {
		return err
	}
	return tx.Commit()
}
