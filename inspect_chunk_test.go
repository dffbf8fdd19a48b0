package arbstr

import (
	"fmt"
	"testing"

	"github.com/arbstr/caddy-arbstr/internal/jsonscan"
)

// inspectChunkTwoPass is inspectChunk as it was before it read the choices
// in the validating pass: the baseline of BenchmarkInspectChunk and the
// reference of FuzzInspectChunk.
func inspectChunkTwoPass(data []byte) chunkInfo {
	var info chunkInfo
	var choices, usageSpan jsonscan.Span
	_, err := jsonscan.TopLevelObject(data, func(key []byte, v jsonscan.Span) error {
		switch string(key) {
		case "error":
			info.isError = v.Kind != jsonscan.Null
		case "choices":
			choices = v
		case "usage":
			usageSpan = v
		}
		return nil
	})
	if err != nil {
		return chunkInfo{}
	}
	info.valid = true
	info.noChoices = true
	if choices.Kind == jsonscan.Array {
		_ = jsonscan.Elements(data, choices, func(c jsonscan.Span) error {
			info.noChoices = false
			if c.Kind == jsonscan.Object {
				_ = jsonscan.Members(data, c, func(key []byte, v jsonscan.Span) error {
					if string(key) == "finish_reason" && v.Kind == jsonscan.String {
						info.finished = true
					}
					return nil
				})
			}
			return nil
		})
	}
	if usageSpan.Kind == jsonscan.Object {
		info.usage = usageFrom(data, usageSpan)
		info.usageOnly = info.noChoices
	}
	return info
}

// benchChunks are the chunks of a stream as providers send them: mostly
// content, then the finish and include_usage chunks.
var benchChunks = map[string]string{
	"content":   `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"bench-model","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":" word17"},"logprobs":null,"finish_reason":null}]}`,
	"finish":    `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"bench-model","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}`,
	"usage":     `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"bench-model","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":200,"total_tokens":212}}`,
	"tool call": `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"bench-model","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\": \"Paris\", \"unit\": \"c\"}"}}]},"logprobs":null,"finish_reason":null}]}`,
}

// BenchmarkInspectChunk compares inspectChunk with the two-pass baseline,
// per chunk kind, in the same run.
func BenchmarkInspectChunk(b *testing.B) {
	for _, kind := range []string{"content", "tool call", "finish", "usage"} {
		data := []byte(benchChunks[kind])
		for _, impl := range []struct {
			name string
			fn   func([]byte) chunkInfo
		}{{"two-pass", inspectChunkTwoPass}, {"one-pass", inspectChunk}} {
			b.Run(fmt.Sprintf("%s/%s", kind, impl.name), func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				b.ReportAllocs()
				for b.Loop() {
					if !impl.fn(data).valid {
						b.Fatal("not valid")
					}
				}
			})
		}
	}
}

// FuzzInspectChunk: the one-pass inspectChunk finds exactly what the two
// passes found (validity, error, finish_reason, usage, no choices) for any
// event data.
func FuzzInspectChunk(f *testing.F) {
	for _, s := range benchChunks {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		stChunk("a"), stFinish, stUsage, stInBand, ``, `[1]`, `{"choices":[`, stFinish + "x",
		`{"choices":[{"index":0,"finish_reason":null},{"index":1,"finish_reason":"length"}]}`,
		`{"choices":[{"finish_reason":"stop"}],"choices":[]}`,
		`{"choices":[],"choices":[{"finish_reason":"stop"}]}`,
		`{"choices":{"finish_reason":"stop"}}`,
		`{"cho\u0069ces":[{"finish_\u0072eason":"stop"}]}`,
		`{"choices":[[{"finish_reason":"stop"}],{"delta":{"finish_reason":"stop"}}]}`,
		`{"choices":[1, {}, null]}`, `{"choices":[ ]}`, `{"choices":null,"usage":{"prompt_tokens":1}}`,
		`{"choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2},"error":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := inspectChunk(data), inspectChunkTwoPass(data); got != want {
			t.Fatalf("inspectChunk(%q) = %+v, the two passes found %+v", data, got, want)
		}
	})
}
