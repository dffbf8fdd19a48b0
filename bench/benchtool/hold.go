package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// memSnapshot is the memory of the Caddy process at one moment, taken right
// after a garbage collection.
type memSnapshot struct {
	heapLive   uint64
	stackInuse uint64
	goroutines int
	rssKB      int
}

type prober struct {
	admin string
	pid   int
	http  *http.Client
}

func (p *prober) snapshot() (memSnapshot, error) {
	var s memSnapshot
	// The heap profile endpoint with gc=1 runs a collection first, so that
	// the figures below count live memory, not garbage. Twice: what sits in
	// a sync.Pool survives one collection (in its victim cache).
	for range 2 {
		if err := p.get("/debug/pprof/heap?gc=1", io.Discard); err != nil {
			return s, err
		}
	}
	var vars struct {
		Memstats struct {
			HeapAlloc  uint64 // after a collection: the live heap
			StackInuse uint64
		} `json:"memstats"`
	}
	var buf bytes.Buffer
	if err := p.get("/debug/vars", &buf); err != nil {
		return s, err
	}
	if err := json.Unmarshal(buf.Bytes(), &vars); err != nil {
		return s, fmt.Errorf("/debug/vars: %w", err)
	}
	s.heapLive, s.stackInuse = vars.Memstats.HeapAlloc, vars.Memstats.StackInuse
	buf.Reset()
	if err := p.get("/debug/pprof/goroutine?debug=1", &buf); err != nil {
		return s, err
	}
	first, _, _ := strings.Cut(buf.String(), "\n")
	if _, err := fmt.Sscanf(first, "goroutine profile: total %d", &s.goroutines); err != nil {
		return s, fmt.Errorf("goroutine profile header %q: %w", first, err)
	}
	rss, err := procStatusKB(p.pid, "VmRSS")
	s.rssKB = rss
	return s, err
}

func (p *prober) saveHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := p.get("/debug/pprof/heap", f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (p *prober) get(path string, w io.Writer) error {
	resp, err := p.http.Get(p.admin + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

// procStatusKB reads one "Name:   123 kB" line of /proc/PID/status.
func procStatusKB(pid int, name string) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, name+":"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", name, pid)
}

func runHold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	url := fs.String("url", "", "chat completions URL of a stream that stalls after its first events")
	bodyFile := fs.String("body", "", "file with the streaming request body")
	n := fs.Int("n", 1000, "streams held open at once")
	warmup := fs.Int("warmup", 50, "streams opened and closed first, not measured")
	admin := fs.String("admin", "", "Caddy admin base URL, e.g. http://127.0.0.1:2019")
	pid := fs.Int("pid", 0, "Caddy process id")
	settle := fs.Duration("settle", time.Second, "wait after the last stream opened before measuring")
	heapProfile := fs.String("heapprofile", "", "file to save Caddy's heap profile in while the streams are held")
	_ = fs.Parse(args)
	body, err := os.ReadFile(*bodyFile)
	if err != nil {
		return err
	}
	p := &prober{admin: strings.TrimRight(*admin, "/"), pid: *pid, http: &http.Client{Timeout: 30 * time.Second}}
	// One connection per stream: an HTTP/1.1 stream occupies its connection.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true, DisableKeepAlives: true, MaxIdleConnsPerHost: -1}}

	if *warmup > 0 {
		w, err := openStreams(client, *url, body, *warmup)
		if err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		w.close()
	}
	base, err := p.snapshot()
	if err != nil {
		return err
	}
	held, after, err := holdCycle(p, client, *url, body, *n, *settle, base.goroutines, *heapProfile)
	if err != nil {
		return err
	}
	// A second cycle: what the first one left behind (runtime caches, pools)
	// must not grow again, or memory leaks per stream.
	_, after2, err := holdCycle(p, client, *url, body, *n, *settle, base.goroutines, "")
	if err != nil {
		return err
	}
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(*n) }
	fmt.Printf("streams=%d\n", *n)
	fmt.Printf("heap_base_kb=%d\nheap_held_kb=%d\nheap_after_kb=%d\n", base.heapLive>>10, held.heapLive>>10, after.heapLive>>10)
	fmt.Printf("stack_base_kb=%d\nstack_held_kb=%d\nstack_after_kb=%d\n", base.stackInuse>>10, held.stackInuse>>10, after.stackInuse>>10)
	fmt.Printf("rss_base_kb=%d\nrss_held_kb=%d\nrss_after_kb=%d\n", base.rssKB, held.rssKB, after.rssKB)
	fmt.Printf("goroutines_base=%d\ngoroutines_held=%d\ngoroutines_after=%d\n", base.goroutines, held.goroutines, after.goroutines)
	fmt.Printf("heap_per_stream_b=%.0f\n", per(held.heapLive, base.heapLive))
	fmt.Printf("rss_per_stream_b=%.0f\n", per(uint64(held.rssKB)<<10, uint64(base.rssKB)<<10))
	fmt.Printf("stack_per_stream_b=%.0f\n", per(held.stackInuse, base.stackInuse))
	fmt.Printf("goroutines_per_stream=%.2f\n", float64(held.goroutines-base.goroutines)/float64(*n))
	fmt.Printf("heap_growth_after_kb=%d\n", (int64(after.heapLive)-int64(base.heapLive))/1024)
	fmt.Printf("heap_growth_second_kb=%d\n", (int64(after2.heapLive)-int64(after.heapLive))/1024)
	fmt.Printf("goroutines_after_second=%d\n", after2.goroutines)
	return nil
}

// holdCycle opens n streams, measures while they are held, closes them and
// measures again once the process is back to its goroutines before.
func holdCycle(p *prober, client *http.Client, url string, body []byte, n int, settle time.Duration, baseGoroutines int, heapProfile string) (held, after memSnapshot, err error) {
	hs, err := openStreams(client, url, body, n)
	if err != nil {
		return held, after, err
	}
	time.Sleep(settle) // a benchmark pause, not synchronisation: lets buffers reach steady state
	held, err = p.snapshot()
	if err == nil && heapProfile != "" {
		err = p.saveHeapProfile(heapProfile)
	}
	if err != nil {
		hs.close()
		return held, after, err
	}
	select {
	case err := <-hs.errs:
		hs.close()
		return held, after, fmt.Errorf("a held stream ended early: %w", err)
	default:
	}
	hs.close()
	after, err = waitGoroutines(p, baseGoroutines, 15*time.Second)
	return held, after, err
}

// heldStreams are streams open at once, each read by its own goroutine.
type heldStreams struct {
	cancel context.CancelFunc
	done   sync.WaitGroup
	errs   chan error
}

// close ends the streams and waits until their readers are gone.
func (h *heldStreams) close() {
	h.cancel()
	h.done.Wait()
}

// openStreams opens n streams and returns once each has delivered its
// first data event.
func openStreams(client *http.Client, url string, body []byte, n int) (*heldStreams, error) {
	ctx, cancel := context.WithCancel(context.Background())
	h := &heldStreams{cancel: cancel, errs: make(chan error, n)}
	var ready sync.WaitGroup
	sem := make(chan struct{}, 64) // bounded opening rate, not bounded holding
	for range n {
		ready.Add(1)
		h.done.Add(1)
		go func() {
			defer h.done.Done()
			sem <- struct{}{}
			if err := holdStream(ctx, client, url, body, func() { <-sem; ready.Done() }); err != nil {
				h.errs <- err
			}
		}()
	}
	allReady := make(chan struct{})
	go func() { ready.Wait(); close(allReady) }()
	select {
	case <-allReady:
		select {
		case err := <-h.errs: // a failed stream also counts as ready
			h.close()
			return nil, fmt.Errorf("opening streams: %w", err)
		default:
			return h, nil
		}
	case err := <-h.errs:
		h.close()
		return nil, fmt.Errorf("opening streams: %w", err)
	case <-time.After(60 * time.Second):
		h.close()
		return nil, errors.New("the streams did not all deliver their first event within 60s")
	}
}

// holdStream opens a stream, calls opened once its first data event
// arrived (arbstr has committed it by then), then reads until ctx ends.
func holdStream(ctx context.Context, client *http.Client, url string, body []byte, opened func()) error {
	once := sync.OnceFunc(opened)
	defer once() // never leave the opener waiting, even on failure
	req, err := newRequest(ctx, url, body)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if ctx.Err() != nil {
				return nil // closed by us: the expected end
			}
			return fmt.Errorf("stream ended while held: %v", err)
		}
		if bytes.HasPrefix(line, dataPrefix) {
			once()
		}
	}
}

// waitGoroutines polls until the process is back to about its goroutine
// count before the streams (what the streams used is released), or the
// time is up, and returns the snapshot then. Not getting back is reported
// by the figures, not as an error.
func waitGoroutines(p *prober, base int, limit time.Duration) (memSnapshot, error) {
	deadline := time.Now().Add(limit)
	for {
		s, err := p.snapshot()
		if err != nil || s.goroutines <= base+10 || time.Now().After(deadline) {
			return s, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}
