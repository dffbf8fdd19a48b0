package main

import (
	"bufio"
	"flag"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// figureKey names one measured series: a group of the run (nonstream,
// body_1k, providers_10, idle...), a metric and the variant measured.
type figureKey struct{ group, metric, variant string }

// reportRow compares series a against its baseline b, round by round.
type reportRow struct {
	label  string
	a, b   figureKey
	unit   string // how values are shown: req/s, us, kb_as_mb, b, n
	target string // "ge1", "le1" or "" (for information)
	diff   bool   // show a - b, the absolute overhead
}

type reportSection struct {
	title string
	rows  []reportRow
}

func k(group, metric, variant string) figureKey { return figureKey{group, metric, variant} }

func reportSections() []reportSection {
	vs := func(label, group, metric, unit, target string, diff bool) reportRow {
		return reportRow{label, k(group, metric, "arbstr"), k(group, metric, "rp"), unit, target, diff}
	}
	sections := []reportSection{
		{"Non-streaming, 32 connections (baseline: reverse_proxy)", []reportRow{
			vs("throughput", "nonstream", "rps", "req/s", "ge1", false),
			vs("latency p50", "nonstream", "p50_us", "us", "le1", true),
			vs("latency p99", "nonstream", "p99_us", "us", "", true),
			vs("peak RSS of Caddy in the round (VmHWM)", "nonstream", "hwm_kb", "kb_as_mb", "", false),
		}},
		{"Streaming, 200-event streams one at a time (baseline: reverse_proxy)", []reportRow{
			vs("time to first event", "stream", "ttfb_us", "us", "le1", true),
			vs("time per event", "stream", "per_event_us", "us", "le1", true),
		}},
		{"Request body size, 1 connection, latency p50 (baseline: reverse_proxy)", []reportRow{
			vs("1 KB body", "body_1k", "p50_us", "us", "", true),
			vs("100 KB body", "body_100k", "p50_us", "us", "", true),
			vs("2 MB body", "body_2m", "p50_us", "us", "", true),
		}},
		{"Providers in the config, 1 connection, latency p50 (baseline: arbstr with 1 provider)", nil},
		{"1000 idle streams held open (baseline: reverse_proxy)", []reportRow{
			vs("heap per stream", "idle", "heap_per_stream_b", "b", "", true),
			vs("goroutine stacks per stream", "idle", "stack_per_stream_b", "b", "", true),
			vs("RSS per stream", "idle", "rss_per_stream_b", "b", "", true),
			vs("goroutines per stream", "idle", "goroutines_per_stream", "n", "", false),
			vs("heap after closing them, minus before", "idle", "heap_growth_after_kb", "kb", "", false),
		}},
	}
	for _, n := range []string{"10", "100", "1000"} {
		sections[3].rows = append(sections[3].rows, reportRow{
			label: n + " providers", a: k("providers_"+n, "p50_us", "arbstr"), b: k("providers_1", "p50_us", "arbstr"),
			unit: "us", diff: true,
		})
	}
	return sections
}

// figures maps a series to its values by round.
type figures map[figureKey]map[int]float64

func readRaw(path string) (figures, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := figures{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if len(fields) != 5 {
			return nil, fmt.Errorf("%s:%d: want 'group metric variant round value'", path, line)
		}
		round, err1 := strconv.Atoi(fields[3])
		v, err2 := strconv.ParseFloat(fields[4], 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%s:%d: bad round or value", path, line)
		}
		key := k(fields[0], fields[1], fields[2])
		if out[key] == nil {
			out[key] = map[int]float64{}
		}
		out[key][round] = v
	}
	return out, sc.Err()
}

func medianOf(m map[int]float64) float64 {
	v := make([]float64, 0, len(m))
	for _, x := range m {
		v = append(v, x)
	}
	return median(v)
}

// ratios pairs the rounds that measured both series.
func ratios(a, b map[int]float64) []float64 {
	var out []float64
	for r, av := range a {
		if bv, ok := b[r]; ok && bv != 0 {
			out = append(out, av/bv)
		}
	}
	slices.Sort(out)
	return out
}

func formatValue(v float64, unit string) string {
	switch unit {
	case "req/s":
		return fmt.Sprintf("%.0f req/s", v)
	case "us":
		if math.Abs(v) >= 10000 {
			return fmt.Sprintf("%.2f ms", v/1000)
		}
		return fmt.Sprintf("%.0f µs", v)
	case "kb_as_mb":
		return fmt.Sprintf("%.1f MB", v/1024)
	case "kb":
		return fmt.Sprintf("%.0f KB", v)
	case "b":
		if math.Abs(v) >= 10240 {
			return fmt.Sprintf("%.1f KB", v/1024)
		}
		return fmt.Sprintf("%.0f B", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func runReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	raw := fs.String("raw", "", "file of 'group metric variant round value' lines")
	_ = fs.Parse(args)
	figs, err := readRaw(*raw)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	for _, s := range reportSections() {
		var lines []string
		for _, r := range s.rows {
			if line, ok := r.render(figs); ok {
				lines = append(lines, line)
			}
		}
		if len(lines) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s\n\n", s.title)
		fmt.Fprintln(w, "| figure | arbstr | baseline | ratio (rounds) | overhead | target |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|---|")
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	}
	return nil
}

func (r reportRow) render(figs figures) (string, bool) {
	a, b := figs[r.a], figs[r.b]
	if len(a) == 0 || len(b) == 0 {
		return "", false
	}
	ma, mb := medianOf(a), medianOf(b)
	rs := ratios(a, b)
	ratio := "—"
	if len(rs) > 0 {
		ratio = fmt.Sprintf("**%.2f×**", median(rs))
		if len(rs) > 1 {
			ratio += fmt.Sprintf(" (%.2f–%.2f)", rs[0], rs[len(rs)-1])
		}
	}
	overhead := ""
	if r.diff {
		overhead = formatValue(ma-mb, r.unit)
		if ma-mb > 0 {
			overhead = "+" + overhead
		}
	}
	target := ""
	if len(rs) > 0 {
		m := median(rs)
		switch r.target {
		case "ge1":
			target = verdict("≥ 1.00", m >= 1.0)
		case "le1":
			target = verdict("≤ 1.00", m <= 1.0)
		}
	}
	return fmt.Sprintf("| %s | %s | %s | %s | %s | %s |", r.label,
		formatValue(ma, r.unit), formatValue(mb, r.unit), ratio, overhead, target), true
}

func verdict(target string, met bool) string {
	if met {
		return target + " met"
	}
	return target + " **missed**"
}
