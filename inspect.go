package arbstr

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// requestFacts is what arbstr needs to know about a chat completion request,
// found in one pass over its body without decoding it.
type requestFacts struct {
	model          string
	modelSpan      span
	stream         bool
	clientUsage    bool // the client asked for stream_options.include_usage: true
	streamOptions  span
	maxTokens      int
	lastUser       span // content of the last user message
	body           []byte
	textBytes      int  // bytes of message text, for the input token estimate
	object         span // the top-level object
	includeUsageAt span // stream_options.include_usage, when present
}

// inspectRequest validates a chat completion body and extracts its facts.
// Its errors are ready to send to the client.
func inspectRequest(body []byte) (*requestFacts, *apiError) {
	f := &requestFacts{}
	var messages, maxTokens, maxCompletion, stream span
	var lookalike error
	obj, err := topLevelObject(body, func(key []byte, v span) error {
		if err := refuseLookalikeKey(key); err != nil {
			lookalike = err
			return err
		}
		switch string(key) {
		case "model":
			f.modelSpan = v
		case "messages":
			messages = v
		case "stream":
			stream = v
		case "stream_options":
			f.streamOptions = v
		case "max_tokens":
			maxTokens = v
		case "max_completion_tokens":
			maxCompletion = v
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
	f.body = body
	if f.modelSpan.kind != kindString {
		return nil, errInvalidRequest("model", "'model' is required and must be a string")
	}
	if err := json.Unmarshal(body[f.modelSpan.start:f.modelSpan.end], &f.model); err != nil || f.model == "" {
		return nil, errInvalidRequest("model", "'model' must be a non-empty string")
	}
	if len(f.model) > maxModelName {
		return nil, errInvalidRequest("model", "'model' is %d bytes long; model names are at most %d", len(f.model), maxModelName)
	}
	if messages.kind != kindArray {
		return nil, errInvalidRequest("messages", "'messages' is required and must be an array")
	}
	switch stream.kind {
	case kindInvalid, kindNull:
	case kindBool:
		f.stream = body[stream.start] == 't'
	default:
		return nil, errInvalidRequest("stream", "'stream' must be a boolean")
	}
	if apiErr := f.inspectStreamOptions(body); apiErr != nil {
		return nil, apiErr
	}
	for _, t := range []span{maxTokens, maxCompletion} {
		if t.kind == kindNumber {
			if n, err := strconv.Atoi(string(body[t.start:t.end])); err == nil && n > 0 {
				f.maxTokens = n
			}
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
func refuseLookalikeKey(key []byte) error {
	for _, name := range routingKeys {
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

// routingKeys are the keys arbstr reads, at the top level or inside
// stream_options.
var routingKeys = []string{"model", "stream", "messages", "stream_options", "max_tokens", "max_completion_tokens", "include_usage"}

// maxModelName bounds the model name: it is logged, echoed in errors and
// compared against the config, and no real model name comes close.
const maxModelName = 256

func (f *requestFacts) inspectStreamOptions(body []byte) *apiError {
	switch f.streamOptions.kind {
	case kindInvalid, kindNull:
		return nil
	case kindObject:
	default:
		return errInvalidRequest("stream_options", "'stream_options' must be an object")
	}
	var lookalike error
	err := members(body, f.streamOptions, func(key []byte, v span) error {
		if err := refuseLookalikeKey(key); err != nil {
			lookalike = err
			return err
		}
		if string(key) == "include_usage" {
			f.includeUsageAt = v
			f.clientUsage = v.kind == kindBool && body[v.start] == 't'
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
func (f *requestFacts) inspectMessages(body []byte, messages span) *apiError {
	var lastUser span
	err := elements(body, messages, func(msg span) error {
		if msg.kind != kindObject {
			return nil
		}
		var role, content span
		if err := members(body, msg, func(key []byte, v span) error {
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
		if role.kind == kindString && string(body[role.start:role.end]) == `"user"` {
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
	if !f.lastUser.present() {
		return ""
	}
	return strings.ToLower(contentText(f.body, f.lastUser))
}

// textBytes is the size of the text in a message content: a string, or an
// array of parts whose "text" members count.
func textBytes(body []byte, content span) int {
	switch content.kind {
	case kindString:
		return content.end - content.start - 2
	case kindArray:
		n := 0
		_ = elements(body, content, func(part span) error {
			if part.kind == kindObject {
				_ = members(body, part, func(key []byte, v span) error {
					if string(key) == "text" && v.kind == kindString {
						n += v.end - v.start - 2
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
func contentText(body []byte, content span) string {
	switch content.kind {
	case kindString:
		return decodeString(body[content.start:content.end])
	case kindArray:
		var parts []string
		_ = elements(body, content, func(part span) error {
			if part.kind == kindObject {
				_ = members(body, part, func(key []byte, v span) error {
					if string(key) == "text" && v.kind == kindString {
						parts = append(parts, decodeString(body[v.start:v.end]))
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
		edits = append(edits, edit{f.modelSpan.start, f.modelSpan.end, q})
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
	case f.includeUsageAt.present():
		return edit{f.includeUsageAt.start, f.includeUsageAt.end, []byte("true")}
	case f.streamOptions.kind == kindObject:
		open := f.streamOptions.start + 1
		if isEmptyObject(body, f.streamOptions) {
			return edit{open, open, []byte(member)}
		}
		return edit{open, open, []byte(member + ",")}
	case f.streamOptions.kind == kindNull:
		return edit{f.streamOptions.start, f.streamOptions.end, []byte("{" + member + "}")}
	default:
		closing := f.object.end - 1
		return edit{closing, closing, []byte(`,"stream_options":{` + member + "}")}
	}
}

func isEmptyObject(body []byte, obj span) bool {
	return len(bytes.TrimSpace(body[obj.start+1:obj.end-1])) == 0
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
