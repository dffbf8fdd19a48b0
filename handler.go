package arbstr

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Response headers arbstr sets on chat responses.
const (
	headerRequestID = "x-arbstr-request-id"
	headerProvider  = "x-arbstr-provider"
	headerCost      = "x-arbstr-cost-sats"
	headerLatency   = "x-arbstr-latency-ms"
	headerStreaming = "x-arbstr-streaming"
	headerRetries   = "x-arbstr-retries"
)

// ServeHTTP routes by path: .../chat/completions and .../models are
// answered here, anything else goes to next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	path := r.URL.Path
	switch {
	case strings.HasSuffix(path, "/chat/completions"):
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			w.Header().Set(headerRequestID, newRequestID()) // SPEC §6: on every error of arbstr's own
			errMethodNotAllowed(r.Method, "POST").write(w)
			return nil
		}
		h.serveChat(w, r)
		return nil
	case strings.HasSuffix(path, "/models"):
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			w.Header().Set(headerRequestID, newRequestID())
			errMethodNotAllowed(r.Method, "GET").write(w)
			return nil
		}
		h.serveModels(w)
		return nil
	}
	return next.ServeHTTP(w, r)
}

// serveModels lists the union of public model names, each once.
func (h *Handler) serveModels(w http.ResponseWriter) {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	list := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list", Data: []model{}}
	seen := map[string]bool{}
	for _, p := range h.providers {
		for _, m := range p.info().Models {
			if !seen[m] {
				seen[m] = true
				list.Data = append(list.Data, model{ID: m, Object: "model", OwnedBy: p.name})
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(list)
}

// serveChat handles one chat completion: read, inspect, choose, run, account.
func (h *Handler) serveChat(w http.ResponseWriter, r *http.Request) {
	ex := &exchange{h: h, w: w, r: r, start: time.Now(), requestID: newRequestID()}
	ex.deadline = ex.start.Add(time.Duration(h.Timeout))
	w.Header().Set(headerRequestID, ex.requestID)
	defer func() {
		ex.account()
		if ex.aborted {
			// Cut the connection (HTTP/1.1) or reset the stream (HTTP/2) so
			// that no client takes a truncated answer for a complete one.
			panic(http.ErrAbortHandler)
		}
	}()

	body, apiErr := readRequestBody(w, r, h.MaxBody)
	if apiErr != nil {
		if apiErr.status == http.StatusRequestEntityTooLarge {
			// Close instead of letting net/http drain up to 256 KB of the
			// unread body before the 413 goes out (Caddy wraps the body,
			// which defeats net/http's own too-large check).
			w.Header().Set("Connection", "close")
		}
		ex.fail(apiErr)
		return
	}
	ex.body = body
	facts, apiErr := inspectRequest(body)
	if apiErr != nil {
		ex.fail(apiErr)
		return
	}
	ex.facts = facts
	ex.injectUsage = facts.stream && !facts.clientUsage
	ex.idempotencyKey = r.Header.Get("Idempotency-Key")
	if ex.idempotencyKey == "" {
		ex.idempotencyKey = ex.requestID
	}
	pl, apiErr := h.choosePlan(ex, selectionInputFor(r, facts, h.keywordPolicies))
	if apiErr != nil {
		ex.fail(apiErr)
		return
	}
	var d delivery = bufferedDelivery{}
	if facts.stream {
		d = &streamDelivery{}
	}
	h.runPlan(ex, pl, d)
}

// readRequestBody reads the body whole, refusing it with 413 before reading
// when its declared length is over the limit, and as soon as it passes it.
func readRequestBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *apiError) {
	if r.ContentLength > limit {
		return nil, errBodyTooLarge(limit)
	}
	body, err := readAllBounded(http.MaxBytesReader(w, r.Body, limit), r.ContentLength, limit)
	if err != nil {
		if _, ok := err.(*http.MaxBytesError); ok || err == errTooLarge {
			return nil, errBodyTooLarge(limit)
		}
		return nil, errInvalidRequest("", "the request body could not be read: %v", err)
	}
	return body, nil
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "arb-" + hex.EncodeToString(b[:])
}
