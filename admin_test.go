package arbstr

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestAdminProvidersShowsConfigAndHealthIntegration(t *testing.T) {
	t.Setenv("HL_ADMIN_ENV_KEY", "hl-admin-env-secret")
	bad := hlNewUpstream(t, hlStatus(500))
	good := hlNewUpstream(t, hlOK)
	site := hlHealthSite(
		// A URL with a query (which could hold a token) is refused at load
		// (TestSecurityProviderURLValidatedAtLoad).
		hlProviderBlock("alpha", bad.base(), "hl-admin-literal-secret", "gpt-b gpt-a", 1000, 3000, 2)+
			hlProviderBlock("beta", good.base(), "{env.HL_ADMIN_ENV_KEY}", "", 5000, 6000, 7),
		2, "30s", "\tcooldown_max 90s\n")
	tc := startCaddy(t, site)

	list, raw := hlAdminProviders(t, tc)
	for _, secret := range []string{"hl-admin-literal-secret", "hl-admin-env-secret", "hl-query-secret", "HL_ADMIN_ENV_KEY", "api_key"} {
		if strings.Contains(raw, secret) {
			t.Errorf("admin API output contains %q:\n%s", secret, raw)
		}
	}
	alpha := hlFind(list, "alpha", bad.URL)
	beta := hlFind(list, "beta", good.URL)
	if alpha == nil || beta == nil {
		t.Fatalf("alpha or beta missing from the admin API:\n%s", raw)
	}
	if alpha.URL != bad.base() {
		t.Errorf("alpha url %q; want %q", alpha.URL, bad.base())
	}
	if !slices.Equal(alpha.Models, []string{"gpt-a", "gpt-b"}) || alpha.AnyModel {
		t.Errorf("alpha models %v any=%v; want [gpt-a gpt-b], not any", alpha.Models, alpha.AnyModel)
	}
	if alpha.InputRate != 1000 || alpha.OutputRate != 3000 || alpha.BaseFee != 2 {
		t.Errorf("alpha rates %v/%v/%v; want 1000/3000/2", alpha.InputRate, alpha.OutputRate, alpha.BaseFee)
	}
	if !beta.AnyModel || beta.Models == nil || len(beta.Models) != 0 {
		t.Errorf("beta (any model) shows models %v any=%v; want [] and true", beta.Models, beta.AnyModel)
	}
	if alpha.CooldownMax != "1m30s" || beta.CooldownMax != "1m30s" {
		t.Errorf("cooldown_max shown as %q / %q; want the configured 1m30s", alpha.CooldownMax, beta.CooldownMax)
	}
	if len(alpha.Health) != 0 {
		t.Errorf("alpha has health entries before any traffic: %+v", alpha.Health)
	}

	// One failure: still closed, counted, classified.
	before := time.Now()
	if resp := tc.Post("/v1/chat/completions", hlChat("gpt-a", false)); resp.Header.Get(headerProvider) != "beta" {
		t.Fatalf("request not served by beta after alpha failed: %d %q", resp.StatusCode, resp.Header.Get(headerProvider))
	}
	list, raw = hlAdminProviders(t, tc)
	alpha = hlFind(list, "alpha", bad.URL)
	if alpha == nil || len(alpha.Health) != 1 {
		t.Fatalf("alpha health after one failure:\n%s", raw)
	}
	h := alpha.Health[0]
	if h.Model != "gpt-a" || h.State != "closed" || h.ConsecutiveFailures != 1 || h.Failures != 1 || h.LastErrorClass != "server_error" {
		t.Errorf("alpha after one 500: %+v; want gpt-a closed with 1 consecutive failure of class server_error", h)
	}
	if h.LastFailureAt.Before(before.Add(-time.Second)) || h.LastFailureAt.After(time.Now().Add(time.Second)) {
		t.Errorf("last_failure_at %v is not the time of the failure", h.LastFailureAt)
	}
	if !h.OpenUntil.IsZero() || !h.CooldownUntil.IsZero() {
		t.Errorf("closed circuit shows open_until %v / cooldown_until %v", h.OpenUntil, h.CooldownUntil)
	}
	if !strings.Contains(raw, `"models":[]`) {
		t.Errorf("an any-model provider's models should be [] in JSON:\n%s", raw)
	}

	// Second failure opens the circuit for 30 s; beta's success is counted.
	tc.Post("/v1/chat/completions", hlChat("gpt-a", false))
	list, raw = hlAdminProviders(t, tc)
	alpha, beta = hlFind(list, "alpha", bad.URL), hlFind(list, "beta", good.URL)
	if alpha == nil || len(alpha.Health) != 1 || alpha.Health[0].State != "open" {
		t.Fatalf("alpha should be open after 2 failures:\n%s", raw)
	}
	if left := time.Until(alpha.Health[0].OpenUntil); left < 25*time.Second || left > 31*time.Second {
		t.Errorf("open_until is %v away; want about 30 s", left)
	}
	if len(beta.Health) != 1 || beta.Health[0].Successes != 2 || beta.Health[0].State != "closed" {
		t.Errorf("beta health %+v; want 2 successes, closed", beta.Health)
	}
}

func TestAdminProvidersRefusesOtherMethodsIntegration(t *testing.T) {
	up := hlNewUpstream(t, hlOK)
	tc := startCaddy(t, hlHealthSite(hlProviderBlock("alpha", up.base(), "hl-k", "", 1, 1, 0), 2, "30s", ""))
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		req, _ := http.NewRequest(method, tc.Admin+"/arbstr/providers", strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s /arbstr/providers: %d %s; want 405", method, resp.StatusCode, body)
		}
		if allow := resp.Header.Get("Allow"); !strings.Contains(allow, "GET") {
			t.Errorf("%s /arbstr/providers: Allow %q; want it to name GET", method, allow)
		}
	}
	resp, err := http.Get(tc.Admin + "/arbstr/providers")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || !strings.HasPrefix(ct, "application/json") {
		t.Errorf("GET: %d %q; want 200 application/json", resp.StatusCode, ct)
	}
}

func TestAdminRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://user:pw@alpha.example/v1?key=s3cret#frag": "https://alpha.example/v1",
		"http://127.0.0.1:8080/v1":                         "http://127.0.0.1:8080/v1",
		"https://alpha.example/v1?":                        "https://alpha.example/v1",
		"://bad":                                           "",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q; want %q", in, got, want)
		}
	}
}
