package ledger

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/arbstr/caddy-arbstr/internal/pgtest"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// openInstances opens n handles (n connection pools, as n Caddy instances
// would) on one fresh database of the driver.
func openInstances(t testing.TB, driver string, n int) []*SQLStore {
	t.Helper()
	dsn := filepath.Join(t.TempDir(), "ledger.db")
	if driver == DriverPostgres {
		dsn = pgtest.Database(t)
	}
	out := make([]*SQLStore, n)
	for i := range out {
		s, err := Open(context.Background(), driver, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		out[i] = s
	}
	return out
}

func eachDriver(t *testing.T, test func(t *testing.T, driver string)) {
	for _, d := range []string{DriverSQLite, DriverPostgres} {
		t.Run(d, func(t *testing.T) { test(t, d) })
	}
}

var daily = Budget{Name: "daily", Per: PerClient, Period: PeriodDay, LimitMSat: 10_000}

func reservation(id string, amount int64, budgets ...Budget) Reservation {
	r := Reservation{ID: id, AmountMSat: amount}
	for _, b := range budgets {
		r.Charges = append(r.Charges, Charge{Budget: b, Key: "alice"})
	}
	return r
}

// state returns the listed state of one budget key.
func state(t *testing.T, b Budgets, bu Budget, key string) BudgetState {
	t.Helper()
	list, err := b.List(context.Background(), []Budget{bu})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s.Key == key {
			return s
		}
	}
	return BudgetState{Name: bu.Name, Key: key, Limit: Sats(bu.LimitMSat)}
}

func TestBudgetSequentialStopsAtLimit(t *testing.T) {
	eachDriver(t, func(t *testing.T, driver string) {
		ctx := context.Background()
		b := openInstances(t, driver, 1)[0].Budgets(BudgetOptions{})
		for i, wantLeft := range []int64{7000, 4000, 1000} {
			adm, err := b.Reserve(ctx, reservation(fmt.Sprint("r", i), 3000, daily))
			if err != nil {
				t.Fatal(err)
			}
			if !adm.Admitted || adm.RemainingMSat != wantLeft {
				t.Fatalf("request %d: admitted %v with %d msat left; want admitted with %d", i, adm.Admitted, adm.RemainingMSat, wantLeft)
			}
			if err := b.Settle(ctx, adm, 3000); err != nil {
				t.Fatal(err)
			}
		}
		adm, err := b.Reserve(ctx, reservation("r3", 3000, daily))
		if err != nil {
			t.Fatal(err)
		}
		if adm.Admitted || adm.RefusedBy != "daily" || adm.RemainingMSat != 1000 {
			t.Fatalf("4th request: %+v; want refused by daily with 1000 msat left", adm)
		}
		st := state(t, b, daily, "alice")
		if st.Spent != 9 || st.Reserved != 0 || st.Limit != 10 || st.Per != "client" || st.Period != "day" {
			t.Fatalf("state %+v; want 9 sats spent of 10, nothing reserved", st)
		}
	})
}

// reserveConcurrently runs n reservations of amount at once, spread over
// the given budget handles, then settles each admitted one at amount. It
// returns how many were admitted.
func reserveConcurrently(t *testing.T, handles []*SQLBudgets, n int, amount int64) int {
	t.Helper()
	var admitted atomic.Int32
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		b := handles[i%len(handles)]
		wg.Go(func() {
			<-start
			ctx := context.Background()
			adm, err := b.Reserve(ctx, reservation(fmt.Sprint("c", i), amount, daily))
			if err != nil {
				errs <- err
				return
			}
			if adm.Admitted {
				admitted.Add(1)
				errs <- b.Settle(ctx, adm, amount)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return int(admitted.Load())
}

func TestBudgetConcurrentReservationsNeverOverrun(t *testing.T) {
	eachDriver(t, func(t *testing.T, driver string) {
		b := openInstances(t, driver, 1)[0].Budgets(BudgetOptions{})
		got := reserveConcurrently(t, []*SQLBudgets{b}, 30, 1000)
		st := state(t, b, daily, "alice")
		if got != 10 || st.Spent != 10 || st.Reserved != 0 {
			t.Fatalf("30 concurrent requests against a budget for 10: %d admitted, %v sats spent; want 10 and 10", got, st.Spent)
		}
	})
}

// Two store handles are two connection pools, as two Caddy instances
// sharing one database have.
func TestBudgetTwoInstancesNeverOverrun(t *testing.T) {
	eachDriver(t, func(t *testing.T, driver string) {
		stores := openInstances(t, driver, 2)
		handles := []*SQLBudgets{stores[0].Budgets(BudgetOptions{}), stores[1].Budgets(BudgetOptions{})}
		got := reserveConcurrently(t, handles, 30, 1000)
		for i, h := range handles {
			st := state(t, h, daily, "alice")
			if got != 10 || st.Spent != 10 {
				t.Fatalf("instance %d sees %v sats spent after %d admissions; want 10 and 10", i, st.Spent, got)
			}
		}
	})
}

func TestBudgetAllOrNone(t *testing.T) {
	eachDriver(t, func(t *testing.T, driver string) {
		ctx := context.Background()
		b := openInstances(t, driver, 1)[0].Budgets(BudgetOptions{})
		small := Budget{Name: "small", Per: PerGlobal, Period: PeriodTotal, LimitMSat: 2000}
		adm, err := b.Reserve(ctx, reservation("a", 1500, daily, small))
		if err != nil || !adm.Admitted || adm.RemainingMSat != 500 {
			t.Fatalf("first: %+v %v; want admitted with 500 left (the smaller room)", adm, err)
		}
		adm2, err := b.Reserve(ctx, reservation("b", 1000, daily, small))
		if err != nil || adm2.Admitted || adm2.RefusedBy != "small" {
			t.Fatalf("second: %+v %v; want refused by small", adm2, err)
		}
		if st := state(t, b, daily, "alice"); st.Reserved != 1.5 {
			t.Fatalf("daily holds %v sats; want 1.5 (the refused request holds nothing)", st.Reserved)
		}
		if err := b.Settle(ctx, adm, 1200); err != nil {
			t.Fatal(err)
		}
		for _, bu := range []Budget{daily, small} {
			if st := state(t, b, bu, "alice"); st.Spent != 1.2 || st.Reserved != 0 {
				t.Fatalf("%s after settling: %+v; want 1.2 spent, nothing reserved", bu.Name, st)
			}
		}
	})
}

func TestBudgetFailedRequestLeavesItUnchanged(t *testing.T) {
	eachDriver(t, func(t *testing.T, driver string) {
		ctx := context.Background()
		b := openInstances(t, driver, 1)[0].Budgets(BudgetOptions{})
		adm, err := b.Reserve(ctx, reservation("f", 10_000, daily))
		if err != nil || !adm.Admitted {
			t.Fatalf("%+v %v", adm, err)
		}
		if err := b.Settle(ctx, adm, 0); err != nil {
			t.Fatal(err)
		}
		if st := state(t, b, daily, "alice"); st.Spent != 0 || st.Reserved != 0 {
			t.Fatalf("after a failed request: %+v; want nothing spent or reserved", st)
		}
		adm, err = b.Reserve(ctx, reservation("g", 10_000, daily))
		if err != nil || !adm.Admitted || adm.RemainingMSat != 0 {
			t.Fatalf("the whole limit after a failed request: %+v %v", adm, err)
		}
	})
}

// A process that died never settles; its reservation stops counting when
// the lease runs out, unless it was renewed.
func TestBudgetExpiredReservationReleased(t *testing.T) {
	eachDriver(t, func(t *testing.T, driver string) {
		ctx := context.Background()
		clock := &fakeClock{now: time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)}
		stores := openInstances(t, driver, 2)
		dead := stores[0].Budgets(BudgetOptions{Now: clock.Now})
		live := stores[1].Budgets(BudgetOptions{Now: clock.Now})
		if _, err := dead.Reserve(ctx, reservation("dead", 6000, daily)); err != nil {
			t.Fatal(err)
		}
		renewed, err := live.Reserve(ctx, reservation("renewed", 4000, daily))
		if err != nil || !renewed.Admitted {
			t.Fatalf("%+v %v", renewed, err)
		}
		if adm, _ := live.Reserve(ctx, reservation("x", 1, daily)); adm.Admitted {
			t.Fatal("admitted past a limit held by reservations")
		}
		clock.Add(DefaultLease - time.Minute)
		if err := live.Renew(ctx, renewed); err != nil {
			t.Fatal(err)
		}
		clock.Add(2 * time.Minute) // the dead one's lease has run out
		adm, err := live.Reserve(ctx, reservation("y", 6000, daily))
		if err != nil || !adm.Admitted || adm.RemainingMSat != 0 {
			t.Fatalf("after the dead process's lease: %+v %v; want 6000 msat admitted, 0 left (the renewed 4000 still held)", adm, err)
		}
		if n, err := live.Sweep(ctx); err != nil || n != 1 {
			t.Fatalf("sweep deleted %d (%v); want the one expired reservation", n, err)
		}
		if DefaultLease >= 10*time.Minute {
			t.Fatalf("DefaultLease %v: a dead process's reservation must go within 10 minutes", DefaultLease)
		}
	})
}

func TestBudgetNewPeriodStartsEmpty(t *testing.T) {
	eachDriver(t, func(t *testing.T, driver string) {
		ctx := context.Background()
		clock := &fakeClock{now: time.Date(2026, 12, 2, 23, 59, 0, 0, time.UTC)}
		b := openInstances(t, driver, 1)[0].Budgets(BudgetOptions{Now: clock.Now})
		adm, _ := b.Reserve(ctx, reservation("d1", 10_000, daily))
		clock.Add(2 * time.Minute)
		if err := b.Settle(ctx, adm, 10_000); err != nil { // ends after midnight: charged to the day it began
			t.Fatal(err)
		}
		adm, err := b.Reserve(ctx, reservation("d2", 10_000, daily))
		if err != nil || !adm.Admitted {
			t.Fatalf("the next day: %+v %v; want the whole limit", adm, err)
		}
		if st := state(t, b, daily, "alice"); st.Spent != 0 || st.Reserved != 10 || !st.PeriodStart.Equal(time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)) {
			t.Fatalf("today's state %+v", st)
		}
	})
}

func TestBudgetListShowsGlobalBeforeFirstRequest(t *testing.T) {
	b := openInstances(t, DriverSQLite, 1)[0].Budgets(BudgetOptions{})
	all := Budget{Name: "all", Per: PerGlobal, Period: PeriodMonth, LimitMSat: 5_000_000}
	list, err := b.List(context.Background(), []Budget{all, daily})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "all" || list[0].Limit != 5000 || list[0].Key != "" || list[0].PeriodStart.Day() != 1 {
		t.Fatalf("list %+v; want the global budget alone, unused", list)
	}
}

func TestPeriodStart(t *testing.T) {
	at := time.Date(2026, 12, 2, 15, 4, 5, 0, time.FixedZone("x", 3600)) // Wednesday, 14:04 UTC
	for period, want := range map[string]time.Time{
		PeriodHour:  time.Date(2026, 12, 2, 14, 0, 0, 0, time.UTC),
		PeriodDay:   time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC),
		PeriodWeek:  time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC),
		PeriodMonth: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
		PeriodTotal: time.Unix(0, 0).UTC(),
	} {
		got, err := PeriodStart(period, at)
		if err != nil || !got.Equal(want) {
			t.Errorf("%s: %v %v; want %v", period, got, err, want)
		}
	}
	sunday := time.Date(2026, 12, 6, 23, 0, 0, 0, time.UTC)
	if got, _ := PeriodStart(PeriodWeek, sunday); !got.Equal(time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("a Sunday belongs to the week from the Monday before, got %v", got)
	}
	if _, err := PeriodStart("fortnight", at); err == nil {
		t.Error("unknown period accepted")
	}
}

func TestBudgetValidate(t *testing.T) {
	for _, bad := range []Budget{
		{Per: PerClient, Period: PeriodDay, LimitMSat: 1},
		{Name: "x", Per: "team", Period: PeriodDay, LimitMSat: 1},
		{Name: "x", Per: PerClient, Period: "year", LimitMSat: 1},
		{Name: "x", Per: PerClient, Period: PeriodDay},
	} {
		if bad.Validate() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if err := daily.Validate(); err != nil {
		t.Error(err)
	}
}

func TestMSat(t *testing.T) {
	for sats, want := range map[float64]int64{0: 0, -1: 0, 1: 1000, 0.0001: 1, 2.5: 2500, 1e30: maxSats * 1000} {
		if got := MSat(sats); got != want {
			t.Errorf("MSat(%v) = %d, want %d", sats, got, want)
		}
	}
}
