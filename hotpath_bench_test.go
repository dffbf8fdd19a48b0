//go:build unix

// (unix: BenchmarkServeChat reads the process CPU time with getrusage.)

package arbstr

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/arbstr/caddy-arbstr/internal/freeport"
	"github.com/arbstr/caddy-arbstr/internal/sse"
)

// hpStream is a chat stream as a provider sends it: a role chunk, events
// content chunks, the finish chunk, the include_usage chunk and [DONE].
func hpStream(events int) []byte {
	var b bytes.Buffer
	chunk := func(delta, finish string) {
		fmt.Fprintf(&b, `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"bench-model","choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]}`+"\n\n", delta, finish)
	}
	chunk(`{"role":"assistant","content":""}`, "null")
	for i := range events {
		chunk(fmt.Sprintf(`{"content":" word%d"}`, i), "null")
	}
	chunk(`{}`, `"stop"`)
	b.WriteString(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"bench-model","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":200,"total_tokens":212}}` + "\n\n")
	b.WriteString("data: [DONE]\n\n")
	return b.Bytes()
}

// BenchmarkSSEScan is the per-stream work of the pump minus the I/O:
// scanning a 200-event stream and inspecting every chunk.
func BenchmarkSSEScan(b *testing.B) {
	stream := hpStream(200)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	events := 0
	for b.Loop() {
		sc := sse.NewScanner(bytes.NewReader(stream))
		events = 0
		finished, usageSeen := false, false
		for {
			ev, err := sc.Next()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					b.Fatal(err)
				}
				break
			}
			events++
			if bytes.Equal(ev.Data, doneMarker) {
				continue
			}
			info := inspectChunk(ev.Data)
			if !info.valid {
				b.Fatalf("event %d not valid: %s", events, ev.Data)
			}
			finished = finished || info.finished
			usageSeen = usageSeen || info.usageOnly
		}
		sc.Release() // as deliver does: the read buffer goes back to its pool
		if events != 204 || !finished || !usageSeen {
			b.Fatalf("scanned %d events (finished %v, usage %v), want 204 with both", events, finished, usageSeen)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
}

// hpResponsesStream is a Responses API stream of events text deltas, as
// OpenAI sends it: named events, a sequence number on each, the whole
// response in the first and the last.
func hpResponsesStream(events int) []byte {
	var b bytes.Buffer
	seq := 0
	event := func(name, data string) {
		fmt.Fprintf(&b, "event: %s\ndata: {\"type\":%q,\"sequence_number\":%d,%s}\n\n", name, name, seq, data)
		seq++
	}
	response := func(status, usage string) string {
		return fmt.Sprintf(`"response":{"id":"resp_1","object":"response","created_at":1700000000,"status":%q,"model":"bench-model","output":[],"usage":%s}`, status, usage)
	}
	event("response.created", response("in_progress", "null"))
	event("response.in_progress", response("in_progress", "null"))
	event("response.output_item.added", `"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[]}`)
	event("response.content_part.added", `"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}`)
	for i := range events {
		event("response.output_text.delta", fmt.Sprintf(`"item_id":"msg_1","output_index":0,"content_index":0,"delta":" word%d","logprobs":[]`, i))
	}
	event("response.output_text.done", `"item_id":"msg_1","output_index":0,"content_index":0,"text":"...","logprobs":[]`)
	event("response.completed", response("completed", `{"input_tokens":12,"output_tokens":200,"total_tokens":212}`))
	return b.Bytes()
}

// BenchmarkStreamEvents is the pump's per-event work minus the I/O, for
// each API: scan an event, judge it, write it out for the client. The
// ns/event of responses against chat is the cost of the Responses API's
// named, heavier events (issue 15's bench).
func BenchmarkStreamEvents(b *testing.B) {
	for _, tc := range []struct {
		name   string
		proto  protocol
		stream []byte
	}{
		{"chat", protocols[protoChat], hpStream(200)},
		{"responses", protocols[protoResponses], hpResponsesStream(200)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(tc.stream)))
			b.ReportAllocs()
			var out []byte
			events := 0
			for b.Loop() {
				sc := sse.NewScanner(bytes.NewReader(tc.stream))
				events = 0
				terminal := false
				for {
					ev, err := sc.Next()
					if err != nil {
						break
					}
					events++
					info := tc.proto.judgeEvent(ev)
					if !info.valid || info.isError {
						b.Fatalf("event %d: %+v %s", events, info, ev.Data)
					}
					terminal = terminal || info.terminal
					out = appendSSEEvent(out[:0], ev.Name, ev.Data)
				}
				sc.Release()
				if !terminal {
					b.Fatal("the stream's terminal event was not seen")
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
		})
	}
}

// hpCaddy is an in-process Caddy for benchmarks: the stand-in upstream, a
// reverse_proxy site and an arbstr site (startCaddy takes a *testing.T).
type hpCaddy struct {
	rp, arb string // base URLs of the reverse_proxy and arbstr sites
}

// hpProviders is a provider list of n providers at url, rates all
// different, the cheapest one ("cheap") in the middle.
func hpProviders(n int, url string) string {
	var sb strings.Builder
	for i := range n {
		if i == n/2 {
			fmt.Fprintf(&sb, "provider cheap {\n url %s\n models bench-model\n input_rate 1\n output_rate 2\n}\n", url)
			continue
		}
		fmt.Fprintf(&sb, "provider p%04d {\n url %s\n models bench-model other-model\n input_rate %d\n output_rate %d\n}\n",
			i, url, 1000+i*37%997, 2000+i*53%991)
	}
	return sb.String()
}

func hpStartCaddy(b *testing.B) *hpCaddy {
	b.Helper()
	ports := freeport.Ports(b, 4)
	admin, up, rp, arb := ports[0], ports[1], ports[2], ports[3]
	upURL := fmt.Sprintf("http://127.0.0.1:%d", up)
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
	skip_install_trust
	grace_period 1s
	log {
		level ERROR
	}
}
http://127.0.0.1:%d {
	handle /plain/* {
		arbstr_standin
	}
	handle /stream/* {
		arbstr_standin {
			events 200
		}
	}
	handle /stream1/* {
		arbstr_standin {
			events 1
		}
	}
}
http://127.0.0.1:%d {
	reverse_proxy 127.0.0.1:%d
}
http://127.0.0.1:%d {
	handle /plain/* {
		arbstr {
			%s
		}
	}
	handle /stream/* {
		arbstr {
			%s
		}
	}
	handle /stream1/* {
		arbstr {
			%s
		}
	}
	handle /p1000/* {
		arbstr {
			%s
		}
	}
}
`, admin, up, rp, up, arb,
		hpProviders(1, upURL+"/plain/v1"), hpProviders(1, upURL+"/stream/v1"),
		hpProviders(1, upURL+"/stream1/v1"), hpProviders(1000, upURL+"/plain/v1"))
	loadBenchCaddy(b, cfg, up, rp, arb)
	return &hpCaddy{rp: fmt.Sprintf("http://127.0.0.1:%d", rp), arb: fmt.Sprintf("http://127.0.0.1:%d", arb)}
}

// loadBenchCaddy runs a Caddyfile for a benchmark, stops it at the end, and
// waits until Caddy listens on every one of ports.
func loadBenchCaddy(b *testing.B, caddyfile string, ports ...int) {
	b.Helper()
	if err := caddy.Load(adaptCaddyfile(b, caddyfile), true); err != nil {
		b.Fatalf("loading config: %v", err)
	}
	b.Cleanup(func() { _ = caddy.Stop() })
	deadline := time.Now().Add(5 * time.Second)
	for _, port := range ports {
		for {
			conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err == nil {
				conn.Close()
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("caddy did not listen on %d", port)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// hpPost sends one chat request and reads the whole answer, failing on
// anything but a 200 (for arbstr: served by the cheap provider).
func hpPost(b *testing.B, client *http.Client, url string, body []byte, arbstr bool) int {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("POST %s: status %d, err %v", url, resp.StatusCode, err)
	}
	if arbstr && resp.Header.Get(headerProvider) != "cheap" {
		b.Fatalf("POST %s: served by %q, want cheap", url, resp.Header.Get(headerProvider))
	}
	return int(n)
}

// hpCPUTime is the user+system CPU time this process has used so far.
func hpCPUTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func hpBody(stream bool, contentBytes int) []byte {
	content := "Say hello in one short sentence."
	if contentBytes > 0 {
		content = strings.Repeat("Lorem ipsum dolor sit amet. ", contentBytes/28+1)[:contentBytes]
	}
	streamField := ""
	if stream {
		streamField = `"stream":true,`
	}
	return fmt.Appendf(nil, `{"model":"bench-model",%s"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":%q}],"max_tokens":64}`,
		streamField, content)
}

// hpResponsesBody is a streamed Responses API request.
var hpResponsesBody = []byte(`{"model":"bench-model","stream":true,"instructions":"You are a helpful assistant.","input":"Say hello in one short sentence.","max_output_tokens":64}`)

// BenchmarkServeChat is the full path of one chat completion (or Responses
// stream) through Caddy and arbstr to an instant in-process stand-in, next
// to the same request through reverse_proxy: the difference is arbstr's
// cost. (stream200 − its reverse_proxy) / 200 against (responses200 − its
// reverse_proxy) / 200 compares the per-event cost of the two APIs. Requests are sent
// one at a time, so ns/op is the latency; allocs/op counts the whole
// process (client, Caddy, stand-in).
func BenchmarkServeChat(b *testing.B) {
	c := hpStartCaddy(b)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8, DisableCompression: true}}
	b.Cleanup(client.CloseIdleConnections)
	cases := []struct {
		name   string
		path   string
		body   []byte
		arbstr bool
	}{
		{"nonstream/arbstr", c.arb + "/plain/v1/chat/completions", hpBody(false, 0), true},
		{"nonstream/reverse_proxy", c.rp + "/plain/v1/chat/completions", hpBody(false, 0), false},
		{"stream200/arbstr", c.arb + "/stream/v1/chat/completions", hpBody(true, 0), true},
		{"stream200/reverse_proxy", c.rp + "/stream/v1/chat/completions", hpBody(true, 0), false},
		{"responses200/arbstr", c.arb + "/stream/v1/responses", hpResponsesBody, true},
		{"responses200/reverse_proxy", c.rp + "/stream/v1/responses", hpResponsesBody, false},
		{"stream1/arbstr", c.arb + "/stream1/v1/chat/completions", hpBody(true, 0), true},
		{"stream1/reverse_proxy", c.rp + "/stream1/v1/chat/completions", hpBody(true, 0), false},
		{"body2MB/arbstr", c.arb + "/plain/v1/chat/completions", hpBody(false, 2<<20), true},
		{"body2MB/reverse_proxy", c.rp + "/plain/v1/chat/completions", hpBody(false, 2<<20), false},
		{"providers1000/arbstr", c.arb + "/p1000/v1/chat/completions", hpBody(false, 0), true},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			hpPost(b, client, tc.path, tc.body, tc.arbstr) // warm the connections
			b.SetBytes(int64(len(tc.body)))
			b.ReportAllocs()
			cpu0 := hpCPUTime(b)
			for b.Loop() {
				hpPost(b, client, tc.path, tc.body, tc.arbstr)
			}
			// CPU time of the whole process per request: steadier than
			// ns/op when other processes compete for the cores.
			b.ReportMetric(float64(hpCPUTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// TestHotpathStreamReusesUpstreamConnection: after [DONE] the rest of the
// provider's answer (the end of its chunked body, sent a moment later) is
// read, so that its HTTP/1.1 connection is reused by the next stream rather
// than closed (a new TCP and TLS handshake per stream otherwise). A provider
// that keeps its answer open after [DONE] must not hold up the client.
func TestHotpathStreamReusesUpstreamConnection(t *testing.T) {
	var conns atomic.Int64
	var hang atomic.Bool
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		for _, ev := range []string{
			`{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}`,
			`{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`,
			`[DONE]`,
		} {
			fmt.Fprintf(w, "data: %s\n\n", ev)
			w.(http.Flusher).Flush()
		}
		if hang.Load() {
			<-r.Context().Done()
			return
		}
		// The end of the chunked body leaves in its own packet, as it does
		// from a provider whose handler returns after flushing [DONE].
		time.Sleep(time.Millisecond)
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	up.Start()
	t.Cleanup(up.Close)
	tc := startCaddy(t, "arbstr {\n\tprovider a {\n\t\turl "+up.URL+"/v1\n\t}\n}")
	const body = `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	stream := func() string {
		resp := tc.Post("/v1/chat/completions", body)
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, err %v", resp.StatusCode, err)
		}
		return string(b)
	}
	for range 10 {
		if got := stream(); !strings.HasSuffix(got, "data: [DONE]\n\n") {
			t.Fatalf("stream did not end with [DONE]: %q", got)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("10 streams opened %d connections to the provider, want 1 (reused)", n)
	}

	hang.Store(true)
	start := time.Now()
	if got := stream(); !strings.HasSuffix(got, "data: [DONE]\n\n") {
		t.Fatalf("stream did not end with [DONE]: %q", got)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("a provider holding its answer open after [DONE] held up the client for %s", d)
	}
}
