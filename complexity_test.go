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
