package arbstr

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminProvidersPath is where the admin API shows provider state.
const adminProvidersPath = "/arbstr/providers"

// adminAPI is the admin.api.arbstr module: GET /arbstr/providers on Caddy's
// admin endpoint lists every configured provider with its prices, models and
// health (breaker state, cooldown, recent failures). Caddy loads every module
// of the admin.api namespace by itself, so it needs no configuration.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.arbstr",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the /arbstr/providers route and the ledger's
// /arbstr/stats and /arbstr/requests.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return append([]caddy.AdminRoute{{
		Pattern: adminProvidersPath,
		Handler: caddy.AdminHandlerFunc(a.handleProviders),
	}}, ledgerRoutes()...)
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
	body, err := json.Marshal(list)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if r.Method == http.MethodHead {
		return nil
	}
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
