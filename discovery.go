package arbstr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Bounds of one discovery read.
const (
	discoverTimeout  = 10 * time.Second
	maxModelsBody    = 4 << 20
	discoverRetryMin = time.Second // first retry after a failure, doubling up to the interval
)

// discovery runs one goroutine per provider with `discover`, reading its
// /models. It belongs to one config: stop ends its goroutines and waits for
// them, so reloads leak none.
type discovery struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// discoveryStatus is the admin API's view of a provider's model discovery.
type discoveryStatus struct {
	// Interval between reads, e.g. "5m0s".
	Interval string `json:"interval"`
	// LastSuccess is when /models last answered with a list.
	LastSuccess time.Time `json:"last_success,omitzero"`
	// LastError is why the last read failed; absent when it succeeded.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// startDiscovery starts reading the models of every provider that asks for
// it.
func startDiscovery(providers []*provider, client *http.Client, reg *healthRegistry, logger *zap.Logger) *discovery {
	ctx, cancel := context.WithCancel(context.Background())
	d := &discovery{cancel: cancel}
	for _, p := range providers {
		if p.discover <= 0 {
			continue
		}
		reg.publishDiscovery(p, discoveryStatus{Interval: p.discover.String()})
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			discoverLoop(ctx, p, client, reg, logger, nil, nil)
		}()
	}
	return d
}

// stop ends the goroutines and waits for them.
func (d *discovery) stop() {
	if d == nil {
		return
	}
	d.cancel()
	d.wg.Wait()
}

// discoverLoop reads p's models now and every interval until ctx ends;
// after a failure it tries again sooner (1s, doubling, up to the interval),
// so a local server that starts after Caddy is found quickly. Tests set
// tick, which replaces the timer, and roundDone, told after each read.
func discoverLoop(ctx context.Context, p *provider, client *http.Client, reg *healthRegistry, logger *zap.Logger,
	tick <-chan time.Time, roundDone chan<- struct{}) {
	st := discoveryStatus{Interval: p.discover.String()}
	retry := discoverRetryMin
	for {
		models, err := fetchModels(ctx, client, p)
		if ctx.Err() != nil {
			return
		}
		wait := p.discover
		if err != nil {
			st.LastError, st.LastErrorAt = err.Error(), time.Now()
			logger.Warn("model discovery failed; keeping the last good list",
				zap.String("provider", p.name), zap.Error(err))
			wait = min(retry, p.discover)
			retry = min(2*retry, p.discover)
		} else {
			p.setDiscovered(models)
			st.LastSuccess, st.LastError, st.LastErrorAt = time.Now(), "", time.Time{}
			retry = discoverRetryMin
		}
		reg.publishDiscovery(p, st)
		if roundDone != nil {
			roundDone <- struct{}{}
		}
		if !waitNext(ctx, wait, tick) {
			return
		}
	}
}

// waitNext waits d (or for tick, when not nil); false when ctx ended first.
func waitNext(ctx context.Context, d time.Duration, tick <-chan time.Time) bool {
	if tick == nil {
		t := time.NewTimer(d)
		defer t.Stop()
		tick = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-tick:
		return true
	}
}

// fetchModels reads GET {url}/models in the OpenAI list shape
// {"data":[{"id":…}]} (also Ollama's, vLLM's and llama.cpp's). Its errors
// name the provider's URL without credentials or query.
func fetchModels(ctx context.Context, client *http.Client, p *provider) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, discoverTimeout)
	defer cancel()
	where := redactURL(p.modelsURL)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.modelsURL, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %v", where, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "arbstr-caddy")
	p.setAuth(req.Header, nil)
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may hold a secret
		}
		return nil, fmt.Errorf("GET %s: %v", where, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s answered HTTP %d; expected 200 with {\"data\":[{\"id\":…}]}", where, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxModelsBody+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: reading the answer: %v", where, err)
	}
	if len(body) > maxModelsBody {
		return nil, fmt.Errorf("GET %s: the answer is larger than %d bytes", where, maxModelsBody)
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &list); err != nil || list.Data == nil {
		return nil, fmt.Errorf("GET %s: the answer is not a model list {\"data\":[{\"id\":…}]}", where)
	}
	models := make([]string, 0, len(list.Data))
	for _, m := range list.Data {
		if m.ID != "" {
			models = append(models, m.ID)
		}
	}
	return models, nil
}

// setDiscovered replaces the provider's models with a discovered list,
// filtered by its `models` line when it has one.
func (p *provider) setDiscovered(models []string) {
	set := make(map[string]bool, len(models))
	for _, m := range models {
		if p.modelsLine == nil || p.modelsLine[m] {
			set[m] = true
		}
	}
	p.discovered.Store(&set)
}

// mapped reports whether a `model` line serves the public name.
func (p *provider) mapped(model string) bool {
	_, ok := p.upstream[model]
	return ok || p.wildcard != ""
}

// listed reports whether the provider's config or discovery names model
// (not merely serves it as an any-model provider): such names may be
// metric labels and keep their health entries.
func (p *provider) listed(model string) bool {
	if d := p.discovered.Load(); d != nil && (*d)[model] {
		return true
	}
	return p.served[model]
}

// modelNames are the public names the provider serves, sorted: discovered
// ones (once a list arrived) or configured ones, and mapped ones.
func (p *provider) modelNames() (names []string, anyModel bool) {
	d := p.discovered.Load()
	if d == nil {
		for m := range p.served {
			names = append(names, m)
		}
		slices.Sort(names)
		return names, p.anyModel
	}
	for m := range *d {
		names = append(names, m)
	}
	for m := range p.upstream {
		if !(*d)[m] {
			names = append(names, m)
		}
	}
	slices.Sort(names)
	return names, p.wildcard != ""
}

// publishDiscovery updates what the admin API shows of p: its models and
// the state of its discovery.
func (reg *healthRegistry) publishDiscovery(p *provider, st discoveryStatus) {
	ph := reg.byName[p.name]
	if ph == nil {
		return
	}
	info := p.info()
	ph.mu.Lock()
	defer ph.mu.Unlock()
	info.CooldownMax = ph.info.CooldownMax
	info.Discovery = &st
	ph.info = info
}
