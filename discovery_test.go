package arbstr

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/arbstr/caddy-arbstr/standin"
)

// discoveryUpstream answers GET /v1/models with its list, or with status
// when that is set.
type discoveryUpstream struct {
	srv    *httptest.Server
	models atomic.Pointer[[]string]
	status atomic.Int32
	auth   atomic.Pointer[string]
}

func newDiscoveryUpstream(t *testing.T, models ...string) *discoveryUpstream {
	u := &discoveryUpstream{}
	u.models.Store(&models)
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := r.Header.Get("Authorization")
		u.auth.Store(&a)
		if s := u.status.Load(); s != 0 {
			w.WriteHeader(int(s))
			return
		}
		var list struct {
			Data []map[string]string `json:"data"`
		}
		list.Data = []map[string]string{}
		for _, m := range *u.models.Load() {
			list.Data = append(list.Data, map[string]string{"id": m, "object": "model"})
		}
		_ = json.NewEncoder(w).Encode(list)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func TestDiscoveryKeepsLastGoodListAndShowsError(t *testing.T) {
	up := newDiscoveryUpstream(t, "llama3", "qwen")
	interval := caddy.Duration(time.Hour)
	p := cfgProv(t, Provider{Name: "disc-keep", URL: up.srv.URL + "/v1?key=s3cret", APIKey: "k-123", Discover: &interval})
	reg := loadHealthRegistry([]*provider{p}, newBreakerSettings(nil))
	defer reg.release()
	if !p.serves("anything") {
		t.Fatal("before discovery a provider without models line serves any model")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	tick, round := make(chan time.Time), make(chan struct{})
	go func() {
		defer close(done)
		discoverLoop(ctx, p, newUpstreamClient(), reg, zap.NewNop(), tick, round)
	}()
	status := func() providerStatus {
		for _, st := range allProviderStatus(time.Now()) {
			if st.Name == "disc-keep" {
				return st
			}
		}
		t.Fatal("provider missing from the admin list")
		return providerStatus{}
	}

	<-round // the read at start
	if !p.serves("llama3") || p.serves("anything") {
		t.Errorf("after discovery: serves llama3 %v, anything %v; want true, false", p.serves("llama3"), p.serves("anything"))
	}
	if got := *up.auth.Load(); got != "Bearer k-123" {
		t.Errorf("discovery sent Authorization %q, want the provider key", got)
	}
	st := status()
	if !slices.Equal(st.Models, []string{"llama3", "qwen"}) || st.AnyModel || st.Discovery == nil ||
		st.Discovery.LastSuccess.IsZero() || st.Discovery.LastError != "" {
		t.Fatalf("admin view after success: %+v %+v", st.providerInfo, st.Discovery)
	}
	success := st.Discovery.LastSuccess

	up.status.Store(http.StatusInternalServerError)
	tick <- time.Time{}
	<-round // a failing read
	if !p.serves("llama3") {
		t.Error("a failed discovery dropped the last good list")
	}
	st = status()
	if !strings.Contains(st.Discovery.LastError, "HTTP 500") || st.Discovery.LastErrorAt.IsZero() ||
		!st.Discovery.LastSuccess.Equal(success) || !slices.Equal(st.Models, []string{"llama3", "qwen"}) {
		t.Errorf("admin view after a failure: %+v", st.Discovery)
	}
	if strings.Contains(st.Discovery.LastError, "s3cret") || strings.Contains(st.Discovery.LastError, "k-123") {
		t.Errorf("the error shows a secret: %s", st.Discovery.LastError)
	}
	body, _ := json.Marshal(st)
	for _, field := range []string{`"discovery":{`, `"last_success":`, `"last_error":`, `"interval":"1h0m0s"`, `"tier":"standard"`} {
		if !strings.Contains(string(body), field) {
			t.Errorf("admin JSON lacks %s: %s", field, body)
		}
	}

	up.status.Store(0)
	up.models.Store(&[]string{"qwen", "mistral"})
	tick <- time.Time{}
	<-round // a good read again
	if p.serves("llama3") || !p.serves("mistral") {
		t.Error("a later good list did not replace the earlier one")
	}
	if st := status(); st.Discovery.LastError != "" {
		t.Errorf("error still shown after a success: %+v", st.Discovery)
	}
	cancel()
	<-done
}

func TestDiscoveryModelsLineFilters(t *testing.T) {
	p := cfgProv(t, Provider{Name: "f", Models: []string{"a", "c"}, Model: map[string]string{"alias": "b"}})
	p.setDiscovered([]string{"a", "b"})
	for model, want := range map[string]bool{"a": true, "b": false, "c": false, "alias": true} {
		if got := p.serves(model); got != want {
			t.Errorf("serves(%q) = %v, want %v", model, got, want)
		}
	}
	if names, _ := p.modelNames(); !slices.Equal(names, []string{"a", "alias"}) {
		t.Errorf("model names %v, want [a alias]", names)
	}
}

func TestDiscoveryRefusesBadAnswers(t *testing.T) {
	for name, answer := range map[string]string{
		"not json":  `<html>`,
		"no data":   `{"object":"list"}`,
		"data type": `{"data":"x"}`,
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, answer)
		}))
		p := cfgProv(t, Provider{Name: "bad", URL: srv.URL + "/v1"})
		if _, err := fetchModels(context.Background(), newUpstreamClient(), p); err == nil || !strings.Contains(err.Error(), `{"data":[{"id":…}]}`) {
			t.Errorf("%s: error %v, want one showing the expected shape", name, err)
		}
		srv.Close()
	}
}

// discoveryGoroutines counts the running discovery loops of this process.
func discoveryGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "arbstr.discoverLoop(")
}

func TestDiscoveryPicksUpAddedModelIntegration(t *testing.T) {
	s := &standin.Provider{Name: "ollama", Models: []string{"llama3"}}
	local := tierStandin(t, s)
	site := fmt.Sprintf(`arbstr {
	provider ollama {
		url %s/v1
		tier local
		discover 20ms
	}
	provider hosted {
		url %s/v1
		models gpt-4o
	}
}`, local.URL, local.URL)
	tc := startCaddy(t, site)
	listed := func() []string {
		resp, err := http.Get(tc.URL + "/v1/models")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var list struct{ Data []struct{ ID string } }
		if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range list.Data {
			ids = append(ids, m.ID)
		}
		slices.Sort(ids)
		return ids
	}
	waitFor := func(want []string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for got := listed(); !slices.Equal(got, want); got = listed() {
			if time.Now().After(deadline) {
				t.Fatalf("GET /v1/models lists %v, want %v", got, want)
			}
			time.Sleep(10 * time.Millisecond) // polling what a client sees; discovery runs on its own clock
		}
	}
	waitFor([]string{"gpt-4o", "llama3"})
	if resp := tc.Post("/v1/chat/completions", cfgChat("mistral", "", "user", `"hi"`)); resp.StatusCode != http.StatusNotFound {
		t.Errorf("model not discovered yet: status %d, want 404", resp.StatusCode)
	}

	req, _ := http.NewRequest(http.MethodPut, local.URL+"/v1/standin/models", strings.NewReader(`{"models":["llama3","mistral"]}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("changing the stand-in's models: %v %v", err, resp)
	}
	resp.Body.Close()
	waitFor([]string{"gpt-4o", "llama3", "mistral"})
	if resp := tc.Post("/v1/chat/completions", cfgChat("mistral", "", "user", `"hi"`)); resp.StatusCode != http.StatusOK ||
		resp.Header.Get("x-arbstr-provider") != "ollama" {
		t.Errorf("discovered model: status %d via %q, want 200 via ollama", resp.StatusCode, resp.Header.Get("x-arbstr-provider"))
	}
}

func TestDiscoveryGoroutinesEndWithTheirConfigIntegration(t *testing.T) {
	up := newDiscoveryUpstream(t, "m")
	site := func(interval string) string {
		return fmt.Sprintf(`arbstr {
	provider a {
		url %s/v1
		discover %s
	}
	provider b {
		url %s/v2
		discover %s
	}
}`, up.srv.URL, interval, up.srv.URL, interval)
	}
	before := discoveryGoroutines()
	tc := startCaddy(t, site("10ms"))
	for i := range 3 {
		tc.Load(site(fmt.Sprintf("%dms", 10+i)))
		if n := discoveryGoroutines() - before; n != 2 {
			t.Fatalf("after reload %d: %d discovery goroutines running, want 2 (the old config's must have ended)", i+1, n)
		}
	}
	tc.Load(fmt.Sprintf("arbstr {\n\tprovider a {\n\t\turl %s/v1\n\t}\n}", up.srv.URL))
	if n := discoveryGoroutines() - before; n != 0 {
		t.Errorf("config without discover: %d discovery goroutines still running, want 0", n)
	}
}

// An `api anthropic` provider's models are read with its key in x-api-key
// and an anthropic-version, as Anthropic's GET /v1/models wants; no bearer
// token is sent.
func TestDiscoveryAnthropicProviderHeaders(t *testing.T) {
	var got http.Header
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		_, _ = fmt.Fprint(w, `{"data":[{"type":"model","id":"claude-x","display_name":"Claude X"}],"has_more":false}`)
	}))
	t.Cleanup(up.Close)
	p := cfgProv(t, Provider{Name: "disc-anthropic", URL: up.URL + "/v1", APIKey: "k-anthropic", API: "anthropic"})
	models, err := fetchModels(context.Background(), newUpstreamClient(), p)
	if err != nil || !slices.Equal(models, []string{"claude-x"}) {
		t.Fatalf("models %v, err %v", models, err)
	}
	if got.Get("X-Api-Key") != "k-anthropic" || got.Get("Anthropic-Version") == "" || got.Get("Authorization") != "" {
		t.Errorf("discovery sent x-api-key %q, anthropic-version %q, Authorization %q", got.Get("X-Api-Key"), got.Get("Anthropic-Version"), got.Get("Authorization"))
	}
}
