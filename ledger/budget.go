package ledger

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"
)

// Budgets is the budget layer (SPEC §12): spend caps that concurrent
// requests, and several instances sharing one database, cannot overrun.
//
// A request is admitted by reserving its worst-case cost against every
// budget that covers it, all or none; when it ends the reservation is
// settled at the actual cost (or released, for a failed request). These
// are the operations an external treasury service offers too, so such a
// service can be another implementation later.
//
// Amounts are millisatoshis (msat), so that fractional costs add up
// exactly.
type Budgets interface {
	// Reserve admits a request when, for every budget it names,
	// spent + reserved + r.Amount ≤ limit, and then holds r.Amount
	// against each until Settle or Release, or until the reservation's
	// lease runs out. Refused, nothing is held.
	Reserve(ctx context.Context, r Reservation) (Admission, error)
	// Settle charges the actual cost to every budget of an admitted
	// reservation and drops the reservation. An actual of 0 is a release.
	// The charge counts in the period the reservation was made in, also
	// when the lease ran out meanwhile (the money was spent).
	Settle(ctx context.Context, a Admission, actualMSat int64) error
	// Release drops a reservation without charging anything.
	Release(ctx context.Context, a Admission) error
	// Renew extends the lease of a reservation still in flight (a long
	// stream), so that only reservations whose process died expire.
	Renew(ctx context.Context, a Admission) error
	// List reports, for each budget, its keys in the current period with
	// what they spent and hold reserved.
	List(ctx context.Context, budgets []Budget) ([]BudgetState, error)
}

// Who a budget is counted per.
const (
	PerClient = "client"
	PerPolicy = "policy"
	PerModel  = "model"
	PerGlobal = "global"
)

// Budget periods: UTC calendar hour, day, ISO week (from Monday), month, or
// no period at all.
const (
	PeriodHour  = "hour"
	PeriodDay   = "day"
	PeriodWeek  = "week"
	PeriodMonth = "month"
	PeriodTotal = "total"
)

// Budget is one spend cap as configured.
type Budget struct {
	// Name identifies the budget; its rows in the store are keyed by it.
	Name string
	// Per is client, policy, model or global.
	Per string
	// Period is hour, day, week, month or total.
	Period string
	// LimitMSat is the cap per key and period.
	LimitMSat int64
}

// Validate says what is wrong with a budget, if anything.
func (b Budget) Validate() error {
	if b.Name == "" {
		return errors.New("a budget needs a name")
	}
	switch b.Per {
	case PerClient, PerPolicy, PerModel, PerGlobal:
	default:
		return fmt.Errorf("budget %s: per %q; use client, policy, model or global", b.Name, b.Per)
	}
	if _, err := PeriodStart(b.Period, time.Time{}); err != nil {
		return fmt.Errorf("budget %s: %w", b.Name, err)
	}
	if b.LimitMSat <= 0 {
		return fmt.Errorf("budget %s: the limit must be a positive number of sats", b.Name)
	}
	return nil
}

// PeriodStart is the start of the period that holds t (UTC). The total
// period starts at the Unix epoch.
func PeriodStart(period string, t time.Time) (time.Time, error) {
	t = t.UTC()
	switch period {
	case PeriodHour:
		return t.Truncate(time.Hour), nil
	case PeriodDay:
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC), nil
	case PeriodWeek:
		day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		back := (int(day.Weekday()) + 6) % 7 // days since Monday
		return day.AddDate(0, 0, -back), nil
	case PeriodMonth:
		return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC), nil
	case PeriodTotal:
		return time.Unix(0, 0).UTC(), nil
	}
	return time.Time{}, fmt.Errorf("period %q; use hour, day, week, month or total", period)
}

// Charge is one budget a request counts against, under one key.
type Charge struct {
	Budget Budget
	// Key is the client, policy or model the request counts under; ""
	// for global budgets (and for requests without a client).
	Key string
	// PeriodStart is set by Reserve: the period the request counts in.
	PeriodStart time.Time
}

// Reservation asks to hold an amount against some budgets.
type Reservation struct {
	// ID is unique per request (the request id).
	ID string
	// Charges are the budgets that cover the request; all must admit it.
	Charges []Charge
	// AmountMSat is the request's worst-case cost.
	AmountMSat int64
}

// Admission is the answer to a reservation.
type Admission struct {
	// Admitted is true when every budget had room; the amount is held.
	Admitted bool
	// RemainingMSat is the least room left among the budgets: after this
	// reservation when admitted, before it when refused. Never negative.
	RemainingMSat int64
	// RefusedBy names the budget that had no room, when refused.
	RefusedBy string
	// Reservation is what was held (charges with their periods), to hand
	// back to Settle, Release or Renew.
	Reservation Reservation
}

// BudgetState is one budget key in its current period, for GET
// /arbstr/budgets (SPEC §17). Amounts are sats.
type BudgetState struct {
	Name        string    `json:"name"`
	Per         string    `json:"per"`
	Key         string    `json:"key"`
	Period      string    `json:"period"`
	PeriodStart time.Time `json:"period_start"`
	Limit       float64   `json:"limit"`
	Spent       float64   `json:"spent"`
	Reserved    float64   `json:"reserved"`
}

// MSat converts sats to millisatoshis, rounding up: a reservation or a
// charge never comes out smaller than the cost.
func MSat(sats float64) int64 {
	if sats <= 0 || math.IsNaN(sats) {
		return 0
	}
	if sats >= maxSats {
		return maxSats * 1000 // far past any limit, and sums of many stay in int64
	}
	return int64(math.Ceil(sats*1000 - 1e-6))
}

// maxSats bounds an amount (2^40 sats, more than all bitcoin).
const maxSats = 1 << 40

// Sats converts millisatoshis to sats.
func Sats(msat int64) float64 { return float64(msat) / 1000 }
