package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
)

func sdkContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func sdkParams(model, prompt string) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:    model,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
	}
}

// TestE2ESDKStreamAccumulator: the SDK's accumulator assembles a stream,
// skipping arbstr's cost comment line.
func TestE2ESDKStreamAccumulator(t *testing.T) {
	stream := e2eArb.client("healthy").Chat.Completions.NewStreaming(sdkContext(t), sdkParams("e2e-sdk-acc", "Say hello"))
	acc := openai.ChatCompletionAccumulator{}
	var finished string
	events := 0
	for stream.Next() {
		events++
		acc.AddChunk(stream.Current())
		if content, ok := acc.JustFinishedContent(); ok {
			finished = content
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	const want = "Hello from steady, the provider that answers."
	if got := acc.Choices[0].Message.Content; got != want || finished != want {
		t.Fatalf("accumulated %q, just finished %q, want %q", got, finished, want)
	}
	if events < 3 {
		t.Errorf("%d events: the answer was not streamed", events)
	}
}

// TestE2ERawStreamEndings: a stream ends with the cost comment (which the
// SDKs skip) and [DONE], also when the provider left [DONE] out, and a
// malformed event is never forwarded.
func TestE2ERawStreamEndings(t *testing.T) {
	ending := regexp.MustCompile(`\n: x-arbstr-cost-sats: \d+\.\d\d\n\ndata: \[DONE\]\n\n$`)
	for _, scenario := range []string{"healthy", "no_done", "malformed"} {
		resp, raw := e2eArb.post(t, scenario, `{"model":"e2e-raw-`+scenario+`","stream":true,"messages":[{"role":"user","content":"Say hello"}]}`)
		if resp.StatusCode != http.StatusOK || !ending.Match(raw) {
			t.Errorf("%s: status %d, want 200 and the cost comment and [DONE] at the end:\n%s", scenario, resp.StatusCode, raw)
		}
		for _, line := range strings.Split(string(raw), "\n") {
			if data, ok := strings.CutPrefix(line, "data: {"); ok && !json.Valid([]byte("{"+data)) {
				t.Errorf("%s: forwarded an invalid event: %s", scenario, line)
			}
		}
	}
}

// TestE2ESDKStreamCutAfterCommit: a stream cut after commit ends in an
// error from the SDK, with the partial text never reported as complete.
func TestE2ESDKStreamCutAfterCommit(t *testing.T) {
	stream := e2eArb.client("cut").Chat.Completions.NewStreaming(sdkContext(t), sdkParams("e2e-sdk-acc-cut", "Say hello"))
	acc := openai.ChatCompletionAccumulator{}
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	if code := streamErrorCode(stream.Err()); code != "stream_broken" {
		t.Fatalf("stream error %v, want code stream_broken", stream.Err())
	}
	if _, ok := acc.JustFinishedContent(); ok {
		t.Error("the accumulator reports the content as finished")
	}
	if len(acc.Choices) == 0 || acc.Choices[0].Message.Content == "" || acc.Choices[0].FinishReason != "" {
		t.Errorf("want partial content without finish_reason, got %+v", acc.Choices)
	}
}

// TestE2ERawBrokenStreamIsCut: a broken stream is cut rather than ended, so
// that even a client that ignores error events gets a read error.
func TestE2ERawBrokenStreamIsCut(t *testing.T) {
	resp, err := http.Post(e2eArb.baseURL("cut")+"/chat/completions", "application/json",
		strings.NewReader(`{"model":"e2e-raw-cut","stream":true,"messages":[{"role":"user","content":"Say hello"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || err == nil {
		t.Fatalf("status %d, read error %v: want 200 and a read error", resp.StatusCode, err)
	}
	if !regexp.MustCompile(`data: \{"error":\{.*"code":"stream_broken"`).Match(body) || bytes.Contains(body, []byte("[DONE]")) {
		t.Errorf("want an error event and no [DONE]:\n%s", body)
	}
}

var sdkWeatherTool = openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
	Name:        "get_weather",
	Description: openai.String("Current weather of a city"),
	Strict:      openai.Bool(true),
	Parameters: shared.FunctionParameters{
		"type": "object",
		"properties": map[string]any{
			"city": map[string]any{"type": "string"},
			"unit": map[string]any{"type": "string", "enum": []string{"c", "f"}},
		},
		"required":             []string{"city"},
		"additionalProperties": false,
	},
})

// sdkSent decodes the JSON body the SDK sent.
func sdkSent(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("SDK body %q: %v", body, err)
	}
	return m
}

// TestE2ESDKToolsPassThrough: tools reach the provider as the SDK sent them,
// with the provider's key, and the tool call comes back parsed, plain and
// streamed.
func TestE2ESDKToolsPassThrough(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		rec := &sdkRecorder{}
		e2eCapture.reset()
		params := sdkParams("e2e-tools", "Weather in Paris?")
		params.Tools = []openai.ChatCompletionToolUnionParam{sdkWeatherTool}
		params.ParallelToolCalls = openai.Bool(false)
		completion, err := e2eArb.client("capture", rec.middleware()).Chat.Completions.New(sdkContext(t), params)
		if err != nil {
			t.Fatal(err)
		}
		got := e2eCapture.got()
		_, bodies := rec.seen()
		if len(got) != 1 || len(bodies) != 1 {
			t.Fatalf("%d upstream requests, %d SDK requests", len(got), len(bodies))
		}
		if !bytes.Equal(got[0].raw, bodies[0]) {
			t.Errorf("the provider got\n%s\nthe SDK sent\n%s", got[0].raw, bodies[0])
		}
		if auth := got[0].header.Get("Authorization"); auth != "Bearer e2e-provider-key" {
			t.Errorf("Authorization to the provider: %q, want the provider's key", auth)
		}
		calls := completion.Choices[0].Message.ToolCalls
		if completion.Choices[0].FinishReason != "tool_calls" || len(calls) != 1 ||
			calls[0].Function.Name != "get_weather" || calls[0].Function.Arguments != captureToolArguments {
			t.Errorf("tool calls %+v, finish %q", calls, completion.Choices[0].FinishReason)
		}
	})
	t.Run("stream", func(t *testing.T) {
		rec := &sdkRecorder{}
		e2eCapture.reset()
		params := sdkParams("e2e-tools-stream", "Weather in Paris?")
		params.Tools = []openai.ChatCompletionToolUnionParam{sdkWeatherTool}
		stream := e2eArb.client("capture", rec.middleware()).Chat.Completions.NewStreaming(sdkContext(t), params)
		acc := openai.ChatCompletionAccumulator{}
		var finished openai.FinishedChatCompletionToolCall
		var usageChunks int
		for stream.Next() {
			chunk := stream.Current()
			acc.AddChunk(chunk)
			if chunk.JSON.Usage.Valid() && chunk.Usage.TotalTokens > 0 {
				usageChunks++
			}
			if tc, ok := acc.JustFinishedToolCall(); ok {
				finished = tc
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if finished.Name != "get_weather" || finished.Arguments != captureToolArguments {
			t.Errorf("finished tool call %+v", finished)
		}
		if calls := acc.Choices[0].Message.ToolCalls; len(calls) != 1 || calls[0].Function.Arguments != captureToolArguments {
			t.Errorf("accumulated tool calls %+v", calls)
		}
		_, bodies := rec.seen()
		sent := sdkSent(t, bodies[0])
		if _, ok := sent["stream_options"]; ok {
			t.Fatalf("the SDK asked for usage itself: %s", bodies[0])
		}
		// arbstr asked for usage on the client's behalf and kept the usage
		// chunk to itself.
		sent["stream_options"] = map[string]any{"include_usage": true}
		if up := e2eCapture.got()[0].body; !reflect.DeepEqual(up, sent) {
			t.Errorf("the provider got\n%v\nwant\n%v", up, sent)
		}
		if usageChunks != 0 {
			t.Errorf("%d usage chunk(s) reached a client that did not ask for usage", usageChunks)
		}
	})
}

// TestE2ESDKResponseFormatPassThrough: response_format reaches the provider
// as sent, plain and streamed, and the JSON answer arrives whole.
func TestE2ESDKResponseFormatPassThrough(t *testing.T) {
	format := openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONSchema: &shared.ResponseFormatJSONSchemaParam{
		JSONSchema: shared.ResponseFormatJSONSchemaJSONSchemaParam{
			Name:   "weather",
			Strict: openai.Bool(true),
			Schema: map[string]any{
				"type":                 "object",
				"properties":           map[string]any{"city": map[string]any{"type": "string"}, "temperature_c": map[string]any{"type": "number"}},
				"required":             []string{"city", "temperature_c"},
				"additionalProperties": false,
			},
		},
	}}
	for _, stream := range []bool{false, true} {
		rec := &sdkRecorder{}
		e2eCapture.reset()
		params := sdkParams("e2e-json", "Weather in Paris as JSON")
		params.ResponseFormat = format
		client := e2eArb.client("capture", rec.middleware())
		var content string
		if stream {
			s := client.Chat.Completions.NewStreaming(sdkContext(t), params)
			acc := openai.ChatCompletionAccumulator{}
			for s.Next() {
				acc.AddChunk(s.Current())
			}
			if err := s.Err(); err != nil {
				t.Fatal(err)
			}
			content = acc.Choices[0].Message.Content
		} else {
			completion, err := client.Chat.Completions.New(sdkContext(t), params)
			if err != nil {
				t.Fatal(err)
			}
			content = completion.Choices[0].Message.Content
		}
		_, bodies := rec.seen()
		up := e2eCapture.got()[0]
		if !reflect.DeepEqual(up.body["response_format"], sdkSent(t, bodies[0])["response_format"]) {
			t.Errorf("stream=%v: response_format to the provider %v", stream, up.body["response_format"])
		}
		if content != captureJSONAnswer {
			t.Errorf("stream=%v: answer %q", stream, content)
		}
	}
}

// sdkDefaultRetries sends one plain request with the SDK's default retries
// (2) and reports the status of each HTTP request the SDK made, the error
// and the requests each stand-in got.
func sdkDefaultRetries(t *testing.T, scenario, model string, standins ...string) ([]int, *openai.Error, map[string]int, time.Duration) {
	t.Helper()
	rec := &sdkRecorder{}
	client := e2eArb.client(scenario, rec.middleware(), option.WithMaxRetries(2))
	e2eArb.resetCalls(t, standins...)
	start := time.Now()
	_, err := client.Chat.Completions.New(sdkContext(t), sdkParams(model, "Say hello"))
	elapsed := time.Since(start)
	apierr := apiErrorOf(err)
	if apierr == nil {
		t.Fatalf("want an *openai.Error, got %v", err)
	}
	statuses, _ := rec.seen()
	return statuses, apierr, e2eArb.callsOf(t, standins...), elapsed
}

// TestE2ESDKNoRetryMultiplication: once arbstr has worked through its
// providers, the SDK's own retries add no upstream calls.
func TestE2ESDKNoRetryMultiplication(t *testing.T) {
	cases := []struct {
		name, scenario string
		standins       []string
		statuses       []int
		calls          map[string]int
	}{
		{"502 all failed", "all_fail", []string{"fail_503", "fail_502"}, []int{502}, map[string]int{"fail_503": 2, "fail_502": 2}},
		{"504 deadline", "deadline", []string{"silent"}, []int{504}, map[string]int{"silent": 1}},
		// The only provider's 429 is a 429 with Retry-After: 1 to the SDK,
		// which waits it out; each SDK try costs one upstream call.
		{"429 only provider", "rate_limit_only", []string{"limited_only"}, []int{429, 429, 429}, map[string]int{"limited_only": 3}},
		{"400 relayed", "bad_request", []string{"bad_request", "steady"}, []int{400}, map[string]int{"bad_request": 1, "steady": 0}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			statuses, apierr, calls, _ := sdkDefaultRetries(t, c.scenario, "e2e-retries-"+c.scenario, c.standins...)
			if !reflect.DeepEqual(statuses, c.statuses) {
				t.Errorf("SDK requests got %v, want %v", statuses, c.statuses)
			}
			if apierr.StatusCode != c.statuses[len(c.statuses)-1] {
				t.Errorf("error status %d", apierr.StatusCode)
			}
			if !reflect.DeepEqual(calls, c.calls) {
				t.Errorf("requests each stand-in got: %v, want %v", calls, c.calls)
			}
		})
	}
	t.Run("broken stream", func(t *testing.T) {
		rec := &sdkRecorder{}
		e2eArb.resetCalls(t, "cut", "steady")
		client := e2eArb.client("cut", rec.middleware(), option.WithMaxRetries(2))
		stream := client.Chat.Completions.NewStreaming(sdkContext(t), sdkParams("e2e-retries-cut-stream", "Say hello"))
		for stream.Next() {
		}
		if code := streamErrorCode(stream.Err()); code != "stream_broken" {
			t.Fatalf("stream error %v", stream.Err())
		}
		if statuses, _ := rec.seen(); !reflect.DeepEqual(statuses, []int{200}) {
			t.Errorf("SDK requests got %v", statuses)
		}
		if calls := e2eArb.callsOf(t, "cut", "steady"); !reflect.DeepEqual(calls, map[string]int{"cut": 1, "steady": 0}) {
			t.Errorf("requests each stand-in got: %v", calls)
		}
	})
	t.Run("503 breakers open", func(t *testing.T) {
		// 503 + Retry-After: 1; the SDK sleeps 1s; by then the circuit is
		// half open and the retry is its one probe, which fails: a 502 with
		// x-should-retry: false ends it. Two SDK requests, one upstream call.
		const model = "e2e-retries-breaker"
		e2eArb.openBreaker(t, model)
		statuses, apierr, calls, elapsed := sdkDefaultRetries(t, "breaker", model, "fragile")
		if !reflect.DeepEqual(statuses, []int{503, 502}) || apierr.StatusCode != 502 {
			t.Errorf("SDK requests got %v, error %d; want [503 502], 502", statuses, apierr.StatusCode)
		}
		if !reflect.DeepEqual(calls, map[string]int{"fragile": 1}) {
			t.Errorf("requests each stand-in got: %v", calls)
		}
		if elapsed < 900*time.Millisecond {
			t.Errorf("the SDK waited %s, want about Retry-After (1s)", elapsed)
		}
	})
}

// TestE2ESDKModelsList: the SDK lists the router's models.
func TestE2ESDKModelsList(t *testing.T) {
	page, err := e2eArb.client("catalog").Models.List(sdkContext(t))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range page.Data {
		ids = append(ids, m.ID)
	}
	if !reflect.DeepEqual(ids, []string{"e2e-model"}) {
		t.Errorf("models %v", ids)
	}
}
