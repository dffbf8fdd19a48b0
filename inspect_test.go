package arbstr

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/arbstr/caddy-arbstr/internal/jsonscan"
)

func TestInspectRequestFacts(t *testing.T) {
	cases := []struct {
		name        string
		body        string
		model       string
		stream      bool
		clientUsage bool
		maxTokens   int
		lastUser    string
		textBytes   int
	}{
		{name: "minimal", body: `{"model":"gpt-4o","messages":[{"role":"user","content":"Hello World"}]}`,
			model: "gpt-4o", lastUser: "hello world", textBytes: 11},
		{name: "surrounding whitespace", body: " \r\n\t{ \"model\" : \"m\" , \"messages\" : [ ] }\n ", model: "m"},
		{name: "stream true", body: `{"model":"m","stream":true,"messages":[]}`, model: "m", stream: true},
		{name: "stream false", body: `{"model":"m","stream":false,"messages":[]}`, model: "m"},
		{name: "stream null is not streaming", body: `{"model":"m","stream":null,"messages":[]}`, model: "m"},
		{name: "client asked for usage", body: `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}`,
			model: "m", stream: true, clientUsage: true},
		{name: "client declined usage", body: `{"model":"m","stream":true,"stream_options":{"include_usage":false},"messages":[]}`,
			model: "m", stream: true},
		{name: "stream_options null", body: `{"model":"m","stream":true,"stream_options":null,"messages":[]}`, model: "m", stream: true},
		{name: "max_tokens", body: `{"model":"m","max_tokens":100,"messages":[]}`, model: "m", maxTokens: 100},
		{name: "max_completion_tokens", body: `{"model":"m","max_completion_tokens":50,"messages":[]}`, model: "m", maxTokens: 50},
		{name: "max_tokens 0 is no limit", body: `{"model":"m","max_tokens":0,"messages":[]}`, model: "m"},
		{name: "max_tokens negative ignored", body: `{"model":"m","max_tokens":-3,"messages":[]}`, model: "m"},
		{name: "max_tokens fractional ignored", body: `{"model":"m","max_tokens":1.5,"messages":[]}`, model: "m"},
		{name: "max_tokens string ignored", body: `{"model":"m","max_tokens":"100","messages":[]}`, model: "m"},
		{name: "escaped model name", body: `{"model":"gpt\u002d4o","messages":[]}`, model: "gpt-4o"},
		{name: "content parts", body: `{"model":"m","messages":[{"role":"user","content":[` +
			`{"type":"text","text":"Foo"},{"type":"image_url","image_url":{"url":"http://x/IMG"}},{"type":"text","text":"BAR"}]}]}`,
			model: "m", lastUser: "foo bar", textBytes: 6},
		{name: "last user of many, all text counted", body: `{"model":"m","messages":[` +
			`{"role":"system","content":"sys"},{"role":"user","content":"First"},` +
			`{"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{}"}}]},` +
			`{"role":"tool","tool_call_id":"1","content":"result"},{"role":"user","content":"Second"},{"role":"assistant","content":"ok"}]}`,
			model: "m", lastUser: "second", textBytes: 3 + 5 + 6 + 6 + 2},
		{name: "non-object messages are skipped", body: `{"model":"m","messages":[1,"x",null,{"role":"user","content":"Yo"}]}`,
			model: "m", lastUser: "yo", textBytes: 2},
		{name: "unknown members ignored", body: `{"tools":[{"type":"function"}],"model":"m","response_format":{"type":"json_object"},"messages":[],"x":[[[{}]]]}`,
			model: "m"},
		{name: "unicode text lower-cased", body: `{"model":"m","messages":[{"role":"user","content":"ÉTÉ"}]}`,
			model: "m", lastUser: "été", textBytes: 5},
		{name: "escaped text decoded", body: `{"model":"m","messages":[{"role":"user","content":"\u00C9T\u00c9 \"Q\""}]}`,
			model: "m", lastUser: "été \"q\"", textBytes: -1}, // raw or decoded size: either is a fair estimate
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, apiErr := inspectRequest([]byte(tc.body))
			if apiErr != nil {
				t.Fatalf("refused: %s (param %q)", apiErr.message, apiErr.param)
			}
			if tc.textBytes < 0 {
				tc.textBytes = f.textBytes
			}
			got := []any{f.model, f.stream, f.clientUsage, f.maxTokens, f.lastUserText(), f.textBytes}
			want := []any{tc.model, tc.stream, tc.clientUsage, tc.maxTokens, tc.lastUser, tc.textBytes}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("model, stream, clientUsage, maxTokens, lastUser, textBytes = %v, want %v", got, want)
			}
		})
	}
}

func TestInspectRequestBadInput(t *testing.T) {
	cases := []struct {
		name  string
		body  string
		param string // "" means the body's "param" must be null
	}{
		{"empty", ``, ""},
		{"only whitespace", " \n ", ""},
		{"not JSON", `model=gpt-4o`, ""},
		{"truncated", `{"model":"m","messages":[]`, ""},
		{"trailing garbage", `{"model":"m","messages":[]} x`, ""},
		{"two objects", `{"model":"m","messages":[]}{}`, ""},
		{"array", `[{"model":"m","messages":[]}]`, ""},
		{"string", `"hello"`, ""},
		{"number", `42`, ""},
		{"null", `null`, ""},
		{"single quotes", `{'model':'m','messages':[]}`, ""},
		{"trailing comma", `{"model":"m","messages":[],}`, ""},
		{"bad escape deep inside", `{"model":"m","messages":[{"role":"user","content":"\q"}]}`, ""},
		{"raw newline in string", "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\nb\"}]}", ""},
		{"no model", `{"messages":[]}`, "model"},
		{"model number", `{"model":4,"messages":[]}`, "model"},
		{"model null", `{"model":null,"messages":[]}`, "model"},
		{"model array", `{"model":["m"],"messages":[]}`, "model"},
		{"model empty", `{"model":"","messages":[]}`, "model"},
		{"no messages", `{"model":"m"}`, "messages"},
		{"messages object", `{"model":"m","messages":{"role":"user"}}`, "messages"},
		{"messages string", `{"model":"m","messages":"hi"}`, "messages"},
		{"messages null", `{"model":"m","messages":null}`, "messages"},
		{"stream string", `{"model":"m","messages":[],"stream":"true"}`, "stream"},
		{"stream number", `{"model":"m","messages":[],"stream":1}`, "stream"},
		{"model key in other case", `{"model":"cheap","messages":[],"MODEL":"dear"}`, ""},
		{"stream key in other case", `{"model":"m","messages":[],"Stream":true}`, ""},
		{"stream object", `{"model":"m","messages":[],"stream":{}}`, "stream"},
		{"stream_options not an object", `{"model":"m","messages":[],"stream":true,"stream_options":true}`, "stream_options"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, apiErr := inspectRequest([]byte(tc.body))
			if apiErr == nil {
				t.Fatalf("accepted: %+v", f)
			}
			rec := httptest.NewRecorder()
			apiErr.write(rec, nil)
			var body struct {
				Error struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
				} `json:"error"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("error body is not JSON: %v: %s", err, rec.Body)
			}
			if rec.Code != http.StatusBadRequest || body.Error.Type != "invalid_request_error" {
				t.Errorf("answer %d %s, want 400 invalid_request_error", rec.Code, body.Error.Type)
			}
			switch {
			case tc.param == "" && body.Error.Param != nil:
				t.Errorf("param = %q, want null", *body.Error.Param)
			case tc.param != "" && (body.Error.Param == nil || *body.Error.Param != tc.param):
				t.Errorf("param = %v, want %q (message %q)", body.Error.Param, tc.param, body.Error.Message)
			}
			if body.Error.Message == "" {
				t.Error("empty message")
			}
		})
	}
}

// cfgRichBody has what a provider must receive untouched: unknown fields,
// null content, number formats, odd whitespace and key order, escapes, and
// "model" keys nested where they must not be edited.
const cfgRichBody = "{\n" +
	`  "messages": [{"role":"system","content":"Be \u00e9l\u00e9gant \ud83d\ude00 \/ \"q\""},` +
	`{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"model\":\"gpt-4o\"}"}}]},` +
	`{"role":"user","content":"hi"}],` + "\n" +
	`  "temperature": 1.0e+2,` + "\n" +
	`  "top_p" : 10.50,` + "\n" +
	"  \"model\" :\t\"gpt-4o\" ,\n" +
	`  "tools": [{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"model":{"type":"string"}}}}}],` + "\n" +
	`  "response_format": {"type":"json_schema","json_schema":{"name":"x","schema":{}}},` + "\n" +
	`  "n": -0, "seed": 12345678901234567890, "logit_bias": {"50256": -1E-7},` + "\n" +
	`  "stream": true` + "\n" +
	"}\n"

func TestInspectUpstreamBodyEdits(t *testing.T) {
	richModel := strings.Replace(cfgRichBody, "\"model\" :\t\"gpt-4o\"", "\"model\" :\t\"openai/gpt-4o\"", 1)
	const usage = `,"stream_options":{"include_usage":true}`
	cases := []struct {
		name     string
		body     string
		upstream string // "" keeps the client's model
		inject   bool
		want     string
	}{
		{name: "no edits", body: cfgRichBody, want: cfgRichBody},
		{name: "model rewrite", body: cfgRichBody, upstream: "openai/gpt-4o", want: richModel},
		{name: "usage appended when stream_options is absent", body: cfgRichBody, inject: true,
			want: strings.TrimSuffix(cfgRichBody, "}\n") + usage + "}\n"},
		{name: "model rewrite and usage", body: cfgRichBody, upstream: "openai/gpt-4o", inject: true,
			want: strings.TrimSuffix(richModel, "}\n") + usage + "}\n"},
		{name: "stream_options {}", body: `{"model":"m","stream":true,"stream_options":{},"messages":[]}`, inject: true,
			want: `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}`},
		{name: "stream_options { } with space", body: `{"model":"m","stream":true,"stream_options":{ },"messages":[]}`, inject: true,
			want: `{"model":"m","stream":true,"stream_options":{"include_usage":true },"messages":[]}`},
		{name: "stream_options with other members", body: `{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true, "x":[1.50]},"messages":[]}`,
			inject: true, want: `{"model":"m","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true, "x":[1.50]},"messages":[]}`},
		{name: "stream_options null", body: `{"model":"m","stream":true,"stream_options":null,"messages":[]}`, inject: true,
			want: `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}`},
		{name: "include_usage false", body: `{"model":"m","stream":true,"stream_options":{"a":1, "include_usage" : false ,"b":2},"messages":[]}`,
			inject: true, want: `{"model":"m","stream":true,"stream_options":{"a":1, "include_usage" : true ,"b":2},"messages":[]}`},
		{name: "include_usage null", body: `{"model":"m","stream":true,"stream_options":{"include_usage":null},"messages":[]}`,
			inject: true, want: `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}`},
		{name: "stream_options before model, both edited", body: `{"stream_options":{},"stream":true,"model":"m","messages":[]}`,
			upstream: "up", inject: true, want: `{"stream_options":{"include_usage":true},"stream":true,"model":"up","messages":[]}`},
		{name: "usage appended before trailing whitespace in the object", body: "{\"model\":\"m\",\"stream\":true,\"messages\":[] \n}\n",
			inject: true, want: "{\"model\":\"m\",\"stream\":true,\"messages\":[] \n" + usage + "}\n"},
		{name: "escaped model kept when not renamed", body: `{"model":"gpt\u002d4o","messages":[]}`, upstream: "gpt-4o",
			want: `{"model":"gpt\u002d4o","messages":[]}`},
		{name: "escaped model replaced whole", body: `{"model":"gpt\u002d4o","messages":[]}`, upstream: "vendor/gpt-4o",
			want: `{"model":"vendor/gpt-4o","messages":[]}`},
		{name: "upstream name that needs escaping", body: `{"model":"m","messages":[]}`, upstream: `a"b\c`,
			want: `{"model":"a\"b\\c","messages":[]}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(tc.body)
			orig := bytes.Clone(body)
			f, apiErr := inspectRequest(body)
			if apiErr != nil {
				t.Fatalf("refused: %s", apiErr.message)
			}
			upstream := tc.upstream
			if upstream == "" {
				upstream = f.model
			}
			got := upstreamBody(body, f, upstream, tc.inject)
			if !bytes.Equal(body, orig) {
				t.Errorf("the client's buffer was modified:\n%s", body)
			}
			if string(got) != tc.want {
				t.Errorf("upstream body =\n%s\nwant\n%s", got, tc.want)
			}
			if !tc.inject && upstream == f.model && len(got) > 0 && &got[0] != &body[0] {
				t.Error("no edit, yet the body was copied")
			}
			cfgCheckSemantics(t, orig, got, upstream, tc.inject)
		})
	}
}

// cfgCheckSemantics checks that edited is valid JSON equal to orig except
// for model and stream_options.include_usage.
func cfgCheckSemantics(t *testing.T, orig, edited []byte, model string, injected bool) {
	t.Helper()
	if !json.Valid(edited) {
		t.Fatalf("result is not valid JSON:\n%s", edited)
	}
	var want, got map[string]any
	dec := func(b []byte, v *map[string]any) {
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		if err := d.Decode(v); err != nil {
			t.Fatalf("decoding %s: %v", b, err)
		}
	}
	dec(orig, &want)
	dec(edited, &got)
	want["model"] = model
	if injected {
		so, _ := want["stream_options"].(map[string]any)
		if so == nil {
			so = map[string]any{}
		}
		so["include_usage"] = true
		want["stream_options"] = so
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decoded result differs beyond model/include_usage:\n got %v\nwant %v", got, want)
	}
}

// cfgScanTable holds inputs where a hand-written scanner is easy to get
// wrong; each is compared with encoding/json.
var cfgScanTable = []string{
	`{}`, ` {} `, "\t\r\n{}\n", `{"a":1}`, `{"a":-0}`, `{"a":0.5}`, `{"a":-0.0e-0}`, `{"a":1E+5}`, `{"a":1e5}`,
	`{"a":01}`, `{"a":-}`, `{"a":1.}`, `{"a":.5}`, `{"a":1e}`, `{"a":1e+}`, `{"a":+1}`, `{"a":0x10}`, `{"a":NaN}`,
	`{"a":Infinity}`, `{"a":-Infinity}`, `{"a":1_000}`, `{"a":--1}`, `{"a":1.5.2}`,
	`{"a":"\u00e9"}`, `{"a":"\u12"}`, `{"a":"\uZZZZ"}`, `{"a":"\x41"}`, `{"a":"\'"}`, `{"a":"\/\b\f\n\r\t\"\\"}`,
	"{\"a\":\"\x01\"}", "{\"a\":\"\x1f\"}", "{\"a\":\"\x7f\"}", "{\"a\":\"\xff\xfe\"}", "{\"a\":\"\xe2\x82\"}", `{"a":"\ud800"}`,
	"{\"a\":\"\x00\"}", `{"a":"unterminated}`, `{"a":"x"`, `{"a"}`, `{"a":}`, `{"a" 1}`, `{a:1}`, `{"a":1,}`, `{,}`, `{"a":1 "b":2}`,
	`{"a":1}}`, `{"a":1}]`, `{"a":[1,2,]}`, `{"a":[,1]}`, `{"a":[1 2]}`, `{"a":[]}`, `{"a":[[]]}`, `{"a":[{}]}`, `{"a":{"b":{"c":[null]}}}`,
	`{"a":tru}`, `{"a":truee}`, `{"a":True}`, `{"a":nul}`, `{"a":null }`, `{"a":false,"a":true}`, `{"":0}`,
	"\ufeff{}", "{\"a\":1}\x00", "{\v}", "{\f}", "{\u00a0}", "{\"a\"\n:\n1\n}", `{"a":1}/*c*/`, `{"a":1}//`,
	`[]`, `[1]`, `"s"`, `1`, `true`, `null`, ``, ` `, `{`, `}`, `{"a":[`,
	`{"a":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`,
}

// TestInspectScannerAgreesWithEncodingJSON: the scanner decides what reaches
// providers, so it must accept exactly the objects encoding/json accepts.
func TestInspectScannerAgreesWithEncodingJSON(t *testing.T) {
	for _, in := range cfgScanTable {
		b := []byte(in)
		_, err := jsonscan.TopLevelObject(b, nil)
		want := json.Valid(b) && bytes.HasPrefix(bytes.TrimLeft(b, " \t\r\n"), []byte("{"))
		if (err == nil) != want {
			t.Errorf("%q: scanner error %v, encoding/json valid object %v", in, err, want)
		}
	}
}

// TestInspectScannerDepthLimit: unlike encoding/json (10000 levels), the
// scanner stops at maxJSONDepth; deeper bodies are refused, not crashed on.
func TestInspectScannerDepthLimit(t *testing.T) {
	ok := `{"a":` + strings.Repeat("[", jsonscan.MaxDepth-1) + strings.Repeat("]", jsonscan.MaxDepth-1) + `}`
	if _, err := jsonscan.TopLevelObject([]byte(ok), nil); err != nil {
		t.Errorf("depth %d refused: %v", jsonscan.MaxDepth, err)
	}
	complete := `{"model":"m","messages":[],"x":` + strings.Repeat("[", 1000) + strings.Repeat("]", 1000) + `}`
	if _, apiErr := inspectRequest([]byte(complete)); apiErr == nil || apiErr.status != http.StatusBadRequest {
		t.Errorf("1000 levels: %v, want 400", apiErr)
	}
	for _, open := range []string{"[", `{"a":`} {
		deep := `{"model":"m","messages":[],"x":` + strings.Repeat(open, 100000)
		if _, apiErr := inspectRequest([]byte(deep)); apiErr == nil || apiErr.status != http.StatusBadRequest {
			t.Errorf("100000 levels of %s: %v, want 400", open, apiErr)
		}
	}
}

// TestInspectMutatedBodiesNeverPanic mutates valid requests at random: the
// scanner must agree with encoding/json on each, never panic, and every
// accepted body must edit into valid JSON.
func TestInspectMutatedBodiesNeverPanic(t *testing.T) {
	seeds := []string{
		cfgRichBody,
		`{"model":"m","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}`,
		`{"model":"m","stream":true,"stream_options":null,"max_tokens":10,"messages":[{"role":"user","content":"a\"b"}]}`,
	}
	alphabet := []byte("{}[]\":,\\ -+.eE0123456789truefalsn\x00\x1f\xff/u")
	rng := rand.New(rand.NewPCG(1, 2))
	accepted := 0
	for i := range 10000 {
		b := []byte(seeds[i%len(seeds)])
		for range 1 + rng.IntN(3) {
			pos := rng.IntN(len(b))
			switch rng.IntN(3) {
			case 0:
				b[pos] = alphabet[rng.IntN(len(alphabet))]
			case 1:
				b = append(b[:pos], b[pos+1:]...)
			default:
				b = append(b[:pos], append([]byte{alphabet[rng.IntN(len(alphabet))]}, b[pos:]...)...)
			}
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("panic on %q: %v", b, r)
				}
			}()
			_, scanErr := jsonscan.TopLevelObject(b, nil)
			want := json.Valid(b) && bytes.HasPrefix(bytes.TrimLeft(b, " \t\r\n"), []byte("{"))
			if (scanErr == nil) != want {
				t.Fatalf("%q: scanner error %v, encoding/json valid object %v", b, scanErr, want)
			}
			f, apiErr := inspectRequest(b)
			if apiErr != nil {
				return
			}
			accepted++
			out := upstreamBody(b, f, "renamed", true)
			if !json.Valid(out) {
				t.Fatalf("edit of %q gave invalid JSON %q", b, out)
			}
		}()
	}
	t.Logf("%d of 10000 mutated bodies accepted", accepted)
	if accepted < 500 {
		t.Errorf("only %d mutated bodies were accepted; the test exercises too little", accepted)
	}
}

// TestInspectUpstreamBodyThroughCaddy checks the edits where they matter: in
// what a provider receives.
func TestInspectUpstreamBodyThroughCaddy(t *testing.T) {
	got := make(chan []byte, 4)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(r.Body)
		got <- buf.Bytes()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(cfgCompletion))
	}))
	defer up.Close()
	tc := startCaddy(t, fmt.Sprintf(`arbstr {
		provider p {
			url %s/v1
			model gpt-4o openai/gpt-4o
			model plain plain
		}
		timeout 2s
	}`, up.URL))
	nonStreaming := strings.Replace(cfgRichBody, `"stream": true`, `"stream": false`, 1)
	resp := tc.Post("/v1/chat/completions", nonStreaming)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	want := strings.Replace(nonStreaming, "\"model\" :\t\"gpt-4o\"", "\"model\" :\t\"openai/gpt-4o\"", 1)
	if b := <-got; string(b) != want {
		t.Errorf("provider received\n%s\nwant\n%s", b, want)
	}
	const plain = `{"messages":[{"role":"user","content":null}], "model":"plain","temperature":0.70}`
	resp = tc.Post("/v1/chat/completions", plain)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if b := <-got; string(b) != plain {
		t.Errorf("provider received\n%s\nwant the client's bytes\n%s", b, plain)
	}
}
