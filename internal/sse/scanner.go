// Package sse reads server-sent events as LLM providers send them: the data
// of each event, with bounded memory and reused buffers.
package sse

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"sync"
)

// MaxEventSize bounds one SSE event; a provider sending more without a
// blank line is broken, and memory per stream stays bounded.
const MaxEventSize = 4 << 20

// ErrEventTooLarge is returned by Next for an event over MaxEventSize.
var ErrEventTooLarge = errors.New("SSE event larger than 4 MB")

// Event is one server-sent event that has data: its data lines joined by
// "\n", and its event: field (the Responses and Anthropic Messages APIs
// name their events; chat completions do not). Other fields (id:, retry:,
// comments) are not used by the LLM APIs.
type Event struct {
	Name []byte
	Data []byte
}

// MaxEventName bounds an event's name; a longer event: field is dropped
// (the APIs' names are short, and a hostile provider must not grow them).
const MaxEventName = 128

// Scanner reads events from a stream, reusing its buffers.
type Scanner struct {
	r    *bufio.Reader
	data []byte
	name []byte
	line []byte
	// BeforeRead, when set, runs whenever the scanner is about to read from
	// the upstream (and may block there) because its buffer is used up. An
	// error it returns ends the scan with that error.
	BeforeRead func() error
}

// readers recycles the scanners' 16 KB read buffers: a stream holds one
// only while it runs, and each new stream would otherwise allocate one.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

// NewScanner returns a scanner of r. Call Release when done with it.
func NewScanner(r io.Reader) *Scanner {
	s := &Scanner{}
	s.r = readers.Get().(*bufio.Reader)
	s.r.Reset(source{s, r})
	return s
}

// Release gives the read buffer back; the scanner is unusable afterwards.
// Events it returned stay valid: their data is not in that buffer.
func (s *Scanner) Release() {
	s.r.Reset(nil)
	readers.Put(s.r)
	s.r = nil
}

// Rest reads what follows the last event returned: the bytes the scanner
// has buffered, then the rest of the stream.
func (s *Scanner) Rest() io.Reader { return s.r }

// source is the scanner's upstream reader with its BeforeRead hook.
type source struct {
	s *Scanner
	r io.Reader
}

func (src source) Read(b []byte) (int, error) {
	if src.s.BeforeRead != nil {
		if err := src.s.BeforeRead(); err != nil {
			return 0, err
		}
	}
	return src.r.Read(b)
}

// Next returns the next event that has data. The event's name and data are
// valid until the following call. At the end of the stream it returns io.EOF,
// also when the stream ended in the middle of an event.
func (s *Scanner) Next() (Event, error) {
	s.data, s.name = s.data[:0], s.name[:0]
	hasData := false
	for {
		line, err := s.readLine()
		if err != nil {
			return Event{}, err
		}
		if len(line) == 0 {
			if hasData {
				return Event{Name: s.name, Data: s.data}, nil
			}
			s.name = s.name[:0]
			continue
		}
		if value, ok := fieldValue(line, "event"); ok {
			if len(value) <= MaxEventName {
				s.name = append(s.name[:0], value...)
			}
			continue
		}
		if value, ok := fieldValue(line, "data"); ok {
			if hasData {
				s.data = append(s.data, '\n')
			}
			if len(s.data)+len(value) > MaxEventSize {
				return Event{}, ErrEventTooLarge
			}
			s.data = append(s.data, value...)
			hasData = true
		}
	}
}

// readLine returns a line without its ending (\n or \r\n; a bare \r, which
// no LLM provider sends, is not a line ending here).
func (s *Scanner) readLine() ([]byte, error) {
	line, err := s.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		s.line = append(s.line[:0], line...)
		for errors.Is(err, bufio.ErrBufferFull) {
			if len(s.line) > MaxEventSize {
				return nil, ErrEventTooLarge
			}
			line, err = s.r.ReadSlice('\n')
			s.line = append(s.line, line...)
		}
		line = s.line
	}
	if err != nil {
		return nil, err
	}
	line = bytes.TrimSuffix(line[:len(line)-1], []byte{'\r'})
	return line, nil
}

// fieldValue returns the value of an SSE field line "name: value".
func fieldValue(line []byte, name string) ([]byte, bool) {
	if len(line) < len(name) || string(line[:len(name)]) != name {
		return nil, false
	}
	rest := line[len(name):]
	if len(rest) == 0 {
		return rest, true
	}
	if rest[0] != ':' {
		return nil, false
	}
	rest = rest[1:]
	if len(rest) > 0 && rest[0] == ' ' {
		rest = rest[1:]
	}
	return rest, true
}
