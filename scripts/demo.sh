#!/usr/bin/env bash
# The no-keys demo: builds Caddy with arbstr, runs Caddyfile.example (the
# router on :8080, stand-in providers on :8081 and :8082), and shows with curl
# a request that the cheap provider fails and arbstr retries, then serves
# from the next one. It keeps running until Ctrl-C; with --once it stops.
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p bin
echo "building Caddy with arbstr (the first build takes a few minutes)..."
go build -o bin/caddy ./cmd/caddy
bin/caddy run --config Caddyfile.example --adapter caddyfile >bin/demo.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT

for _ in $(seq 100); do
	curl -fsS -o /dev/null http://127.0.0.1:8080/v1/models 2>/dev/null && break
	if ! kill -0 $pid 2>/dev/null; then cat bin/demo.log; exit 1; fi
	sleep 0.1
done

body='{"model":"demo-model","messages":[{"role":"user","content":"Say hello"}]}'
echo
echo "\$ curl -i localhost:8080/v1/chat/completions -d '$body'"
curl -sS -i http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' -d "$body"
echo
echo
stream='{"model":"demo-model","stream":true,"messages":[{"role":"user","content":"Say hello"}]}'
echo "\$ curl -N localhost:8080/v1/chat/completions -d '$stream'"
curl -sS -N http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' -d "$stream"
echo

if [ "${1:-}" = "--once" ]; then
	exit 0
fi
echo "The demo runs on http://localhost:8080 (log: bin/demo.log). Ctrl-C stops it."
wait $pid
