// Package arbstr is an OpenAI-compatible LLM router that runs inside Caddy as
// the HTTP handler http.handlers.arbstr (Caddyfile directive arbstr). For
// every chat completion it picks the cheapest provider that qualifies, passes
// streams through live, and when a provider fails it retries and falls back
// to the next-cheapest one within one deadline.
package arbstr
