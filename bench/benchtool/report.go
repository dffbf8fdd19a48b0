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
	target string // "ge1", "le1", "ge095" or "" (for information)
	diff   bool   // show a - b, the absolute overhead
	// noRatio: the values may be about zero or negative; a ratio means nothing.
	noRatio bool
}

type reportSection struct {
	title string
	rows  []reportRow
}

func k(group, metric, variant string) figureKey { return figureKey{group, metric, variant} }

func info(r reportRow) reportRow {
	r.noRatio = true
	return r
}

func reportSections() []reportSection {
	vs := func(label, group, metric, unit, target string, diff bool) reportRow {
		return reportRow{label: label, a: k(group, metric, "arbstr"), b: k(group, metric, "rp"), unit: unit, target: target, diff: diff}
	}
	onOff := func(label, metric, unit, target string, diff bool) reportRow {
		return reportRow{label: label, a: k("ledger", metric, "on"), b: k("ledger", metric, "off"), unit: unit, target: target, diff: diff}
	}
	sections := []reportSection{
		{"Non-streaming, 32 connections (baseline: reverse_proxy)", []reportRow{
			vs("throughput", "nonstream", "rps", "req/s", "ge1", false),
			vs("latency p50", "nonstream", "p50_us", "us", "le1", true),
			vs("latency p99", "nonstream", "p99_us", "us", "", true),
			vs("Caddy CPU time per request", "nonstream", "cpu_us", "us", "", true),
			vs("peak RSS of Caddy in the round (VmHWM)", "nonstream", "hwm_kb", "kb_as_mb", "", false),
		}},
		{"The ledger: arbstr with it on vs `ledger off`, alternating rounds in one run, 32 connections (baseline: ledger off)", []reportRow{
			onOff("throughput", "rps", "req/s", "ge095", false),
			onOff("latency p50", "p50_us", "us", "", true),
			onOff("Caddy CPU time per request", "cpu_us", "us", "", true),
			info(onOff("PostgreSQL's CPU time per request (LEDGER=postgres: the server on the same machine)", "db_cpu_us", "us", "", true)),
			onOff("Caddy's and PostgreSQL's CPU time per request", "all_cpu_us", "us", "", true),
		}},
		{"Streaming, 200-event streams one at a time (baseline: reverse_proxy)", []reportRow{
			vs("time to first event", "stream", "ttfb_us", "us", "le1", true),
			vs("time per event after the first", "stream", "per_event_us", "us", "le1", true),
			vs("whole stream, to [DONE]", "stream", "total_us", "us", "", true),
			vs("Caddy CPU time per stream", "stream", "cpu_us", "us", "", true),
		}},
		{"Responses API streams, 200 deltas one at a time (baseline: reverse_proxy)", []reportRow{
			vs("time to first event", "responses", "ttfb_us", "us", "le1", true),
			vs("time per event after the first", "responses", "per_event_us", "us", "le1", true),
			vs("Caddy CPU time per stream", "responses", "cpu_us", "us", "", true),
			{label: "arbstr: a Responses event against a chat event", a: k("responses", "per_event_us", "arbstr"),
				b: k("stream", "per_event_us", "arbstr"), unit: "us", diff: true},
		}},
		{"Request body size, 1 connection, latency p50 (baseline: reverse_proxy)", []reportRow{
			vs("1 KB body", "body_1k", "p50_us", "us", "", true),
			vs("100 KB body", "body_100k", "p50_us", "us", "", true),
			vs("2 MB body", "body_2m", "p50_us", "us", "", true),
			vs("1 KB body: Caddy CPU per request", "body_1k", "cpu_us", "us", "", true),
			vs("100 KB body: Caddy CPU per request", "body_100k", "cpu_us", "us", "", true),
			vs("2 MB body: Caddy CPU per request", "body_2m", "cpu_us", "us", "", true),
		}},
		{"Providers in the config, 1 connection, latency p50 (baseline: arbstr with 1 provider)", nil},
		{"Idle streams held open at once, each variant in a fresh Caddy (baseline: reverse_proxy)", []reportRow{
			info(vs("streams held", "idle", "streams", "n0", "", false)),
			vs("live heap per stream", "idle", "heap_per_stream_b", "b", "", true),
			vs("goroutine stacks per stream", "idle", "stack_per_stream_b", "b", "", true),
			vs("RSS per stream", "idle", "rss_per_stream_b", "b", "", true),
			vs("goroutines per stream", "idle", "goroutines_per_stream", "n", "", false),
			info(vs("heap after closing them, minus before", "idle", "heap_growth_after_kb", "kb", "", false)),
			info(vs("heap after a 2nd open-and-close, minus after the 1st", "idle", "heap_growth_second_kb", "kb", "", false)),
		}},
	}
	// The providers section is filled here, found by its title: an index
	// would silently point at another section once one is added before it.
	providers := slices.IndexFunc(sections, func(s reportSection) bool { return strings.HasPrefix(s.title, "Providers in the config") })
	for _, metric := range []string{"p50_us", "cpu_us"} {
		for _, n := range []string{"10", "100", "1000"} {
			label := n + " providers"
			if metric == "cpu_us" {
				label += ": Caddy CPU per request"
			}
			sections[providers].rows = append(sections[providers].rows, reportRow{
				label: label, a: k("providers_"+n, metric, "arbstr"), b: k("providers_1", metric, "arbstr"),
				unit: "us", diff: true,
			})
		}
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
		switch a := math.Abs(v); {
		case a >= 10000:
			return fmt.Sprintf("%.2f ms", v/1000)
		case a >= 100:
			return fmt.Sprintf("%.0f µs", v)
		case a >= 10:
			return fmt.Sprintf("%.1f µs", v)
		}
		return fmt.Sprintf("%.2f µs", v)
	case "kb_as_mb":
		return fmt.Sprintf("%.1f MB", v/1024)
	case "n0":
		return fmt.Sprintf("%.0f", v)
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
	// The ratio is that of the medians shown beside it; the range is that
	// of the ratios of the rounds, each against the baseline of its round.
	ma, mb := medianOf(a), medianOf(b)
	rs := ratios(a, b)
	ratio, ok := "—", !r.noRatio && mb != 0 && ma/mb >= 0
	if ok {
		ratio = fmt.Sprintf("**%.2f×**", ma/mb)
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
	if ok {
		m := ma / mb
		switch r.target {
		case "ge1":
			target = verdict("≥ 1.00", m >= 1.0)
		case "le1":
			target = verdict("≤ 1.00", m <= 1.0)
		case "ge095":
			target = verdict("≥ 0.95", m >= 0.95)
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
