package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"
)

func runStream(args []string) error {
	fs := flag.NewFlagSet("stream", flag.ExitOnError)
	url := fs.String("url", "", "chat completions or responses URL")
	bodyFile := fs.String("body", "", "file with the streaming request body")
	n := fs.Int("n", 50, "measured streams")
	warmup := fs.Int("warmup", 5, "streams sent first and not measured")
	minEvents := fs.Int("events", 200, "content events each stream must carry at least")
	_ = fs.Parse(args)
	body, err := os.ReadFile(*bodyFile)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4}}
	var ttfbs, perEvent, totals []float64
	events := 0
	for i := 0; i < *warmup+*n; i++ {
		ttfb, total, ev, err := oneStream(client, *url, body)
		if err != nil {
			return fmt.Errorf("stream %d: %w", i, err)
		}
		if ev < *minEvents {
			return fmt.Errorf("stream %d carried %d data events, want at least %d", i, ev, *minEvents)
		}
		if i < *warmup {
			continue
		}
		events = ev
		ttfbs = append(ttfbs, us(ttfb))
		perEvent = append(perEvent, us(total-ttfb)/float64(ev))
		totals = append(totals, us(total))
	}
	fmt.Printf("ttfb_us=%.1f per_event_us=%.3f total_us=%.1f events=%d streams=%d\n",
		median(ttfbs), median(perEvent), median(totals), events, *n)
	return nil
}

// oneStream reads a whole stream. The first-event time is taken when the
// first data line arrives (for arbstr that is also when the response head
// arrives: it commits on the first event). The stream must end with [DONE].
func oneStream(client *http.Client, url string, body []byte) (ttfb, total time.Duration, events int, err error) {
	req, err := newRequest(context.Background(), url, body)
	if err != nil {
		return 0, 0, 0, err
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, 0, 0, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	var last []byte
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, 0, 0, err
		}
		if !bytes.HasPrefix(line, dataPrefix) {
			continue
		}
		if events == 0 {
			ttfb = time.Since(start)
		}
		events++
		last = append(last[:0], line...)
	}
	total = time.Since(start)
	if !completeStreamEnd(last) {
		return 0, 0, 0, fmt.Errorf("stream did not end with [DONE] or response.completed (last event %q)", last)
	}
	return ttfb, total, events, nil
}

// completeStreamEnd reports whether the last data line ends a complete
// stream: chat's [DONE], or the Responses API's response.completed.
func completeStreamEnd(last []byte) bool {
	line := strings.TrimSpace(string(last))
	return line == "data: [DONE]" || strings.HasPrefix(line, `data: {"type":"response.completed"`)
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}
