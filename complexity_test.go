package arbstr

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
)

// labelledPrompt is one entry of testdata/complexity/prompts.json.
type labelledPrompt struct {
	Label     string            `json:"label"` // low, medium or high
	Messages  []json.RawMessage `json:"messages"`
	MaxTokens int               `json:"max_tokens,omitempty"`
}

func (p labelledPrompt) body() []byte {
	req := map[string]any{"model": "m", "messages": p.Messages}
	if p.MaxTokens > 0 {
		req["max_tokens"] = p.MaxTokens
	}
	b, _ := json.Marshal(req)
	return b
}

func scoreBody(t testing.TB, s *scorer, body []byte) float64 {
	t.Helper()
	facts, apiErr := inspectRequest(body)
	if apiErr != nil {
		t.Fatalf("inspectRequest: %v", apiErr)
	}
	return s.score(measure(facts))
}

var labelTier = map[string]tier{"low": tierLocal, "medium": tierStandard, "high": tierFrontier}

// TestComplexityLabelledPrompts checks that the default weights and
// thresholds put the labelled prompts in their tier: at least 90% of them,
// and none more than one tier off.
func TestComplexityLabelledPrompts(t *testing.T) {
	raw, err := os.ReadFile("testdata/complexity/prompts.json")
	if err != nil {
		t.Fatal(err)
	}
	var prompts []labelledPrompt
	if err := json.Unmarshal(raw, &prompts); err != nil {
		t.Fatal(err)
	}
	if len(prompts) < 30 {
		t.Fatalf("only %d labelled prompts; the set should have at least 30", len(prompts))
	}
	s := newScorer(&ComplexityConfig{})
	right := 0
	for i, p := range prompts {
		want, ok := labelTier[p.Label]
		if !ok {
			t.Fatalf("prompt %d: label %q is not low, medium or high", i, p.Label)
		}
		score := scoreBody(t, s, p.body())
		got := tierFor(score, s.low, s.high)
		mark := "ok"
		if got == want {
			right++
		} else {
			mark = "MISS"
			if got-want > 1 || want-got > 1 {
				t.Errorf("prompt %d (%s) scored %.2f: tier %s, two tiers off", i, p.Label, score, got)
			}
		}
		t.Logf("%-4s %2d %-6s %.2f %s %v", mark, i, p.Label, score, got, measureOf(t, p.body()))
	}
	accuracy := float64(right) / float64(len(prompts))
	t.Logf("accuracy: %d/%d = %.0f%%", right, len(prompts), 100*accuracy)
	if accuracy < 0.9 {
		t.Errorf("the default weights classify %.0f%% of the labelled prompts right; want ≥ 90%%", 100*accuracy)
	}
}

func measureOf(t testing.TB, body []byte) string {
	facts, _ := inspectRequest(body)
	sig := measure(facts)
	parts := make([]string, len(sig))
	for i, v := range sig {
		parts[i] = fmt.Sprintf("%s=%.2f", complexitySignalNames[i], v)
	}
	return strings.Join(parts, " ")
}

// complexityBody is a request of about size bytes: a system prompt and a
// user message of prose with some code and reasoning words.
func complexityBody(size int) []byte {
	const para = "Please explain why this function is slow and compare it with a version that uses a map; " +
		"the code is below, written in Go: func f(xs []int) int { return len(xs); } and it is called often. "
	text := strings.Repeat(para, max(1, size/len(para)))
	b, _ := json.Marshal(map[string]any{"model": "m", "max_tokens": 1000, "messages": []map[string]string{
		{"role": "system", "content": "You are a helpful assistant."},
		{"role": "user", "content": text},
	}})
	return b
}

// BenchmarkComplexity measures the scorer on an inspected request (what
// serveChat adds to a request when a complexity block is set): it should
// take under 5µs for a typical 1 KB request and grow linearly with the text.
func BenchmarkComplexity(b *testing.B) {
	s := newScorer(&ComplexityConfig{})
	for _, size := range []int{1 << 10, 10 << 10, 100 << 10} {
		body := complexityBody(size)
		facts, apiErr := inspectRequest(body)
		if apiErr != nil {
			b.Fatal(apiErr)
		}
		b.Run(fmt.Sprintf("%dKB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			var sink float64
			for b.Loop() {
				sink += s.score(measure(facts))
			}
			if sink < 0 {
				b.Fatal(sink)
			}
		})
	}
}

// TestComplexityScanAllocatesNothing: the scorer adds no garbage per request.
func TestComplexityScanAllocatesNothing(t *testing.T) {
	s := newScorer(&ComplexityConfig{})
	facts, _ := inspectRequest(complexityBody(4 << 10))
	if n := testing.AllocsPerRun(100, func() { s.score(measure(facts)) }); n != 0 {
		t.Errorf("scoring allocates %v times per request, want 0", n)
	}
}

func TestComplexityScanText(t *testing.T) {
	cases := []struct {
		name, raw string
		want      textCounts
	}{
		{"plain prose", `"What is the capital of France?"`, textCounts{}},
		{"case-insensitive words, each counted once", `"Explain WHY and why, then Analyze"`, textCounts{reasoningWords: 3}},
		{"hyphenated words", `"a trade-off, step-by-step"`, textCounts{reasoningWords: 2}},
		{"escape sequences separate words", `"ok\nwhy\tdesign\u00e9prove"`, textCounts{reasoningWords: 3}},
		{"an escape does not glue words: no 'nfunc'", `"x\nfunc"`, textCounts{codeWords: 1}},
		{"fences and symbols", "\"```go\\nfunc f() { return; }\\n```\"", textCounts{fences: 2, codeWords: 2, symbols: 2}},
		{"content parts", `[{"type":"text","text":"prove it"},{"type":"text","text":"in Python"}]`, textCounts{reasoningWords: 1, codeWords: 1}},
		{"overlong words are no keywords", `"explainexplainexplainexplain"`, textCounts{}},
	}
	for _, tc := range cases {
		if got := scanText([]byte(tc.raw)); got != tc.want {
			t.Errorf("%s: scanText(%s) = %+v, want %+v", tc.name, tc.raw, got, tc.want)
		}
	}
}

func TestComplexityWeightsChangeTheScore(t *testing.T) {
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"Write a Python function to parse JSON."}]}`)
	zero, full := 0.0, 1.0
	def := scoreBody(t, newScorer(&ComplexityConfig{}), body)
	off := scoreBody(t, newScorer(&ComplexityConfig{Weights: &ComplexityWeights{Code: &zero}}), body)
	max := scoreBody(t, newScorer(&ComplexityConfig{Weights: &ComplexityWeights{Code: &full}}), body)
	if !(off == 0 && def > 0 && max > def && max <= 1) {
		t.Errorf("code weight 0, default, 1: scores %.2f, %.2f, %.2f; want 0 < default < max ≤ 1", off, def, max)
	}
}
