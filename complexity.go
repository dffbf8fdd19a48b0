package arbstr

import (
	"fmt"
	"math"

	"github.com/arbstr/caddy-arbstr/internal/jsonscan"
)

// ComplexityConfig turns on routing by request complexity (SPEC §14): each
// chat request gets a score from 0 (trivial) to 1 (hard); below Low it may
// go to a local provider, above High it needs a frontier one, in between a
// standard one or above.
type ComplexityConfig struct {
	// Low is the score under which tier local suffices. Default: 0.3.
	Low *float64 `json:"low,omitempty"`

	// High is the score over which tier frontier is needed. Default: 0.7.
	High *float64 `json:"high,omitempty"`

	// Weights set how much each signal of a request counts.
	Weights *ComplexityWeights `json:"weights,omitempty"`
}

// ComplexityWeights are the weights of the scorer's signals, each in [0, 1]:
// the score a signal gives alone at full strength. Signals combine like
// independent evidence, score = 1 − Π(1 − weight × signal), so two strong
// signals score higher than either alone and no sum passes 1. A weight of 0
// turns its signal off; a field left out keeps its default.
type ComplexityWeights struct {
	// Prompt: the size of all message text, 0 up to 50 tokens (about 200
	// characters), 1 from 8000 (log scale). Default: 0.55.
	Prompt *float64 `json:"prompt,omitempty"`

	// Code: in the last user message, fenced code blocks (3 points each),
	// distinct code keywords and language names (1 each), braces and
	// semicolons (up to 2); 1 from 4 points. Default: 0.65.
	Code *float64 `json:"code,omitempty"`

	// Reasoning: distinct reasoning and composition words (prove, analyze,
	// trade-off, design, step-by-step, summarize, …) in the last user
	// message, 1 from three. Default: 0.6.
	Reasoning *float64 `json:"reasoning,omitempty"`

	// Depth: the number of messages, 0 for one, 1 from nine. Default: 0.4.
	Depth *float64 `json:"depth,omitempty"`

	// Output: the requested max_tokens (or max_completion_tokens), 0 up to
	// 256, 1 from 16000 (log scale). Default: 0.5.
	Output *float64 `json:"output,omitempty"`
}

// Defaults of the complexity block; docs/routing.md lists them.
const (
	defaultComplexityLow  = 0.3
	defaultComplexityHigh = 0.7
)

// complexitySignalNames are the signals in scorer order, as the Caddyfile
// and JSON name them.
var complexitySignalNames = [...]string{"prompt", "code", "reasoning", "depth", "output"}

var defaultComplexityWeights = [len(complexitySignalNames)]float64{0.55, 0.65, 0.6, 0.4, 0.5}

// fields lists the weight fields in scorer order.
func (w *ComplexityWeights) fields() [len(complexitySignalNames)]**float64 {
	return [...]**float64{&w.Prompt, &w.Code, &w.Reasoning, &w.Depth, &w.Output}
}

// scorer is the provisioned complexity block.
type scorer struct {
	low, high float64
	weights   [len(complexitySignalNames)]float64
}

func newScorer(c *ComplexityConfig) *scorer {
	if c == nil {
		return nil
	}
	s := &scorer{low: defaultComplexityLow, high: defaultComplexityHigh, weights: defaultComplexityWeights}
	if c.Low != nil {
		s.low = *c.Low
	}
	if c.High != nil {
		s.high = *c.High
	}
	if c.Weights != nil {
		for i, f := range c.Weights.fields() {
			if *f != nil {
				s.weights[i] = **f
			}
		}
	}
	return s
}

func (c *ComplexityConfig) validate() error {
	if c == nil {
		return nil
	}
	low, high := defaultComplexityLow, defaultComplexityHigh
	if c.Low != nil {
		low = *c.Low
	}
	if c.High != nil {
		high = *c.High
	}
	if !inUnit(low) || !inUnit(high) || low > high {
		return fmt.Errorf("arbstr: complexity: low (%v) and high (%v) must be numbers in [0, 1] with low ≤ high", low, high)
	}
	if c.Weights != nil {
		for i, f := range c.Weights.fields() {
			if *f != nil && !inUnit(**f) {
				return fmt.Errorf("arbstr: complexity: weight %s must be a number in [0, 1], not %v", complexitySignalNames[i], **f)
			}
		}
	}
	return nil
}

func inUnit(v float64) bool { return v >= 0 && v <= 1 } // false for NaN

// complexitySignals are a request's signals, each in [0, 1], in the order
// of complexitySignalNames.
type complexitySignals [len(complexitySignalNames)]float64

// score combines signals: 1 − Π(1 − wᵢ·sᵢ).
func (s *scorer) score(sig complexitySignals) float64 {
	rest := 1.0
	for i, v := range sig {
		rest *= 1 - s.weights[i]*v
	}
	return clamp01(1 - rest)
}

// measure reads the signals of a request from its inspected facts: sizes
// and counts found by inspectRequest, and one pass over the raw JSON of the
// last user message (no decoding, no allocation).
func measure(f *requestFacts) complexitySignals {
	var sig complexitySignals
	sig[0] = logRamp(float64(f.textBytes)/4, 50, 8000)
	if f.lastUser.Present() {
		t := scanText(f.body[f.lastUser.Start:f.lastUser.End])
		codeEvidence := 3*float64((t.fences+1)/2) + float64(t.codeWords) + min(2, float64(t.symbols)/3)
		sig[1] = clamp01(codeEvidence / 4)
		sig[2] = clamp01(float64(t.reasoningWords) / 3)
	}
	sig[3] = clamp01(float64(f.messages-1) / 8)
	sig[4] = logRamp(float64(f.maxTokens), 256, 16000)
	return sig
}

// logRamp is 0 up to lo, 1 from hi, and logarithmic in between.
func logRamp(v, lo, hi float64) float64 {
	if v <= lo {
		return 0
	}
	return clamp01(math.Log(v/lo) / math.Log(hi/lo))
}

func clamp01(v float64) float64 {
	return min(1, max(0, v))
}

// textCounts is what scanText finds in a text.
type textCounts struct {
	fences         int // ``` markers
	codeWords      int // distinct code keywords
	reasoningWords int // distinct reasoning words
	symbols        int // '{' and ';'
}

// scanText counts code and reasoning evidence in the raw JSON of a message
// content: a string, or an array of parts whose "text" strings count.
func scanText(b []byte) textCounts {
	var sc textScanner
	if len(b) > 0 && b[0] == '[' {
		_ = jsonscan.Elements(b, jsonscan.Span{Kind: jsonscan.Array, Start: 0, End: len(b)}, func(part jsonscan.Span) error {
			if part.Kind == jsonscan.Object {
				_ = jsonscan.Members(b, part, func(key []byte, v jsonscan.Span) error {
					if string(key) == "text" && v.Kind == jsonscan.String {
						sc.scan(b[v.Start:v.End])
					}
					return nil
				})
			}
			return nil
		})
	} else {
		sc.scan(b)
	}
	sc.c.codeWords = popcount(sc.seenCode)
	sc.c.reasoningWords = popcount(sc.seenReasoning)
	return sc.c
}

// textScanner finds evidence in raw JSON strings in one pass. Words are runs
// of ASCII letters and inner hyphens, matched case-insensitively against the
// vocabularies through a precomputed hash table; escape sequences separate
// words.
type textScanner struct {
	c                       textCounts
	seenCode, seenReasoning uint64
}

// word records a finished word of n letters with hash h.
func (sc *textScanner) word(h uint64, n int) {
	if n < minWordLen || n > maxWordLen {
		return
	}
	if e, ok := vocabulary.lookup(h); ok {
		if e.reasoning {
			sc.seenReasoning |= 1 << e.index
		} else {
			sc.seenCode |= 1 << e.index
		}
	}
}

// scan reads one raw JSON string. The hot loop keeps its state in locals.
func (sc *textScanner) scan(b []byte) {
	h, n := uint64(fnvOffset), 0
	fences, symbols := 0, 0
	for i := 0; i < len(b); i++ {
		ch := b[i]
		if lower := ch | 0x20; 'a' <= lower && lower <= 'z' || ch == '-' && n > 0 {
			h = (h ^ uint64(lower)) * fnvPrime
			n++
			continue
		}
		if n > 0 {
			sc.word(h, n)
			h, n = fnvOffset, 0
		}
		switch ch {
		case '\\':
			i++ // the escaped character; \uXXXX leaves hex digits, which are no word
		case '`':
			if i+2 < len(b) && b[i+1] == '`' && b[i+2] == '`' {
				fences++
				i += 2
			}
		case '{', ';':
			symbols++
		}
	}
	if n > 0 {
		sc.word(h, n)
	}
	sc.c.fences += fences
	sc.c.symbols += symbols
}

func popcount(v uint64) int {
	n := 0
	for ; v != 0; v &= v - 1 {
		n++
	}
	return n
}

const (
	fnvOffset  = 14695981039346656037
	fnvPrime   = 1099511628211
	minWordLen = 2
	maxWordLen = 16
)

// The vocabularies of the code and reasoning signals (lower case; at most 64
// each). Words, not phrases: "step-by-step" and "trade-off" are one word.
var (
	codeVocabulary = []string{
		"func", "def", "class", "return", "import", "struct", "const", "var", "void",
		"println", "printf", "async", "await", "lambda", "python", "javascript",
		"typescript", "golang", "rust", "java", "sql", "regex", "function", "functions",
		"method", "compile", "compiler", "bug", "traceback", "stacktrace", "exception",
		"segfault", "null", "nil", "json", "yaml", "dockerfile", "bash", "script",
		"code", "snippet", "refactor", "api", "endpoint", "query", "schema", "kubernetes",
		"goroutine", "mutex", "unittest", "pytest", "npm", "cargo", "makefile",
	}
	reasoningVocabulary = []string{
		"prove", "proof", "derive", "derivation", "analyze", "analyse", "analysis",
		"compare", "comparison", "tradeoff", "tradeoffs", "trade-off", "trade-offs",
		"evaluate", "design", "architect", "architecture", "optimize", "optimise",
		"optimal", "debug", "why", "explain", "reasoning", "step-by-step", "rigorous",
		"rigorously", "theorem", "lemma", "algorithm", "asymptotic", "strategy",
		"critique", "implications", "justify", "consequences", "scalable", "scalability",
		"distributed", "concurrency", "concurrent", "invariant", "invariants", "formally",
		"bottleneck", "constraints", "hypothesis", "counterargument", "pros", "cons",
		"edge-cases", "security", "threat", "migrate", "migration", "consistency",
		"fault-tolerant", "latency", "throughput", "benchmark", "summarize", "summarise",
		"essay", "blog",
	}
)

// vocabEntry is one word of a vocabulary.
type vocabEntry struct {
	hash      uint64
	index     uint8
	reasoning bool
	used      bool
}

// vocabTable is an open-addressing hash table keyed by the FNV-1a hash of a
// lower-cased word: one multiply per letter while scanning and a probe or
// two per word, instead of a map lookup with a string key. Distinct
// vocabulary words have distinct 64-bit hashes (checked when it is built).
type vocabTable [512]vocabEntry

var vocabulary = buildVocabulary()

func buildVocabulary() *vocabTable {
	t := new(vocabTable)
	add := func(words []string, reasoning bool) {
		if len(words) > 64 {
			panic("arbstr: a complexity vocabulary has more than 64 words")
		}
		for i, w := range words {
			h := uint64(fnvOffset)
			for j := 0; j < len(w); j++ {
				h = (h ^ uint64(w[j])) * fnvPrime
			}
			if _, dup := t.lookup(h); dup {
				panic("arbstr: duplicate complexity vocabulary word " + w)
			}
			for k := h; ; k++ {
				if e := &t[k%uint64(len(t))]; !e.used {
					*e = vocabEntry{hash: h, index: uint8(i), reasoning: reasoning, used: true}
					break
				}
			}
		}
	}
	add(codeVocabulary, false)
	add(reasoningVocabulary, true)
	return t
}

func (t *vocabTable) lookup(h uint64) (vocabEntry, bool) {
	for k := h; ; k++ {
		e := t[k%uint64(len(t))]
		if !e.used {
			return vocabEntry{}, false
		}
		if e.hash == h {
			return e, true
		}
	}
}
