package jsonscan

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

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
			v   Span
		}
		var got []member
		obj, err := TopLevelObject(b, func(key []byte, v Span) error {
			got = append(got, member{string(key), v})
			return nil
		})
		if errors.Is(err, ErrMaxDepth) {
			return // the scanner refuses nesting deeper than maxJSONDepth on purpose
		}
		trimmed := bytes.TrimLeft(b, " \t\r\n")
		wantOK := json.Valid(b) && len(trimmed) > 0 && trimmed[0] == '{'
		if (err == nil) != wantOK {
			t.Fatalf("TopLevelObject error = %v, but json.Valid = %v (object: %v) for %q", err, json.Valid(b), wantOK, b)
		}
		if err != nil {
			return
		}
		if obj.Kind != Object || !json.Valid(b[obj.Start:obj.End]) || len(bytes.TrimSpace(b[:obj.Start])) != 0 {
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
			raw := b[m.v.Start:m.v.End]
			if !json.Valid(raw) {
				t.Fatalf("member %q: span %q is not a JSON value", k, raw)
			}
			if want := fzKindOf(raw[0]); m.v.Kind != want {
				t.Fatalf("member %q: kind %v, want %v", k, m.v.Kind, want)
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

func fzKindOf(c byte) Kind {
	switch c {
	case '{':
		return Object
	case '[':
		return Array
	case '"':
		return String
	case 't', 'f':
		return Bool
	case 'n':
		return Null
	}
	return Number
}
