// Package e2e drives a built Caddy with arbstr through the official openai-go
// and anthropic-sdk-go SDKs. It is its own module so that the root module's
// go test ./... never runs it: e2e/run.sh builds the binary and runs these
// tests against it.
package e2e
