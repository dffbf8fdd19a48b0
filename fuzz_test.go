package arbstr

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/arbstr/caddy-arbstr/internal/sse"
)

// Fuzz targets for everything that reads input arbstr does not control:
// the Caddyfile, client request bodies, provider SSE streams and provider
// Retry-After headers. scripts/test.sh runs each briefly; seed corpora live
// in testdata/fuzz/<FuzzName>/ (crashers found later go there too). The
// scanners' targets live with them: internal/jsonscan, internal/sse.

// FuzzCaddyfile feeds arbitrary Caddyfile text to UnmarshalCaddyfile. It
// must never panic, and a config it accepts must not make Validate panic;
// a config that validates must load from its JSON form as well, since
// `caddy adapt` output and POST /load go that way.
func FuzzCaddyfile(f *testing.F) {
	for _, s := range []string{
		"arbstr",
		"arbstr {\n}",
		"arbstr {\n\tprovider a {\n\t\turl http://127.0.0.1:1/v1\n\t}\n}",
		`arbstr {
	provider alpha {
		url          https://alpha.example/v1
		api_key      {env.ALPHA_KEY}
		models       gpt-4o gpt-4o-mini
		model        gpt-4o openai/gpt-4o
		input_rate   10000
		output_rate  30000
		base_fee     1
	}
	provider beta {
		url http://beta.example/v1
		model * llama3.1:8b
	}
	policy code {
		allowed_models  gpt-4o
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
	attempt_timeout      10s
	first_event_timeout  10s
	stream_idle_timeout  60s
	max_body             16MB
}`,
		"arbstr {\n\tprovider a {\n\t\turl javascript:alert(1)\n\t}\n}",
		"arbstr {\n\tprovider a {\n\t\turl http://user:pw@host/v1\n\t}\n}",
		"arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t\tinput_rate -1\n\t}\n}",
		"arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t\tinput_rate NaN\n\t}\n}",
		"arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t}\n\tprovider a {\n\t\turl http://h/v1\n\t}\n}",
		"arbstr {\n\tpolicy p {\n\t\tallowed_models x\n\t}\n}",
		"arbstr {\n\tretry {\n\t\tfallbacks -1\n\t\tattempts 0\n\t}\n}",
		"arbstr {\n\tmax_body 0\n\ttimeout -1s\n}",
		"arbstr extra {\n}",
		"arbstr {\n\tprovider {\n\t}\n}",
		"arbstr {\n\tprovider \"a b\" {\n\t\turl `http://h/v1`\n\t}\n}",
		"arbstr {\n\tprovider a {\n\t\turl http://h/v1\n\t\tmodel a\n\t\tmodels\n\t}\n}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		// NewTestDispenser calls log.Fatalf on a tokenizer error, which
		// would kill the fuzzing process; such input never reaches
		// UnmarshalCaddyfile in Caddy either (the parser refuses it first).
		if _, err := caddyfile.Tokenize([]byte(input), "Testfile"); err != nil {
			return
		}
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
			return
		}
		h.applyDefaults()
		if err := h.Validate(); err != nil {
			return
		}
		cfg, err := json.Marshal(&h)
		if err != nil {
			t.Fatalf("a valid config does not encode to JSON: %v", err)
		}
		var again Handler
		if err := json.Unmarshal(cfg, &again); err != nil {
			t.Fatalf("the JSON of a valid config does not decode: %v\n%s", err, cfg)
		}
		again.applyDefaults()
		if err := again.Validate(); err != nil {
			t.Fatalf("a config valid from the Caddyfile is refused from JSON: %v\n%s", err, cfg)
		}
	})
}

// FuzzInspectRequest feeds arbitrary bodies to inspectRequest. A body it
// accepts must be a valid JSON object whose model and stream it read
// right, and the upstream body built from it (model renamed, usage
// requested) must decode to the client's JSON with only those two changes.
func FuzzInspectRequest(f *testing.F) {
	for _, s := range []string{
		`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","messages":[],"stream":true}`,
		`{"model":"m","messages":[],"stream":true,"stream_options":{}}`,
		`{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":false}}`,
		`{"model":"m","messages":[],"stream":true,"stream_options":{"x":1,"include_usage":true}}`,
		`{"model":"m","messages":[],"stream":true,"stream_options":null}`,
		`{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url"}]}],"model":"m","max_tokens":5}`,
		` {"model":"m\u00e9\"x","messages":[{"role":"user","content":null}],"tools":[{"type":"function"}]} `,
		`{"model":"a","model":"b","messages":[],"stream_options":{"include_usage":1},"stream_options":{}}`,
		`{"model":"m","messages":[],"stream":"yes"}`,
		`{"model":1,"messages":[]}`,
		`{"model":"m","messages":{}}`,
		`{"model":"m","messages":[],"max_completion_tokens":1e3,"n":-0.5e-2}`,
		`[]`, `null`, `"x"`, ``, `{`, `{"model":"m","messages":[]`, `{"model":"m","messages":[]}x`,
		"{\"model\":\"m\",\"messages\":[],\"k\":\"\xff\xfe\"}",
		`{"model":"m","messages":[` + strings.Repeat(`[`, 600) + strings.Repeat(`]`, 600) + `]}`,
	} {
		f.Add([]byte(s), "upstream/model-1")
	}
	f.Fuzz(func(t *testing.T, body []byte, newModel string) {
		orig := bytes.Clone(body)
		facts, apiErr := inspectRequest(body)
		if !bytes.Equal(body, orig) {
			t.Fatal("inspectRequest modified the body")
		}
		if apiErr != nil {
			if apiErr.status != http.StatusBadRequest {
				t.Fatalf("refusal with status %d, want 400", apiErr.status)
			}
			if !json.Valid(apiErr.openAIBody()) {
				t.Fatalf("the error body is not JSON: %s", apiErr.openAIBody())
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("accepted a body that is not valid JSON: %q", body)
		}
		var decoded map[string]any
		if err := json.Unmarshal(body, &decoded); err != nil {
			t.Fatalf("accepted a body that is not a JSON object: %v", err)
		}
		if m, _ := decoded["model"].(string); m != facts.model {
			t.Fatalf("model read as %q, JSON says %q", facts.model, decoded["model"])
		}
		if s, _ := decoded["stream"].(bool); s != facts.stream {
			t.Fatalf("stream read as %v, JSON says %v", facts.stream, decoded["stream"])
		}
		if _, ok := decoded["messages"].([]any); !ok {
			t.Fatalf("accepted a body whose messages is %T", decoded["messages"])
		}

		if !utf8.ValidString(newModel) {
			newModel = "upstream" // config text is UTF-8; json.Marshal would alter it
		}
		if newModel == facts.model {
			newModel += "-upstream"
		}
		for _, inject := range []bool{false, true} {
			out := upstreamBody(body, facts, newModel, inject)
			if !bytes.Equal(body, orig) {
				t.Fatal("upstreamBody modified the client's body")
			}
			var got map[string]any
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("upstream body (inject=%v) is not a JSON object: %v\nin:  %s\nout: %s", inject, err, body, out)
			}
			want := fzExpectedUpstream(body, newModel, inject)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("upstream body (inject=%v) changed more than model and include_usage\nin:  %s\nout: %s", inject, body, out)
			}
		}
	})
}

// fzExpectedUpstream is the decoded client body with the two edits arbstr
// may make, done the slow way.
func fzExpectedUpstream(body []byte, model string, injectUsage bool) map[string]any {
	var want map[string]any
	_ = json.Unmarshal(body, &want)
	want["model"] = model
	if injectUsage {
		opts, ok := want["stream_options"].(map[string]any)
		if !ok {
			opts = map[string]any{}
		}
		opts["include_usage"] = true
		want["stream_options"] = opts
	}
	return want
}

// FuzzProtocols feeds arbitrary bodies to the embeddings, Responses and
// Anthropic Messages inspections and answers and events to their judges:
// never a panic, a refusal is a 400 in the API's shape, an accepted body
// is a JSON object whose model and stream arbstr read right, and the
// upstream body changes the model alone.
func FuzzProtocols(f *testing.F) {
	for _, s := range []string{
		`{"model":"e","input":"hello"}`,
		`{"model":"e","input":["a","b"],"encoding_format":"base64"}`,
		`{"model":"e","input":[[1,2,3],[4]]}`,
		`{"model":"e","input":[1,2,{}]}`,
		`{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]}],"stream":true,"max_output_tokens":9}`,
		`{"model":"m","instructions":"be brief","input":"x"}`,
		`{"model":"claude","max_tokens":1024,"system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":"hi"}],"stream":true}`,
		`{"type":"response.completed","response":{"usage":{"input_tokens":1,"output_tokens":2}}}`,
		`{"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}}`,
		`{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}`,
		`{"type":"error","error":{"type":"overloaded_error","message":"x"}}`,
		`{"type":"error","code":"c","message":"m"}`,
		`[]`, `null`, ``, `{`, `{"model":"a","model":"b","input":"x"}`,
	} {
		for i := range 3 {
			f.Add([]byte(s), uint8(i))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, which uint8) {
		proto := protocols[1+int(which)%3]
		orig := bytes.Clone(body)
		_ = proto.judgeAnswer(body)
		_ = proto.judgeEvent(sse.Event{Name: []byte("x"), Data: body})
		facts, apiErr := proto.inspect(body)
		if !bytes.Equal(body, orig) {
			t.Fatal("inspection modified the body")
		}
		if apiErr != nil {
			if apiErr.status != http.StatusBadRequest || !json.Valid(proto.errorBody(apiErr)) {
				t.Fatalf("refusal %d %s, want a 400 in JSON", apiErr.status, proto.errorBody(apiErr))
			}
			return
		}
		var decoded map[string]any
		if err := json.Unmarshal(body, &decoded); err != nil {
			t.Fatalf("%s accepted a body that is not a JSON object: %v", proto.endpoint(), err)
		}
		if m, _ := decoded["model"].(string); m != facts.model {
			t.Fatalf("model read as %q, JSON says %q", facts.model, decoded["model"])
		}
		if s, _ := decoded["stream"].(bool); s != facts.stream {
			t.Fatalf("stream read as %v, JSON says %v", facts.stream, decoded["stream"])
		}
		if facts.injectUsage {
			t.Fatalf("%s asks for include_usage", proto.endpoint())
		}
		out := upstreamBody(body, facts, facts.model+"-up", false)
		var got map[string]any
		if err := json.Unmarshal(out, &got); err != nil || !reflect.DeepEqual(got, fzExpectedUpstream(body, facts.model+"-up", false)) {
			t.Fatalf("upstream body changed more than the model\nin:  %s\nout: %s", body, out)
		}
	})
}

// fzMaxRetryAfter is the longest hint parseRetryAfter may return: the
// bound it already applies to numeric hints (about 31 years); anything
// longer is a provider's garbage, not a wait.
const fzMaxRetryAfter = 1e9 * time.Second

// FuzzParseRetryAfter feeds arbitrary retry-after-ms and Retry-After
// values: the result is never negative nor beyond fzMaxRetryAfter.
func FuzzParseRetryAfter(f *testing.F) {
	base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, s := range [][2]string{
		{"", ""}, {"250", ""}, {"", "3"}, {"", "1.5"}, {"soon", "4"}, {"-5", "-5"}, {"NaN", "NaN"},
		{"+Inf", "+Inf"}, {"1e300", "1e300"}, {"99999999999999999999", "99999999999999999999"},
		{"0x1p10", "0x1p-2"}, {"1e-300", "4e-10"}, {"", base.Add(10 * time.Second).Format(http.TimeFormat)},
		{"", "Fri, 31 Dec 9999 23:59:59 GMT"}, {"", "Mon, 01 Jan 0001 00:00:00 GMT"},
		{"", "Sunday, 06-Nov-94 08:49:37 GMT"}, {"", "Sun Nov  6 08:49:37 1994"},
	} {
		f.Add(s[0], s[1], int64(0))
	}
	f.Fuzz(func(t *testing.T, ms, ra string, offset int64) {
		// now is a plausible clock: within a century after base.
		now := base.Add(time.Duration(offset%(100*365*24)) * time.Hour)
		h := http.Header{}
		if ms != "" {
			h.Set("retry-after-ms", ms)
		}
		if ra != "" {
			h.Set("Retry-After", ra)
		}
		d := parseRetryAfter(h, now)
		if d < 0 {
			t.Fatalf("parseRetryAfter(ms=%q, ra=%q) = %v: negative", ms, ra, d)
		}
		if d > fzMaxRetryAfter {
			t.Fatalf("parseRetryAfter(ms=%q, ra=%q) = %v: beyond %v", ms, ra, d, fzMaxRetryAfter)
		}
	})
}
