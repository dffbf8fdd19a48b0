package arbstr

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// TestReadmeCaddyfilesAdapt keeps the README honest: every Caddyfile example
// in it adapts without error or warning (a bare `arbstr { … }` example is
// wrapped in a site).
func TestReadmeCaddyfilesAdapt(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```caddyfile\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(blocks) < 3 {
		t.Fatalf("found %d Caddyfile examples in README.md, expected several", len(blocks))
	}
	for _, b := range blocks {
		example := b[1]
		if strings.HasPrefix(strings.TrimSpace(example), "arbstr ") {
			example = ":8080 {\n" + example + "\n}\n"
		}
		if _, err := tryAdapt(example); err != nil {
			t.Errorf("README example does not adapt: %v\n%s", err, b[1])
		}
	}
}

// TestReadmeHandleErrorsExample runs the README's handle_errors example: an
// error of a handler in front of arbstr (basic_auth) reaches the client in
// the OpenAI shape, and an authorised request is routed.
func TestReadmeHandleErrorsExample(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"choices":[]}`)
	}))
	defer upstream.Close()
	hash, err := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	tc := startCaddy(t, `
	basic_auth {
		alice `+string(hash)+`
	}
	arbstr {
		provider alpha {
			url `+upstream.URL+`
		}
	}
	handle_errors {
		header Content-Type application/json
		respond `+"`"+`{"error":{"message":"{err.status_text}","type":"gateway_error","param":null,"code":"{err.status_code}"}}`+"`"+` {err.status_code}
	}`)
	body := `{"model":"m","messages":[]}`

	resp := tc.Post("/v1/chat/completions", body)
	var e struct {
		Error struct {
			Message string `json:"message"`
			Code    string `json:"code"`
		} `json:"error"`
	}
	decodeJSON(t, resp, &e)
	if resp.StatusCode != http.StatusUnauthorized || e.Error.Code != "401" || e.Error.Message != "Unauthorized" {
		t.Fatalf("unauthorised: status %d, error %+v", resp.StatusCode, e.Error)
	}

	req, _ := http.NewRequest(http.MethodPost, tc.URL+"/v1/chat/completions", strings.NewReader(body))
	req.SetBasicAuth("alice", "secret")
	ok, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer ok.Body.Close()
	var out map[string]json.RawMessage
	if err := json.NewDecoder(ok.Body).Decode(&out); err != nil || ok.StatusCode != 200 || ok.Header.Get(headerProvider) != "alpha" {
		t.Fatalf("authorised: status %d, provider %q, err %v", ok.StatusCode, ok.Header.Get(headerProvider), err)
	}
}
