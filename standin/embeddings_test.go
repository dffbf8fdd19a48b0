package standin

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"net/http"
	"strings"
	"testing"
)

// testEmbeddingList mirrors what the openai SDKs read of an embeddings
// answer; Embedding stays raw because it is floats or a base64 string.
type testEmbeddingList struct {
	Object string `json:"object"`
	Model  string `json:"model"`
	Data   []struct {
		Object    string          `json:"object"`
		Index     int             `json:"index"`
		Embedding json.RawMessage `json:"embedding"`
	} `json:"data"`
	Usage struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

func postEmbeddings(t *testing.T, url, body string) (*http.Response, []byte) {
	t.Helper()
	return mustPostAPI(t, url, "/v1/embeddings", nil, body)
}

func decodeEmbeddings(t *testing.T, body []byte) testEmbeddingList {
	t.Helper()
	var list testEmbeddingList
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	if list.Object != "list" {
		t.Errorf("object %q", list.Object)
	}
	for i, d := range list.Data {
		if d.Object != "embedding" || d.Index != i {
			t.Errorf("data[%d]: object %q index %d", i, d.Object, d.Index)
		}
	}
	return list
}

// vector decodes an embedding as the SDKs do: a float array, or base64 of
// little-endian float32 values (openai-go and the npm SDK decode it so).
func vector(t *testing.T, raw json.RawMessage) []float64 {
	t.Helper()
	var floats []float64
	if json.Unmarshal(raw, &floats) == nil {
		for i, f := range floats {
			floats[i] = float64(float32(f)) // the stand-in's values are float32
		}
		return floats
	}
	var b64 string
	if err := json.Unmarshal(raw, &b64); err != nil {
		t.Fatalf("embedding is neither floats nor a string: %s", raw)
	}
	data, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(data)%4 != 0 {
		t.Fatalf("bad base64 embedding %q: %v", b64, err)
	}
	floats = make([]float64, len(data)/4)
	for i := range floats {
		floats[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:])))
	}
	return floats
}

func TestEmbeddings(t *testing.T) {
	srv, _ := testServer(t, &Provider{})
	resp, body := postEmbeddings(t, srv.URL, `{"model":"text-embedding-3-small","input":["hello world","hi","hello world"],"encoding_format":"float"}`)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	list := decodeEmbeddings(t, body)
	if list.Model != "text-embedding-3-small" || len(list.Data) != 3 {
		t.Fatalf("model %q, %d embeddings", list.Model, len(list.Data))
	}
	// "hello world" is 11 bytes: 2 tokens; "hi" counts at least 1.
	if list.Usage.PromptTokens != 5 || list.Usage.TotalTokens != 5 {
		t.Errorf("usage %+v, want 5 and 5", list.Usage)
	}
	a, b, c := vector(t, list.Data[0].Embedding), vector(t, list.Data[1].Embedding), vector(t, list.Data[2].Embedding)
	if len(a) != defaultDimensions || len(b) != defaultDimensions {
		t.Fatalf("dimensions %d and %d, want %d", len(a), len(b), defaultDimensions)
	}
	if norm := dot(a, a); math.Abs(norm-1) > 1e-5 {
		t.Errorf("|a|² = %v, want a unit vector", norm)
	}
	if !equalFloats(a, c) || equalFloats(a, b) {
		t.Errorf("equal inputs must give equal vectors and others differ: %v %v %v", a, b, c)
	}
}

func dot(a, b []float64) float64 {
	var sum float64
	for i := range a {
		sum += a[i] * b[i]
	}
	return sum
}

func equalFloats(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestEmbeddingsBase64 checks that base64 (what the npm SDK asks for by
// default) carries the same vector as floats, also with dimensions.
func TestEmbeddingsBase64(t *testing.T) {
	srv, _ := testServer(t, &Provider{})
	_, floatBody := postEmbeddings(t, srv.URL, `{"model":"m","input":"same text","dimensions":16}`)
	_, b64Body := postEmbeddings(t, srv.URL, `{"model":"m","input":"same text","dimensions":16,"encoding_format":"base64"}`)
	floats, b64 := decodeEmbeddings(t, floatBody), decodeEmbeddings(t, b64Body)
	if !strings.HasPrefix(string(b64.Data[0].Embedding), `"`) {
		t.Fatalf("base64 asked, got %s", b64.Data[0].Embedding)
	}
	if !strings.HasPrefix(string(floats.Data[0].Embedding), `[`) {
		t.Fatalf("no encoding_format must give floats, got %s", floats.Data[0].Embedding)
	}
	f, g := vector(t, floats.Data[0].Embedding), vector(t, b64.Data[0].Embedding)
	if len(f) != 16 || !equalFloats(f, g) || f[0] == f[1] {
		t.Errorf("float %v and base64 %v vectors differ", f, g)
	}
}

func TestEmbeddingsTokenInput(t *testing.T) {
	srv, _ := testServer(t, &Provider{})
	tests := []struct {
		input         string
		items, tokens int
	}{
		{`[1,2,3]`, 1, 3},
		{`[[1,2],[3]]`, 2, 3},
		{`"a"`, 1, 1},
	}
	for _, tt := range tests {
		resp, body := postEmbeddings(t, srv.URL, `{"model":"m","input":`+tt.input+`}`)
		list := decodeEmbeddings(t, body)
		if resp.StatusCode != 200 || len(list.Data) != tt.items || list.Usage.PromptTokens != tt.tokens {
			t.Errorf("input %s: status %d, %d items, %d tokens; want %d items, %d tokens", tt.input, resp.StatusCode, len(list.Data), list.Usage.PromptTokens, tt.items, tt.tokens)
		}
	}
}

func TestEmbeddingsBadInput(t *testing.T) {
	srv, _ := testServer(t, &Provider{})
	tests := []struct{ name, body, param string }{
		{"no input", `{"model":"m"}`, "input"},
		{"number", `{"model":"m","input":42}`, "input"},
		{"empty string", `{"model":"m","input":""}`, "input"},
		{"empty array", `{"model":"m","input":[]}`, "input"},
		{"empty item", `{"model":"m","input":["a",""]}`, "input"},
		{"mixed", `{"model":"m","input":[1,"a"]}`, "input"},
		{"empty token array", `{"model":"m","input":[[1],[]]}`, "input"},
		{"encoding", `{"model":"m","input":"a","encoding_format":"hex"}`, "encoding_format"},
		{"dimensions", `{"model":"m","input":"a","dimensions":0}`, "dimensions"},
		{"not JSON", `{"model":`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := postEmbeddings(t, srv.URL, tt.body)
			var e errorResponse
			if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != 400 || e.Error.Type != "invalid_request_error" {
				t.Fatalf("status %d body %s; want a 400 invalid_request_error", resp.StatusCode, body)
			}
			if tt.param != "" && (e.Error.Param == nil || *e.Error.Param != tt.param) {
				t.Errorf("param %v, want %q: %s", e.Error.Param, tt.param, body)
			}
		})
	}
}

func TestEmbeddingsContext(t *testing.T) {
	srv, _ := testServer(t, &Provider{Context: 2})
	if resp, body := postEmbeddings(t, srv.URL, `{"model":"m","input":["12345678"]}`); resp.StatusCode != 200 {
		t.Errorf("2 tokens in a window of 2: status %d %s", resp.StatusCode, body)
	}
	resp, body := postEmbeddings(t, srv.URL, `{"model":"m","input":["1234","123456789012"]}`)
	var e errorResponse
	if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != 400 || e.Error.Code != "context_length_exceeded" {
		t.Errorf("3 tokens in a window of 2: status %d %s", resp.StatusCode, body)
	}
}
