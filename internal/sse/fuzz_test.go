package sse

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
)

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
		sc := NewScanner(r)
		var got []string
		var err error
		for i := 0; ; i++ {
			if i > len(stream)+1 {
				t.Fatalf("the scanner returned more events than the stream has bytes")
			}
			var ev Event
			ev, err = sc.Next()
			if err != nil {
				break
			}
			if len(ev.Data) > MaxEventSize {
				t.Fatalf("an event of %d bytes passed the %d limit", len(ev.Data), MaxEventSize)
			}
			got = append(got, string(ev.Data))
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, ErrEventTooLarge) {
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
func TestScannerEventLimit(t *testing.T) {
	line := "data: " + strings.Repeat("x", MaxEventSize) + "x\n\n"
	many := strings.Repeat("data: "+strings.Repeat("y", 1<<20)+"\n", 5) + "\n"
	for name, stream := range map[string]string{"one line": line, "many lines": many} {
		sc := NewScanner(strings.NewReader(stream + "data: after\n\n"))
		ev, err := sc.Next()
		if !errors.Is(err, ErrEventTooLarge) {
			t.Errorf("%s: got %d bytes, error %v; want ErrEventTooLarge", name, len(ev.Data), err)
		}
	}
	exact := "data: " + strings.Repeat("z", MaxEventSize) + "\n\n"
	ev, err := NewScanner(strings.NewReader(exact)).Next()
	if err != nil || len(ev.Data) != MaxEventSize {
		t.Errorf("an event of exactly the limit: %d bytes, error %v", len(ev.Data), err)
	}
}

// TestFuzzSSEScannerLongLines covers lines around and past the scanner's
// 16 KB read buffer, which the fuzzer reaches too slowly (large inputs cut
// its speed tenfold), in reads of several sizes.
func TestScannerLongLines(t *testing.T) {
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
		sc := NewScanner(&fzChunkReader{b: []byte(stream.String()), n: size})
		var got []string
		for {
			ev, err := sc.Next()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("reads of %d: %v", size, err)
				}
				break
			}
			got = append(got, string(ev.Data))
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("reads of %d: %d events, want %d (or different data)", size, len(got), len(want))
		}
	}
}
