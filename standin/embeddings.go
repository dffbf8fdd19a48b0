package standin

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"net/http"
)

const (
	// defaultDimensions is the length of an embedding when the request does
	// not ask for `dimensions`: small, as a stand-in needs no more.
	defaultDimensions = 8
	// maxDimensions bounds `dimensions` so that a request cannot make the
	// stand-in allocate without limit (OpenAI's largest model has 3072).
	maxDimensions = 4096
)

// serveEmbeddings answers POST .../embeddings (OpenAI) with small
// deterministic vectors: the same input always gets the same vector.
func (s *Provider) serveEmbeddings(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return methodNotAllowed(w, http.MethodPost)
	}
	n := s.count(r)
	var req embeddingRequest
	if status, err := readJSONBody(w, r, &req); err != nil {
		return writeError(w, status, "invalid_request_error", "invalid_body", err.Error())
	}
	inputs, err := req.parse()
	if err != nil {
		return writeParamError(w, err)
	}
	ex := &embeddingExchange{rp: newReply(s, w, r), req: req, inputs: inputs, model: s.modelOr(req.Model)}
	if refused, err := ex.refuseOverContext(); refused {
		return err
	}
	return s.answer(n, ex)
}

// modelOr is the request's model, or the stand-in's first model when the
// request names none.
func (s *Provider) modelOr(model string) string {
	if model == "" {
		return s.Models[0]
	}
	return model
}

// embeddingRequest holds the fields of an embeddings request that the
// stand-in looks at.
type embeddingRequest struct {
	Model          string          `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat string          `json:"encoding_format"`
	Dimensions     *int            `json:"dimensions"`
}

// embeddingInput is one input to embed: its identity for the vector and its
// token count.
type embeddingInput struct {
	key    []byte
	tokens int
}

// paramError is a 400 about one request parameter.
type paramError struct {
	param, message string
}

func (e *paramError) Error() string { return e.message }

// writeParamError answers a paramError (or any error) as an OpenAI 400.
func writeParamError(w http.ResponseWriter, err error) error {
	body := errorBody{Message: err.Error(), Type: "invalid_request_error", Code: "invalid_value"}
	if pe, ok := errors.AsType[*paramError](err); ok {
		body.Param = &pe.param
	}
	return writeJSON(w, http.StatusBadRequest, errorResponse{Error: body})
}

// parse checks the request and splits input into its items: a string, an
// array of strings, an array of token ids or an array of such arrays.
func (req embeddingRequest) parse() ([]embeddingInput, error) {
	switch req.EncodingFormat {
	case "", "float", "base64":
	default:
		return nil, &paramError{"encoding_format", fmt.Sprintf("encoding_format must be float or base64, got %q", req.EncodingFormat)}
	}
	if d := req.Dimensions; d != nil && (*d < 1 || *d > maxDimensions) {
		return nil, &paramError{"dimensions", fmt.Sprintf("dimensions must be in 1..%d, got %d", maxDimensions, *d)}
	}
	inputs := parseEmbeddingInput(req.Input)
	if len(inputs) == 0 {
		return nil, &paramError{"input", "input must be a non-empty string, an array of non-empty strings, an array of token ids, or an array of non-empty arrays of token ids"}
	}
	return inputs, nil
}

// parseEmbeddingInput returns the items of input, or nil when it is not one
// of the accepted forms or has an empty item. A string counts bytes/4
// tokens (at least 1); a token array counts its length.
func parseEmbeddingInput(input json.RawMessage) []embeddingInput {
	var one string
	if json.Unmarshal(input, &one) == nil {
		return textInputs([]string{one})
	}
	var texts []string
	if json.Unmarshal(input, &texts) == nil {
		return textInputs(texts)
	}
	var tokens []int
	if json.Unmarshal(input, &tokens) == nil {
		return tokenInputs([][]int{tokens})
	}
	var batches [][]int
	if json.Unmarshal(input, &batches) == nil {
		return tokenInputs(batches)
	}
	return nil
}

func textInputs(texts []string) []embeddingInput {
	inputs := make([]embeddingInput, 0, len(texts))
	for _, t := range texts {
		if t == "" {
			return nil
		}
		inputs = append(inputs, embeddingInput{key: []byte(t), tokens: max(1, len(t)/4)})
	}
	return inputs
}

func tokenInputs(batches [][]int) []embeddingInput {
	inputs := make([]embeddingInput, 0, len(batches))
	for _, b := range batches {
		if len(b) == 0 {
			return nil
		}
		key, _ := json.Marshal(b)
		inputs = append(inputs, embeddingInput{key: key, tokens: len(b)})
	}
	return inputs
}

// embeddingExchange is one embeddings request being answered. It never
// streams.
type embeddingExchange struct {
	rp     *reply
	req    embeddingRequest
	inputs []embeddingInput
	model  string
}

func (ex *embeddingExchange) reply() *reply   { return ex.rp }
func (ex *embeddingExchange) streaming() bool { return false }

// stream and streamErrorEvent are never called: embeddings do not stream.
func (ex *embeddingExchange) stream(string) error {
	return writeJSON(ex.rp.w, http.StatusOK, ex.body())
}
func (ex *embeddingExchange) streamErrorEvent() error { return ex.stream("") }

func (ex *embeddingExchange) writeError(status int, code, message string) error {
	errType, _ := errorKind(status)
	return writeError(ex.rp.w, status, errType, code, message)
}

// refuseOverContext answers 400 when an input is longer than the
// stand-in's context window, as OpenAI does for embeddings.
func (ex *embeddingExchange) refuseOverContext() (bool, error) {
	limit := ex.rp.s.Context
	if limit <= 0 {
		return false, nil
	}
	for _, in := range ex.inputs {
		if in.tokens > limit {
			return true, writeError(ex.rp.w, http.StatusBadRequest, "invalid_request_error", "context_length_exceeded",
				fmt.Sprintf("This model's maximum context length is %d tokens, however you requested %d tokens (%d in your prompt; 0 for the completion). Please reduce your prompt; or completion length.", limit, in.tokens, in.tokens))
		}
	}
	return false, nil
}

func (ex *embeddingExchange) body() any {
	dims := defaultDimensions
	if ex.req.Dimensions != nil {
		dims = *ex.req.Dimensions
	}
	data := make([]embedding, len(ex.inputs))
	tokens := 0
	for i, in := range ex.inputs {
		vec := embeddingVector(in.key, dims)
		data[i] = embedding{Object: "embedding", Index: i, Embedding: vec}
		if ex.req.EncodingFormat == "base64" {
			data[i].Embedding = encodeFloat32s(vec)
		}
		tokens += in.tokens
	}
	return embeddingList{
		Object: "list",
		Data:   data,
		Model:  ex.model,
		Usage:  embeddingUsage{PromptTokens: tokens, TotalTokens: tokens},
	}
}

// embeddingVector derives a unit vector of dims float32 values from key, so
// that equal inputs get equal vectors and different inputs (almost surely)
// different ones. The values are float32 so that the float and base64
// encodings carry the same numbers.
func embeddingVector(key []byte, dims int) []float32 {
	h := fnv.New64a()
	_, _ = h.Write(key)
	seed := h.Sum64()
	vec := make([]float32, dims)
	var norm float64
	for i := range vec {
		v := float64(splitMix64(seed+uint64(i)*0x9e3779b97f4a7c15)>>11)/float64(1<<53)*2 - 1 // in [-1, 1)
		vec[i] = float32(v)
		norm += v * v
	}
	if norm = math.Sqrt(norm); norm > 0 {
		for i := range vec {
			vec[i] = float32(float64(vec[i]) / norm)
		}
	}
	return vec
}

// splitMix64 scrambles x (the SplitMix64 finaliser), so that neighbouring
// seeds give unrelated values.
func splitMix64(x uint64) uint64 {
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// encodeFloat32s is OpenAI's base64 embedding encoding: the vector as
// little-endian float32 values, in standard base64.
func encodeFloat32s(vec []float32) string {
	buf := make([]byte, 4*len(vec))
	for i, v := range vec {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
	}
	return base64.StdEncoding.EncodeToString(buf)
}

// embeddingList is the answer to an embeddings request.
type embeddingList struct {
	// Object is always "list".
	Object string `json:"object"`
	// Data holds one embedding per input, in input order.
	Data []embedding `json:"data"`
	// Model is the requested model.
	Model string `json:"model"`
	// Usage counts the input tokens.
	Usage embeddingUsage `json:"usage"`
}

// embedding is the vector of one input.
type embedding struct {
	// Object is always "embedding".
	Object string `json:"object"`
	// Index is the input's position in the request.
	Index int `json:"index"`
	// Embedding is a []float32, or a base64 string of little-endian float32
	// values when the request asked for encoding_format base64.
	Embedding any `json:"embedding"`
}

// embeddingUsage counts the tokens of an embeddings request (there is no
// output).
type embeddingUsage struct {
	// PromptTokens is the input tokens of all inputs.
	PromptTokens int `json:"prompt_tokens"`
	// TotalTokens equals PromptTokens.
	TotalTokens int `json:"total_tokens"`
}
