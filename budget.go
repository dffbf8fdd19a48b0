package arbstr

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/arbstr/caddy-arbstr/ledger"
)

// Budget defaults and bounds (SPEC §12).
const (
	defaultReserveTokens = 4096
	// budgetStoreTimeout bounds one call to the budget store on the
	// request path; past it the store counts as unreachable.
	budgetStoreTimeout = 5 * time.Second
	// budgetRetryAfter is the Retry-After of a 503 while the store is
	// unreachable.
	budgetRetryAfter = 5 * time.Second
	// headerBudgetRemaining carries the sats a request's budgets have left.
	headerBudgetRemaining = "x-arbstr-budget-remaining"
	// maxBudgetLease bounds budget_lease: SPEC §12 releases a dead
	// process's reservation within 10 minutes.
	maxBudgetLease = 10 * time.Minute
)

// BudgetConfig is one spend cap (SPEC §12), kept in the ledger's database
// so that reloads and several instances sharing PostgreSQL see the same
// spending. A request counts against every configured budget, under the
// key its `per` picks.
type BudgetConfig struct {
	// Name identifies the budget (in the store, in /arbstr/budgets and in
	// error messages). Renaming a budget starts it afresh.
	Name string `json:"name"`
	// Per is what the budget is counted per: client (the app's client_id
	// value; requests without one share the key ""), policy (the policy
	// that applied; "" for none), model (the public model name) or global.
	Per string `json:"per"`
	// Limit is the cap in sats per key and period.
	Limit int64 `json:"limit"`
	// Period is hour, day, week, month (UTC calendar) or total.
	Period string `json:"period"`
	// ReserveTokens is the output a request without max_tokens (or
	// max_completion_tokens) is assumed to produce when its worst case is
	// reserved. Default: 4096.
	ReserveTokens int `json:"reserve_tokens,omitempty"`
	// FailOpen admits requests without a reservation while the budget
	// store cannot be reached. Default: refuse them with 503.
	FailOpen bool `json:"fail_open,omitempty"`
}

// budgetSet is the provisioned form of the app's budgets.
type budgetSet struct {
	store         ledger.Budgets
	list          []ledger.Budget
	configs       []*BudgetConfig
	reserveTokens int  // the largest of the budgets', for requests without max_tokens
	failOpen      bool // every budget is fail_open
	lease         time.Duration
	logger        *zap.Logger
}

// provisionBudgets checks the budgets and attaches them to the ledger's
// store. The state lives in the database, so a reload keeps it.
func (a *App) provisionBudgets() error {
	if len(a.Budgets) == 0 {
		return nil
	}
	if a.ledger == nil {
		return fmt.Errorf("arbstr: budgets are kept in the ledger's database, and the ledger is off; use 'ledger sqlite' or 'ledger postgres <url>'")
	}
	set := &budgetSet{failOpen: true, logger: a.logger}
	seen := map[string]bool{}
	for _, c := range a.Budgets {
		if c == nil {
			continue
		}
		b := ledger.Budget{Name: c.Name, Per: c.Per, Period: c.Period, LimitMSat: c.Limit * 1000}
		if c.Limit > 1<<40 {
			return fmt.Errorf("arbstr: budget %s: limit %d is more sats than exist", c.Name, c.Limit)
		}
		if err := b.Validate(); err != nil {
			return fmt.Errorf("arbstr: %w", err)
		}
		if seen[c.Name] {
			return fmt.Errorf("arbstr: budget %s is defined twice; give each budget its own name", c.Name)
		}
		seen[c.Name] = true
		if c.ReserveTokens < 0 {
			return fmt.Errorf("arbstr: budget %s: reserve_tokens must be a positive number of tokens", c.Name)
		}
		if c.ReserveTokens == 0 {
			c.ReserveTokens = defaultReserveTokens
		}
		set.reserveTokens = max(set.reserveTokens, c.ReserveTokens)
		set.failOpen = set.failOpen && c.FailOpen
		set.list = append(set.list, b)
		set.configs = append(set.configs, c)
	}
	if a.BudgetLease < 0 || time.Duration(a.BudgetLease) > maxBudgetLease {
		return fmt.Errorf("arbstr: budget_lease must be between 1s and %s, so that a dead process's reservations lapse soon", maxBudgetLease)
	}
	sqlBudgets := a.ledger.store.Budgets(ledger.BudgetOptions{Lease: time.Duration(a.BudgetLease)})
	set.store, set.lease = sqlBudgets, sqlBudgets.Lease()
	a.budgets = set
	return nil
}

// sweepBudgets deletes reservations whose lease ran out (they already no
// longer count; this keeps the table small).
func (a *App) sweepBudgets(ctx context.Context) {
	if a.budgets == nil {
		return
	}
	if s, ok := a.budgets.store.(interface {
		Sweep(context.Context) (int64, error)
	}); ok {
		if _, err := s.Sweep(ctx); err != nil {
			a.logger.Warn("budgets: deleting expired reservations failed; trying again later", zap.Error(err))
		}
	}
}

// parseBudget reads one `budget NAME { … }` block of the arbstr global
// option:
//
//	budget <name> {
//		per            client|policy|model|global
//		limit          <sats>
//		period         hour|day|week|month|total
//		reserve_tokens <n>      # default 4096
//		fail_open               # admit while the store is unreachable
//	}
func parseBudget(d *caddyfile.Dispenser) (*BudgetConfig, error) {
	if !d.NextArg() {
		return nil, d.Err("budget needs a name: budget <name> { per …; limit …; period … }")
	}
	c := &BudgetConfig{Name: d.Val()}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(1) {
		key := d.Val()
		switch key {
		case "fail_open":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			c.FailOpen = true
			continue
		case "per", "limit", "period", "reserve_tokens":
		default:
			return nil, d.Errf("budget %s: unknown setting %q; known: per, limit, period, reserve_tokens, fail_open", c.Name, key)
		}
		if !d.NextArg() {
			return nil, d.ArgErr()
		}
		val := d.Val()
		if d.NextArg() {
			return nil, d.ArgErr()
		}
		switch key {
		case "per":
			c.Per = val
		case "period":
			c.Period = val
		case "limit":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n <= 0 {
				return nil, d.Errf("budget %s: limit %q; want a positive whole number of sats", c.Name, val)
			}
			c.Limit = n
		case "reserve_tokens":
			n, err := strconv.Atoi(val)
			if err != nil || n <= 0 {
				return nil, d.Errf("budget %s: reserve_tokens %q; want a positive number of tokens", c.Name, val)
			}
			c.ReserveTokens = n
		}
	}
	b := ledger.Budget{Name: c.Name, Per: c.Per, Period: c.Period, LimitMSat: c.Limit * 1000}
	if err := b.Validate(); err != nil {
		return nil, d.Err(err.Error())
	}
	return c, nil
}

// budgetHold is one admitted request's reservation while it runs.
type budgetHold struct {
	set       *budgetSet
	admission ledger.Admission
	renewMu   sync.Mutex
	renew     *time.Timer // renews the lease while the request runs
	done      bool
}

// admitBudget reserves the request's worst case against every budget
// before any upstream call (SPEC §12). It answers the client itself (429
// or 503) and returns false when the request may not go on.
func (ex *exchange) admitBudget(pl *plan) bool {
	app := ex.h.app
	if app == nil || app.budgets == nil {
		return true
	}
	set := app.budgets
	r := ledger.Reservation{ID: ex.requestID, AmountMSat: ledger.MSat(worstCase(pl.providers(), ex, set.reserveTokens))}
	for _, b := range set.list {
		r.Charges = append(r.Charges, ledger.Charge{Budget: b, Key: ex.budgetKey(app, pl, b.Per)})
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ex.r.Context()), budgetStoreTimeout)
	adm, err := set.store.Reserve(ctx, r)
	cancel()
	if err != nil {
		if set.failOpen {
			set.logger.Warn("budgets: store unreachable; admitting without a reservation (fail_open)", zap.Error(err))
			return true
		}
		set.logger.Error("budgets: store unreachable; refusing requests a budget covers", zap.Error(err))
		ex.fail(errBudgetStoreDown())
		return false
	}
	ex.w.Header().Set(headerBudgetRemaining, formatSats(adm.RemainingMSat))
	if !adm.Admitted {
		ex.fail(errBudgetExceeded(adm))
		return false
	}
	hold := &budgetHold{set: set, admission: adm}
	hold.renewMu.Lock()
	hold.renew = time.AfterFunc(set.lease/3, hold.renewLease)
	hold.renewMu.Unlock()
	ex.budget = hold
	return true
}

// worstCase is the dearest candidate's cost for the body's bytes / 3 as
// input tokens and max_tokens (else reserveTokens) as output, in sats.
func worstCase(candidates []*provider, ex *exchange, reserveTokens int) float64 {
	in := len(ex.body) / 3
	out := ex.facts.expectedOutput(reserveTokens)
	var dearest float64
	for _, p := range candidates {
		dearest = max(dearest, p.expectedCost(in, out))
	}
	return dearest
}

// budgetKey is the key a request counts under in a budget counted per per.
func (ex *exchange) budgetKey(app *App, pl *plan, per string) string {
	switch per {
	case ledger.PerClient:
		if app.ClientID == "" {
			return ""
		}
		repl, _ := ex.r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl == nil {
			return ""
		}
		return repl.ReplaceAll(app.ClientID, "")
	case ledger.PerPolicy:
		if pl.policy != nil {
			return pl.policy.name
		}
	case ledger.PerModel:
		return ex.facts.model
	}
	return ""
}

// renewLease extends the reservation of a request still running (a long
// stream), every lease/3, so that only a dead process's reservations
// expire.
func (h *budgetHold) renewLease() {
	h.renewMu.Lock()
	defer h.renewMu.Unlock()
	if h.done {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), budgetStoreTimeout)
	if err := h.set.store.Renew(ctx, h.admission); err != nil {
		h.set.logger.Warn("budgets: renewing a reservation failed; trying again", zap.Error(err))
	}
	cancel()
	h.renew.Reset(h.set.lease / 3)
}

// settleBudget charges the request's actual cost when it ends: the cost of
// the usage the provider reported; nothing when no provider answered
// (or only refused). When a provider answered but reported no usage (a
// client that left mid-stream cuts it short), the reservation is charged
// whole: a budget never counts less than could have been spent.
func (ex *exchange) settleBudget(cost float64, costKnown bool) {
	h := ex.budget
	if h == nil {
		return
	}
	h.renewMu.Lock()
	h.done = true
	h.renew.Stop()
	h.renewMu.Unlock()
	var actual int64
	switch {
	case costKnown:
		actual = ledger.MSat(cost)
	case ex.provider != nil && ex.outcome != "relayed":
		actual = h.admission.Reservation.AmountMSat
	}
	ctx, cancel := context.WithTimeout(context.Background(), budgetStoreTimeout)
	defer cancel()
	if err := h.set.store.Settle(ctx, h.admission, actual); err != nil {
		h.set.logger.Error("budgets: settling a request failed; its reservation lapses when its lease runs out",
			zap.String("request_id", ex.requestID), zap.Int64("cost_msat", actual), zap.Error(err))
	}
}

// formatSats writes millisatoshis as sats, a number ≥ 0.
func formatSats(msat int64) string {
	return strconv.FormatFloat(ledger.Sats(max(msat, 0)), 'f', -1, 64)
}

func errBudgetExceeded(adm ledger.Admission) *apiError {
	return &apiError{status: http.StatusTooManyRequests,
		message: fmt.Sprintf("the budget %q has %s sats left, less than this request may cost (its worst case, %s sats); lower max_tokens, or wait for the budget's next period",
			adm.RefusedBy, formatSats(adm.RemainingMSat), formatSats(adm.Reservation.AmountMSat)),
		errType: "insufficient_quota", code: "insufficient_quota", noRetry: true}
}

func errBudgetStoreDown() *apiError {
	return &apiError{status: http.StatusServiceUnavailable,
		message: "the budget store cannot be reached, so spending cannot be checked; retry later",
		errType: "server_error", code: "budget_unavailable", retryAfter: budgetRetryAfter}
}
