package sse

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
)

// chunk is a chat completion chunk carrying content, as providers send it.
func chunk(content string) string {
	return fmt.Sprintf(`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":%q},"finish_reason":null}]}`, content)
}

// scanAll reads every event of input, returning the data payloads and the
// error that ended the scan.
func scanAll(input string) ([]string, error) {
	sc := NewScanner(strings.NewReader(input))
	var out []string
	for {
		ev, err := sc.Next()
		if err != nil {
			return out, err
		}
		out = append(out, string(ev.Data))
	}
}

func TestScanner(t *testing.T) {
	cases := []struct {
		name, input string
		want        []string
	}{
		{"LF", "data: a\n\ndata: b\n\n", []string{"a", "b"}},
		{"CRLF", "data: a\r\n\r\ndata: b\r\n\r\n", []string{"a", "b"}},
		{"multi-line data", "data: a\ndata: b\r\ndata:\n\n", []string{"a\nb\n"}},
		{"comments and other fields", ": ping\n\n:x\nevent: message\nid: 7\nretry: 10\ndata: x\n\n", []string{"x"}},
		{"no space after colon", "data:x\n\ndata:  y\n\n", []string{"x", " y"}},
		{"bare data field", "data\n\n", []string{""}},
		{"similar field names", "database: no\ndata: yes\n\n", []string{"yes"}},
		{"blank lines between", "\n\n\ndata: a\n\n\n\ndata: b\n\n", []string{"a", "b"}},
		{"EOF mid-event", "data: a\n\ndata: b\n", []string{"a"}},
		{"EOF mid-line", "data: a\n\ndata: b", []string{"a"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := scanAll(c.input)
			if !errors.Is(err, io.EOF) {
				t.Errorf("ended with %v, want EOF", err)
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	t.Run("line over the limit", func(t *testing.T) {
		got, err := scanAll("data: a\n\ndata: " + strings.Repeat("x", MaxEventSize+1) + "\n\n")
		if !errors.Is(err, ErrEventTooLarge) || !slices.Equal(got, []string{"a"}) {
			t.Errorf("got %d events, err %v; want 1 and ErrEventTooLarge", len(got), err)
		}
	})
	t.Run("lines summing over the limit", func(t *testing.T) {
		half := strings.Repeat("x", MaxEventSize/2+1)
		_, err := scanAll("data: " + half + "\ndata: " + half + "\n\n")
		if !errors.Is(err, ErrEventTooLarge) {
			t.Errorf("err %v, want ErrEventTooLarge", err)
		}
	})
	t.Run("event at the limit", func(t *testing.T) {
		big := strings.Repeat("x", MaxEventSize)
		got, err := scanAll("data: " + big + "\n\n")
		if len(got) != 1 || len(got[0]) != MaxEventSize || !errors.Is(err, io.EOF) {
			t.Errorf("got %d events, err %v", len(got), err)
		}
	})
}

func TestScannerMemoryBound(t *testing.T) {
	const n = 20000
	big := strings.Repeat("b", 40<<10) // over the 16 KB read buffer: uses the line buffer
	pr, pw := io.Pipe()
	go func() {
		bw := bufio.NewWriter(pw)
		for i := 0; i < n; i++ {
			if i == n/2 {
				fmt.Fprintf(bw, "data: %s\n\n", big)
			}
			fmt.Fprintf(bw, "data: %s\n\n", chunk(fmt.Sprint(i)))
		}
		_ = bw.Flush()
		_ = pw.Close()
	}()
	sc := NewScanner(pr)
	count, total, largest := 0, 0, 0
	for {
		ev, err := sc.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			break
		}
		count++
		total += len(ev.Data)
		largest = max(largest, len(ev.Data))
	}
	if count != n+1 {
		t.Fatalf("read %d events, want %d", count, n+1)
	}
	// Buffers are reused: they track the largest event, not the stream.
	bound := 2 * (largest + 16)
	if cap(sc.data) > bound || cap(sc.line) > bound {
		t.Errorf("buffers data %d line %d bytes after a %d-byte stream whose largest event is %d",
			cap(sc.data), cap(sc.line), total, largest)
	}
}

// repeatReader repeats one event forever.
type repeatReader struct {
	event []byte
	off   int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.event[r.off:])
		n += c
		r.off = (r.off + c) % len(r.event)
	}
	return n, nil
}

func TestScannerReusesBuffers(t *testing.T) {
	sc := NewScanner(&repeatReader{event: []byte("data: " + chunk("hello") + "\n\n")})
	if _, err := sc.Next(); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if ev, err := sc.Next(); err != nil || !bytes.Contains(ev.Data, []byte("hello")) {
			t.Fatalf("next: %q %v", ev.Data, err)
		}
	})
	if allocs > 0 {
		t.Errorf("%.1f allocations per event; the scanner should reuse its buffers", allocs)
	}
}

// TestScannerEventNames: the Responses and Anthropic APIs name their events;
// a name belongs to its event only, never to the next one, and an event
// without data (a name alone) is no event.
func TestScannerEventNames(t *testing.T) {
	input := "event: message_start\ndata: {\"a\":1}\n\n" +
		"data: unnamed\n\n" +
		"event: orphan\n\n" +
		"data: after orphan\n\n" +
		"event:ping\r\ndata: {}\r\n\r\n" +
		"event: " + strings.Repeat("x", MaxEventName+1) + "\ndata: long name\n\n"
	sc := NewScanner(strings.NewReader(input))
	defer sc.Release()
	want := [][2]string{{"message_start", `{"a":1}`}, {"", "unnamed"}, {"", "after orphan"}, {"ping", "{}"}, {"", "long name"}}
	for i, w := range want {
		ev, err := sc.Next()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if string(ev.Name) != w[0] || string(ev.Data) != w[1] {
			t.Errorf("event %d: name %q data %q, want %q %q", i, ev.Name, ev.Data, w[0], w[1])
		}
	}
	if _, err := sc.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("after the last event: %v, want EOF", err)
	}
}
