package arbstr

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/arbstr/caddy-arbstr/internal/jsonscan"
	"github.com/arbstr/caddy-arbstr/internal/sse"
)

// chunkInfo is what arbstr needs from a provider's answer or one event of
// its stream, whatever the API (protocol.judgeAnswer, judgeEvent).
type chunkInfo struct {
	valid     bool // a JSON object
	isError   bool // an error: {"error": ...}, or an API's error event
	finished  bool // the answer is complete (a choice has a finish_reason, ...)
	usage     usage
	usageOnly bool // carries usage and no choices: the include_usage chunk
	noChoices bool
	// preamble: an event before the answer proper (the Responses API's
	// response.created, Anthropic's message_start and ping). The commit
	// gate holds it back with the stream's head: an error after it still
	// moves on to the next provider.
	preamble bool
	// terminal: the stream's last event (chat's [DONE], response.completed,
	// message_stop).
	terminal bool
	// marker: not relayed as it is (chat's [DONE]: the stream's end is
	// written by arbstr, after the cost comment).
	marker bool
	// keepalive: says nothing of the answer (Anthropic's ping): relayed,
	// but it does not reset the stream's idle timer (SPEC §8).
	keepalive bool
}

var doneMarker = []byte("[DONE]")

// inspectChunk reads a chunk's error, finish_reason and usage in one pass:
// the choices are validated and searched for a finish_reason together.
func inspectChunk(data []byte) chunkInfo {
	var info chunkInfo
	var choices, usageSpan jsonscan.Span
	finishSeen := false // in the choices being read; they count if an array
	_, err := jsonscan.Walk(data, func(key []byte, v jsonscan.Span) error {
		switch string(key) {
		case "error":
			info.isError = v.Kind != jsonscan.Null
		case "choices":
			choices = v
			info.finished = finishSeen && v.Kind == jsonscan.Array
			finishSeen = false
		case "usage":
			usageSpan = v
		}
		return nil
	}, "choices", func(key []byte, v jsonscan.Span) error {
		if string(key) == "finish_reason" && v.Kind == jsonscan.String {
			finishSeen = true
		}
		return nil
	})
	if err != nil {
		return chunkInfo{}
	}
	info.valid = true
	info.noChoices = choices.Kind != jsonscan.Array || isEmpty(data, choices)
	if usageSpan.Kind == jsonscan.Object {
		info.usage = usageFrom(data, usageSpan)
		info.usageOnly = info.noChoices
	}
	return info
}

// streamEvent is an event of a provider's stream kept past the scanner's
// next read: the commit gate's held events.
type streamEvent struct {
	name, data []byte
	info       chunkInfo
}

// passGate waits for the attempt's first good data event and stops its
// first-event timer. held are the events to relay at commit: the preamble
// events before it, then it. ok is false when the attempt failed before it
// (res says how), including when the timer fired first.
func passGate(ex *exchange, at *attempt, sc *sse.Scanner, status int) (held []streamEvent, res attemptResult, ok bool) {
	held, res, ok = awaitFirstEvent(ex, at, sc, status)
	if !ok {
		return nil, res, false
	}
	// A timer that already fired has cancelled this attempt.
	if !at.timer.Stop() {
		return nil, attemptResult{class: classifyError(at.ctx, ex.r.Context(), errAttemptCancelled), status: status}, false
	}
	ex.h.metrics.observeFirstEvent(ex.proto.operation(), at.provider, ex.facts.model, time.Since(at.start))
	return held, res, true
}

// streamDelivery is the streaming delivery: hold everything back until the
// first good data event (the commit gate), then pump events live.
type streamDelivery struct{}

func (streamDelivery) deliver(ex *exchange, at *attempt, resp *http.Response) attemptResult {
	sc := sse.NewScanner(resp.Body)
	defer sc.Release()
	held, res, ok := passGate(ex, at, sc, resp.StatusCode)
	if !ok {
		return res
	}
	p := &pump{ex: ex, at: at, sc: sc, rc: http.NewResponseController(ex.w)}
	sc.BeforeRead = p.flushBeforeRead
	ex.startContinuable(at.provider)
	ex.commitStream(at.provider, resp.StatusCode)
	at.onCommit()
	return p.run(held)
}

var errAttemptCancelled = errors.New("attempt cancelled")

// maxHeldEvents bounds the preamble events the commit gate holds: a
// provider sending nothing but preamble is not answering.
const maxHeldEvents = 16

// awaitFirstEvent reads until the first data event that is good JSON and
// not an error, holding the preamble events before it. Anything else before
// it is a failure of this attempt.
func awaitFirstEvent(ex *exchange, at *attempt, sc *sse.Scanner, status int) ([]streamEvent, attemptResult, bool) {
	var held []streamEvent
	for {
		ev, err := sc.Next()
		if err != nil {
			class := classifyError(at.ctx, ex.r.Context(), err)
			if class == classNone {
				class = classConnection
			}
			return nil, attemptResult{class: class, status: status, err: err}, false
		}
		info := ex.proto.judgeEvent(ev)
		switch {
		case info.marker:
			return nil, attemptResult{class: classConnection, status: status,
				err: errors.New("stream ended before its first event")}, false
		case !info.valid:
			continue // malformed events are dropped, before commit as after
		case info.isError:
			return nil, attemptResult{class: classInBand, status: status,
				err: errors.New("in-band error event")}, false
		}
		held = append(held, streamEvent{name: bytes.Clone(ev.Name), data: bytes.Clone(ev.Data), info: info})
		if !info.preamble {
			return held, attemptResult{}, true
		}
		if len(held) > maxHeldEvents {
			return nil, attemptResult{class: classBadResponse, status: status,
				err: fmt.Errorf("more than %d events before the answer began", maxHeldEvents)}, false
		}
	}
}

// pump copies a committed stream to the client, event by event.
type pump struct {
	ex       *exchange
	at       *attempt
	sc       *sse.Scanner
	rc       *http.ResponseController
	finished bool
	out      []byte
	pending  bool  // events written and not flushed yet
	flushErr error // the client could not be written to
	// idleTimer runs only while waiting for the provider: time spent
	// blocked on a slow client is not the provider's silence.
	idleTimer    *time.Timer
	idle         time.Duration
	idleDeadline time.Time // when the idle timer fires, while it runs
	continues    bool      // relays a continuation of a broken stream (§13)
	terminalSent bool      // the provider's terminal event was relayed
}

func (p *pump) run(held []streamEvent) attemptResult {
	p.idle = time.Duration(p.ex.h.StreamIdleTimeout)
	p.idleTimer = time.AfterFunc(p.idle, func() { p.at.cancel(errStreamIdle) })
	p.idleTimer.Stop()
	defer p.idleTimer.Stop()
	for _, ev := range held {
		if res, done := p.forward(ev.name, ev.data, ev.info); done {
			return res
		}
		if ev.info.terminal {
			return p.finish()
		}
	}
	// The first event is flushed at once, not with those that came with it:
	// the time to the first token is what users notice.
	if p.flushPending() != nil {
		return p.clientGone()
	}
	p.idleDeadline = time.Now().Add(p.idle)
	for {
		p.idleTimer.Reset(time.Until(p.idleDeadline))
		ev, err := p.sc.Next()
		p.idleTimer.Stop()
		if err != nil {
			if p.flushErr != nil {
				return p.clientGone()
			}
			return p.end(err)
		}
		info := p.ex.proto.judgeEvent(ev)
		if res, done := p.forward(ev.Name, ev.Data, info); done {
			return res
		}
		if info.terminal {
			return p.finish()
		}
		// After forwarding: time spent writing to a slow client is not the
		// provider's silence.
		if !info.keepalive {
			p.idleDeadline = time.Now().Add(p.idle)
		}
	}
}

// finish ends a stream whose provider sent its terminal event.
func (p *pump) finish() attemptResult {
	res := p.done()
	p.drain()
	return res
}

// forward writes one event unless it is to be hidden or dropped. done means
// the stream is over (the client left, or the event was an error).
func (p *pump) forward(name, data []byte, info chunkInfo) (attemptResult, bool) {
	if !info.valid || info.marker {
		return attemptResult{}, false
	}
	if info.usage.known {
		p.ex.usage = p.ex.usage.update(info.usage)
		if info.usageOnly && p.ex.facts.injectUsage {
			return attemptResult{}, false
		}
	}
	if info.finished {
		p.finished = true
	}
	if info.isError {
		if res, handled := p.continueAfterBreak(errInBandBreak(), errInBandAfterCommit); handled {
			return res, true
		}
	} else if p.ex.cont != nil {
		if data = p.ex.cont.observe(p, data); data == nil {
			return attemptResult{}, false // a continuation's repeated role delta
		}
	}
	ok := p.send(name, data)
	if ok && info.isError {
		ok = p.flushPending() == nil
	}
	if !ok {
		return p.clientGone(), true
	}
	if info.isError {
		p.abort()
		return attemptResult{class: classBrokenStream, committed: true, err: errors.New("provider sent an error event after commit")}, true
	}
	if info.terminal {
		p.terminalSent = true
	}
	return attemptResult{}, false
}

// writeRaw writes bytes arbstr made (an ending, an error event) and flushes
// them with any events before them.
func (p *pump) writeRaw(b []byte) bool {
	if _, err := p.ex.w.Write(b); err != nil {
		return false
	}
	p.pending = true
	return p.flushPending() == nil
}

// send writes one event, under its name when it has one, and leaves it to
// be flushed when the scanner next has to wait for the upstream
// (flushPending, its BeforeRead): events that arrived together go out in
// one flush, as reverse_proxy sends them, and none waits for a later one.
func (p *pump) send(name, data []byte) bool {
	data = p.at.provider.redact(data)
	p.out = appendSSEEvent(p.out[:0], name, data)
	if _, err := p.ex.w.Write(p.out); err != nil {
		return false
	}
	p.pending = true
	return true
}

// flushBeforeRead flushes what was written before the scanner waits for
// the provider. The idle deadline moves by the time the flush took: a flush
// blocked by a slow client is not the provider's silence. Reads themselves
// leave the timer alone: only a data event resets it (run), so comments,
// pings and partial bytes cannot hold a stream open (SPEC §8).
func (p *pump) flushBeforeRead() error {
	if !p.pending {
		return nil
	}
	if !p.idleTimer.Stop() {
		return p.flushPending() // the timer fired: the attempt is cancelled
	}
	start := time.Now()
	err := p.flushPending()
	p.idleDeadline = p.idleDeadline.Add(time.Since(start))
	p.idleTimer.Reset(time.Until(p.idleDeadline))
	return err
}

// flushPending flushes the events written since the last flush.
func (p *pump) flushPending() error {
	if !p.pending {
		return nil
	}
	p.pending = false
	if err := p.rc.Flush(); err != nil {
		p.flushErr = err
		return err
	}
	return nil
}

// done ends a complete stream: the cost as an SSE comment and trailer, then
// the API's closing when the provider's terminal event was not relayed
// (chat's [DONE], which arbstr always writes itself).
func (p *pump) done() attemptResult {
	p.markContinued()
	if cost, ok := p.ex.cost(); ok {
		c := strconv.FormatFloat(cost, 'f', 2, 64)
		p.ex.w.Header().Set(http.TrailerPrefix+headerCost, c)
		_, _ = fmt.Fprintf(p.ex.w, ": %s: %s\n\n", headerCost, c)
	}
	var closing []byte
	if !p.terminalSent {
		closing = p.ex.proto.closing()
	}
	if !p.writeRaw(closing) {
		return p.clientGone()
	}
	return attemptResult{class: classNone, committed: true}
}

// end handles the end of the upstream body without [DONE].
func (p *pump) end(err error) attemptResult {
	class := classifyError(p.at.ctx, p.ex.r.Context(), err)
	switch {
	case class == classClientGone:
		return p.clientGone()
	// classifyError calls any plain read error classConnection; only a
	// clean EOF (not io.ErrUnexpectedEOF, not a timeout) may complete.
	case errors.Is(err, io.EOF) && class == classConnection && p.finished:
		return p.done() // finished cleanly, only the terminal event was missing
	}
	msg := "the provider's stream broke before the answer was complete"
	if class == classBrokenStream {
		msg = fmt.Sprintf("the provider sent nothing for %s (stream_idle_timeout); the answer is incomplete", time.Duration(p.ex.h.StreamIdleTimeout))
	} else if errors.Is(err, io.EOF) {
		msg = "the provider ended the stream before the answer was complete (no finish_reason)"
	}
	e := &apiError{message: msg, errType: "server_error", code: "stream_broken"}
	if res, handled := p.continueAfterBreak(e, err); handled {
		return res
	}
	p.writeRaw(p.ex.proto.errorEvent(e))
	p.abort()
	return attemptResult{class: classBrokenStream, committed: true, err: err}
}

// drainLimit and drainTimeout bound what is read of a provider's answer
// after its [DONE].
const (
	drainLimit   = 4 << 10
	drainTimeout = 100 * time.Millisecond
)

var errDrainTimeout = errors.New("provider answer went on after [DONE]")

// drain reads the rest of the provider's answer after [DONE], normally only
// the end of its chunked encoding: an HTTP/1.1 connection whose answer was
// not read to the end is closed instead of going back to the pool, and the
// next stream would pay a new TCP (and TLS) handshake. A provider that sends
// more, or keeps the answer open, is cut off.
func (p *pump) drain() {
	t := time.AfterFunc(drainTimeout, func() { p.at.cancel(errDrainTimeout) })
	defer t.Stop()
	_, _ = io.Copy(io.Discard, io.LimitReader(p.sc.Rest(), drainLimit))
}

func (p *pump) clientGone() attemptResult {
	p.at.cancel(errors.New("client gone"))
	return attemptResult{class: classClientGone, committed: true}
}

// abort marks the response to be cut rather than ended cleanly, so that no
// client can take a truncated answer for a complete one.
func (p *pump) abort() { p.ex.aborted = true }

// commitStream writes the head of a streaming response.
func (ex *exchange) commitStream(p *provider, status int) {
	ex.provider, ex.outcome, ex.status = p, "ok", status
	ex.firstEvent = time.Since(ex.start)
	ex.setCommonHeaders(p)
	hdr := ex.w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache, no-transform")
	hdr.Set("X-Accel-Buffering", "no")
	hdr.Set(headerStreaming, "true")
	hdr.Del("Content-Length")
	ex.w.WriteHeader(status)
}
