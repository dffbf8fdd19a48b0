package dashboard

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func get(t *testing.T, method string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, httptest.NewRequest(method, "/arbstr/dashboard", nil))
	return rec.Result()
}

func readAll(t *testing.T, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// inline returns the content of the page's only <tag>…</tag> block.
func inline(t *testing.T, page, tag string) string {
	t.Helper()
	re := regexp.MustCompile(`(?s)<` + tag + `>(.*?)</` + tag + `>`)
	all := re.FindAllStringSubmatch(page, -1)
	if len(all) != 1 {
		t.Fatalf("page has %d inline <%s> blocks; want exactly 1", len(all), tag)
	}
	return all[0][1]
}

func TestPageHeaders(t *testing.T) {
	resp := get(t, http.MethodGet)
	body := readAll(t, resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: status %d; want 200", resp.StatusCode)
	}
	for name, want := range map[string]string{
		"Content-Type":           "text/html; charset=utf-8",
		"Cache-Control":          "no-store",
		"X-Content-Type-Options": "nosniff",
		"X-Frame-Options":        "DENY",
		"Referrer-Policy":        "same-origin",
		"Content-Length":         strconv.Itoa(len(body)),
	} {
		if got := resp.Header.Get(name); got != want {
			t.Errorf("%s: %q; want %q", name, got, want)
		}
	}
	if !strings.HasPrefix(body, "<!doctype html>") || !strings.Contains(body, "<title>arbstr") {
		t.Errorf("body does not look like the dashboard page: %.200q", body)
	}
}

// The CSP allows the page's own inline script and style (by hash) and
// same-origin fetches, and nothing else: no other origin, no injected script.
func TestPageContentSecurityPolicy(t *testing.T) {
	resp := get(t, http.MethodGet)
	body := readAll(t, resp.Body)
	csp := resp.Header.Get("Content-Security-Policy")
	directives := map[string]string{}
	for _, d := range strings.Split(csp, ";") {
		name, value, _ := strings.Cut(strings.TrimSpace(d), " ")
		directives[name] = value
	}
	hash := func(s string) string {
		sum := sha256.Sum256([]byte(s))
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	want := map[string]string{
		"default-src":     "'none'",
		"script-src":      hash(inline(t, body, "script")),
		"style-src":       hash(inline(t, body, "style")),
		"connect-src":     "'self'",
		"img-src":         "data:",
		"base-uri":        "'none'",
		"form-action":     "'none'",
		"frame-ancestors": "'none'",
	}
	for name, value := range want {
		if directives[name] != value {
			t.Errorf("CSP %s: %q; want %q (whole policy: %s)", name, directives[name], value, csp)
		}
	}
	if len(directives) != len(want) {
		t.Errorf("CSP has directives beyond %v: %s", want, csp)
	}
	for _, loose := range []string{"unsafe-inline", "unsafe-eval", "*", "http:", "https:"} {
		if strings.Contains(csp, loose) {
			t.Errorf("CSP allows %s: %s", loose, csp)
		}
	}
}

// Nothing on the page points elsewhere: no script, style, font or image from
// any URL. The SVG namespace is the one URL-looking string it may hold.
func TestPageLoadsNothingFromElsewhere(t *testing.T) {
	body := readAll(t, get(t, http.MethodGet).Body)
	for _, bad := range []string{"<script src", "<link rel=\"stylesheet\"", "@import", "@font-face", "url(", "<iframe", "<img"} {
		if strings.Contains(body, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
	urls := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s'"]*`).FindAllString(body, -1)
	for _, u := range urls {
		if u != "http://www.w3.org/2000/svg" {
			t.Errorf("page refers to %q", u)
		}
	}
}

// The script builds every node with textContent and setAttribute; none of
// the APIs that parse a string as HTML or code appear in it.
func TestPageScriptParsesNoStringAsHTML(t *testing.T) {
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
		"new Function", "createContextualFragment", "DOMParser", "srcdoc", "setAttribute('on", "setAttribute(\"on"} {
		if strings.Contains(pageJS, bad) {
			t.Errorf("dashboard.js uses %s", bad)
		}
	}
}

func TestPageHEAD(t *testing.T) {
	full := get(t, http.MethodGet)
	fullBody := readAll(t, full.Body)
	resp := get(t, http.MethodHead)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD: status %d; want 200", resp.StatusCode)
	}
	if body := readAll(t, resp.Body); body != "" {
		t.Errorf("HEAD: body of %d bytes; want none", len(body))
	}
	for _, name := range []string{"Content-Type", "Content-Security-Policy", "Cache-Control"} {
		if resp.Header.Get(name) != full.Header.Get(name) {
			t.Errorf("HEAD %s: %q; GET has %q", name, resp.Header.Get(name), full.Header.Get(name))
		}
	}
	if got := resp.Header.Get("Content-Length"); got != strconv.Itoa(len(fullBody)) {
		t.Errorf("HEAD Content-Length: %s; want %d (the GET body)", got, len(fullBody))
	}
}

func TestPageOtherMethods(t *testing.T) {
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions, "PROPFIND"} {
		resp := get(t, method)
		body := readAll(t, resp.Body)
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s: status %d; want 405", method, resp.StatusCode)
		}
		if got := resp.Header.Get("Allow"); got != "GET, HEAD" {
			t.Errorf("%s: Allow %q; want \"GET, HEAD\"", method, got)
		}
		var e struct{ Error string }
		if err := json.Unmarshal([]byte(body), &e); err != nil || !strings.Contains(e.Error, "use GET") {
			t.Errorf("%s: body %q; want a JSON error that says to use GET", method, body)
		}
		if strings.Contains(body, "<html") {
			t.Errorf("%s: served the page", method)
		}
	}
}

func TestBuildRefusesTemplateWithoutMarkers(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("build accepted a page without the inline markers")
		}
	}()
	build("<html></html>", "css", "js")
}
