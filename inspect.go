package arbstr

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/arbstr/caddy-arbstr/internal/jsonscan"
)

// requestFacts is what arbstr needs to know about a request, found in one
// pass over its body without decoding it. Each protocol fills what its API
// has; the rest stays zero.
type requestFacts struct {
	model          string
	modelSpan      jsonscan.Span
	stream         bool
	clientUsage    bool // the client asked for stream_options.include_usage: true
	injectUsage    bool // a chat stream without include_usage: arbstr asks for usage
	streamOptions  jsonscan.Span
	maxTokens      int
	noOutput       bool          // the API produces no output tokens (embeddings)
	lastUser       jsonscan.Span // content of the last user message
	body           []byte
	textBytes      int           // bytes of message text, for the input token estimate
	messages       int           // number of messages, for the complexity score
	object         jsonscan.Span // the top-level object
	includeUsageAt jsonscan.Span // stream_options.include_usage, when present
}

// expectedOutput is the output tokens a request may produce: what it asks
// for, else fallback, and none for an API without output.
func (f *requestFacts) expectedOutput(fallback int) int {
	switch {
	case f.noOutput:
		return 0
	case f.maxTokens > 0:
		return f.maxTokens
	}
	return fallback
}

// inspectBody reads the members of a request body that every API shares —
// model and stream — and hands the others named in keys to member. keys
// are also the names refused in look-alike spellings (refuseLookalikeKey).
// Its errors are ready to send to the client.
func inspectBody(body []byte, keys []string, member func(key string, v jsonscan.Span)) (*requestFacts, *apiError) {
	f := &requestFacts{body: body}
	var stream jsonscan.Span
	var lookalike error
	obj, err := jsonscan.TopLevelObject(body, func(key []byte, v jsonscan.Span) error {
		if err := refuseLookalikeKey(key, keys); err != nil {
			lookalike = err
			return err
		}
		switch string(key) {
		case "model":
			f.modelSpan = v
		case "stream":
			stream = v
		default:
			member(string(key), v)
		}
		return nil
	})
	switch {
	case lookalike != nil:
		return nil, errInvalidRequest("", "%v", lookalike)
	case err != nil:
		return nil, errInvalidRequest("", "the request body is not valid JSON: %v", err)
	}
	f.object = obj
	if f.modelSpan.Kind != jsonscan.String {
		return nil, errInvalidRequest("model", "'model' is required and must be a string")
	}
	if err := json.Unmarshal(body[f.modelSpan.Start:f.modelSpan.End], &f.model); err != nil || f.model == "" {
		return nil, errInvalidRequest("model", "'model' must be a non-empty string")
	}
	if len(f.model) > maxModelName {
		return nil, errInvalidRequest("model", "'model' is %d bytes long; model names are at most %d", len(f.model), maxModelName)
	}
	switch stream.Kind {
	case jsonscan.Invalid, jsonscan.Null:
	case jsonscan.Bool:
		f.stream = body[stream.Start] == 't'
	default:
		return nil, errInvalidRequest("stream", "'stream' must be a boolean")
	}
	return f, nil
}

// positiveInt is the value of a JSON number member that is a positive
// integer, else 0.
func positiveInt(body []byte, v jsonscan.Span) int {
	if v.Kind != jsonscan.Number {
		return 0
	}
	if n, err := strconv.Atoi(string(body[v.Start:v.End])); err == nil && n > 0 {
		return n
	}
	return 0
}

// chatKeys are the keys of a chat completion arbstr reads, at the top level
// or inside stream_options.
var chatKeys = []string{"model", "stream", "messages", "stream_options", "max_tokens", "max_completion_tokens", "include_usage"}

// inspectRequest validates a chat completion body and extracts its facts.
// Its errors are ready to send to the client.
func inspectRequest(body []byte) (*requestFacts, *apiError) {
	var messages, maxTokens, maxCompletion, streamOptions jsonscan.Span
	f, apiErr := inspectBody(body, chatKeys, func(key string, v jsonscan.Span) {
		switch key {
		case "messages":
			messages = v
		case "stream_options":
			streamOptions = v
		case "max_tokens":
			maxTokens = v
		case "max_completion_tokens":
			maxCompletion = v
		}
	})
	if apiErr != nil {
		return nil, apiErr
	}
	f.streamOptions = streamOptions
	if messages.Kind != jsonscan.Array {
		return nil, errInvalidRequest("messages", "'messages' is required and must be an array")
	}
	if apiErr := f.inspectStreamOptions(body); apiErr != nil {
		return nil, apiErr
	}
	f.injectUsage = f.stream && !f.clientUsage
	for _, t := range []jsonscan.Span{maxTokens, maxCompletion} {
		if n := positiveInt(body, t); n > 0 {
			f.maxTokens = n
		}
	}
	if apiErr := f.inspectMessages(body, messages); apiErr != nil {
		return nil, apiErr
	}
	return f, nil
}

// refuseLookalikeKey refuses "MODEL", "ſtream" (U+017F), "max_to\u212Aens"
// (the Kelvin sign) and the like: providers written in Go match JSON keys
// under Unicode case folding, so they could act on a key arbstr does not
// read, and serve (and bill) another model than the one arbstr routed. key
// is decoded (escapes resolved) by the scanner.
func refuseLookalikeKey(key []byte, keys []string) error {
	for _, name := range keys {
		// A letter folding to an ASCII one is at most 3 bytes long (K, U+212A).
		if len(key) < len(name) || len(key) > 3*len(name) {
			continue
		}
		if string(key) != name && strings.EqualFold(string(key), name) {
			return fmt.Errorf("the key %q is not %q but reads as it to some providers (case or Unicode look-alike); send %q", key, name, name)
		}
	}
	return nil
}

// maxModelName bounds the model name: it is logged, echoed in errors and
// compared against the config, and no real model name comes close.
const maxModelName = 256

func (f *requestFacts) inspectStreamOptions(body []byte) *apiError {
	switch f.streamOptions.Kind {
	case jsonscan.Invalid, jsonscan.Null:
		return nil
	case jsonscan.Object:
	default:
		return errInvalidRequest("stream_options", "'stream_options' must be an object")
	}
	var lookalike error
	err := jsonscan.Members(body, f.streamOptions, func(key []byte, v jsonscan.Span) error {
		if err := refuseLookalikeKey(key, chatKeys); err != nil {
			lookalike = err
			return err
		}
		if string(key) == "include_usage" {
			f.includeUsageAt = v
			f.clientUsage = v.Kind == jsonscan.Bool && body[v.Start] == 't'
		}
		return nil
	})
	if lookalike != nil {
		return errInvalidRequest("stream_options", "%v", lookalike)
	}
	return errOrNil(err)
}

func errOrNil(err error) *apiError {
	if err != nil {
		return errInvalidRequest("", "the request body is not valid JSON: %v", err)
	}
	return nil
}

// inspectMessages counts message text and finds the last user message.
func (f *requestFacts) inspectMessages(body []byte, messages jsonscan.Span) *apiError {
	var lastUser jsonscan.Span
	err := jsonscan.Elements(body, messages, func(msg jsonscan.Span) error {
		if msg.Kind != jsonscan.Object {
			return nil
		}
		f.messages++
		var role, content jsonscan.Span
		if err := jsonscan.Members(body, msg, func(key []byte, v jsonscan.Span) error {
			switch string(key) {
			case "role":
				role = v
			case "content":
				content = v
			}
			return nil
		}); err != nil {
			return err
		}
		f.textBytes += textBytes(body, content)
		if role.Kind == jsonscan.String && string(body[role.Start:role.End]) == `"user"` {
			lastUser = content
		}
		return nil
	})
	if err != nil {
		return errOrNil(err)
	}
	f.lastUser = lastUser
	return nil
}

// lastUserText is the lower-cased text of the last user message. It is
// decoded only when a keyword policy needs it: for a large message that is
// most of the cost of inspecting a request.
func (f *requestFacts) lastUserText() string {
	if !f.lastUser.Present() {
		return ""
	}
	return strings.ToLower(contentText(f.body, f.lastUser))
}

// textBytes is the size of the text in a message content: a string, or an
// array of parts whose "text" members count.
func textBytes(body []byte, content jsonscan.Span) int {
	switch content.Kind {
	case jsonscan.String:
		return content.End - content.Start - 2
	case jsonscan.Array:
		n := 0
		_ = jsonscan.Elements(body, content, func(part jsonscan.Span) error {
			if part.Kind == jsonscan.Object {
				_ = jsonscan.Members(body, part, func(key []byte, v jsonscan.Span) error {
					if string(key) == "text" && v.Kind == jsonscan.String {
						n += v.End - v.Start - 2
					}
					return nil
				})
			}
			return nil
		})
		return n
	}
	return 0
}

// contentText decodes the text of a message content.
func contentText(body []byte, content jsonscan.Span) string {
	switch content.Kind {
	case jsonscan.String:
		return decodeString(body[content.Start:content.End])
	case jsonscan.Array:
		var parts []string
		_ = jsonscan.Elements(body, content, func(part jsonscan.Span) error {
			if part.Kind == jsonscan.Object {
				_ = jsonscan.Members(body, part, func(key []byte, v jsonscan.Span) error {
					if string(key) == "text" && v.Kind == jsonscan.String {
						parts = append(parts, decodeString(body[v.Start:v.End]))
					}
					return nil
				})
			}
			return nil
		})
		return strings.Join(parts, " ")
	}
	return ""
}

// decodeString decodes a JSON string already validated; one without escapes
// is its bytes between the quotes.
func decodeString(raw []byte) string {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1])
	}
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}

// edit replaces b[start:end] with text.
type edit struct {
	start, end int
	text       []byte
}

// upstreamBody is the body to send to a provider: the client's bytes with at
// most two targeted edits, the model name and include_usage. When nothing
// changes, the client's buffer itself is returned.
func upstreamBody(body []byte, f *requestFacts, upstreamModel string, injectUsage bool) []byte {
	var edits []edit
	if upstreamModel != f.model {
		q, _ := json.Marshal(upstreamModel)
		edits = append(edits, edit{f.modelSpan.Start, f.modelSpan.End, q})
	}
	if injectUsage {
		edits = append(edits, usageEdit(body, f))
	}
	if len(edits) == 0 {
		return body
	}
	if len(edits) == 2 && edits[1].start < edits[0].start {
		edits[0], edits[1] = edits[1], edits[0]
	}
	return applyEdits(body, edits)
}

// usageEdit sets stream_options.include_usage to true, touching nothing else.
func usageEdit(body []byte, f *requestFacts) edit {
	const member = `"include_usage":true`
	switch {
	case f.includeUsageAt.Present():
		return edit{f.includeUsageAt.Start, f.includeUsageAt.End, []byte("true")}
	case f.streamOptions.Kind == jsonscan.Object:
		open := f.streamOptions.Start + 1
		if isEmpty(body, f.streamOptions) {
			return edit{open, open, []byte(member)}
		}
		return edit{open, open, []byte(member + ",")}
	case f.streamOptions.Kind == jsonscan.Null:
		return edit{f.streamOptions.Start, f.streamOptions.End, []byte("{" + member + "}")}
	default:
		closing := f.object.End - 1
		return edit{closing, closing, []byte(`,"stream_options":{` + member + "}")}
	}
}

// isEmpty reports whether a valid object or array has no members or elements.
func isEmpty(body []byte, obj jsonscan.Span) bool {
	return len(bytes.TrimSpace(body[obj.Start+1:obj.End-1])) == 0
}

// applyEdits builds a new buffer from body with non-overlapping edits sorted
// by position: one copy of the body, whatever its size.
func applyEdits(body []byte, edits []edit) []byte {
	size := len(body)
	for _, e := range edits {
		size += len(e.text) - (e.end - e.start)
	}
	out := make([]byte, 0, size)
	prev := 0
	for _, e := range edits {
		out = append(out, body[prev:e.start]...)
		out = append(out, e.text...)
		prev = e.end
	}
	return append(out, body[prev:]...)
}
