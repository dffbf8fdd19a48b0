package arbstr

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Hardening tests (issue 10, SPEC wave-2 amendments of §3, §6, §8, §10):
// peers that lie about sizes or trickle bytes cost neither memory nor time,
// a provider's key never comes back to the client, look-alike keys are
// refused, and the idle timer measures data events only.

// hdTotalAlloc is the bytes allocated by the whole process so far.
func hdTotalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

// hdTrickle is a reader that yields its bytes, then reports an error (the
// connection broke) or io.EOF.
type hdTrickle struct {
	data []byte
	end  error
}

func (r *hdTrickle) Read(b []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.end
	}
	n := copy(b, r.data)
	r.data = r.data[n:]
	return n, nil
}

// TestHardeningBodyMemoryTracksArrival: a body that declares 15 MB (a
// request) or 64 MB (a provider answer) and sends 10 bytes costs memory for
// the 10 bytes and a small chunk, never the declared length.
func TestHardeningBodyMemoryTracksArrival(t *testing.T) {
	const runs = 10
	for _, c := range []struct {
		name     string
		declared int64
		limit    int64
	}{
		{"request", 15_999_999, defaultMaxBody},
		{"provider answer", 64 << 20, maxResponseBody},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := hdTotalAlloc()
			for range runs {
				body, err := readAllBounded(&hdTrickle{data: []byte("0123456789"), end: io.EOF}, c.declared, c.limit)
				if err != nil || string(body) != "0123456789" {
					t.Fatalf("read %q, %v", body, err)
				}
				_, err = readAllBounded(&hdTrickle{data: []byte("0123456789"), end: io.ErrUnexpectedEOF}, c.declared, c.limit)
				if err != io.ErrUnexpectedEOF {
					t.Fatalf("a truncated body read with error %v, want io.ErrUnexpectedEOF", err)
				}
			}
			if per := (hdTotalAlloc() - before) / (2 * runs); per > 1<<20 {
				t.Errorf("%d bytes allocated per body of 10 bytes declaring %d; want < 1 MB", per, c.declared)
			}
		})
	}
	t.Run("honest bodies read whole", func(t *testing.T) {
		for _, size := range []int{0, 1, bodyChunkMin - 1, bodyChunkMin, bodyChunkMin + 1, 3*bodyChunkMax + 7} {
			want := bytes.Repeat([]byte("x"), size)
			for _, hint := range []int64{-1, int64(size)} {
				got, err := readAllBounded(bytes.NewReader(want), hint, int64(size))
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("size %d hint %d: %d bytes, %v", size, hint, len(got), err)
				}
			}
			if size > 0 {
				if _, err := readAllBounded(bytes.NewReader(want), -1, int64(size-1)); err != errTooLarge {
					t.Errorf("size %d over a limit of %d: %v, want errTooLarge", size, size-1, err)
				}
			}
		}
	})
}

// TestHardeningDeclaredLengthNotReserved drives the same lies through Caddy:
// clients that declare 15 MB and send 10 bytes, and a provider that declares
// 64 MB and sends 10 bytes, cost the process far less than the declared
// sizes.
func TestHardeningDeclaredLengthNotReserved(t *testing.T) {
	liar := secNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(64<<20))
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, `{"id":"x",`)
		// The handler returns: net/http closes the connection short.
	})
	tc := startCaddy(t, rtSite(rtProvider("liar", liar.url(), 1), rtFast))

	const clients = 5
	before := hdTotalAlloc()
	for range clients {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tc.Port))
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 15999999\r\n\r\n0123456789")
		_ = conn.(*net.TCPConn).CloseWrite()
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		if resp.StatusCode != http.StatusBadRequest {
			b, _ := io.ReadAll(resp.Body)
			t.Errorf("a body cut short: status %d %v %s, want 400", resp.StatusCode, resp.Header, b)
		}
		conn.Close()
	}
	if got := hdTotalAlloc() - before; got > clients<<20 {
		t.Errorf("%d clients declaring 15 MB and sending 10 bytes allocated %d MB; want < %d MB", clients, got>>20, clients)
	}

	before = hdTotalAlloc()
	resp := tc.Post("/v1/chat/completions", rtChat)
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("a provider answer cut short: status %d, want 502", resp.StatusCode)
	}
	if n := liar.hits.Load(); n < 1 {
		t.Fatalf("the provider got %d requests", n)
	}
	if got := hdTotalAlloc() - before; got > 4<<20 {
		t.Errorf("%d attempt(s) on a provider declaring 64 MB and sending 10 bytes allocated %d MB; want < 4 MB", liar.hits.Load(), got>>20)
	}
}

// TestHardeningSlowBodyTimesOut: a body trickling in slower than the
// request's timeout ends with 408 and a closed connection, however often
// bytes arrive.
func TestHardeningSlowBodyTimesOut(t *testing.T) {
	up := secNewUpstream(t, secServeOK)
	tc := startCaddy(t, rtSite(rtProvider("alpha", up.url(), 1), "timeout 300ms\n"))

	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tc.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
	// One more byte every 50ms: each one arrives well within any per-read
	// timeout, the whole body never within the request's.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := conn.Write([]byte(" ")); err != nil {
					return
				}
			}
		}
	}()
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to a trickling body: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	took := time.Since(start)
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d %s, want 408", resp.StatusCode, body)
	}
	if took > 2*time.Second {
		t.Errorf("the 408 came after %s; timeout is 300ms", took)
	}
	var e rtAPIError
	if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Error.Message, "timeout") {
		t.Errorf("error body %s (%v); want arbstr's error naming the timeout", body, err)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("the connection stayed open after the 408")
	}
	if n := up.hits.Load(); n != 0 {
		t.Errorf("the provider got %d requests", n)
	}
}

// TestHardeningBadAnswerNotRetriedOnSameProvider: a 2xx over the size cap,
// or not JSON, is the provider's failure, tried once on it and then on the
// next provider.
func TestHardeningBadAnswerNotRetriedOnSameProvider(t *testing.T) {
	huge := secNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		chunk := bytes.Repeat([]byte(" "), 1<<20)
		_, _ = w.Write([]byte("{"))
		for range maxResponseBody>>20 + 1 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
		_, _ = w.Write([]byte("}"))
	})
	html := secNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, "<html>maintenance</html>")
	})
	good := secNewUpstream(t, secServeOK)
	for _, c := range []struct {
		name string
		bad  *secUpstream
	}{{"over the size cap", huge}, {"not JSON", html}} {
		t.Run(c.name, func(t *testing.T) {
			tc := startCaddy(t, rtSite(rtProvider("bad", c.bad.url(), 1), rtProvider("good", good.url(), 2),
				"retry {\n\tattempts 3\n\tbackoff 10ms\n}\nbreaker {\n\tfailures 100\n}\ntimeout 20s\n"))
			c.bad.hits.Store(0)
			resp := tc.Post("/v1/chat/completions", rtChat)
			rtExpectOK(t, resp, "good")
			if n := c.bad.hits.Load(); n != 1 {
				t.Errorf("the provider with the bad answer got %d requests, want 1 (no retry on it)", n)
			}
			if got := resp.Header.Get(headerRetries); got != "1/bad" {
				t.Errorf("%s = %q, want 1/bad", headerRetries, got)
			}
		})
	}
}

// Keys of the redaction tests: distinctive, so that a leak is found by a
// plain search.
const (
	hdKeyEcho   = "sk-hdECHO-5d1f9b3a7c"
	hdKeyStream = "sk-hdSTREAM-8e2c6a0d4b"
)

// TestHardeningProviderKeyRedacted: a provider that echoes its request
// headers, in a 4xx body that is relayed or in an error event after its
// stream started, does not hand its key to the client.
func TestHardeningProviderKeyRedacted(t *testing.T) {
	echo := secNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		msg, _ := json.Marshal("bad temperature; request headers: Authorization: " + r.Header.Get("Authorization"))
		secStatus(400, `{"error":{"message":`+string(msg)+`,"type":"invalid_request_error","code":null}}`)(w, r)
	})
	streamEcho := secNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"},\"finish_reason\":null}]}\n\n")
		w.(http.Flusher).Flush()
		fmt.Fprintf(w, "data: {\"error\":{\"message\":\"upstream failed for %s\",\"type\":\"server_error\"}}\n\n", r.Header.Get("Authorization"))
	})
	tc := startCaddy(t, rtSite(
		fmt.Sprintf("provider echo {\n\turl %s\n\tapi_key %s\n\tmodels echo-model\n}\n", echo.url(), hdKeyEcho),
		fmt.Sprintf("provider streamer {\n\turl %s\n\tapi_key %s\n\tmodels stream-model\n}\n", streamEcho.url(), hdKeyStream),
		rtFast))

	resp := tc.Post("/v1/chat/completions", `{"model":"echo-model","messages":[{"role":"user","content":"hi"}]}`)
	body := rtReadBody(t, resp)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d %s, want the provider's 400 relayed", resp.StatusCode, body)
	}
	if strings.Contains(body, hdKeyEcho) || !strings.Contains(body, "Bearer [redacted]") {
		t.Errorf("relayed 400 body %s; want the key replaced by [redacted]", body)
	}
	if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
		t.Errorf("Content-Length %s for a body of %d bytes", cl, len(body))
	}

	req := secChatRequest(t, tc.URL, `{"model":"stream-model","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	_, raw, _ := secDo(t, req) // the stream is cut after the error: a read error is expected
	if strings.Contains(string(raw), hdKeyStream) || !strings.Contains(string(raw), "Bearer [redacted]") {
		t.Errorf("stream %s; want the key in the error event replaced by [redacted]", raw)
	}
}

// TestHardeningLookalikeKeysRefused: keys that read as a routing key to a
// provider matching keys under Unicode case folding, but are not it, are a
// 400 and reach no provider; so is a model name over 256 bytes.
func TestHardeningLookalikeKeysRefused(t *testing.T) {
	up := secNewUpstream(t, secServeOK)
	tc := startCaddy(t, rtSite(rtProvider("alpha", up.url(), 1), rtFast))
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	for _, c := range []struct{ name, body, param string }{
		{"long s in stream", `{"model":"gpt-4o",` + msgs + `,"ſtream":true}`, ""},
		{"Kelvin sign in max_tokens", `{"model":"gpt-4o",` + msgs + `,"max_to` + "\u212A" + `ens":5}`, ""},
		{"Kelvin sign as a JSON escape", `{"model":"gpt-4o",` + msgs + `,"max_to\u212Aens":5}`, ""},
		{"upper-case model", `{"model":"gpt-4o",` + msgs + `,"MODEL":"dear"}`, ""},
		{"long s in messages", `{"model":"gpt-4o",` + msgs + `,"meſſages":[]}`, ""},
		{"INCLUDE_USAGE in stream_options", `{"model":"gpt-4o",` + msgs + `,"stream":true,"stream_options":{"INCLUDE_USAGE":true}}`, "stream_options"},
		{"long s in include_usage", `{"model":"gpt-4o",` + msgs + `,"stream":true,"stream_options":{"include_uſage":false}}`, "stream_options"},
		{"model over 256 bytes", `{"model":"` + strings.Repeat("m", 257) + `",` + msgs + `}`, "model"},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp := tc.Post("/v1/chat/completions", c.body)
			e := rtDecodeError(t, resp)
			if resp.StatusCode != http.StatusBadRequest || e.Error.Type != "invalid_request_error" {
				t.Fatalf("status %d %+v, want 400 invalid_request_error", resp.StatusCode, e)
			}
			if got := ""; e.Error.Param != nil {
				got = *e.Error.Param
				if got != c.param {
					t.Errorf("param %q, want %q", got, c.param)
				}
			} else if c.param != "" {
				t.Errorf("param null, want %q", c.param)
			}
		})
	}
	if n := up.hits.Load(); n != 0 {
		t.Fatalf("the provider got %d of the refused requests", n)
	}
	// The real keys, and a model of exactly 256 bytes, still pass.
	resp := tc.Post("/v1/chat/completions", `{"model":"gpt-4o",`+msgs+`,"stream":false,"max_tokens":5,"stream_options":null}`)
	rtExpectOK(t, resp, "alpha")
	resp = tc.Post("/v1/chat/completions", `{"model":"`+strings.Repeat("m", 256)+`",`+msgs+`}`)
	rtExpectOK(t, resp, "alpha")
}

// TestHardeningLogFieldsBounded: a client cannot make arbstr write a long
// log field (the model name is the only client string it logs).
func TestHardeningLogFieldsBounded(t *testing.T) {
	up := secNewUpstream(t, secServeOK)
	sc := secStart(t, rtSite(rtProvider("alpha", up.url(), 1, "models gpt-4o"), rtFast))
	long := strings.Repeat("m", 100_000)
	resp := sc.Post("/v1/chat/completions", `{"model":"`+long+`","messages":[{"role":"user","content":"hi"}]}`)
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode/100 != 4 {
		t.Fatalf("status %d, want a 4xx", resp.StatusCode)
	}
	// The access log entry is written after the response.
	var log []byte
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		log, _ = os.ReadFile(sc.logPath)
		if bytes.Contains(log, []byte(`"arbstr_request_id"`)) {
			break
		}
	}
	found := false
	for _, line := range bytes.Split(log, []byte("\n")) {
		var entry map[string]any
		if json.Unmarshal(line, &entry) != nil || entry["arbstr_request_id"] == nil {
			continue
		}
		found = true
		for k, v := range entry {
			if s, ok := v.(string); ok && strings.HasPrefix(k, "arbstr_") && len(s) > maxLogValue+len("…") {
				t.Errorf("log field %s is %d bytes long", k, len(s))
			}
		}
	}
	if !found {
		t.Fatalf("no access log entry with arbstr fields in %s", log)
	}
}

// TestHardeningGetChatCompletionsGoesToNext: GET .../chat/completions
// (stored completions in the OpenAI API) is for the next handler.
func TestHardeningGetChatCompletionsGoesToNext(t *testing.T) {
	up := secNewUpstream(t, secServeOK)
	tc := startCaddy(t, "route {\n"+rtSite(rtProvider("alpha", up.url(), 1), rtFast)+"respond \"next handler\" 404\n}\n")
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
		resp := rtDo(t, tc, method, "/v1/chat/completions", nil)
		body := rtReadBody(t, resp)
		if resp.StatusCode != http.StatusNotFound || body != "next handler" {
			t.Errorf("%s /v1/chat/completions: %d %q, want the next handler's 404", method, resp.StatusCode, body)
		}
	}
	if n := up.hits.Load(); n != 0 {
		t.Errorf("the provider got %d requests", n)
	}
}

// TestHardeningIdleTimeoutCountsDataEvents: once a stream has started,
// comments (pings) and partial bytes do not keep it alive: after
// stream_idle_timeout without a data event it ends with the honest error.
func TestHardeningIdleTimeoutCountsDataEvents(t *testing.T) {
	first := "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hel\"},\"finish_reason\":null}]}\n\n"
	for _, c := range []struct {
		name string
		keep string // written every 100ms after the first event
	}{
		{"pings", ": ping\n\n"},
		{"partial bytes", "d"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var up *secUpstream
			up = secNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				fmt.Fprint(w, first)
				w.(http.Flusher).Flush()
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-r.Context().Done():
						return
					case <-up.closing:
						return
					case <-tick.C:
						fmt.Fprint(w, c.keep)
						w.(http.Flusher).Flush()
					}
				}
			})
			tc := startCaddy(t, rtSite(rtProvider("alpha", up.url(), 1), "stream_idle_timeout 500ms\ntimeout 10s\n"))
			client := &http.Client{Timeout: 5 * time.Second}
			req := secChatRequest(t, tc.URL, `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
			start := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body) // cut after the error event
			took := time.Since(start)
			if !strings.Contains(string(raw), `"code":"stream_broken"`) || !strings.Contains(string(raw), "stream_idle_timeout") {
				t.Fatalf("stream after %s:\n%s\nwant the idle-timeout error event", took, raw)
			}
			if took > 3*time.Second {
				t.Errorf("the stream ended after %s; stream_idle_timeout is 500ms", took)
			}
		})
	}
}

// TestHardeningAnswerIsJSONNoSniff: a successful answer goes out as JSON
// that browsers must not sniff, whatever Content-Type the provider sent.
func TestHardeningAnswerIsJSONNoSniff(t *testing.T) {
	up := secNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, secCompletion)
	})
	tc := startCaddy(t, rtSite(rtProvider("alpha", up.url(), 1), rtFast))
	resp := tc.Post("/v1/chat/completions", rtChat)
	rtExpectOK(t, resp, "alpha")
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	if v := resp.Header.Get("X-Content-Type-Options"); v != "nosniff" {
		t.Errorf("X-Content-Type-Options %q, want nosniff", v)
	}
}

// TestHardeningRefusedRequestsLabelledByModel: requests refused before a
// provider is chosen are counted under their model (a configured name, else
// "*"), never model="".
func TestHardeningRefusedRequestsLabelledByModel(t *testing.T) {
	up := secNewUpstream(t, secServeOK)
	tc := startCaddy(t, rtSite(rtProvider("alpha", up.url(), 1, "models gpt-4o"), rtFast))
	metricsURL := tc.Admin + "/metrics"
	count := func(model string) float64 {
		v, _ := hlMetric(hlScrape(t, metricsURL), "caddy_arbstr_requests_total", hlL("provider", "", "model", model, "outcome", "error"))
		return v
	}
	beforeKnown, beforeStar, beforeEmpty := count("gpt-4o"), count("*"), count("")
	// 400: a policy that does not exist, for a configured model.
	resp := tc.Post("/v1/chat/completions", rtChat, policyHeader, "no-such-policy")
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("unknown policy: status %d, want 400", resp.StatusCode)
	}
	// 404: a model nobody serves; its name must not become a label.
	resp = tc.Post("/v1/chat/completions", `{"model":"made-up-model","messages":[]}`)
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown model: status %d, want 404", resp.StatusCode)
	}
	if d := count("gpt-4o") - beforeKnown; d != 1 {
		t.Errorf("refused requests for gpt-4o counted %v times under model=\"gpt-4o\", want 1", d)
	}
	if d := count("*") - beforeStar; d != 1 {
		t.Errorf("refused requests for an unknown model counted %v times under model=\"*\", want 1", d)
	}
	if d := count("") - beforeEmpty; d != 0 {
		t.Errorf("%v refused requests counted under model=\"\"", d)
	}
	if text := hlScrape(t, metricsURL); strings.Contains(text, "made-up-model") {
		t.Error("a client's model name became a metric label")
	}
}
