package jsonscan

import (
	"slices"
	"testing"
)

// TestWalk: inner sees the members of the named top-level member's object,
// or of its array's object elements, and nothing deeper or elsewhere.
func TestWalk(t *testing.T) {
	cases := []struct {
		name, in string
		want     []string // inner's keys, in order
	}{
		{"array of objects", `{"a":{"x":1},"c":[{"x":1,"y":"s"},{"z":null}],"x":2}`, []string{"x", "y", "z"}},
		{"object", `{"c":{"x":1,"y":{"deep":1}}}`, []string{"x", "y"}},
		{"other elements skipped", `{"c":[1,"s",[{"no":1}],null,{"yes":1}]}`, []string{"yes"}},
		{"escaped key", `{"\u0063":[{"k\u0065y":1}]}`, []string{"key"}},
		{"not at the top level", `{"o":{"c":[{"no":1}]}}`, nil},
		{"scalar", `{"c":5}`, nil},
		{"repeated key", `{"c":[{"a":1}],"c":[{"b":1}]}`, []string{"a", "b"}},
	}
	for _, c := range cases {
		var got, top []string
		_, err := Walk([]byte(c.in), func(key []byte, v Span) error {
			top = append(top, string(key))
			return nil
		}, "c", func(key []byte, v Span) error {
			got = append(got, string(key))
			return nil
		})
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: inner saw %q (error %v), want %q", c.name, got, err, c.want)
		}
		var want []string
		if _, err := TopLevelObject([]byte(c.in), func(key []byte, v Span) error {
			want = append(want, string(key))
			return nil
		}); err != nil || !slices.Equal(top, want) {
			t.Errorf("%s: fn saw %q, TopLevelObject %q (%v)", c.name, top, want, err)
		}
	}
	for _, bad := range []string{`{"c":[{"x":1},{"y":]}`, `{"c":{"x":01}}`, `{"c":[{"x":1}]`} {
		if _, err := Walk([]byte(bad), nil, "c", func([]byte, Span) error { return nil }); err == nil {
			t.Errorf("Walk accepted %s", bad)
		}
	}
}
