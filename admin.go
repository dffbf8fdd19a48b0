package arbstr

import (
	"encoding/json"
	"fmt"
	"github.com/arbstr/caddy-arbstr/ledger/dashboard"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// Where the admin API shows and resets provider state.
const (
	adminProvidersPath = "/arbstr/providers"
	adminResetPath     = "/arbstr/providers/reset"
)

// adminAPI is the admin.api.arbstr module: GET /arbstr/providers on Caddy's
// admin endpoint lists every configured provider with its prices, models and
// health (breaker state, cooldown, recent failures); POST
// /arbstr/providers/reset (optionally ?provider=NAME&model=M) closes
// breakers and ends cooldowns. Caddy loads every module of the admin.api
// namespace by itself, so it needs no configuration.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.arbstr",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns /arbstr/providers, /arbstr/providers/reset, the ledger's
// /arbstr/stats and /arbstr/requests, and the dashboard page.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return append([]caddy.AdminRoute{
		{Pattern: adminProvidersPath, Handler: caddy.AdminHandlerFunc(a.handleProviders)},
		{Pattern: adminResetPath, Handler: caddy.AdminHandlerFunc(a.handleReset)},
		{Pattern: adminDashboardPath, Handler: dashboardRoute()},
	}, ledgerRoutes()...)
}

// handleProviders answers GET /arbstr/providers with a JSON array of
// providers. It reads the pooled health, which outlives any one config, so
// it shows the providers of the config running now (and, for the moment of a
// reload, those of the config being replaced).
func (a *adminAPI) handleProviders(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddy.APIError{
			HTTPStatus: http.StatusMethodNotAllowed,
			Err:        fmt.Errorf("method %s not allowed; use GET", r.Method),
		}
	}
	list := allProviderStatus(time.Now())
	if list == nil {
		list = []providerStatus{} // an empty array, not null
	}
	for i := range list {
		list[i].URL = redactURL(list[i].URL)
	}
	return writeJSON(w, r, list)
}

// handleReset answers POST /arbstr/providers/reset: it closes the breakers
// and ends the cooldowns of every provider, or of the one named by
// ?provider=, for every model or the one named by ?model=, and lists what it
// cleared as {"reset":[{"provider","url","model"}...]}. Counts of past
// failures and successes are kept.
func (a *adminAPI) handleReset(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		return caddy.APIError{
			HTTPStatus: http.StatusMethodNotAllowed,
			Err:        fmt.Errorf("method %s not allowed; use POST", r.Method),
		}
	}
	q := r.URL.Query()
	cleared, err := resetHealth(q.Get("provider"), q.Get("model"))
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: err}
	}
	for i := range cleared {
		cleared[i].URL = redactURL(cleared[i].URL)
	}
	body, err := json.Marshal(struct {
		Reset []resetTarget `json:"reset"`
	}{cleared})
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, err = w.Write(append(body, '\n'))
	return err
}

// redactURL drops the parts of a provider URL that may carry a secret: user
// information, the query string (some providers take ?key=...) and the
// fragment. A URL that cannot be parsed is not shown at all.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	u.User = nil
	u.RawQuery = ""
	u.ForceQuery = false
	u.Fragment = ""
	u.RawFragment = ""
	return u.String()
}

// Interface guards
var (
	_ caddy.Module      = (*adminAPI)(nil)
	_ caddy.AdminRouter = (*adminAPI)(nil)
)

// adminDashboardPath serves the ledger's page (ledger/dashboard).
const adminDashboardPath = "/arbstr/dashboard"

// dashboardRoute serves the dashboard page; it reads the other /arbstr/
// endpoints from the browser.
func dashboardRoute() caddy.AdminHandler {
	page := dashboard.Handler()
	return caddy.AdminHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		page.ServeHTTP(w, r)
		return nil
	})
}
