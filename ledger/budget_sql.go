package ledger

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// DefaultLease is how long a reservation holds budget without a Renew.
// A process that dies stops holding budget when its leases run out; the
// request path renews every DefaultLease/3 while a request runs.
const DefaultLease = 5 * time.Minute

// BudgetOptions tune an SQLBudgets.
type BudgetOptions struct {
	// Lease is how long a reservation counts without a Renew. Default:
	// DefaultLease.
	Lease time.Duration
	// Now is the clock (tests use a fake one). Default: time.Now.
	Now func() time.Time
}

// SQLBudgets keeps budgets in the tables budget_usage and
// budget_reservations of an SQLStore's database: SQLite for one instance,
// PostgreSQL for several sharing it.
//
// Admission is atomic in the database: one transaction locks each budget
// key's usage row (an upsert, in a fixed order so that two requests never
// wait on each other), reads the reservations that other transactions
// committed under that lock, and inserts its own only when they leave
// room. SQLite takes its write lock at BEGIN (immediate transactions),
// which serialises admissions of all processes on the file.
type SQLBudgets struct {
	store *SQLStore
	lease time.Duration
	now   func() time.Time
}

// Budgets returns the budget layer kept in this store's database.
func (s *SQLStore) Budgets(opts BudgetOptions) *SQLBudgets {
	if opts.Lease <= 0 {
		opts.Lease = DefaultLease
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &SQLBudgets{store: s, lease: opts.Lease, now: opts.Now}
}

// Lease is how long a reservation holds without a Renew.
func (b *SQLBudgets) Lease() time.Duration { return b.lease }

// sortCharges orders charges by budget name, the order rows are locked in.
func sortCharges(cs []Charge) []Charge {
	out := slices.Clone(cs)
	slices.SortFunc(out, func(a, b Charge) int {
		if c := strings.Compare(a.Budget.Name, b.Budget.Name); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	return out
}

// Reserve admits r when every budget has room, all or none.
func (b *SQLBudgets) Reserve(ctx context.Context, r Reservation) (Admission, error) {
	if r.ID == "" || len(r.Charges) == 0 {
		return Admission{}, errors.New("budgets: a reservation needs an id and at least one budget")
	}
	if r.AmountMSat < 0 {
		return Admission{}, errors.New("budgets: a reservation cannot be negative")
	}
	now := b.now()
	r.Charges = sortCharges(r.Charges)
	for i := range r.Charges {
		c := &r.Charges[i]
		if i > 0 && r.Charges[i-1].Budget.Name == c.Budget.Name {
			return Admission{}, fmt.Errorf("budgets: budget %s named twice in one reservation", c.Budget.Name)
		}
		start, err := PeriodStart(c.Budget.Period, now)
		if err != nil {
			return Admission{}, fmt.Errorf("budgets: budget %s: %w", c.Budget.Name, err)
		}
		c.PeriodStart = start
	}
	if err := b.store.ensureMigrated(ctx); err != nil {
		return Admission{}, err
	}
	tx, err := b.store.db.BeginTx(ctx, nil)
	if err != nil {
		return Admission{}, err
	}
	defer tx.Rollback()
	if b.store.driver == DriverPostgres {
		// A reservation is a lease, not a record: it need not wait for the
		// WAL flush (visibility and locking are unchanged; only a server
		// crash could lose the reservations of requests in flight).
		// Settlement, the spending itself, stays durable.
		if _, err := tx.ExecContext(ctx, "SET LOCAL synchronous_commit = off"); err != nil {
			return Admission{}, err
		}
	}
	adm := Admission{RemainingMSat: math.MaxInt64, Reservation: r}
	expires := now.Add(b.lease).UnixMilli()
	for _, c := range r.Charges {
		room, admitted, err := b.admitOne(ctx, tx, r, c, now, expires)
		if err != nil {
			return Admission{}, err
		}
		if !admitted {
			// The deferred rollback drops the reservations of the
			// budgets before this one: none or all.
			return Admission{RemainingMSat: max(room, 0), RefusedBy: c.Budget.Name, Reservation: r}, nil
		}
		adm.RemainingMSat = min(adm.RemainingMSat, room-r.AmountMSat)
	}
	if err := tx.Commit(); err != nil {
		return Admission{}, err
	}
	adm.Admitted = true
	return adm, nil
}

// admitOne locks the usage row of a budget key (creating it), then reads
// the live reservations under that lock and inserts this one when it fits:
// everything committed before the lock was granted counts, and nobody
// else can admit against this key until the transaction ends. It returns
// the room before this reservation (limit − spent − reserved).
func (b *SQLBudgets) admitOne(ctx context.Context, tx *sql.Tx, r Reservation, c Charge, now time.Time, expires int64) (int64, bool, error) {
	start := c.PeriodStart.UnixMilli()
	var spent int64
	err := tx.QueryRowContext(ctx, b.store.Rebind(`INSERT INTO budget_usage (name, key, period_start, spent)
		VALUES (?, ?, ?, 0)
		ON CONFLICT (name, key, period_start) DO UPDATE SET spent = budget_usage.spent
		RETURNING spent`), c.Budget.Name, c.Key, start).Scan(&spent)
	if err != nil {
		return 0, false, err
	}
	unreserved := c.Budget.LimitMSat - spent
	if b.store.driver == DriverPostgres {
		// One round trip: a new statement takes a new snapshot, after the
		// lock above was granted, so it sees every reservation committed
		// before; its two parts share that snapshot.
		var reserved, inserted int64
		err := tx.QueryRowContext(ctx, `WITH held AS (
				SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS reserved FROM budget_reservations
				WHERE name = $1 AND key = $2 AND period_start = $3 AND expires_at > $4),
			ins AS (
				INSERT INTO budget_reservations (id, name, key, period_start, amount, expires_at)
				SELECT $5, $1, $2, $3, $6, $7 FROM held WHERE $8 - held.reserved >= $6
				RETURNING 1)
			SELECT held.reserved, (SELECT COUNT(*) FROM ins) FROM held`,
			c.Budget.Name, c.Key, start, now.UnixMilli(), r.ID, r.AmountMSat, expires, unreserved).Scan(&reserved, &inserted)
		return unreserved - reserved, inserted == 1, err
	}
	var reserved int64
	err = tx.QueryRowContext(ctx, `SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM budget_reservations
		WHERE name = ? AND key = ? AND period_start = ? AND expires_at > ?`,
		c.Budget.Name, c.Key, start, now.UnixMilli()).Scan(&reserved)
	if err != nil {
		return 0, false, err
	}
	room := unreserved - reserved
	if r.AmountMSat > room {
		return room, false, nil
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO budget_reservations
		(id, name, key, period_start, amount, expires_at) VALUES (?, ?, ?, ?, ?, ?)`,
		r.ID, c.Budget.Name, c.Key, start, r.AmountMSat, expires)
	return room, err == nil, err
}

// Settle charges actualMSat to each budget of an admitted reservation and
// drops the reservation, in one transaction.
func (b *SQLBudgets) Settle(ctx context.Context, a Admission, actualMSat int64) error {
	if !a.Admitted {
		return nil
	}
	if actualMSat <= 0 {
		return b.Release(ctx, a)
	}
	if err := b.store.ensureMigrated(ctx); err != nil {
		return err
	}
	// One multi-row upsert, its rows in lock order.
	var q strings.Builder
	args := []any{a.Reservation.ID}
	q.WriteString("INSERT INTO budget_usage (name, key, period_start, spent) VALUES ")
	for i, c := range sortCharges(a.Reservation.Charges) {
		if i > 0 {
			q.WriteByte(',')
		}
		q.WriteString("(?, ?, ?, ?)")
		args = append(args, c.Budget.Name, c.Key, c.PeriodStart.UnixMilli(), actualMSat)
	}
	q.WriteString(" ON CONFLICT (name, key, period_start) DO UPDATE SET spent = budget_usage.spent + excluded.spent")
	if b.store.driver == DriverPostgres {
		// One statement, one round trip: the charge and the reservation's
		// removal commit together.
		_, err := b.store.db.ExecContext(ctx, b.store.Rebind("WITH gone AS (DELETE FROM budget_reservations WHERE id = ?) "+q.String()), args...)
		return err
	}
	tx, err := b.store.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, q.String(), args[1:]...); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM budget_reservations WHERE id = ?`, a.Reservation.ID); err != nil {
		return err
	}
	return tx.Commit()
}

// Release drops a reservation; nothing is charged.
func (b *SQLBudgets) Release(ctx context.Context, a Admission) error {
	if !a.Admitted {
		return nil
	}
	if err := b.store.ensureMigrated(ctx); err != nil {
		return err
	}
	_, err := b.store.db.ExecContext(ctx, b.store.Rebind(`DELETE FROM budget_reservations WHERE id = ?`), a.Reservation.ID)
	return err
}

// Renew extends a reservation's lease by Lease from now.
func (b *SQLBudgets) Renew(ctx context.Context, a Admission) error {
	if !a.Admitted {
		return nil
	}
	if err := b.store.ensureMigrated(ctx); err != nil {
		return err
	}
	_, err := b.store.db.ExecContext(ctx, b.store.Rebind(`UPDATE budget_reservations SET expires_at = ? WHERE id = ?`),
		b.now().Add(b.lease).UnixMilli(), a.Reservation.ID)
	return err
}

// Sweep deletes reservations whose lease ran out. They no longer count
// anyway; this only keeps the table small.
func (b *SQLBudgets) Sweep(ctx context.Context) (int64, error) {
	if err := b.store.ensureMigrated(ctx); err != nil {
		return 0, err
	}
	res, err := b.store.db.ExecContext(ctx, b.store.Rebind(`DELETE FROM budget_reservations WHERE expires_at <= ?`), b.now().UnixMilli())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// List reports each budget's keys in the current period. A global budget
// is listed even before its first request; other budgets list the keys
// that have been charged or reserved in this period.
func (b *SQLBudgets) List(ctx context.Context, budgets []Budget) ([]BudgetState, error) {
	if err := b.store.ensureMigrated(ctx); err != nil {
		return nil, err
	}
	now := b.now()
	out := []BudgetState{}
	for _, bu := range budgets {
		start, err := PeriodStart(bu.Period, now)
		if err != nil {
			return nil, fmt.Errorf("budgets: budget %s: %w", bu.Name, err)
		}
		rows, err := b.store.db.QueryContext(ctx, b.store.Rebind(`SELECT u.key, u.spent,
			CAST(COALESCE((SELECT SUM(r.amount) FROM budget_reservations r
				WHERE r.name = u.name AND r.key = u.key AND r.period_start = u.period_start AND r.expires_at > ?), 0) AS BIGINT)
			FROM budget_usage u WHERE u.name = ? AND u.period_start = ? ORDER BY u.key`),
			now.UnixMilli(), bu.Name, start.UnixMilli())
		if err != nil {
			return nil, err
		}
		n := 0
		for rows.Next() {
			var key string
			var spent, reserved int64
			if err := rows.Scan(&key, &spent, &reserved); err != nil {
				rows.Close()
				return nil, err
			}
			out = append(out, budgetState(bu, key, start, spent, reserved))
			n++
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
		if n == 0 && bu.Per == PerGlobal {
			out = append(out, budgetState(bu, "", start, 0, 0))
		}
	}
	return out, nil
}

func budgetState(bu Budget, key string, start time.Time, spent, reserved int64) BudgetState {
	return BudgetState{Name: bu.Name, Per: bu.Per, Key: key, Period: bu.Period, PeriodStart: start,
		Limit: Sats(bu.LimitMSat), Spent: Sats(spent), Reserved: Sats(reserved)}
}

// Interface guard
var _ Budgets = (*SQLBudgets)(nil)
