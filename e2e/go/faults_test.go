package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/ssestream"
)

// faultExpect is what the SDK user must see for one scenario and mode
// (e2e/faults.json explains the fields).
type faultExpect struct {
	Status      int            `json:"status"`
	Provider    string         `json:"provider"`
	Retries     string         `json:"retries"`
	Content     string         `json:"content"`
	Error       string         `json:"error"`
	ShouldRetry string         `json:"should_retry"`
	RetryAfter  bool           `json:"retry_after"`
	Calls       map[string]int `json:"calls"`
	MinMs       *int           `json:"min_ms"`
	MaxMs       *int           `json:"max_ms"`
	// Continued names the prefill provider that finished a broken stream.
	Continued string `json:"continued"`
}

type faultScenario struct {
	Name        string            `json:"name"`
	Fault       string            `json:"fault"`
	Path        string            `json:"path"`
	Model       string            `json:"model"`
	Headers     map[string]string `json:"headers"`
	OpenBreaker bool              `json:"open_breaker"`
	Plain       faultExpect       `json:"plain"`
	Stream      faultExpect       `json:"stream"`
}

func loadFaultMatrix(t *testing.T) []faultScenario {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "faults.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct{ Scenarios []faultScenario }
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Scenarios) == 0 {
		t.Fatal("no scenarios in faults.json")
	}
	return m.Scenarios
}

// faultSeen is what one SDK call showed its user.
type faultSeen struct {
	status      int
	header      http.Header
	content     *string // the answer, when the SDK returned one
	apiErr      *openai.Error
	streamErr   error
	partial     string
	finish      string
	elapsed     time.Duration
	otherFailed error
	ids         map[string]bool // the chunk ids of a stream
}

func runFault(t *testing.T, sc faultScenario, mode string) faultSeen {
	t.Helper()
	model := sc.Model
	if model == "" {
		model = "e2e-" + sc.Name + "-" + mode
	}
	opts := []option.RequestOption{}
	for k, v := range sc.Headers {
		opts = append(opts, option.WithHeader(k, v))
	}
	var resp *http.Response
	opts = append(opts, option.WithResponseInto(&resp))
	client := e2eArb.client(sc.Path)
	params := openai.ChatCompletionNewParams{
		Model:    model,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var seen faultSeen
	start := time.Now()
	if mode == "plain" {
		completion, err := client.Chat.Completions.New(ctx, params, opts...)
		seen.elapsed = time.Since(start)
		if err != nil {
			seen.apiErr = apiErrorOf(err)
			seen.otherFailed = err
		} else {
			seen.content = &completion.Choices[0].Message.Content
			seen.finish = completion.Choices[0].FinishReason
		}
	} else {
		stream := client.Chat.Completions.NewStreaming(ctx, params, opts...)
		acc := openai.ChatCompletionAccumulator{}
		seen.ids = map[string]bool{}
		for stream.Next() {
			acc.AddChunk(stream.Current())
			seen.ids[stream.Current().ID] = true
		}
		seen.elapsed = time.Since(start)
		err := stream.Err()
		switch apierr := apiErrorOf(err); {
		case apierr != nil:
			seen.apiErr, seen.otherFailed = apierr, err
		case err != nil:
			seen.streamErr = err
			if len(acc.Choices) > 0 {
				seen.partial = acc.Choices[0].Message.Content
			}
		case len(acc.Choices) == 0:
			seen.otherFailed = errors.New("the stream ended without a choice")
		default:
			seen.content = &acc.Choices[0].Message.Content
			seen.finish = acc.Choices[0].FinishReason
		}
	}
	switch {
	case seen.apiErr != nil:
		seen.status, seen.header = seen.apiErr.StatusCode, seen.apiErr.Response.Header
	case resp != nil:
		seen.status, seen.header = resp.StatusCode, resp.Header
	default:
		t.Fatalf("no HTTP response: %v", seen.otherFailed)
	}
	return seen
}

// streamErrorCode is the error code of an in-band error event the SDK
// raised, or "".
func streamErrorCode(err error) string {
	var se *ssestream.StreamError
	if !errors.As(err, &se) {
		return ""
	}
	var ev struct {
		Error struct{ Code string } `json:"error"`
	}
	_ = json.Unmarshal(se.Event.Data, &ev)
	return ev.Error.Code
}

// TestE2EFaultMatrix sends every scenario of e2e/faults.json through
// openai-go, plain and streamed, with the SDK's retries off.
func TestE2EFaultMatrix(t *testing.T) {
	for _, sc := range loadFaultMatrix(t) {
		for _, mode := range []string{"plain", "stream"} {
			want := sc.Plain
			if mode == "stream" {
				want = sc.Stream
			}
			t.Run(sc.Name+"/"+mode, func(t *testing.T) {
				standins := make([]string, 0, len(want.Calls))
				for name := range want.Calls {
					standins = append(standins, name)
				}
				slices.Sort(standins)
				if sc.OpenBreaker {
					model := sc.Model
					if model == "" {
						model = "e2e-" + sc.Name + "-" + mode
					}
					e2eArb.openBreaker(t, model)
				}
				e2eArb.resetCalls(t, standins...)

				seen := runFault(t, sc, mode)

				if seen.status != want.Status {
					t.Fatalf("status %d, want %d (error: %v)", seen.status, want.Status, seen.otherFailed)
				}
				checkHeader(t, seen.header, "x-arbstr-provider", want.Provider)
				checkHeader(t, seen.header, "x-arbstr-retries", want.Retries)
				if id := seen.header.Get("x-arbstr-request-id"); !strings.HasPrefix(id, "arb-") {
					t.Errorf("x-arbstr-request-id %q", id)
				}
				switch {
				case want.Status != http.StatusOK:
					// Refused before anything was streamed: an *openai.Error
					// with the status and arbstr's (or the provider's) code.
					if seen.apiErr == nil {
						t.Fatalf("want an *openai.Error, got %v", seen.otherFailed)
					}
					if seen.apiErr.Code != want.Error {
						t.Errorf("error code %q, want %q", seen.apiErr.Code, want.Error)
					}
					checkHeader(t, seen.header, "x-should-retry", want.ShouldRetry)
					if want.RetryAfter {
						if n, err := strconv.Atoi(seen.header.Get("Retry-After")); err != nil || n < 1 {
							t.Errorf("Retry-After %q, want whole seconds ≥ 1", seen.header.Get("Retry-After"))
						}
					}
				case want.Error != "":
					// The stream broke after commit: the SDK must report an
					// error, never a truncated answer as a complete one.
					if seen.content != nil {
						t.Fatalf("the SDK returned a truncated answer as complete: %q", *seen.content)
					}
					if code := streamErrorCode(seen.streamErr); code != want.Error {
						t.Errorf("stream error %v (code %q), want code %q", seen.streamErr, code, want.Error)
					}
				default:
					if seen.content == nil {
						t.Fatalf("no answer: %v %v", seen.otherFailed, seen.streamErr)
					}
					if *seen.content != want.Content {
						t.Errorf("answer %q, want %q", *seen.content, want.Content)
					}
					if seen.finish != "stop" {
						t.Errorf("finish_reason %q", seen.finish)
					}
					if mode == "stream" {
						checkHeader(t, seen.header, "x-arbstr-streaming", "true")
					}
					if want.Continued != "" {
						// One answer: every chunk has the first stream's id.
						if len(seen.ids) != 1 {
							t.Errorf("chunk ids %v, want one", seen.ids)
						}
					}
				}
				if want.MinMs != nil && seen.elapsed < time.Duration(*want.MinMs)*time.Millisecond {
					t.Errorf("took %s, want ≥ %dms", seen.elapsed, *want.MinMs)
				}
				if want.MaxMs != nil && seen.elapsed > time.Duration(*want.MaxMs)*time.Millisecond {
					t.Errorf("took %s, want ≤ %dms", seen.elapsed, *want.MaxMs)
				}
				if got := e2eArb.callsOf(t, standins...); !reflect.DeepEqual(got, want.Calls) {
					t.Errorf("requests each stand-in got: %v, want %v", got, want.Calls)
				}
			})
		}
	}
}

func checkHeader(t *testing.T, h http.Header, name, want string) {
	t.Helper()
	if got := h.Get(name); got != want {
		t.Errorf("%s: %q, want %q", name, got, want)
	}
}
