package arbstr

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Response headers arbstr sets on the responses of the APIs it routes.
const (
	headerRequestID = "x-arbstr-request-id"
	headerProvider  = "x-arbstr-provider"
	headerCost      = "x-arbstr-cost-sats"
	headerLatency   = "x-arbstr-latency-ms"
	headerStreaming = "x-arbstr-streaming"
	headerRetries   = "x-arbstr-retries"
)

// ServeHTTP routes by path: a POST to .../chat/completions, .../embeddings,
// .../responses or .../messages (protocolFor), and .../models are answered
// here, anything else goes to next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	path := r.URL.Path
	if r.Method == http.MethodPost {
		if proto := protocolFor(path); proto != nil {
			h.serve(w, r, proto)
			return nil
		}
	}
	// Other methods on those paths (GET .../chat/completions lists stored
	// completions, GET .../responses/{id} reads one in the OpenAI API) are
	// not arbstr's: they go to the next handler.
	switch {
	case strings.HasSuffix(path, "/models"):
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			w.Header().Set(headerRequestID, newRequestID())
			errMethodNotAllowed(r.Method, "GET").write(w, nil)
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

// serve handles one request of proto's API: read, inspect, choose, run,
// account.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, proto protocol) {
	ex := &exchange{h: h, w: w, r: r, proto: proto, start: time.Now(), requestID: newRequestID()}
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

	body, apiErr := readRequestBody(w, r, h.MaxBody, ex.deadline, time.Duration(h.Timeout))
	if apiErr != nil {
		if apiErr.status == http.StatusRequestEntityTooLarge || apiErr.status == http.StatusRequestTimeout {
			// Close instead of letting net/http drain up to 256 KB of the
			// unread body before the answer goes out (Caddy wraps the body,
			// which defeats net/http's own too-large check), or wait on a
			// body that is too slow.
			w.Header().Set("Connection", "close")
		}
		ex.fail(apiErr)
		return
	}
	ex.body = body
	facts, apiErr := proto.inspect(body)
	if apiErr != nil {
		ex.fail(apiErr)
		return
	}
	ex.facts = facts
	ex.idempotencyKey = r.Header.Get("Idempotency-Key")
	if ex.idempotencyKey == "" {
		ex.idempotencyKey = ex.requestID
	}
	pl, apiErr := h.choosePlan(ex, selectionInputFor(r, proto, facts, h.keywordPolicies))
	if apiErr != nil {
		ex.fail(apiErr)
		return
	}
	ex.plan = &pl
	if !ex.admitBudget(&pl) {
		return
	}
	var d delivery = bufferedDelivery{}
	if facts.stream {
		d = &streamDelivery{}
	}
	h.runPlan(ex, &pl, d)
}

// readRequestBody reads the body whole, refusing it with 413 before reading
// when its declared length is over the limit, and as soon as it passes it.
// A body that has not arrived by deadline (the request's timeout) is a 408:
// a client trickling a byte every few seconds cannot hold a request open.
func readRequestBody(w http.ResponseWriter, r *http.Request, limit int64, deadline time.Time, timeout time.Duration) ([]byte, *apiError) {
	if r.ContentLength > limit {
		return nil, errBodyTooLarge(limit)
	}
	stop := bodyDeadline(w, deadline)
	body, err := readAllBounded(http.MaxBytesReader(w, r.Body, limit), r.ContentLength, limit)
	if timedOut := stop(); timedOut && err != nil {
		return nil, errBodyTimeout(timeout)
	}
	if err != nil {
		if _, ok := err.(*http.MaxBytesError); ok || err == errTooLarge {
			return nil, errBodyTooLarge(limit)
		}
		return nil, errInvalidRequest("", "the request body could not be read: %v", err)
	}
	return body, nil
}

// bodyDeadline makes reads of the request body fail once deadline passes,
// by moving the connection's read deadline to that moment. It only ever
// shortens the server's own read timeouts (read_body), never extends them.
// stop ends the watch and reports whether it cut the body.
func bodyDeadline(w http.ResponseWriter, deadline time.Time) (stop func() (timedOut bool)) {
	rc := http.NewResponseController(w)
	var mu sync.Mutex
	stopped, fired := false, false
	t := time.AfterFunc(time.Until(deadline), func() {
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			fired = true
			_ = rc.SetReadDeadline(time.Now())
		}
	})
	return func() bool {
		t.Stop()
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		if fired {
			// If the body was read all the same, the deadline must go, or
			// net/http's watch for the client closing the connection would
			// take the timeout for a client that left.
			_ = rc.SetReadDeadline(time.Time{})
		}
		return fired
	}
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "arb-" + hex.EncodeToString(b[:])
}
