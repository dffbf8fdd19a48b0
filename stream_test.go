package arbstr

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stUpstream is a provider stand-in that records every request it received.
type stUpstream struct {
	*httptest.Server
	hits    atomic.Int32
	mu      sync.Mutex
	bodies  [][]byte
	headers []http.Header
}

// stNewUpstream starts an upstream; handle gets the 1-based number of the request.
func stNewUpstream(t *testing.T, handle func(w http.ResponseWriter, r *http.Request, n int)) *stUpstream {
	t.Helper()
	u := &stUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.bodies = append(u.bodies, body)
		u.headers = append(u.headers, r.Header.Clone())
		u.mu.Unlock()
		handle(w, r, int(u.hits.Add(1)))
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *stUpstream) body(i int) []byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.bodies[i]
}

func (u *stUpstream) header(i int) http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.headers[i]
}

// stOpts shapes the site config of a test.
type stOpts struct {
	attempts int    // retry attempts per provider (default 2)
	idle     string // stream_idle_timeout (default 300ms)
	first    string // first_event_timeout (default 300ms)
	site     string // extra site directives, e.g. "encode gzip zstd"
}

// stSite configures the upstreams as providers alpha, beta, ... in that
// order of price (alpha cheapest), so alpha is always tried first.
func stSite(o stOpts, ups ...*stUpstream) string {
	if o.attempts == 0 {
		o.attempts = 2
	}
	if o.idle == "" {
		o.idle = "300ms"
	}
	if o.first == "" {
		o.first = "300ms"
	}
	names := []string{"alpha", "beta", "gamma"}
	var b strings.Builder
	b.WriteString(o.site + "\n\tarbstr {\n")
	for i, u := range ups {
		fmt.Fprintf(&b, "\t\tprovider %s {\n\t\t\turl %s/v1\n\t\t\tinput_rate %d\n\t\t\toutput_rate %d\n\t\t\tbase_fee %d\n\t\t}\n",
			names[i], u.URL, 1000*(i+1), 2000*(i+1), i+1)
	}
	fmt.Fprintf(&b, "\t\tretry {\n\t\t\tattempts %d\n\t\t\tbackoff 10ms\n\t\t}\n", o.attempts)
	fmt.Fprintf(&b, "\t\ttimeout 2s\n\t\tfirst_event_timeout %s\n\t\tstream_idle_timeout %s\n\t}\n", o.first, o.idle)
	return b.String()
}

const stStreamBody = `{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}`

func stChunk(content string) string {
	return fmt.Sprintf(`{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":%q},"finish_reason":null}]}`, content)
}

const (
	stFinish   = `{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`
	stUsage    = `{"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":1234,"completion_tokens":567,"total_tokens":1801}}`
	stInBand   = `{"error":{"message":"overloaded","type":"server_error","code":"overloaded"}}`
	stCostLine = ": x-arbstr-cost-sats: 3.37" // alpha: 1234·1000/1e6 + 567·2000/1e6 + 1
)

// stHead sends the 200 head of an event stream at once.
func stHead(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	_ = http.NewResponseController(w).Flush()
}

// stSend sends one event and flushes it.
func stSend(w http.ResponseWriter, data string) error {
	if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil {
		return err
	}
	return http.NewResponseController(w).Flush()
}

// stGood sends a complete stream whose content chunks are contents.
func stGood(w http.ResponseWriter, contents ...string) {
	stHead(w)
	for _, c := range contents {
		_ = stSend(w, stChunk(c))
	}
	_ = stSend(w, stFinish)
	_ = stSend(w, stUsage)
	_ = stSend(w, "[DONE]")
}

// stCut hijacks the connection and closes it; reset sends an RST instead of
// a FIN (only used when nothing was written, as an RST may discard data).
func stCut(t *testing.T, w http.ResponseWriter, reset bool) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	if tcp, ok := conn.(*net.TCPConn); ok && reset {
		_ = tcp.SetLinger(0)
	}
	_ = conn.Close()
}

// stWait blocks until the request is cancelled, at most 5s; it reports
// whether it was cancelled.
func stWait(r *http.Request) bool {
	select {
	case <-r.Context().Done():
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

// stParse reads a response body as an SSE client does: data is each
// event's data lines joined by "\n", comments the comment lines, lines every
// non-empty line, all in order.
func stParse(body []byte) (data, comments, lines []string) {
	var cur []string
	for _, l := range strings.Split(string(body), "\n") {
		l = strings.TrimSuffix(l, "\r")
		if l == "" {
			if cur != nil {
				data = append(data, strings.Join(cur, "\n"))
				cur = nil
			}
			continue
		}
		lines = append(lines, l)
		switch {
		case strings.HasPrefix(l, "data: "):
			cur = append(cur, strings.TrimPrefix(l, "data: "))
		case strings.HasPrefix(l, ":"):
			comments = append(comments, l)
		}
	}
	return data, comments, lines
}

// stContents returns the delta contents of the chunks among data.
func stContents(data []string) []string {
	var out []string
	for _, d := range data {
		var c struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
		}
		if json.Unmarshal([]byte(d), &c) == nil && len(c.Choices) > 0 && c.Choices[0].Delta.Content != "" {
			out = append(out, c.Choices[0].Delta.Content)
		}
	}
	return out
}

func TestStreamDecidedByBodyNotAccept(t *testing.T) {
	t.Run("stream true with Accept json", func(t *testing.T) {
		up := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) { stGood(w, "a", "b") })
		tc := startCaddy(t, stSite(stOpts{}, up))
		resp := tc.Post("/v1/chat/completions", stStreamBody, "Accept", "application/json")
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("status %d, err %v, body %s", resp.StatusCode, err, body)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
			t.Errorf("Content-Type %q, want text/event-stream", ct)
		}
		if got := resp.Header.Get("x-arbstr-streaming"); got != "true" {
			t.Errorf("x-arbstr-streaming %q", got)
		}
		if got := up.header(0).Get("Accept"); got != "text/event-stream" {
			t.Errorf("upstream Accept %q", got)
		}
		data, _, _ := stParse(body)
		if c := stContents(data); !slices.Equal(c, []string{"a", "b"}) || data[len(data)-1] != "[DONE]" {
			t.Errorf("events %q", data)
		}
	})
	t.Run("stream false with Accept event-stream", func(t *testing.T) {
		const answer = `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1234,"completion_tokens":567}}`
		up := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, answer)
		})
		tc := startCaddy(t, stSite(stOpts{}, up))
		req := `{"model":"m1","stream":false,"messages":[{"role":"user","content":"hi"}]}`
		resp := tc.Post("/v1/chat/completions", req, "Accept", "text/event-stream")
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != answer {
			t.Fatalf("status %d, body %s", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		if got := resp.Header.Get("x-arbstr-streaming"); got != "" {
			t.Errorf("x-arbstr-streaming %q on a non-streaming answer", got)
		}
		if got := resp.Header.Get("x-arbstr-cost-sats"); got != "3.37" {
			t.Errorf("x-arbstr-cost-sats %q, want 3.37", got)
		}
		if got := up.header(0).Get("Accept"); got != "application/json" {
			t.Errorf("upstream Accept %q", got)
		}
		if string(up.body(0)) != req {
			t.Errorf("upstream body changed: %s", up.body(0))
		}
	})
}

func TestStreamFallbackBeforeCommit(t *testing.T) {
	cases := []struct {
		name    string
		alpha   func(t *testing.T, w http.ResponseWriter, r *http.Request)
		retries []string // acceptable x-arbstr-retries values
	}{
		{"503", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(503)
			_, _ = io.WriteString(w, stInBand)
		}, []string{"2/alpha"}},
		{"reset before headers", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			stCut(t, w, true)
		}, []string{"2/alpha"}},
		{"reset after headers before first event", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			_, _ = io.WriteString(w, ": keep-alive\n\n")
			_ = http.NewResponseController(w).Flush()
			stCut(t, w, false)
		}, []string{"2/alpha"}},
		{"in-band error as first event", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			_ = stSend(w, stInBand)
			_ = stSend(w, stChunk("from-alpha"))
			_ = stSend(w, stFinish)
			_ = stSend(w, "[DONE]")
		}, []string{"1/alpha", "2/alpha"}},
		{"first event too slow", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			if !stWait(r) {
				_ = stSend(w, stChunk("from-alpha"))
			}
		}, []string{"1/alpha"}},
		{"silent before headers", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			if !stWait(r) {
				stGood(w, "from-alpha")
			}
		}, []string{"1/alpha"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			alpha := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) { c.alpha(t, w, r) })
			beta := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) { stGood(w, "beta-1", "beta-2") })
			tc := startCaddy(t, stSite(stOpts{}, alpha, beta))
			start := time.Now()
			resp := tc.Post("/v1/chat/completions", stStreamBody)
			body, err := io.ReadAll(resp.Body)
			elapsed := time.Since(start)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("status %d, err %v, body %s", resp.StatusCode, err, body)
			}
			if got := resp.Header.Get("x-arbstr-provider"); got != "beta" {
				t.Errorf("x-arbstr-provider %q, want beta", got)
			}
			if got := resp.Header.Get("x-arbstr-streaming"); got != "true" {
				t.Errorf("x-arbstr-streaming %q", got)
			}
			if got := resp.Header.Get("x-arbstr-retries"); !slices.Contains(c.retries, got) {
				t.Errorf("x-arbstr-retries %q, want one of %q", got, c.retries)
			}
			data, _, _ := stParse(body)
			if got := stContents(data); !slices.Equal(got, []string{"beta-1", "beta-2"}) {
				t.Errorf("contents %q, want beta's only; body:\n%s", got, body)
			}
			if strings.Contains(string(body), "error") {
				t.Errorf("the client saw alpha's failure:\n%s", body)
			}
			if len(data) == 0 || data[len(data)-1] != "[DONE]" {
				t.Errorf("no [DONE] at the end:\n%s", body)
			}
			if alpha.hits.Load() == 0 || beta.hits.Load() != 1 {
				t.Errorf("hits alpha %d beta %d", alpha.hits.Load(), beta.hits.Load())
			}
			// A silent provider is given up after first_event_timeout (300ms),
			// far inside its 5s silence and the 2s deadline.
			if elapsed > 1500*time.Millisecond {
				t.Errorf("took %v", elapsed)
			}
		})
	}
}

func TestStreamRetrySameProvider(t *testing.T) {
	alpha := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n <= 2 {
			w.WriteHeader(503)
			return
		}
		stGood(w, "alpha-ok")
	})
	beta := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) { stGood(w, "beta") })
	tc := startCaddy(t, stSite(stOpts{attempts: 3}, alpha, beta))
	resp := tc.Post("/v1/chat/completions", stStreamBody)
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d, err %v, body %s", resp.StatusCode, err, body)
	}
	if got := resp.Header.Get("x-arbstr-provider"); got != "alpha" {
		t.Errorf("x-arbstr-provider %q", got)
	}
	if got := resp.Header.Get("x-arbstr-retries"); got != "2/alpha" {
		t.Errorf("x-arbstr-retries %q, want 2/alpha", got)
	}
	if alpha.hits.Load() != 3 || beta.hits.Load() != 0 {
		t.Errorf("hits alpha %d beta %d, want 3 and 0", alpha.hits.Load(), beta.hits.Load())
	}
	data, _, _ := stParse(body)
	if got := stContents(data); !slices.Equal(got, []string{"alpha-ok"}) {
		t.Errorf("contents %q", got)
	}
	// The same idempotency key on every try.
	k := alpha.header(0).Get("Idempotency-Key")
	if k == "" || alpha.header(1).Get("Idempotency-Key") != k || alpha.header(2).Get("Idempotency-Key") != k {
		t.Errorf("Idempotency-Key differs between tries")
	}
}

// stLive is an upstream sending 5 events 150ms apart.
func stLive(w http.ResponseWriter, r *http.Request, n int) {
	stHead(w)
	for i := 1; i <= 5; i++ {
		if i > 1 {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(150 * time.Millisecond):
			}
		}
		_ = stSend(w, stChunk(fmt.Sprint("live-", i)))
	}
	_ = stSend(w, stFinish)
	_ = stSend(w, "[DONE]")
}

func TestStreamLiveDelivery(t *testing.T) {
	for _, c := range []struct {
		name, site string
		header     []string
	}{
		{"plain", "", nil},
		{"with encode", "\tencode gzip zstd", []string{"Accept-Encoding", "gzip"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := stNewUpstream(t, stLive)
			tc := startCaddy(t, stSite(stOpts{idle: "1s", site: c.site}, up))
			resp := tc.Post("/v1/chat/completions", stStreamBody, c.header...)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if ce := resp.Header.Get("Content-Encoding"); ce != "" {
				t.Fatalf("stream compressed with %q", ce)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
				t.Errorf("Content-Type %q", ct)
			}
			cc := resp.Header.Get("Cache-Control")
			if !strings.Contains(cc, "no-cache") || !strings.Contains(cc, "no-transform") {
				t.Errorf("Cache-Control %q", cc)
			}
			var arrivals []time.Time
			var contents []string
			br := bufio.NewReader(resp.Body)
			for {
				line, err := br.ReadString('\n')
				if strings.HasPrefix(line, "data: ") {
					if c := stContents([]string{strings.TrimSpace(line[6:])}); len(c) == 1 {
						arrivals = append(arrivals, time.Now())
						contents = append(contents, c[0])
					}
				}
				if err != nil {
					if err != io.EOF {
						t.Fatalf("read: %v", err)
					}
					break
				}
			}
			if len(arrivals) != 5 {
				t.Fatalf("got %d content events %q, want 5", len(arrivals), contents)
			}
			if spread := arrivals[4].Sub(arrivals[0]); spread < 400*time.Millisecond {
				t.Errorf("events arrived within %v: buffered, not live", spread)
			}
		})
	}
}

func TestStreamUsage(t *testing.T) {
	t.Run("injected and hidden", func(t *testing.T) {
		up := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) { stGood(w, "a") })
		tc := startCaddy(t, stSite(stOpts{}, up))
		resp := tc.Post("/v1/chat/completions", stStreamBody)
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("status %d, err %v", resp.StatusCode, err)
		}
		var sent struct {
			StreamOptions struct {
				IncludeUsage bool `json:"include_usage"`
			} `json:"stream_options"`
		}
		if err := json.Unmarshal(up.body(0), &sent); err != nil || !sent.StreamOptions.IncludeUsage {
			t.Errorf("upstream body lacks include_usage: %s", up.body(0))
		}
		data, _, _ := stParse(body)
		for _, d := range data {
			if strings.Contains(d, `"usage"`) {
				t.Errorf("usage chunk shown to a client that did not ask: %s", d)
			}
		}
		stCheckEnding(t, resp, body)
	})
	t.Run("asked by client", func(t *testing.T) {
		up := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) { stGood(w, "a") })
		tc := startCaddy(t, stSite(stOpts{}, up))
		req := `{"model":"m1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`
		resp := tc.Post("/v1/chat/completions", req)
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("status %d, err %v", resp.StatusCode, err)
		}
		if string(up.body(0)) != req {
			t.Errorf("upstream body changed: %s", up.body(0))
		}
		data, _, _ := stParse(body)
		n := 0
		for _, d := range data {
			if d == stUsage {
				n++
			}
		}
		if n != 1 {
			t.Errorf("usage chunk passed %d times, want once:\n%s", n, body)
		}
		stCheckEnding(t, resp, body)
	})
}

// stCheckEnding asserts a complete stream's end: the cost comment, then
// [DONE], then nothing, and the cost trailer.
func stCheckEnding(t *testing.T, resp *http.Response, body []byte) {
	t.Helper()
	_, comments, lines := stParse(body)
	if len(lines) < 2 || lines[len(lines)-1] != "data: [DONE]" || lines[len(lines)-2] != stCostLine {
		t.Errorf("stream does not end with %q then [DONE]:\n%s", stCostLine, body)
	}
	if len(comments) != 1 {
		t.Errorf("comments %q", comments)
	}
	if !bytes.HasSuffix(body, []byte("data: [DONE]\n\n")) {
		t.Errorf("something after [DONE]: %q", body[max(0, len(body)-40):])
	}
	if got := resp.Trailer.Get("x-arbstr-cost-sats"); got != "3.37" {
		t.Errorf("trailer x-arbstr-cost-sats %q, want 3.37 (trailers %v)", got, resp.Trailer)
	}
}

func TestStreamHonestEndings(t *testing.T) {
	cases := []struct {
		name     string
		idle     string
		upstream func(t *testing.T, w http.ResponseWriter, r *http.Request)
		contents []string
		complete bool // [DONE] and a clean end; else error event and abort
	}{
		{"cut after two events", "", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			_ = stSend(w, stChunk("one"))
			_ = stSend(w, stChunk("two"))
			stCut(t, w, false)
		}, []string{"one", "two"}, false},
		{"stall after commit", "300ms", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			_ = stSend(w, stChunk("one"))
			_ = stSend(w, stChunk("two"))
			if !stWait(r) {
				_ = stSend(w, stFinish)
				_ = stSend(w, "[DONE]")
			}
		}, []string{"one", "two"}, false},
		{"stall right after the first event", "300ms", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			_ = stSend(w, stChunk("one"))
			stWait(r)
		}, []string{"one"}, false},
		{"error event after commit", "", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			_ = stSend(w, stChunk("one"))
			_ = stSend(w, stInBand)
			_ = stSend(w, stChunk("after-error"))
			_ = stSend(w, stFinish)
			_ = stSend(w, "[DONE]")
		}, []string{"one"}, false},
		{"multi-line event", "", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			_ = stSend(w, stChunk("one"))
			_ = stSend(w, "{\"choices\":[{\"index\":0,\ndata: \"delta\":{\"content\":\"two\"}}]}")
			_ = stSend(w, stFinish)
			_ = stSend(w, "[DONE]")
		}, []string{"one", "two"}, true},
		{"finish_reason without DONE", "", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			_ = stSend(w, stChunk("one"))
			_ = stSend(w, stFinish)
		}, []string{"one"}, true},
		{"cut after finish_reason", "", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			_ = stSend(w, stChunk("one"))
			_ = stSend(w, stFinish)
			stCut(t, w, false)
		}, []string{"one"}, false},
		{"no finish_reason and no DONE", "", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			_ = stSend(w, stChunk("one"))
			_ = stSend(w, stChunk("two"))
		}, []string{"one", "two"}, false},
		{"malformed event in the middle", "", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			stHead(w)
			_ = stSend(w, stChunk("one"))
			_ = stSend(w, `{"choices":[{"delta":{"content":"bad"}`)
			_ = stSend(w, stChunk("two"))
			_ = stSend(w, stFinish)
			_ = stSend(w, "[DONE]")
		}, []string{"one", "two"}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) { c.upstream(t, w, r) })
			tc := startCaddy(t, stSite(stOpts{idle: c.idle}, up))
			start := time.Now()
			resp := tc.Post("/v1/chat/completions", stStreamBody)
			body, err := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if elapsed := time.Since(start); elapsed > 1500*time.Millisecond {
				t.Errorf("took %v", elapsed)
			}
			data, _, _ := stParse(body)
			if got := stContents(data); !slices.Equal(got, c.contents) {
				t.Errorf("contents %q, want %q; body:\n%s", got, c.contents, body)
			}
			if strings.Contains(string(body), "bad") {
				t.Errorf("malformed event forwarded:\n%s", body)
			}
			if c.complete {
				if err != nil {
					t.Errorf("body read ended with %v, want a clean end", err)
				}
				if len(data) == 0 || data[len(data)-1] != "[DONE]" {
					t.Errorf("no [DONE] at the end:\n%s", body)
				}
				return
			}
			if err == nil {
				t.Errorf("body read ended cleanly; a broken stream must be aborted")
			} else if !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "reset") {
				t.Errorf("body read error %v, want unexpected EOF or reset", err)
			}
			if strings.Contains(string(body), "[DONE]") {
				t.Errorf("[DONE] on a broken stream:\n%s", body)
			}
			if len(data) == 0 {
				t.Fatalf("no events")
			}
			var last struct {
				Error *struct {
					Message string `json:"message"`
					Code    string `json:"code"`
				} `json:"error"`
			}
			if json.Unmarshal([]byte(data[len(data)-1]), &last) != nil || last.Error == nil || last.Error.Message == "" {
				t.Errorf("last event is not an error event:\n%s", body)
			}
		})
	}
}

func TestStreamClientDisconnectCancelsUpstream(t *testing.T) {
	type ended struct {
		at        time.Time
		cancelled bool
	}
	done := make(chan ended, 1)
	// After two events the upstream goes quiet: only the cancellation of its
	// request can end it early, not a failed write of a later event.
	up := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) {
		stHead(w)
		_ = stSend(w, stChunk("tick-1"))
		_ = stSend(w, stChunk("tick-2"))
		cancelled := stWait(r)
		done <- ended{time.Now(), cancelled}
	})
	// The idle timeout (2s) would also cancel it, but much later.
	tc := startCaddy(t, stSite(stOpts{idle: "2s"}, up))
	resp := tc.Post("/v1/chat/completions", stStreamBody)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	for seen := 0; seen < 2; {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if strings.Contains(line, "tick-") {
			seen++
		}
	}
	closed := time.Now()
	resp.Body.Close()
	select {
	case e := <-done:
		if !e.cancelled {
			t.Fatalf("the upstream request was never cancelled")
		}
		if d := e.at.Sub(closed); d > 500*time.Millisecond {
			t.Errorf("upstream noticed the client leaving after %v", d)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the upstream request was not cancelled")
	}
}

func TestStreamLongPassThrough(t *testing.T) {
	const n = 20000
	up := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		stHead(w)
		for i := 0; i < n; i++ {
			if _, err := fmt.Fprintf(w, "data: %s\n\n", stChunk(fmt.Sprint(i))); err != nil {
				return
			}
		}
		_ = stSend(w, stFinish)
		_ = stSend(w, "[DONE]")
	})
	tc := startCaddy(t, stSite(stOpts{idle: "1s"}, up))
	resp := tc.Post("/v1/chat/completions", stStreamBody)
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d, err %v", resp.StatusCode, err)
	}
	data, _, _ := stParse(body)
	contents := stContents(data)
	if len(contents) != n {
		t.Fatalf("got %d content events, want %d", len(contents), n)
	}
	for i, c := range contents {
		if c != fmt.Sprint(i) {
			t.Fatalf("event %d is %q: out of order", i, c)
		}
	}
	if data[len(data)-1] != "[DONE]" {
		t.Errorf("last event %q", data[len(data)-1])
	}
}

func TestStreamInspectChunk(t *testing.T) {
	cases := []struct {
		name  string
		data  string
		check func(chunkInfo) bool
	}{
		{"content", stChunk("a"), func(i chunkInfo) bool {
			return i.valid && !i.finished && !i.isError && !i.usage.known && !i.noChoices
		}},
		{"finish_reason", stFinish, func(i chunkInfo) bool { return i.valid && i.finished && !i.isError }},
		{"finish_reason in a later choice", `{"choices":[{"index":0,"finish_reason":null},{"index":1,"finish_reason":"length"}]}`,
			func(i chunkInfo) bool { return i.finished }},
		{"usage-only", stUsage, func(i chunkInfo) bool {
			return i.valid && i.usageOnly && i.noChoices && i.usage.known &&
				i.usage.promptTokens == 1234 && i.usage.completionTokens == 567
		}},
		{"usage with choices", `{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}`,
			func(i chunkInfo) bool {
				return i.finished && i.usage.known && i.usage.completionTokens == 4 && !i.usageOnly
			}},
		{"usage null", `{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":null}`,
			func(i chunkInfo) bool { return i.valid && !i.usage.known && !i.usageOnly }},
		{"error", stInBand, func(i chunkInfo) bool { return i.valid && i.isError }},
		{"error null", `{"error":null,"choices":[{"index":0,"delta":{"content":"x"}}]}`,
			func(i chunkInfo) bool { return i.valid && !i.isError }},
		{"invalid JSON", `{"choices":[`, func(i chunkInfo) bool { return !i.valid }},
		{"trailing garbage", stFinish + "x", func(i chunkInfo) bool { return !i.valid }},
		{"not an object", `[1,2]`, func(i chunkInfo) bool { return !i.valid }},
		{"empty", ``, func(i chunkInfo) bool { return !i.valid }},
	}
	for _, c := range cases {
		if info := inspectChunk([]byte(c.data)); !c.check(info) {
			t.Errorf("%s: inspectChunk(%s) = %+v", c.name, c.data, info)
		}
	}
}

func TestStreamClientDisconnectBeforeCommit(t *testing.T) {
	arrived := make(chan struct{})
	cancelledAt := make(chan time.Time, 1)
	alpha := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) {
		close(arrived)
		if stWait(r) {
			cancelledAt <- time.Now()
		}
	})
	betaHit := make(chan struct{}, 1)
	beta := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) {
		betaHit <- struct{}{}
		stGood(w, "beta")
	})
	// A first-event timeout far beyond the bound below: only the client's
	// leaving can cancel alpha in time.
	tc := startCaddy(t, stSite(stOpts{first: "1500ms"}, alpha, beta))
	req, err := http.NewRequest(http.MethodPost, tc.URL+"/v1/chat/completions", strings.NewReader(stStreamBody))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req.WithContext(ctx))
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-arrived:
	case <-time.After(2 * time.Second):
		t.Fatal("alpha never got the request")
	}
	left := time.Now()
	cancel()
	select {
	case at := <-cancelledAt:
		if d := at.Sub(left); d > 500*time.Millisecond {
			t.Errorf("alpha cancelled %v after the client left", d)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("alpha's request was never cancelled")
	}
	if err := <-errc; err == nil {
		t.Errorf("the client got a response")
	}
	// A client gone is no provider failure: nothing falls back to beta.
	select {
	case <-betaHit:
		t.Errorf("beta was tried after the client left")
	case <-time.After(200 * time.Millisecond):
	}
}

// A client that stops reading for a while is not a provider that stopped
// sending: the stream must complete, and the provider must not be blamed.
func TestStreamSlowClientIsNotProviderSilence(t *testing.T) {
	const n = 20000 // ~5 MB: the pump blocks on the client while it pauses
	up := stNewUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		stHead(w)
		for i := 0; i < n; i++ {
			if _, err := fmt.Fprintf(w, "data: %s\n\n", stChunk(strings.Repeat("x", 150))); err != nil {
				return
			}
		}
		_ = stSend(w, stFinish)
		_ = stSend(w, "[DONE]")
	})
	tc := startCaddy(t, stSite(stOpts{idle: "300ms"}, up))
	resp := tc.Post("/v1/chat/completions", stStreamBody)
	head := make([]byte, 4096)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // the client is busy: this pause is the behaviour under test
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("the stream broke while the client paused: %v", err)
	}
	if bytes.Contains(rest, []byte("stream_broken")) || !bytes.HasSuffix(bytes.TrimSpace(rest), []byte("data: [DONE]")) {
		t.Fatalf("stream did not complete; its end: %q", rest[max(0, len(rest)-300):])
	}
}
