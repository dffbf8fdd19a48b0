package arbstr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/arbstr/caddy-arbstr/ledger"
)

// Admin API paths of the ledger (SPEC §11).
const (
	adminStatsPath    = "/arbstr/stats"
	adminRequestsPath = "/arbstr/requests"
)

// ledgerQueryTimeout bounds one stats or requests query.
const ledgerQueryTimeout = 30 * time.Second

// ledgerRoutes are the admin routes of the ledger.
func ledgerRoutes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: adminStatsPath, Handler: caddy.AdminHandlerFunc(handleStats)},
		{Pattern: adminRequestsPath, Handler: caddy.AdminHandlerFunc(handleRequests)},
	}
}

// statsParams and requestsParams are the query parameters each endpoint
// takes; anything else is refused, so that a typo is not silently ignored.
var (
	filterParams   = append([]string{"since", "until"}, ledger.FilterColumns...)
	statsParams    = append([]string{"group_by"}, filterParams...)
	requestsParams = append([]string{"limit", "cursor"}, filterParams...)
)

// statsResponse is the answer of GET /arbstr/stats.
type statsResponse struct {
	Since  *time.Time     `json:"since"` // null: since the first row
	Until  time.Time      `json:"until"`
	Total  ledger.Totals  `json:"total"`
	Groups []ledger.Group `json:"groups"`
}

// handleStats answers GET /arbstr/stats: totals and groups over the rows
// the filters select.
func handleStats(w http.ResponseWriter, r *http.Request) error {
	store, err := ledgerForAdmin(r)
	if err != nil {
		return err
	}
	q, err := queryParams(r, statsParams)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	filter, err := parseFilter(q, now)
	if err != nil {
		return err
	}
	sq := ledger.StatsQuery{Filter: filter}
	for _, v := range q["group_by"] {
		for k := range strings.SplitSeq(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				sq.GroupBy = append(sq.GroupBy, k)
			}
		}
	}
	for _, k := range sq.GroupBy {
		if !slices.Contains(ledger.GroupColumns, k) {
			return badRequest("group_by %q: use any of %s, comma-separated", k, strings.Join(ledger.GroupColumns, ", "))
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), ledgerQueryTimeout)
	defer cancel()
	st, err := store.Stats(ctx, sq)
	if err != nil {
		return storeError(err)
	}
	out := statsResponse{Until: now, Total: st.Total, Groups: st.Groups}
	if !filter.Until.IsZero() {
		out.Until = filter.Until
	}
	if !filter.Since.IsZero() {
		out.Since = &filter.Since
	}
	return writeJSON(w, r, out)
}

// handleRequests answers GET /arbstr/requests: rows newest first, a page
// at a time.
func handleRequests(w http.ResponseWriter, r *http.Request) error {
	store, err := ledgerForAdmin(r)
	if err != nil {
		return err
	}
	q, err := queryParams(r, requestsParams)
	if err != nil {
		return err
	}
	filter, err := parseFilter(q, time.Now().UTC())
	if err != nil {
		return err
	}
	rq := ledger.RequestsQuery{Filter: filter, Cursor: q.Get("cursor")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > ledger.MaxLimit {
			return badRequest("limit %q: want a number from 1 to %d", v, ledger.MaxLimit)
		}
		rq.Limit = n
	}
	ctx, cancel := context.WithTimeout(r.Context(), ledgerQueryTimeout)
	defer cancel()
	page, err := store.Requests(ctx, rq)
	if err != nil {
		return storeError(err)
	}
	return writeJSON(w, r, page)
}

// ledgerForAdmin is the store of the running config's ledger, or the
// error to answer when there is none.
func ledgerForAdmin(r *http.Request) (ledger.Store, error) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return nil, caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed,
			Err: fmt.Errorf("method %s not allowed; use GET", r.Method)}
	}
	app := activeApp.Load()
	if app == nil || app.ledger == nil {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound,
			Err: errors.New("the ledger is off: no arbstr handler is configured, or the arbstr global option says 'ledger off'")}
	}
	return app.ledger.store, nil
}

// queryParams parses the query string, refusing what it cannot parse
// (url.Values would silently drop such parts) and parameters the endpoint
// does not know, so that a typo is never silently ignored.
func queryParams(r *http.Request, known []string) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, badRequest("the query string cannot be parsed: %v", err)
	}
	for k := range q {
		if !slices.Contains(known, k) {
			return nil, badRequest("unknown parameter %q; this endpoint takes %s", k, strings.Join(known, ", "))
		}
	}
	return q, nil
}

// parseFilter reads since, until and the column filters. A filter present
// with an empty value matches rows where that column is empty.
func parseFilter(q url.Values, now time.Time) (ledger.Filter, error) {
	var f ledger.Filter
	var err error
	if f.Since, err = parseTimeParam(q, "since", now); err != nil {
		return f, err
	}
	if f.Until, err = parseTimeParam(q, "until", now); err != nil {
		return f, err
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return f, badRequest("since (%s) must be before until (%s)", f.Since.Format(time.RFC3339), f.Until.Format(time.RFC3339))
	}
	for _, col := range ledger.FilterColumns {
		if vals, ok := q[col]; ok {
			if len(vals) > 1 {
				return f, badRequest("%s given %d times; give it once", col, len(vals))
			}
			if f.Match == nil {
				f.Match = map[string]string{}
			}
			f.Match[col] = vals[0]
		}
	}
	return f, nil
}

// parseTimeParam reads a time as RFC 3339, or as a duration back from now
// (1h, 24h, 7d, 30d, or any Caddy duration).
func parseTimeParam(q url.Values, name string, now time.Time) (time.Time, error) {
	v := q.Get(name)
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t.UTC(), nil
	}
	if d, err := caddy.ParseDuration(v); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, badRequest("%s %q: want an RFC 3339 time (2026-12-01T00:00:00Z) or a duration back from now (1h, 24h, 7d, 30d)", name, v)
}

func badRequest(format string, args ...any) error {
	return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf(format, args...)}
}

// storeError maps a store failure: the caller's mistake is a 400, an
// unreachable store a 503 that says what to check.
func storeError(err error) error {
	if errors.Is(err, ledger.ErrBadQuery) {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	}
	return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable,
		Err: fmt.Errorf("the ledger store did not answer (%v); check that the database is reachable", err)}
}

func writeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := json.Marshal(v)
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
