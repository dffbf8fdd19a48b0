package arbstr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// maxErrorBody bounds how much of a provider's error answer is read.
const maxErrorBody = 1 << 20

// maxResponseBody bounds a non-streaming provider answer.
const maxResponseBody = 64 << 20

// newUpstreamRequest builds the request to a provider. Only a fixed set of
// headers is sent: the provider's key, never the client's credentials or
// cookies.
func newUpstreamRequest(ctx context.Context, p *provider, body []byte, ex *exchange) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.urls[ex.proto.id()], bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hdr := req.Header
	hdr["Content-Type"] = []string{"application/json"}
	if ex.facts.stream {
		hdr["Accept"] = []string{"text/event-stream"}
	} else {
		hdr["Accept"] = []string{"application/json"}
	}
	hdr["Idempotency-Key"] = []string{ex.idempotencyKey}
	hdr["User-Agent"] = []string{"arbstr-caddy"}
	p.setAuth(hdr, ex.r.Header)
	return req, nil
}

// attempt is one upstream request in flight.
type attempt struct {
	ctx      context.Context
	cancel   context.CancelCauseFunc
	timer    *time.Timer // the attempt's limit (stream: until the first event)
	provider *provider
	start    time.Time
	onCommit func() // a stream committed: the provider delivered
}

// sendAttempt sends one attempt to p and hands a 2xx answer to d.
func (h *Handler) sendAttempt(ex *exchange, p *provider, body []byte, d delivery, onCommit func()) attemptResult {
	ctx, cancel := context.WithCancelCause(ex.r.Context())
	defer cancel(nil)
	limit, cause := ex.attemptLimit()
	at := &attempt{ctx: ctx, cancel: cancel, provider: p, start: time.Now(), onCommit: onCommit}
	at.timer = time.AfterFunc(limit, func() { cancel(cause) })
	defer at.timer.Stop()
	ex.attempts++

	req, err := newUpstreamRequest(ctx, p, body, ex)
	if err != nil {
		return attemptResult{class: classConnection, err: err}
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return attemptResult{class: classifyError(ctx, ex.r.Context(), err), err: err}
	}
	defer resp.Body.Close()
	h.metrics.observeUpstreamHeaders(p.name, time.Since(at.start))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return failedStatus(ex, at, resp)
	}
	return d.deliver(ex, at, resp)
}

// failedStatus classifies a provider's error answer and keeps what is needed
// to relay it.
func failedStatus(ex *exchange, at *attempt, resp *http.Response) attemptResult {
	res := attemptResult{class: classifyStatus(resp.StatusCode), status: resp.StatusCode}
	if res.class == classRateLimited {
		res.retryAfter = parseRetryAfter(resp.Header, time.Now())
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if res.class == classClient {
		if err != nil {
			if c := classifyError(at.ctx, ex.r.Context(), err); c != classNone && c != classConnection {
				res.class = c
				return res
			}
		}
		res.relay = &relayedResponse{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"),
			body: at.provider.redact(body)}
		if isContextLengthError(resp.StatusCode, body) {
			res.class = classContextLength // another provider's window may be larger (§6)
		}
	}
	return res
}

// Body chunk sizes: memory for a body grows with what has arrived, in
// chunks from bodyChunkMin doubling up to bodyChunkMax, never with what the
// peer declared. A client that declares 15 MB and sends 10 bytes costs one
// small chunk, not 15 MB (SPEC §10).
const (
	bodyChunkMin = 32 << 10
	bodyChunkMax = 1 << 20
)

// readAllBounded reads r to its end, refusing more than limit bytes with
// errTooLarge. sizeHint (the declared length, -1 when unknown) only makes
// the last chunk of an honest body fit; it never reserves memory ahead of
// the bytes.
func readAllBounded(r io.Reader, sizeHint int64, limit int64) ([]byte, error) {
	var chunks [][]byte
	total := int64(0)
	for {
		chunk := make([]byte, nextChunkSize(total, sizeHint, limit))
		n, err := fill(r, chunk)
		total += int64(n)
		if n > 0 {
			chunks = append(chunks, chunk[:n])
		}
		if total > limit {
			return nil, errTooLarge
		}
		if err == io.EOF {
			return joinChunks(chunks, total), nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// fill reads into b until it is full or r fails. Unlike io.ReadFull it
// passes r's error on as it is: io.EOF is the body's clean end, and
// io.ErrUnexpectedEOF from r a truncated body.
func fill(r io.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// nextChunkSize is the size of the buffer for the next read: as large as
// what arrived so far (within bodyChunkMin and bodyChunkMax), one byte past
// the declared rest (so that the end is seen without another chunk), and
// never past limit+1 (one byte more tells a body over the limit).
func nextChunkSize(total, sizeHint, limit int64) int64 {
	size := min(max(total, bodyChunkMin), bodyChunkMax)
	if rest := sizeHint - total; rest >= 0 {
		size = min(size, rest+1)
	}
	return min(size, limit+1-total)
}

// joinChunks returns the chunks as one slice, copying only when there are
// several.
func joinChunks(chunks [][]byte, total int64) []byte {
	switch len(chunks) {
	case 0:
		return []byte{}
	case 1:
		return chunks[0]
	}
	out := make([]byte, 0, total)
	for _, c := range chunks {
		out = append(out, c...)
	}
	return out
}

var errTooLarge = errors.New("body larger than the limit")

// bufferedDelivery is the non-streaming delivery: read the whole answer,
// then write it byte for byte.
type bufferedDelivery struct{}

func (bufferedDelivery) deliver(ex *exchange, at *attempt, resp *http.Response) attemptResult {
	body, err := readAllBounded(resp.Body, resp.ContentLength, maxResponseBody)
	if err == errTooLarge {
		// An answer over the cap is the provider's failure; downloading it
		// again from the same provider would only cost another 64 MB.
		return attemptResult{class: classBadResponse, status: resp.StatusCode,
			err: fmt.Errorf("the answer is larger than %d bytes", maxResponseBody)}
	}
	if err != nil {
		return attemptResult{class: classifyError(at.ctx, ex.r.Context(), err), status: resp.StatusCode, err: err}
	}
	// A 2xx that is not a completion (an HTML page from a proxy, an error
	// object some providers send with 200) is a failure to fall over from,
	// not an answer to pass on.
	info := ex.proto.judgeAnswer(body)
	switch {
	case !info.valid:
		return attemptResult{class: classBadResponse, status: resp.StatusCode, err: errors.New("the answer is not a JSON object")}
	case info.isError:
		return attemptResult{class: classInBand, status: resp.StatusCode, err: errors.New("the answer is an error object")}
	}
	ex.usage = info.usage
	body = at.provider.redact(body)
	// The answer was checked to be a JSON object: say so, whatever the
	// provider's Content-Type, and forbid browsers to guess otherwise.
	ex.w.Header().Set("X-Content-Type-Options", "nosniff")
	ex.commit(at.provider, resp.StatusCode, "application/json", int64(len(body)))
	_, _ = ex.w.Write(body)
	return attemptResult{class: classNone, status: resp.StatusCode, committed: true}
}
