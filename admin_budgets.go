package arbstr

import (
	"context"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"

	"github.com/arbstr/caddy-arbstr/ledger"
)

func init() {
	caddy.RegisterModule(adminBudgets{})
}

// adminBudgetsPath is where the admin API lists budgets.
const adminBudgetsPath = "/arbstr/budgets"

// adminBudgets is the admin.api.arbstr_budgets module: GET /arbstr/budgets
// on Caddy's admin endpoint lists each budget key in its current period
// with its limit, what it spent and what requests in flight hold reserved
// (SPEC §17). With PostgreSQL every instance answers for all. Caddy loads
// every module of the admin.api namespace by itself.
type adminBudgets struct{}

// CaddyModule returns the Caddy module information.
func (adminBudgets) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.arbstr_budgets",
		New: func() caddy.Module { return new(adminBudgets) },
	}
}

// Routes returns the /arbstr/budgets route.
func (a *adminBudgets) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{
		Pattern: adminBudgetsPath,
		Handler: caddy.AdminHandlerFunc(a.handleBudgets),
	}}
}

// handleBudgets answers GET /arbstr/budgets with
// {"budgets":[{"name","per","key","period","period_start","limit","spent","reserved"}]}.
func (a *adminBudgets) handleBudgets(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use GET", r.Method)}
	}
	out := struct {
		Budgets []ledger.BudgetState `json:"budgets"`
	}{Budgets: []ledger.BudgetState{}}
	if app := activeApp.Load(); app != nil && app.budgets != nil {
		ctx, cancel := context.WithTimeout(r.Context(), budgetStoreTimeout)
		defer cancel()
		list, err := app.budgets.store.List(ctx, app.budgets.list)
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable,
				Err: fmt.Errorf("the budget store cannot be reached; retry later: %w", err)}
		}
		out.Budgets = list
	}
	return writeJSON(w, r, out)
}

// Interface guards
var (
	_ caddy.Module      = (*adminBudgets)(nil)
	_ caddy.AdminRouter = (*adminBudgets)(nil)
)
