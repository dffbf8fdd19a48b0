package arbstr

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// cfgBenchBody is a chat request of about size bytes: a system prompt and
// alternating turns of ~1 KB, with a content-parts message and the kind of
// unknown members real clients send.
func cfgBenchBody(size int) []byte {
	var sb strings.Builder
	sb.WriteString(`{"model":"gpt-4o","stream":true,"temperature":0.70,"max_tokens":512,` +
		`"tools":[{"type":"function","function":{"name":"lookup","parameters":{"type":"object","properties":{"q":{"type":"string"}}}}}],` +
		`"messages":[{"role":"system","content":"You are a careful assistant. Answer briefly."}`)
	turn := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit \u00e9\\n ", 16)
	for i := 0; sb.Len() < size-300; i++ {
		switch i % 3 {
		case 0:
			fmt.Fprintf(&sb, `,{"role":"user","content":"%s"}`, turn)
		case 1:
			fmt.Fprintf(&sb, `,{"role":"assistant","content":null,"tool_calls":[{"id":"c%d","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"x\"}"}}]}`, i)
			fmt.Fprintf(&sb, `,{"role":"tool","tool_call_id":"c%d","content":"%s"}`, i, turn)
		default:
			fmt.Fprintf(&sb, `,{"role":"user","content":[{"type":"text","text":"%s"},{"type":"image_url","image_url":{"url":"https://x/i.png"}}]}`, turn)
		}
	}
	sb.WriteString(`,{"role":"user","content":"Please debug this function."}]}`)
	return []byte(sb.String())
}

var cfgBenchSizes = []struct {
	name string
	size int
}{{"1KB", 1 << 10}, {"100KB", 100 << 10}, {"2MB", 2 << 20}}

func BenchmarkChoose(b *testing.B) {
	body := cfgBenchBody(4 << 10)
	facts, apiErr := inspectRequest(body)
	if apiErr != nil {
		b.Fatal(apiErr.message)
	}
	in := selectionInput{model: facts.model, lastUserText: facts.lastUserText(),
		inTokens: facts.textBytes / 4, outTokens: facts.maxTokens}
	policies := []*policy{
		newPolicy(&Policy{Name: "fast", Keywords: []string{"urgent", "quick"}}),
		newPolicy(&Policy{Name: "code", AllowedModels: []string{"gpt-4o"}, MaxOutputRate: 40000, Keywords: []string{"debug", "function"}}),
	}
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("providers=%d", n), func(b *testing.B) {
			providers := make([]*provider, n)
			for i := range providers {
				cfg := Provider{Name: fmt.Sprintf("p%04d", i), URL: fmt.Sprintf("http://bench-%d.invalid/v1", i),
					InputRate: float64(1000 + i*37%5000), OutputRate: float64(2000 + i*53%60000), BaseFee: float64(i % 3)}
				switch i % 4 {
				case 0:
					cfg.Models = []string{"gpt-4o", "gpt-4o-mini"}
				case 1:
					cfg.Model = map[string]string{"gpt-4o": "openai/gpt-4o"}
				case 2:
					cfg.Models = []string{"claude-sonnet"}
				}
				providers[i] = cfgProv(b, cfg)
			}
			reg := loadHealthRegistry(providers, newBreakerSettings(nil))
			b.Cleanup(reg.release)
			b.Run("lazy", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					pl, apiErr := choose(providers, policies, in, reg.snapshot(), time.Now())
					if apiErr != nil || pl.next() == nil {
						b.Fatal(apiErr)
					}
				}
			})
			b.Run("sort-all-baseline", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, apiErr := chooseSortingAll(providers, policies, in, reg.snapshot(), time.Now()); apiErr != nil {
						b.Fatal(apiErr.message)
					}
				}
			})
		})
	}
}

func BenchmarkInspectRequest(b *testing.B) {
	for _, s := range cfgBenchSizes {
		b.Run(s.name, func(b *testing.B) {
			body := cfgBenchBody(s.size)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, apiErr := inspectRequest(body); apiErr != nil {
					b.Fatal(apiErr.message)
				}
			}
		})
	}
}

func BenchmarkUpstreamBody(b *testing.B) {
	for _, s := range cfgBenchSizes {
		b.Run(s.name, func(b *testing.B) {
			body := cfgBenchBody(s.size)
			facts, apiErr := inspectRequest(body)
			if apiErr != nil {
				b.Fatal(apiErr.message)
			}
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if out := upstreamBody(body, facts, "openai/gpt-4o", true); len(out) <= len(body) {
					b.Fatal("no edit made")
				}
			}
		})
	}
}
