package arbstr

import (
	"bytes"
	"context"
	"errors"
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
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.chatURL, bytes.NewReader(body))
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
	if p.apiKey != "" {
		hdr["Authorization"] = []string{"Bearer " + p.apiKey}
	}
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
		res.relay = &relayedResponse{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), body: body}
		if isContextLengthError(resp.StatusCode, body) {
			res.class = classContextLength // another provider's window may be larger (§6)
		}
	}
	return res
}

// readAllBounded reads a provider's answer, refusing one larger than limit.
func readAllBounded(r io.Reader, sizeHint int64, limit int64) ([]byte, error) {
	capacity := int64(4096)
	if sizeHint > 0 && sizeHint <= limit {
		// ReadFrom wants MinRead bytes free before each read, the one that
		// finds the end included: with less it would double the buffer and
		// copy the whole body once more.
		capacity = sizeHint + bytes.MinRead
	}
	buf := bytes.NewBuffer(make([]byte, 0, capacity))
	n, err := buf.ReadFrom(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if n > limit {
		return nil, errTooLarge
	}
	return buf.Bytes(), nil
}

var errTooLarge = errors.New("body larger than the limit")

// bufferedDelivery is the non-streaming delivery: read the whole answer,
// then write it byte for byte.
type bufferedDelivery struct{}

func (bufferedDelivery) deliver(ex *exchange, at *attempt, resp *http.Response) attemptResult {
	body, err := readAllBounded(resp.Body, resp.ContentLength, maxResponseBody)
	if err != nil {
		return attemptResult{class: classifyError(at.ctx, ex.r.Context(), err), status: resp.StatusCode, err: err}
	}
	// A 2xx that is not a completion (an HTML page from a proxy, an error
	// object some providers send with 200) is a failure to fall over from,
	// not an answer to pass on.
	info := inspectChunk(body)
	switch {
	case !info.valid:
		return attemptResult{class: classBadResponse, status: resp.StatusCode, err: errors.New("the answer is not a JSON object")}
	case info.isError:
		return attemptResult{class: classInBand, status: resp.StatusCode, err: errors.New("the answer is an error object")}
	}
	ex.usage = info.usage
	ex.commit(at.provider, resp.StatusCode, resp.Header.Get("Content-Type"), int64(len(body)))
	_, _ = ex.w.Write(body)
	return attemptResult{class: classNone, status: resp.StatusCode, committed: true}
}
