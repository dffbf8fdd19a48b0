package dashboard

import (
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/arbstr/caddy-arbstr/internal/freeport"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"golang.org/x/crypto/bcrypt"
)

func init() {
	caddy.RegisterModule(testAdminRoutes{})
}

// testAdminRoutes mounts the dashboard on Caddy's admin API the way the
// arbstr admin module does (GET /arbstr/dashboard beside /arbstr/stats …),
// with a fixture's answers for the data endpoints.
type testAdminRoutes struct{}

// fixtureForAdmin answers the admin data routes; set by the test.
var fixtureForAdmin http.Handler

func (testAdminRoutes) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.arbstr_dashboard_test", New: func() caddy.Module { return new(testAdminRoutes) }}
}

func (testAdminRoutes) Routes() []caddy.AdminRoute {
	page := Handler()
	route := func(pattern string, h http.Handler) caddy.AdminRoute {
		return caddy.AdminRoute{Pattern: pattern, Handler: caddy.AdminHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			h.ServeHTTP(w, r)
			return nil
		})}
	}
	data := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fixtureForAdmin.ServeHTTP(w, r) })
	return []caddy.AdminRoute{
		route("/arbstr/dashboard", page),
		route("/arbstr/stats", data),
		route("/arbstr/requests", data),
		route("/arbstr/budgets", data),
	}
}

// docsCaddyfile is the site block of docs/dashboard.md.
func docsCaddyfile(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/dashboard.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```caddyfile\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	if len(blocks) != 1 {
		t.Fatalf("docs/dashboard.md has %d caddyfile blocks; want 1", len(blocks))
	}
	return blocks[0][1]
}

// The admin endpoint refuses a browser's navigation to the dashboard, and
// the site of docs/dashboard.md serves it: the page, its data, behind the
// password, and nothing else of the admin API.
func TestDashboardInBrowserThroughDocsSite(t *testing.T) {
	needChromium(t)
	f := filledFixture(t)
	fixtureForAdmin = f.Config.Handler
	ports := freeport.Ports(t, 2)
	adminPort, sitePort := ports[0], ports[1]
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("ARBSTR_DASHBOARD_HASH", string(hash))
	site := docsCaddyfile(t)
	site = strings.Replace(site, "dashboard.example.com", fmt.Sprintf("http://127.0.0.1:%d", sitePort), 1)
	site = strings.Replace(site, "localhost:2019", fmt.Sprintf("localhost:%d", adminPort), 1)
	caddyfile := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tpersist_config off\n\tauto_https off\n}\n%s", adminPort, site)
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("the docs' Caddyfile does not adapt: %v\n%s", err, caddyfile)
	}
	for _, w := range warnings {
		t.Errorf("the docs' Caddyfile: %s", w)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading the docs' Caddyfile: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })

	// Opened directly, as a browser's address bar does, the admin endpoint says 403.
	direct := fmt.Sprintf("http://localhost:%d/arbstr/dashboard", adminPort)
	req, _ := http.NewRequest(http.MethodGet, direct, nil)
	req.Header.Set("Sec-Fetch-Mode", "navigate")
	req.Header.Set("Sec-Fetch-Site", "none")
	if status := statusOf(t, req); status != http.StatusForbidden {
		t.Logf("the admin endpoint now answers a browser's navigation with %d, not 403: "+
			"docs/dashboard.md's advice to go through a site may be simpler now", status)
	}

	siteURL := fmt.Sprintf("http://127.0.0.1:%d", sitePort)
	for path, want := range map[string]int{
		"/arbstr/dashboard": http.StatusUnauthorized, // without the password
	} {
		req, _ := http.NewRequest(http.MethodGet, siteURL+path, nil)
		if got := statusOf(t, req); got != want {
			t.Errorf("GET %s without the password: %d; want %d", path, got, want)
		}
	}
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/arbstr/dashboard", 200},
		{"HEAD", "/arbstr/dashboard", 200},
		{"GET", "/arbstr/budgets", 200},
		{"GET", "/config/", 404},
		{"POST", "/load", 404},
		{"POST", "/arbstr/stats", 404},
		{"GET", "/arbstr/providers", 404},
	} {
		req, _ := http.NewRequest(tc.method, siteURL+tc.path, strings.NewReader(""))
		req.SetBasicAuth("admin", "s3cret")
		req.Header.Set("Sec-Fetch-Mode", "navigate")
		if got := statusOf(t, req); got != tc.want {
			t.Errorf("%s %s with the password: %d; want %d", tc.method, tc.path, got, tc.want)
		}
	}

	// A real browser, with the password in the URL (it keeps it for the page's fetches).
	dom := dumpDOM(t, fmt.Sprintf("http://admin:s3cret@127.0.0.1:%d/arbstr/dashboard", sitePort), 3*time.Second)
	if !strings.Contains(dom, `data-state="ready"`) {
		t.Fatalf("the dashboard through the docs' site did not get ready:\n%s", dom)
	}
	if got := text(t, dom, "t-saved"); got != "12,345" {
		t.Errorf("saved sats through the docs' site: %q; want 12,345", got)
	}
	mustContain(t, dom, "daily-per-user", "req-0002")
	for _, r := range f.requestsSeen() {
		if strings.HasPrefix(r, "with Authorization") {
			t.Errorf("the site passed the dashboard's password on to the admin endpoint: %s", r)
		}
	}
}

func statusOf(t *testing.T, req *http.Request) int {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
