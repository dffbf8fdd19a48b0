// Package pgtest gives tests a PostgreSQL database of their own on the
// server at 127.0.0.1:5432 (user postgres), dropped when the test ends.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

// Server is the DSN of the PostgreSQL server's maintenance database.
const Server = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// Database creates a uniquely named database and returns its DSN. When the
// server is not running the test fails, saying how to start it; set
// ARBSTR_TEST_NO_POSTGRES=1 to skip such tests instead.
func Database(t testing.TB) string {
	t.Helper()
	if os.Getenv("ARBSTR_TEST_NO_POSTGRES") == "1" {
		t.Skip("ARBSTR_TEST_NO_POSTGRES=1: PostgreSQL tests skipped")
	}
	admin, err := sql.Open("pgx", Server)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		admin.Close()
		t.Fatalf("PostgreSQL at 127.0.0.1:5432 is not reachable (%v); start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start", err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "arbstr_test_" + hex.EncodeToString(b[:])
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		admin.Close()
		t.Fatalf("creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dropping database %s: %v", name, err)
		}
		admin.Close()
	})
	return "postgres://postgres@127.0.0.1:5432/" + name + "?sslmode=disable"
}
