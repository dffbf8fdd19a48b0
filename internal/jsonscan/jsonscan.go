// Package jsonscan is a small, strict JSON scanner. It validates JSON and
// finds the byte spans of values without decoding them, so that a request
// body can be inspected in one pass and edited in place (spliced) instead of
// being decoded and re-encoded.
package jsonscan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Kind is the kind of a JSON value, from its first byte.
type Kind byte

// The kinds of JSON values; Invalid is the zero Span's kind: no value.
const (
	Invalid Kind = iota
	Object
	Array
	String
	Number
	Bool
	Null
)

// String names the kind as an error message to a user would.
func (k Kind) String() string {
	return [...]string{"invalid", "object", "array", "string", "number", "boolean", "null"}[k]
}

// Span is a value's position in the buffer: b[Start:End].
type Span struct {
	Start, End int
	Kind       Kind
}

// Present reports whether the span holds a value.
func (s Span) Present() bool { return s.Kind != Invalid }

// ErrMaxDepth is returned for JSON nested deeper than MaxDepth.
var ErrMaxDepth = errors.New("JSON nested too deeply")

// MaxDepth is the deepest nesting of objects and arrays accepted.
const MaxDepth = 512

// scanner holds the input and the current nesting depth.
type scanner struct {
	b     []byte
	depth int
	// trusted: b was validated already, so strings are skipped without
	// checking them again (the second look at messages costs next to nothing).
	trusted bool
}

// plainStringByte marks the bytes a string may hold as they are: not a
// quote, a backslash or a control character.
var plainStringByte = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// syntaxError reports where the JSON broke.
func (s *scanner) syntaxError(pos int, what string) error {
	if pos >= len(s.b) {
		return fmt.Errorf("unexpected end of JSON input while reading %s", what)
	}
	return fmt.Errorf("invalid JSON at byte %d: unexpected %q while reading %s", pos, s.b[pos], what)
}

func (s *scanner) skipSpace(i int) int {
	for i < len(s.b) {
		switch s.b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// value validates the value starting at i (no leading space) and returns its span.
func (s *scanner) value(i int) (Span, error) {
	if i >= len(s.b) {
		return Span{}, s.syntaxError(i, "a value")
	}
	var (
		end  int
		err  error
		kind Kind
	)
	switch c := s.b[i]; {
	case c == '{':
		kind = Object
		end, err = s.object(i, nil, "", nil)
	case c == '[':
		kind = Array
		end, err = s.array(i, nil, nil)
	case c == '"':
		kind = String
		end, err = s.str(i)
	case c == '-' || (c >= '0' && c <= '9'):
		kind = Number
		end, err = s.number(i)
	case c == 't':
		kind = Bool
		end, err = s.literal(i, "true")
	case c == 'f':
		kind = Bool
		end, err = s.literal(i, "false")
	case c == 'n':
		kind = Null
		end, err = s.literal(i, "null")
	default:
		return Span{}, s.syntaxError(i, "a value")
	}
	if err != nil {
		return Span{}, err
	}
	return Span{i, end, kind}, nil
}

func (s *scanner) literal(i int, lit string) (int, error) {
	if len(s.b)-i < len(lit) || string(s.b[i:i+len(lit)]) != lit {
		return 0, s.syntaxError(i, "a literal")
	}
	return i + len(lit), nil
}

// str validates a string starting at the quote at i and returns the index
// after its closing quote.
func (s *scanner) str(i int) (int, error) {
	if s.trusted {
		return s.trustedStr(i), nil
	}
	i++
	for i < len(s.b) {
		for i < len(s.b) && plainStringByte[s.b[i]] {
			i++
		}
		if i >= len(s.b) {
			break
		}
		c := s.b[i]
		switch {
		case c == '"':
			return i + 1, nil
		case c == '\\':
			if i+1 >= len(s.b) {
				return 0, s.syntaxError(i+1, "a string escape")
			}
			switch s.b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if len(s.b)-i < 6 || !isHex4(s.b[i+2:i+6]) {
					return 0, s.syntaxError(i, "a \\u escape")
				}
				i += 6
			default:
				return 0, s.syntaxError(i+1, "a string escape")
			}
		case c < 0x20:
			return 0, s.syntaxError(i, "a string")
		default:
			i++
		}
	}
	return 0, s.syntaxError(i, "a string")
}

// trustedStr finds the end of a string known to be valid: the first quote
// not escaped by an odd run of backslashes.
func (s *scanner) trustedStr(i int) int {
	i++
	for {
		j := bytes.IndexByte(s.b[i:], '"')
		if j < 0 {
			return len(s.b) // cannot happen on validated input
		}
		i += j
		backslashes := 0
		for k := i - 1; k >= 0 && s.b[k] == '\\'; k-- {
			backslashes++
		}
		i++
		if backslashes%2 == 0 {
			return i
		}
	}
}

func isHex4(b []byte) bool {
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func (s *scanner) number(i int) (int, error) {
	if s.b[i] == '-' {
		i++
	}
	switch {
	case i < len(s.b) && s.b[i] == '0':
		i++
	case i < len(s.b) && s.b[i] >= '1' && s.b[i] <= '9':
		i = s.digits(i)
	default:
		return 0, s.syntaxError(i, "a number")
	}
	if i < len(s.b) && s.b[i] == '.' {
		j := s.digits(i + 1)
		if j == i+1 {
			return 0, s.syntaxError(j, "a number")
		}
		i = j
	}
	if i < len(s.b) && (s.b[i] == 'e' || s.b[i] == 'E') {
		i++
		if i < len(s.b) && (s.b[i] == '+' || s.b[i] == '-') {
			i++
		}
		j := s.digits(i)
		if j == i {
			return 0, s.syntaxError(j, "a number")
		}
		i = j
	}
	return i, nil
}

func (s *scanner) digits(i int) int {
	for i < len(s.b) && s.b[i] >= '0' && s.b[i] <= '9' {
		i++
	}
	return i
}

// FieldFunc is called for each member of an object with its key (the bytes
// between its quotes; decoded when it holds escapes) and the value's span.
type FieldFunc func(key []byte, v Span) error

// object validates an object starting at i, calling fn (if not nil) for each
// member, and returns the index after its closing brace. The value of the
// member named innerKey has its members reported to inner (see Walk).
func (s *scanner) object(i int, fn FieldFunc, innerKey string, inner FieldFunc) (int, error) {
	if s.depth++; s.depth > MaxDepth {
		return 0, ErrMaxDepth
	}
	defer func() { s.depth-- }()
	i = s.skipSpace(i + 1)
	if i < len(s.b) && s.b[i] == '}' {
		return i + 1, nil
	}
	for {
		if i >= len(s.b) || s.b[i] != '"' {
			return 0, s.syntaxError(i, "an object key")
		}
		keyEnd, err := s.str(i)
		if err != nil {
			return 0, err
		}
		key := s.b[i+1 : keyEnd-1]
		if (fn != nil || inner != nil) && bytes.IndexByte(key, '\\') >= 0 {
			// A provider's parser reads "mod\u0065l" as "model" and would
			// take its value: arbstr must see the same key.
			key = decodeKey(s.b[i:keyEnd])
		}
		i = s.skipSpace(keyEnd)
		if i >= len(s.b) || s.b[i] != ':' {
			return 0, s.syntaxError(i, "a colon")
		}
		v, err := s.memberValue(s.skipSpace(i+1), inner != nil && string(key) == innerKey, inner)
		if err != nil {
			return 0, err
		}
		if fn != nil {
			if err := fn(key, v); err != nil {
				return 0, err
			}
		}
		i = s.skipSpace(v.End)
		if i >= len(s.b) {
			return 0, s.syntaxError(i, "an object")
		}
		switch s.b[i] {
		case ',':
			i = s.skipSpace(i + 1)
		case '}':
			return i + 1, nil
		default:
			return 0, s.syntaxError(i, "an object")
		}
	}
}

// decodeKey decodes a quoted key already validated by str.
func decodeKey(quoted []byte) []byte {
	var k string
	if json.Unmarshal(quoted, &k) != nil {
		return quoted
	}
	return []byte(k)
}

// memberValue validates a member's value at i. With into, the members of an
// object value, or of an array value's object elements, go to inner.
func (s *scanner) memberValue(i int, into bool, inner FieldFunc) (Span, error) {
	if !into || i >= len(s.b) {
		return s.value(i)
	}
	switch s.b[i] {
	case '{':
		end, err := s.object(i, inner, "", nil)
		if err != nil {
			return Span{}, err
		}
		return Span{i, end, Object}, nil
	case '[':
		end, err := s.array(i, nil, inner)
		if err != nil {
			return Span{}, err
		}
		return Span{i, end, Array}, nil
	}
	return s.value(i)
}

// array validates an array starting at i, calling fn (if not nil) for each
// element and objectMembers (if not nil) for each member of each element
// that is an object, and returns the index after its closing bracket.
func (s *scanner) array(i int, fn func(v Span) error, objectMembers FieldFunc) (int, error) {
	if s.depth++; s.depth > MaxDepth {
		return 0, ErrMaxDepth
	}
	defer func() { s.depth-- }()
	i = s.skipSpace(i + 1)
	if i < len(s.b) && s.b[i] == ']' {
		return i + 1, nil
	}
	for {
		v, err := s.element(i, objectMembers)
		if err != nil {
			return 0, err
		}
		if fn != nil {
			if err := fn(v); err != nil {
				return 0, err
			}
		}
		i = s.skipSpace(v.End)
		if i >= len(s.b) {
			return 0, s.syntaxError(i, "an array")
		}
		switch s.b[i] {
		case ',':
			i = s.skipSpace(i + 1)
		case ']':
			return i + 1, nil
		default:
			return 0, s.syntaxError(i, "an array")
		}
	}
}

// element validates the array element at i, reporting an object's members
// to objectMembers when it is not nil.
func (s *scanner) element(i int, objectMembers FieldFunc) (Span, error) {
	if objectMembers == nil || i >= len(s.b) || s.b[i] != '{' {
		return s.value(i)
	}
	end, err := s.object(i, objectMembers, "", nil)
	if err != nil {
		return Span{}, err
	}
	return Span{i, end, Object}, nil
}

// TopLevelObject validates that b is exactly one JSON object (surrounding
// space allowed) and calls fn for each of its members.
func TopLevelObject(b []byte, fn FieldFunc) (Span, error) {
	return Walk(b, fn, "", nil)
}

// Walk is TopLevelObject that also looks inside the value of the top-level
// member named key, in the same pass: inner is called for each member of
// that value when it is an object, or of each of its elements that is an
// object when it is an array (as for "choices": [{...}, ...]). A value is
// read once, where TopLevelObject followed by Elements and Members would
// read it three times. inner's calls for a member come before fn's; they
// are made for every member named key (a key may repeat), and for a value
// that turns out to be invalid JSON further on.
func Walk(b []byte, fn FieldFunc, key string, inner FieldFunc) (Span, error) {
	s := &scanner{b: b}
	i := s.skipSpace(0)
	if i >= len(b) {
		return Span{}, errors.New("the body is empty; send a JSON object")
	}
	if b[i] != '{' {
		v, err := s.value(i)
		if err != nil {
			return Span{}, err
		}
		return Span{}, fmt.Errorf("the body is a JSON %s; send a JSON object", v.Kind)
	}
	end, err := s.object(i, fn, key, inner)
	if err != nil {
		return Span{}, err
	}
	if j := s.skipSpace(end); j != len(b) {
		return Span{}, s.syntaxError(j, "the end of the body")
	}
	return Span{i, end, Object}, nil
}

// Members calls fn for each member of an object already validated.
func Members(b []byte, obj Span, fn FieldFunc) error {
	s := &scanner{b: b, trusted: true}
	_, err := s.object(obj.Start, fn, "", nil)
	return err
}

// Elements calls fn for each element of an array already validated.
func Elements(b []byte, arr Span, fn func(v Span) error) error {
	s := &scanner{b: b, trusted: true}
	_, err := s.array(arr.Start, fn, nil)
	return err
}
