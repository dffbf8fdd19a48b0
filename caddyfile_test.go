package arbstr

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// cfgFullBlock sets every option of SPEC §2, so that a change of any JSON
// name or any parse shows up in the tests below.
const cfgFullBlock = `arbstr {
	provider alpha {
		url          https://alpha.example/v1
		api_key      {env.CFG_ALPHA_KEY}
		models       gpt-4o gpt-4o-mini
		model        gpt-4o openai/gpt-4o
		input_rate   10000
		output_rate  30000
		base_fee     1
	}
	provider beta {
		url         http://beta.example:8080/v1
		model       * llama3.1:8b
		input_rate  0.5
		output_rate 2.25
	}
	policy code {
		allowed_models  gpt-4o gpt-4o-mini
		max_output_rate 50000
		keywords        code function implement debug
	}
	retry {
		attempts         2
		backoff          1s 2s
		fallbacks        all
		retry_after_max  5s
	}
	breaker {
		failures  3
		open      30s
	}
	timeout              30s
	attempt_timeout      12s
	first_event_timeout  10s
	stream_idle_timeout  60s
	max_body             16MB
	cooldown_max         5m
}`

// cfgFullJSON is what cfgFullBlock must adapt to: exactly the SPEC names.
const cfgFullJSON = `{
	"handler": "arbstr",
	"providers": [
		{"name": "alpha", "url": "https://alpha.example/v1", "api_key": "{env.CFG_ALPHA_KEY}",
		 "models": ["gpt-4o", "gpt-4o-mini"], "model": {"gpt-4o": "openai/gpt-4o"},
		 "input_rate": 10000, "output_rate": 30000, "base_fee": 1},
		{"name": "beta", "url": "http://beta.example:8080/v1", "model": {"*": "llama3.1:8b"},
		 "input_rate": 0.5, "output_rate": 2.25}
	],
	"policies": [
		{"name": "code", "allowed_models": ["gpt-4o", "gpt-4o-mini"], "max_output_rate": 50000,
		 "keywords": ["code", "function", "implement", "debug"]}
	],
	"retry": {"attempts": 2, "backoff": [1000000000, 2000000000], "fallbacks": "all", "retry_after_max": 5000000000},
	"breaker": {"failures": 3, "open": 30000000000},
	"timeout": 30000000000,
	"attempt_timeout": 12000000000,
	"first_event_timeout": 10000000000,
	"stream_idle_timeout": 60000000000,
	"max_body": 16000000,
	"cooldown_max": 300000000000
}`

// cfgSite wraps a site body in a Caddyfile with one site block; the body
// starts on line 2.
func cfgSite(body string) string {
	return "http://127.0.0.1:9 {\n" + body + "\n}\n"
}

// cfgFindHandler returns the first object with "handler": "arbstr" in an
// adapted config.
func cfgFindHandler(v any) map[string]any {
	switch x := v.(type) {
	case map[string]any:
		if x["handler"] == "arbstr" {
			return x
		}
		for _, child := range x {
			if h := cfgFindHandler(child); h != nil {
				return h
			}
		}
	case []any:
		for _, child := range x {
			if h := cfgFindHandler(child); h != nil {
				return h
			}
		}
	}
	return nil
}

func cfgUnmarshal(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	return v
}

func cfgAdaptedHandler(t *testing.T, site string) map[string]any {
	t.Helper()
	h := cfgFindHandler(cfgUnmarshal(t, adaptCaddyfile(t, cfgSite(site))))
	if h == nil {
		t.Fatalf("no arbstr handler in the adapted config of\n%s", site)
	}
	return h
}

func cfgJSONString(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

func TestCaddyfileDispenserParsesEveryOption(t *testing.T) {
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(cfgFullBlock)); err != nil {
		t.Fatalf("UnmarshalCaddyfile: %v", err)
	}
	if len(h.Providers) != 2 || len(h.Policies) != 1 {
		t.Fatalf("got %d providers and %d policies, want 2 and 1", len(h.Providers), len(h.Policies))
	}
	alpha := h.Providers[0]
	wantAlpha := &Provider{
		Name: "alpha", URL: "https://alpha.example/v1", APIKey: "{env.CFG_ALPHA_KEY}",
		Models: []string{"gpt-4o", "gpt-4o-mini"}, Model: map[string]string{"gpt-4o": "openai/gpt-4o"},
		InputRate: 10000, OutputRate: 30000, BaseFee: 1,
	}
	if !reflect.DeepEqual(alpha, wantAlpha) {
		t.Errorf("provider alpha = %+v, want %+v", alpha, wantAlpha)
	}
	if beta := h.Providers[1]; beta.Model["*"] != "llama3.1:8b" || beta.InputRate != 0.5 || beta.OutputRate != 2.25 || len(beta.Models) != 0 {
		t.Errorf("provider beta = %+v", beta)
	}
	wantPolicy := &Policy{Name: "code", AllowedModels: []string{"gpt-4o", "gpt-4o-mini"}, MaxOutputRate: 50000,
		Keywords: []string{"code", "function", "implement", "debug"}}
	if !reflect.DeepEqual(h.Policies[0], wantPolicy) {
		t.Errorf("policy = %+v, want %+v", h.Policies[0], wantPolicy)
	}
	r := h.Retry
	if r == nil || r.Attempts != 2 || len(r.Backoff) != 2 || r.Backoff[0] != caddy.Duration(1e9) || r.Backoff[1] != caddy.Duration(2e9) ||
		r.Fallbacks == nil || !r.Fallbacks.All || r.RetryAfterMax != caddy.Duration(5e9) {
		t.Errorf("retry = %+v", r)
	}
	if b := h.Breaker; b == nil || b.Failures != 3 || b.Open != caddy.Duration(30e9) {
		t.Errorf("breaker = %+v", b)
	}
	if h.Timeout != caddy.Duration(30e9) || h.AttemptTimeout != caddy.Duration(12e9) || h.FirstEventTimeout != caddy.Duration(10e9) ||
		h.StreamIdleTimeout != caddy.Duration(60e9) || h.MaxBody != 16_000_000 {
		t.Errorf("timeouts/max_body = %v %v %v %v %v", h.Timeout, h.AttemptTimeout, h.FirstEventTimeout, h.StreamIdleTimeout, h.MaxBody)
	}
	if h.CooldownMax != caddy.Duration(300e9) {
		t.Errorf("cooldown_max = %v, want 5m", h.CooldownMax)
	}

	// The struct marshals to the SPEC names too, not only the adapter output.
	got, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	want := cfgUnmarshal(t, []byte(cfgFullJSON)).(map[string]any)
	delete(want, "handler")
	if g := cfgUnmarshal(t, got); !reflect.DeepEqual(g, any(want)) {
		t.Errorf("json.Marshal(handler) =\n%s\nwant\n%s", cfgJSONString(g), cfgJSONString(want))
	}
}

func TestCaddyfileAdaptUsesSpecJSONNames(t *testing.T) {
	got := cfgAdaptedHandler(t, cfgFullBlock)
	want := cfgUnmarshal(t, []byte(cfgFullJSON))
	if !reflect.DeepEqual(any(got), want) {
		t.Errorf("adapted handler =\n%s\nwant\n%s", cfgJSONString(got), cfgJSONString(want))
	}
}

func TestCaddyfileFallbacksNumber(t *testing.T) {
	got := cfgAdaptedHandler(t, `arbstr {
		provider a {
			url http://127.0.0.1:1/v1
		}
		retry {
			fallbacks 2
		}
	}`)
	retry, _ := got["retry"].(map[string]any)
	if retry["fallbacks"] != float64(2) {
		t.Errorf("retry = %v, want fallbacks 2", retry)
	}
}

// cfgBadCase is an arbstr block that must be refused, with "# BAD" on the
// first line the error may name and, when the error may name a later line
// of the same block (e.g. its closing brace), "# END" on the last one.
type cfgBadCase struct {
	name  string
	block string
	fix   []string // parts of the message that tell the user what is wrong and what to do
}

var cfgBadCases = []cfgBadCase{
	{"unknown top-level", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tretries 3 # BAD\n}", []string{`"retries"`, "expected provider"}},
	{"unknown in provider", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t\tprice 3 # BAD\n\t}\n}", []string{`"price"`, "expected url"}},
	{"unknown in policy", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tpolicy p {\n\t\tmodels x # BAD\n\t}\n}", []string{`"models"`, "expected allowed_models"}},
	{"unknown in retry", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tretry {\n\t\ttries 3 # BAD\n\t}\n}", []string{`"tries"`, "expected attempts"}},
	{"unknown in breaker", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tbreaker {\n\t\tthreshold 3 # BAD\n\t}\n}", []string{`"threshold"`, "expected failures"}},
	{"missing url", "arbstr {\n\tprovider a { # BAD\n\t\tinput_rate 1\n\t} # END\n}", []string{`"a"`, "url"}},
	{"url not http", "arbstr {\n\tprovider a {\n\t\turl ftp://h/v1 # BAD\n\t}\n}", []string{"ftp://h/v1", "https://host/v1"}},
	{"url without scheme", "arbstr {\n\tprovider a {\n\t\turl api.example.com/v1 # BAD\n\t}\n}", []string{"api.example.com/v1", "http(s)"}},
	{"negative input_rate", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t\tinput_rate -1 # BAD\n\t}\n}", []string{"input_rate", `"-1"`}},
	{"non-numeric output_rate", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t\toutput_rate cheap # BAD\n\t}\n}", []string{"output_rate", `"cheap"`}},
	{"NaN base_fee", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t\tbase_fee NaN # BAD\n\t}\n}", []string{"base_fee"}},
	{"infinite rate", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t\tinput_rate 1e400 # BAD\n\t}\n}", []string{"input_rate"}},
	{"negative max_output_rate", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tpolicy p {\n\t\tmax_output_rate -5 # BAD\n\t}\n}", []string{"max_output_rate"}},
	{"duplicate provider", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tprovider a { # BAD\n\t\turl http://i/v1\n\t}\n}", []string{"duplicate provider", "unique"}},
	{"duplicate policy", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tpolicy p {\n\t}\n\tpolicy p { # BAD\n\t}\n}", []string{"duplicate policy", "unique"}},
	{"policy allows unserved model", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t\tmodels m1\n\t}\n\tpolicy p { # BAD\n\t\tallowed_models m1 m2\n\t}\n}", []string{`"m2"`, "no provider serves"}},
	{"bad timeout", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\ttimeout 5 # BAD\n}", []string{"timeout", `"5"`, "duration"}},
	{"negative first_event_timeout", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tfirst_event_timeout -1s # BAD\n}", []string{"first_event_timeout", "duration"}},
	{"bad stream_idle_timeout", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tstream_idle_timeout soon # BAD\n}", []string{"stream_idle_timeout", "duration"}},
	{"bad attempt_timeout", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tattempt_timeout 1x # BAD\n}", []string{"attempt_timeout", "duration"}},
	{"bad cooldown_max", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tcooldown_max forever # BAD\n}", []string{"cooldown_max", `"forever"`, "duration"}},
	{"bad backoff", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tretry {\n\t\tbackoff 1s later # BAD\n\t}\n}", []string{"backoff", `"later"`}},
	{"bad retry_after_max", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tretry {\n\t\tretry_after_max x # BAD\n\t}\n}", []string{"retry_after_max", "duration"}},
	{"bad breaker open", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tbreaker {\n\t\topen forever # BAD\n\t}\n}", []string{"open", "duration"}},
	{"bad breaker failures", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tbreaker {\n\t\tfailures 0 # BAD\n\t}\n}", []string{"failures", "≥ 1"}},
	{"bad attempts", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tretry {\n\t\tattempts two # BAD\n\t}\n}", []string{"attempts", `"two"`}},
	{"max_body not a size", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tmax_body lots # BAD\n}", []string{"max_body", "16MB"}},
	{"max_body zero", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tmax_body 0 # BAD\n}", []string{"max_body"}},
	{"max_body negative", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tmax_body -1MB # BAD\n}", []string{"max_body"}},
	{"fallbacks word", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tretry {\n\t\tfallbacks some # BAD\n\t}\n}", []string{"fallbacks", "'all'"}},
	{"fallbacks negative", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tretry {\n\t\tfallbacks -1 # BAD\n\t}\n}", []string{"fallbacks", "'all'"}},
	{"fallbacks two args", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tretry {\n\t\tfallbacks 1 2 # BAD\n\t}\n}", []string{"fallbacks"}},
	{"argument after arbstr", "arbstr extra { # BAD\n\tprovider a {\n\t\turl http://h/v1\n\t}\n}", []string{"extra"}},
	{"unknown tier", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t\ttier premium # BAD\n\t}\n}", []string{`"premium"`, "local, standard, frontier"}},
	{"bad discover interval", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t\tdiscover often # BAD\n\t}\n}", []string{"discover", `"often"`, "5m"}},
	{"complexity low out of range", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tcomplexity {\n\t\tlow 3 # BAD\n\t}\n}", []string{"low", `"3"`, "[0, 1]"}},
	{"complexity low above high", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tcomplexity {\n\t\tlow 0.8 # BAD\n\t\thigh 0.5\n\t} # END\n}", []string{"low ≤ high"}},
	{"complexity unknown signal", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tcomplexity {\n\t\tweights code 0.5 vibes 1 # BAD\n\t}\n}", []string{`"vibes"`, "prompt, code, reasoning, depth or output"}},
	{"complexity odd weights", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tcomplexity {\n\t\tweights code # BAD\n\t}\n}", []string{"pairs"}},
	{"complexity weight out of range", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tcomplexity {\n\t\tweights code 2 # BAD\n\t}\n}", []string{"code", `"2"`, "[0, 1]"}},
	{"unknown in complexity", "arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tcomplexity {\n\t\tmedium 0.5 # BAD\n\t}\n}", []string{`"medium"`, "expected low, high or weights"}},
}

// cfgMarkerLines returns the 1-based lines of the # BAD and # END markers,
// counting from the first line of block as line first.
func cfgMarkerLines(t *testing.T, block string, first int) (lo, hi int) {
	t.Helper()
	for i, line := range strings.Split(block, "\n") {
		if strings.Contains(line, "# BAD") {
			lo = first + i
		}
		if strings.Contains(line, "# END") {
			hi = first + i
		}
	}
	if lo == 0 {
		t.Fatalf("no # BAD marker in\n%s", block)
	}
	if hi == 0 {
		hi = lo
	}
	return lo, hi
}

// cfgCheckPlace fails unless err names file:N with N in [lo, hi].
func cfgCheckPlace(t *testing.T, err error, file string, lo, hi int) {
	t.Helper()
	m := regexp.MustCompile(regexp.QuoteMeta(file) + `:(\d+)`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Errorf("error does not name the place (%s:N): %v", file, err)
		return
	}
	if n, _ := strconv.Atoi(m[1]); n < lo || n > hi {
		t.Errorf("error names %s:%d, want line %d..%d: %v", file, n, lo, hi, err)
	}
}

func TestCaddyfileInvalidConfigNamesLineAndFix(t *testing.T) {
	for _, tc := range cfgBadCases {
		t.Run(tc.name, func(t *testing.T) {
			check := func(err error, file string, first int) {
				t.Helper()
				if err == nil {
					t.Fatalf("%s accepted:\n%s", file, tc.block)
				}
				lo, hi := cfgMarkerLines(t, tc.block, first)
				cfgCheckPlace(t, err, file, lo, hi)
				for _, part := range tc.fix {
					if !strings.Contains(err.Error(), part) {
						t.Errorf("%s error lacks %q: %v", file, part, err)
					}
				}
			}
			var h Handler
			check(h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.block)), "Testfile", 1)
			_, err := tryAdapt(cfgSite(tc.block))
			check(err, "Caddyfile", 2)
		})
	}
}

// TestCaddyfileJSONValidateRefuses covers configs that bypass the Caddyfile
// (JSON, POST /load): Validate must refuse them with the fix in the message.
func TestCaddyfileJSONValidateRefuses(t *testing.T) {
	ok := func() *Provider { return &Provider{Name: "a", URL: "http://h/v1", Models: []string{"m"}} }
	cases := []struct {
		name string
		edit func(h *Handler)
		want string
	}{
		{"no providers", func(h *Handler) { h.Providers = nil }, "add at least one"},
		{"missing url", func(h *Handler) { h.Providers[0].URL = "" }, "has no url"},
		{"url not http", func(h *Handler) { h.Providers[0].URL = "ftp://h/v1" }, "not an http(s) URL"},
		{"url with credentials", func(h *Handler) { h.Providers[0].URL = "https://u:p@h/v1" }, "use api_key"},
		{"negative rate", func(h *Handler) { h.Providers[0].OutputRate = -1 }, "output_rate must not be negative"},
		{"duplicate provider", func(h *Handler) { h.Providers = append(h.Providers, ok()) }, "duplicate provider"},
		{"duplicate policy", func(h *Handler) {
			h.Policies = []*Policy{{Name: "p"}, {Name: "p"}}
		}, "duplicate policy"},
		{"policy unserved model", func(h *Handler) {
			h.Policies = []*Policy{{Name: "p", AllowedModels: []string{"other"}}}
		}, "no provider serves it"},
		{"negative duration", func(h *Handler) { h.StreamIdleTimeout = -1 }, "stream_idle_timeout must not be negative"},
		{"negative max_body", func(h *Handler) { h.MaxBody = -1 }, "max_body"},
		{"negative cooldown_max", func(h *Handler) { h.CooldownMax = -1 }, "cooldown_max must not be negative"},
		{"negative fallbacks", func(h *Handler) { h.Retry = &RetryConfig{Fallbacks: &Fallbacks{N: -1}} }, "fallbacks"},
		{"unknown tier", func(h *Handler) { h.Providers[0].Tier = "gold" }, "not one of local, standard, frontier"},
		{"unknown api", func(h *Handler) { h.Providers[0].API = "gemini" }, `api "gemini" is not known; use openai (the default) or anthropic`},
		{"prefill on an anthropic provider", func(h *Handler) {
			h.Providers[0].API, h.Providers[0].Prefill = "anthropic", true
		}, "prefill continues chat completions"},
		{"negative discover", func(h *Handler) { d := caddy.Duration(-1); h.Providers[0].Discover = &d }, "discover interval must not be negative"},
		{"complexity high out of range", func(h *Handler) { v := 1.5; h.Complexity = &ComplexityConfig{High: &v} }, "[0, 1]"},
		{"complexity without a frontier provider", func(h *Handler) { h.Complexity = &ComplexityConfig{} }, "mark one 'tier frontier' or set 'high 1'"},
		{"complexity weight NaN", func(h *Handler) {
			v := math.NaN()
			h.Complexity = &ComplexityConfig{Weights: &ComplexityWeights{Depth: &v}}
		}, "weight depth"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := &Handler{Providers: []*Provider{ok()}}
			if err := h.Validate(); err != nil {
				t.Fatalf("base config refused: %v", err)
			}
			tc.edit(h)
			err := h.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	var f Fallbacks
	if err := json.Unmarshal([]byte(`"some"`), &f); err == nil {
		t.Errorf(`fallbacks "some" accepted as %+v`, f)
	}
	if err := json.Unmarshal([]byte(`true`), &f); err == nil {
		t.Errorf(`fallbacks true accepted as %+v`, f)
	}
}

// TestCaddyfileAdaptLoadRoundTrip loads the adapted JSON into Caddy and
// reads it back from the admin API: what the adapter wrote must be what
// Caddy keeps, and the handler type must decode and re-encode it unchanged.
func TestCaddyfileAdaptLoadRoundTrip(t *testing.T) {
	t.Setenv("CFG_ALPHA_KEY", "sk-alpha")
	tc := startCaddy(t, cfgFullBlock)
	adapted := adaptCaddyfile(t, tc.caddyfile(cfgFullBlock))

	resp, err := http.Get(tc.Admin + "/config/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /config/: %s", resp.Status)
	}
	readBack, _ := io.ReadAll(resp.Body)
	if want, got := cfgUnmarshal(t, adapted), cfgUnmarshal(t, readBack); !reflect.DeepEqual(got, want) {
		t.Errorf("GET /config/ =\n%s\nwant the adapted\n%s", cfgJSONString(got), cfgJSONString(want))
	}

	// Strict, as Caddy decodes modules: a name the adapter writes but the
	// type does not know would fail here.
	want := cfgFindHandler(cfgUnmarshal(t, adapted))
	delete(want, "handler")
	raw, _ := json.Marshal(want)
	var h Handler
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		t.Fatalf("decoding the adapted handler: %v", err)
	}
	again, _ := json.Marshal(h)
	if got := cfgUnmarshal(t, again); !reflect.DeepEqual(got, any(want)) {
		t.Errorf("decode+encode changed the handler JSON:\n%s\nwant\n%s", cfgJSONString(got), cfgJSONString(want))
	}
}

// cfgCompletion is a minimal non-streaming chat completion.
const cfgCompletion = `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`

// cfgAuthRecorder is an upstream that records the Authorization header it
// got per requested model ("<none>" when the header was absent).
type cfgAuthRecorder struct {
	srv  *httptest.Server
	mu   sync.Mutex
	auth map[string]string
}

func cfgNewAuthRecorder(t *testing.T) *cfgAuthRecorder {
	rec := &cfgAuthRecorder{auth: map[string]string{}}
	rec.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Model string `json:"model"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		auth := "<none>"
		if v := r.Header.Values("Authorization"); len(v) > 0 {
			auth = strings.Join(v, "|")
		}
		rec.mu.Lock()
		rec.auth[req.Model] = auth
		rec.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, cfgCompletion)
	}))
	t.Cleanup(rec.srv.Close)
	return rec
}

func (rec *cfgAuthRecorder) get(model string) (string, bool) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	a, ok := rec.auth[model]
	return a, ok
}

func TestCaddyfileAPIKeyPlaceholdersResolve(t *testing.T) {
	rec := cfgNewAuthRecorder(t)
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte("sk-file-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CFG_ENV_KEY", "sk-env-1")
	t.Setenv("CFG_PART", "part-4")
	t.Setenv("ARBSTR_MY_NAME_X_API_KEY", "sk-default-3")
	t.Setenv("ARBSTR_DASHED_NAME_API_KEY", "sk-dashed-5")
	t.Setenv("ARBSTR_KEYLESS_API_KEY", "")
	tc := startCaddy(t, fmt.Sprintf(`arbstr {
		provider env-p {
			url %[1]s/v1
			api_key {env.CFG_ENV_KEY}
			models m-env
		}
		provider file-p {
			url %[1]s/v1
			api_key {file.%[2]s}
			models m-file
		}
		provider mixed {
			url %[1]s/v1
			api_key sk-{env.CFG_PART}
			models m-mixed
		}
		provider "my name-x" {
			url %[1]s/v1
			models m-default
		}
		provider dashed-Name {
			url %[1]s/v1
			models m-dashed
		}
		provider keyless {
			url %[1]s/v1
			models m-none
		}
	}`, rec.srv.URL, keyFile))
	// Placeholders are resolved once, at provision: a later change of the
	// environment does not reach running providers.
	t.Setenv("CFG_ENV_KEY", "sk-changed")

	want := map[string]string{
		"m-env":     "Bearer sk-env-1",
		"m-file":    "Bearer sk-file-2",
		"m-mixed":   "Bearer sk-part-4",
		"m-default": "Bearer sk-default-3",
		"m-dashed":  "Bearer sk-dashed-5",
		"m-none":    "<none>",
	}
	for model, auth := range want {
		resp := tc.Post("/v1/chat/completions", `{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`,
			"Authorization", "Bearer client-secret")
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("%s: status %d: %s", model, resp.StatusCode, b)
		}
		got, ok := rec.get(model)
		if !ok {
			t.Errorf("%s: upstream not called", model)
		} else if got != auth {
			t.Errorf("%s: upstream Authorization = %q, want %q", model, got, auth)
		}
	}
}

func TestCaddyfileAPIKeyUnresolvableIsLoadError(t *testing.T) {
	t.Setenv("CFG_GOOD_KEY", "sk-live-GOODSECRET")
	tc := startCaddy(t, `respond "still up"`)
	for _, key := range []string{
		"{env.CFG_SURELY_UNSET_7F3A}",
		"sk-prefix-LITERALSECRET{env.CFG_SURELY_UNSET_7F3A}",
		"{file./nonexistent/cfg-arbstr-key}",
	} {
		cfg := adaptCaddyfile(t, tc.caddyfile(fmt.Sprintf(`arbstr {
			provider good {
				url http://127.0.0.1:1/v1
				api_key {env.CFG_GOOD_KEY}
			}
			provider bad {
				url http://127.0.0.1:1/v1
				api_key %s
			}
		}`, key)))
		err := caddy.Load(cfg, true)
		if err == nil {
			t.Fatalf("api_key %s: config loaded", key)
		}
		msg := err.Error()
		if !strings.Contains(msg, `"bad"`) || !strings.Contains(msg, "api_key") {
			t.Errorf("api_key %s: error does not name the provider and option: %v", key, err)
		}
		for _, secret := range []string{"GOODSECRET", "LITERALSECRET"} {
			if strings.Contains(msg, secret) {
				t.Errorf("api_key %s: error leaks a secret: %v", key, err)
			}
		}
	}
	// The refused configs left the running one in place.
	resp, err := http.Get(tc.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if b, _ := io.ReadAll(resp.Body); string(b) != "still up" {
		t.Errorf("after refused loads, GET / = %q, want the old config's answer", b)
	}
}

// TestCaddyfileJSONOnlyConfigRoutes configures arbstr without a Caddyfile,
// through the admin API as `POST /load` users do.
func TestCaddyfileJSONOnlyConfigRoutes(t *testing.T) {
	var mu sync.Mutex
	calls := map[string][]string{} // upstream name -> paths called
	upstream := func(name string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			calls[name] = append(calls[name], r.URL.Path)
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, cfgCompletion)
		}))
		t.Cleanup(s.Close)
		return s
	}
	dear, cheap := upstream("dear"), upstream("cheap")
	tc := startCaddy(t, `respond "placeholder"`)
	config := func(cheapURL string) string {
		return fmt.Sprintf(`{
			"admin": {"listen": %q, "config": {"persist": false}},
			"apps": {"http": {"servers": {"arb": {
				"listen": ["127.0.0.1:%d"],
				"routes": [{"handle": [{
					"handler": "arbstr",
					"providers": [
						{"name": "dear", "url": %q, "input_rate": 100, "output_rate": 100},
						{"name": "cheap", "url": %q, "models": ["m"], "input_rate": 1, "output_rate": 1}
					],
					"retry": {"attempts": 1, "backoff": ["10ms"], "fallbacks": 1},
					"breaker": {"failures": 2, "open": "1s"},
					"timeout": "2s",
					"max_body": 1048576
				}]}]
			}}}}
		}`, tc.adminAddr, tc.Port, dear.URL+"/v1", cheapURL)
	}
	post := func(cfg string) (int, string) {
		resp, err := http.Post(tc.Admin+"/load", "application/json", strings.NewReader(cfg))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if status, body := post(config("ftp://cheap/v1")); status != http.StatusBadRequest || !strings.Contains(body, "http(s)") {
		t.Errorf("POST /load with an ftp url: %d %s, want 400 naming the fix", status, body)
	}
	if status, body := post(config(cheap.URL + "/v1")); status != http.StatusOK {
		t.Fatalf("POST /load: %d %s", status, body)
	}
	tc.waitReady()

	resp := tc.Post("/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("chat: status %d: %s", resp.StatusCode, b)
	}
	if p := resp.Header.Get("x-arbstr-provider"); p != "cheap" {
		t.Errorf("x-arbstr-provider = %q, want cheap", p)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls["cheap"]) != 1 || calls["cheap"][0] != "/v1/chat/completions" || len(calls["dear"]) != 0 {
		t.Errorf("upstream calls = %v, want one POST /v1/chat/completions to cheap", calls)
	}
}
