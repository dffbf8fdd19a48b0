// Package dashboard serves arbstr's ledger dashboard: one self-contained
// HTML page (its CSS and JavaScript inlined, nothing loaded from elsewhere)
// that reads the admin API's /arbstr/stats, /arbstr/requests and
// /arbstr/budgets and draws spend and savings over time by provider, request
// outcomes, latency, the newest requests and budgets.
//
// The page fetches those endpoints relative to its own URL, so it belongs
// beside them: the arbstr admin module mounts Handler at GET
// /arbstr/dashboard on Caddy's admin endpoint.
package dashboard

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// The page is kept as three files so that each reads (and diffs) as what it
// is; Handler inlines the CSS and the script into the HTML, because the
// dashboard is mounted at one exact path and must need nothing else.
var (
	//go:embed page/index.html
	pageHTML string
	//go:embed page/dashboard.css
	pageCSS string
	//go:embed page/dashboard.js
	pageJS string
)

// The markers in index.html that Handler replaces with the CSS and script.
const (
	cssMarker = "/*ARBSTR_DASHBOARD_CSS*/"
	jsMarker  = "/*ARBSTR_DASHBOARD_JS*/"
)

// page is the assembled dashboard and the headers it is served with.
type page struct {
	body []byte
	csp  string
}

// Handler returns the dashboard page's handler. It answers GET and HEAD with
// the page and every other method with 405. The page is built once; the
// handler holds no mutable state and is safe for concurrent use.
func Handler() http.Handler {
	p := build(pageHTML, pageCSS, pageJS)
	return p
}

// build inlines css and js into html and derives the Content-Security-Policy
// that allows exactly these two inline blocks (by their SHA-256 hashes) and
// same-origin fetches: nothing can be loaded from another origin, and a
// script or style injected into the page would not run.
func build(html, css, js string) *page {
	if strings.Count(html, cssMarker) != 1 || strings.Count(html, jsMarker) != 1 {
		// The page is embedded at build time; a broken template is a bug
		// in this package that every test of it reports.
		panic("dashboard: index.html must hold each inline marker exactly once")
	}
	body := strings.Replace(html, cssMarker, css, 1)
	body = strings.Replace(body, jsMarker, js, 1)
	csp := strings.Join([]string{
		"default-src 'none'",
		"script-src " + hashSource(js),
		"style-src " + hashSource(css),
		"connect-src 'self'",
		"img-src data:",
		"base-uri 'none'",
		"form-action 'none'",
		"frame-ancestors 'none'",
	}, "; ")
	return &page{body: []byte(body), csp: csp}
}

// hashSource is the CSP source expression that allows one inline block.
func hashSource(content string) string {
	sum := sha256.Sum256([]byte(content))
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// ServeHTTP serves the page for GET and HEAD.
func (p *page) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		h.Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusMethodNotAllowed)
		// The shape of Caddy's admin API errors.
		msg, _ := json.Marshal(map[string]string{"error": "method " + r.Method + " not allowed; use GET"})
		w.Write(append(msg, '\n'))
		return
	}
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", p.csp)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	// Same-origin only: Caddy's admin endpoint checks the Referer of the
	// page's own fetches (browsers send Sec-Fetch-Mode, no Origin, on them).
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Length", strconv.Itoa(len(p.body)))
	if r.Method == http.MethodHead {
		return
	}
	bytes.NewReader(p.body).WriteTo(w)
}
