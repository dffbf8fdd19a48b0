package arbstr

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Fuzz targets for everything that reads input arbstr does not control:
// the Caddyfile, client request bodies, provider SSE streams and provider
// Retry-After headers. scripts/test.sh runs each briefly; seed corpora live
// in testdata/fuzz/<FuzzName>/ (crashers found later go there too).

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
			if !json.Valid(apiErr.body()) {
				t.Fatalf("the error body is not JSON: %s", apiErr.body())
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

// FuzzJSONScan checks the strict scanner against encoding/json: it accepts
// exactly the valid JSON objects (up to its documented depth limit), and
// the members it reports are the object's, in order, with the keys any
// JSON parser reads (escapes decoded) and valid spans.
func FuzzJSONScan(f *testing.F) {
	for _, s := range []string{
		`{}`, ` {"a":1} `, `{"a":[1,2,{"b":null}],"c":"\u00e9\n","d":-0.5e+10,"e":true,"f":false}`,
		`{"a":01}`, `{"a":1,}`, `{"a" 1}`, `{'a':1}`, `{"a":"\x"}`, `{"a":"\ud800"}`, `{"a":.5}`, `{"a":1.}`,
		`{"a":1e}`, `{"a":-}`, `{"a":tru}`, `{"a":nulll}`, "{\"a\":\"\t\"}", `[1]`, `"s"`, `1`, ``, `   `,
		`{"a":1}{"b":2}`, `{"a\"b":1,"a\\":2}`, "{\"\xff\":\"\xc3\x28\"}", `{"a":[[[[[[]]]]]]}`,
		strings.Repeat(`{"a":`, 513) + `1` + strings.Repeat(`}`, 513),
		strings.Repeat(`{"a":`, 511) + `1` + strings.Repeat(`}`, 511),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		type member struct {
			key string
			v   span
		}
		var got []member
		obj, err := topLevelObject(b, func(key []byte, v span) error {
			got = append(got, member{string(key), v})
			return nil
		})
		if errors.Is(err, errMaxDepth) {
			return // the scanner refuses nesting deeper than maxJSONDepth on purpose
		}
		trimmed := bytes.TrimLeft(b, " \t\r\n")
		wantOK := json.Valid(b) && len(trimmed) > 0 && trimmed[0] == '{'
		if (err == nil) != wantOK {
			t.Fatalf("topLevelObject error = %v, but json.Valid = %v (object: %v) for %q", err, json.Valid(b), wantOK, b)
		}
		if err != nil {
			return
		}
		if obj.kind != kindObject || !json.Valid(b[obj.start:obj.end]) || len(bytes.TrimSpace(b[:obj.start])) != 0 {
			t.Fatalf("bad object span %+v for %q", obj, b)
		}
		keys := fzTopLevelKeys(t, b)
		if len(keys) != len(got) {
			t.Fatalf("scanner saw %d members, encoding/json %d, in %q", len(got), len(keys), b)
		}
		for i, m := range got {
			k := m.key
			if !utf8.ValidString(k) {
				// Unescaped keys are passed as they are; encoding/json
				// turns invalid UTF-8 into U+FFFD. (Such a key holds no
				// backslash or quote, so quoting it is safe.)
				_ = json.Unmarshal([]byte(`"`+k+`"`), &k)
			}
			if k != keys[i] {
				t.Fatalf("member %d: key %q, encoding/json reads %q", i, m.key, keys[i])
			}
			raw := b[m.v.start:m.v.end]
			if !json.Valid(raw) {
				t.Fatalf("member %q: span %q is not a JSON value", k, raw)
			}
			if want := fzKindOf(raw[0]); m.v.kind != want {
				t.Fatalf("member %q: kind %v, want %v", k, m.v.kind, want)
			}
		}
	})
}

// fzTopLevelKeys lists the keys of a valid top-level object, duplicates
// included, in order.
func fzTopLevelKeys(t *testing.T, b []byte) []string {
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func fzKindOf(c byte) jsonKind {
	switch c {
	case '{':
		return kindObject
	case '[':
		return kindArray
	case '"':
		return kindString
	case 't', 'f':
		return kindBool
	case 'n':
		return kindNull
	}
	return kindNumber
}

// FuzzSSEScanner feeds arbitrary provider streams, in reads of every size,
// to the SSE scanner. It must end, never return an event over the limit,
// and, for a well-formed stream, return the data events that a plain
// reading of the SSE spec finds.
func FuzzSSEScanner(f *testing.F) {
	for _, s := range []string{
		"data: {\"a\":1}\n\ndata: [DONE]\n\n",
		"data: a\r\ndata: b\r\n\r\n",
		"data:x\n\n: comment\n\nevent: ping\nid: 1\nretry: 5\n\ndata\n\ndata:\n\n",
		"data: unterminated",
		"data: a\n\ndata: cut mid-event\n",
		"datax: no\ndata : no\n\n",
		"\n\n\n\ndata:  two spaces\n\n",
		"data: a\rdata: b\r\r",
		"\xef\xbb\xbfdata: bom\n\n",
		strings.Repeat("data: l\n", 500) + "\n",
	} {
		f.Add([]byte(s), uint16(0))
		f.Add([]byte(s), uint16(1))
	}
	f.Fuzz(func(t *testing.T, stream []byte, readSize uint16) {
		var r io.Reader = bytes.NewReader(stream)
		if readSize > 0 {
			r = &fzChunkReader{b: stream, n: int(readSize)}
		}
		sc := newSSEScanner(r)
		var got []string
		var err error
		for i := 0; ; i++ {
			if i > len(stream)+1 {
				t.Fatalf("the scanner returned more events than the stream has bytes")
			}
			var ev sseEvent
			ev, err = sc.next()
			if err != nil {
				break
			}
			if !ev.hasData {
				t.Fatal("an event without data was returned")
			}
			if len(ev.data) > maxEventSize {
				t.Fatalf("an event of %d bytes passed the %d limit", len(ev.data), maxEventSize)
			}
			got = append(got, string(ev.data))
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, errEventTooLarge) {
			t.Fatalf("unexpected error %v", err)
		}
		if !fzWellFormedSSE(stream) || !errors.Is(err, io.EOF) {
			return
		}
		if want := fzReferenceSSE(stream); !reflect.DeepEqual(got, want) {
			t.Fatalf("events %q, reference parser %q, stream %q", got, want, stream)
		}
	})
}

// fzChunkReader returns at most n bytes per Read, so that events and lines
// straddle the scanner's buffer fills.
type fzChunkReader struct {
	b []byte
	n int
}

func (r *fzChunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), r.n, len(r.b))
	copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

// fzWellFormedSSE: lines end in \n or \r\n (no lone \r, which the spec
// also allows but no OpenAI-compatible provider sends), and no leading BOM.
func fzWellFormedSSE(b []byte) bool {
	if bytes.HasPrefix(b, []byte("\xef\xbb\xbf")) {
		return false
	}
	for i, c := range b {
		if c == '\r' && (i+1 >= len(b) || b[i+1] != '\n') {
			return false
		}
	}
	return true
}

// fzReferenceSSE follows the event stream interpretation of the HTML spec
// (§9.2.6) for data fields: an event is dispatched at a blank line when
// data was seen; a last event without its blank line is discarded.
func fzReferenceSSE(b []byte) []string {
	text := strings.ReplaceAll(string(b), "\r\n", "\n")
	lines := strings.Split(text, "\n")
	lines = lines[:len(lines)-1] // the part after the last \n is not a line
	var events []string
	var data strings.Builder
	seen := false
	for _, line := range lines {
		if line == "" {
			if seen {
				events = append(events, strings.TrimSuffix(data.String(), "\n"))
			}
			data.Reset()
			seen = false
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, found := strings.Cut(line, ":")
		if found {
			value = strings.TrimPrefix(value, " ")
		}
		if field == "data" {
			data.WriteString(value)
			data.WriteByte('\n')
			seen = true
		}
	}
	return events
}

// TestFuzzSSEScannerEventLimit checks the limit with events too large for
// the fuzzer to build: one huge line, and many lines adding up.
func TestFuzzSSEScannerEventLimit(t *testing.T) {
	line := "data: " + strings.Repeat("x", maxEventSize) + "x\n\n"
	many := strings.Repeat("data: "+strings.Repeat("y", 1<<20)+"\n", 5) + "\n"
	for name, stream := range map[string]string{"one line": line, "many lines": many} {
		sc := newSSEScanner(strings.NewReader(stream + "data: after\n\n"))
		ev, err := sc.next()
		if !errors.Is(err, errEventTooLarge) {
			t.Errorf("%s: got %d bytes, error %v; want errEventTooLarge", name, len(ev.data), err)
		}
	}
	exact := "data: " + strings.Repeat("z", maxEventSize) + "\n\n"
	ev, err := newSSEScanner(strings.NewReader(exact)).next()
	if err != nil || len(ev.data) != maxEventSize {
		t.Errorf("an event of exactly the limit: %d bytes, error %v", len(ev.data), err)
	}
}

// TestFuzzSSEScannerLongLines covers lines around and past the scanner's
// 16 KB read buffer, which the fuzzer reaches too slowly (large inputs cut
// its speed tenfold), in reads of several sizes.
func TestFuzzSSEScannerLongLines(t *testing.T) {
	var stream strings.Builder
	for _, n := range []int{16<<10 - 8, 16<<10 - 7, 16 << 10, 16<<10 + 1, 40 << 10} {
		fmt.Fprintf(&stream, "data: %s\r\n: %s\n\ndata: short\n\n", strings.Repeat("a", n), strings.Repeat("c", n))
	}
	fmt.Fprintf(&stream, "data: %s\ndata: %s\n\n", strings.Repeat("b", 20<<10), strings.Repeat("d", 20<<10))
	want := fzReferenceSSE([]byte(stream.String()))
	if len(want) != 11 {
		t.Fatalf("the reference parser found %d events, want 11", len(want))
	}
	for _, size := range []int{1, 7, 4096, 1 << 20} {
		sc := newSSEScanner(&fzChunkReader{b: []byte(stream.String()), n: size})
		var got []string
		for {
			ev, err := sc.next()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("reads of %d: %v", size, err)
				}
				break
			}
			got = append(got, string(ev.data))
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("reads of %d: %d events, want %d (or different data)", size, len(got), len(want))
		}
	}
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
