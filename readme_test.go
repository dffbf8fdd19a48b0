package arbstr

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// The README and the pages under docs/ are tested through their fenced
// examples (docs/development.md, "The examples in the docs are tested"):
//   - ```caddyfile: adapts without error or warning;
//   - ```json right after a ```caddyfile: equals the arbstr handler that
//     `caddy adapt` makes of that Caddyfile;
//   - ```caddyfile-error: fails to adapt, and the next block shows the error.

// docBlock is one fenced block of a Markdown file.
type docBlock struct {
	file string
	line int    // of the opening fence
	lang string // the fence's info string, e.g. "caddyfile"
	text string
}

func (b docBlock) String() string { return fmt.Sprintf("%s:%d", b.file, b.line) }

// fence matches a fenced block whose fences start their lines.
var fence = regexp.MustCompile("(?ms)^```([^\n`]*)\n(.*?)^```[ \t]*$")

// docFiles is README.md and every Markdown page under docs/.
func docFiles(t *testing.T) []string {
	t.Helper()
	pages, err := filepath.Glob(filepath.Join("docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{"README.md"}, pages...)
}

// docBlocks returns the fenced blocks of every doc file, in order per file.
func docBlocks(t *testing.T) map[string][]docBlock {
	t.Helper()
	out := map[string][]docBlock{}
	for _, file := range docFiles(t) {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range fence.FindAllSubmatchIndex(text, -1) {
			out[file] = append(out[file], docBlock{
				file: file,
				line: 1 + strings.Count(string(text[:m[0]]), "\n"),
				lang: strings.TrimSpace(string(text[m[2]:m[3]])),
				text: string(text[m[4]:m[5]]),
			})
		}
	}
	return out
}

// adaptExample adapts a Caddyfile example; a bare `arbstr { … }` block is
// wrapped in a site first.
func adaptExample(example string) ([]byte, error) {
	if strings.HasPrefix(strings.TrimSpace(example), "arbstr ") {
		example = ":8080 {\n" + example + "\n}\n"
	}
	return tryAdapt(example)
}

// TestReadmeCaddyfilesAdapt keeps the docs honest: every Caddyfile example in
// the README and docs/ adapts without error or warning.
func TestReadmeCaddyfilesAdapt(t *testing.T) {
	// docs/dashboard.md takes the password hash from the environment, as a
	// user would set it.
	hash, err := bcrypt.GenerateFromPassword([]byte("docs example"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("ARBSTR_DASHBOARD_HASH", string(hash))
	n := 0
	for _, blocks := range docBlocks(t) {
		for _, b := range blocks {
			if b.lang != "caddyfile" {
				continue
			}
			n++
			if _, err := adaptExample(b.text); err != nil {
				t.Errorf("%s: the example does not adapt: %v\n%s", b, err, b.text)
			}
		}
	}
	if n < 6 {
		t.Fatalf("found %d Caddyfile examples in README.md and docs/*.md, expected several", n)
	}
}

// TestReadmeJSONMatchesAdapt checks that a JSON example shown right after a
// Caddyfile example is what `caddy adapt` makes of it (the arbstr handler).
func TestReadmeJSONMatchesAdapt(t *testing.T) {
	n := 0
	for _, blocks := range docBlocks(t) {
		for i := 1; i < len(blocks); i++ {
			caddyfile, shown := blocks[i-1], blocks[i]
			if caddyfile.lang != "caddyfile" || shown.lang != "json" {
				continue
			}
			n++
			cfg, err := adaptExample(caddyfile.text)
			if err != nil {
				t.Errorf("%s: %v", caddyfile, err)
				continue
			}
			var whole any
			if err := json.Unmarshal(cfg, &whole); err != nil {
				t.Fatal(err)
			}
			handler := findHandler(whole, "arbstr")
			if isAppExample(shown.text) {
				// {"apps":{"arbstr":…}} shows the global option block.
				handler = map[string]any{"apps": map[string]any{"arbstr": whole.(map[string]any)["apps"].(map[string]any)["arbstr"]}}
			}
			if handler == nil {
				t.Errorf("%s: no arbstr handler in the adapted config", caddyfile)
				continue
			}
			var want any
			if err := json.Unmarshal([]byte(shown.text), &want); err != nil {
				t.Errorf("%s: the JSON example is not JSON: %v", shown, err)
				continue
			}
			if !reflect.DeepEqual(handler, want) {
				real, _ := json.MarshalIndent(handler, "", "  ")
				t.Errorf("%s: the JSON example is not what caddy adapt makes of the Caddyfile before it (%s); adapt gives:\n%s", shown, caddyfile, real)
			}
		}
	}
	if n == 0 {
		t.Fatal("no JSON example after a Caddyfile example in README.md or docs/*.md: the adapt output is shown nowhere")
	}
}

// findHandler returns the first handler object named name in an adapted config.
func findHandler(v any, name string) map[string]any {
	switch v := v.(type) {
	case map[string]any:
		if v["handler"] == name {
			return v
		}
		for _, child := range v {
			if h := findHandler(child, name); h != nil {
				return h
			}
		}
	case []any:
		for _, child := range v {
			if h := findHandler(child, name); h != nil {
				return h
			}
		}
	}
	return nil
}

// TestReadmeConfigErrors checks the documented configuration errors: each
// ```caddyfile-error example is refused, with the error shown after it.
func TestReadmeConfigErrors(t *testing.T) {
	n := 0
	for _, blocks := range docBlocks(t) {
		for i, b := range blocks {
			if b.lang != "caddyfile-error" {
				continue
			}
			n++
			_, err := adaptExample(b.text)
			if err == nil {
				t.Errorf("%s: the bad example adapts", b)
				continue
			}
			// Caddy prints the error inside a JSON log line, quotes escaped.
			logged := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(err.Error())
			if i+1 == len(blocks) || !strings.Contains(blocks[i+1].text, logged) {
				t.Errorf("%s: the block after the bad example should show its error:\n%v", b, err)
			}
		}
	}
	if n < 2 {
		t.Fatalf("found %d configuration error examples in README.md and docs/*.md, expected at least 2", n)
	}
}

// TestReadmeHandleErrorsExample runs the handle_errors example of
// docs/health-admin-metrics.md: an error of a handler in front of arbstr
// (basic_auth) reaches the client in the OpenAI shape, and an authorised
// request is routed.
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

// isAppExample reports whether a JSON example shows the arbstr app
// (apps.arbstr) rather than the handler.
func isAppExample(text string) bool {
	var v struct {
		Apps map[string]json.RawMessage `json:"apps"`
	}
	return json.Unmarshal([]byte(text), &v) == nil && v.Apps["arbstr"] != nil
}
