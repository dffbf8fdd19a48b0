#!/usr/bin/env bash
# Soak test: builds bin/caddy, starts stand-in providers that fail in every
# way the stand-in knows (500 then healthy, 503, 429, reset, stall, cut,
# hang, in-band error, no finish, malformed, no [DONE]) plus a healthy one,
# and a router over all of them, then runs mixed streaming/non-streaming
# load for SOAK_DURATION (default 3m) with bounded concurrency and a bounded
# number of requests. It fails on any request that did not end in a success
# or a documented error, on any truncated stream that passes for complete,
# and when goroutines or RSS do not come back near their baseline.
#
#   scripts/soak.sh                      # 3 minutes
#   SOAK_DURATION=30s scripts/soak.sh    # a quick one
#   SOAK_CONCURRENCY=32 SOAK_MAX_REQUESTS=100000 scripts/soak.sh
#
# Everything runs on 127.0.0.1; the Caddy processes are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${SOAK_DURATION:-${DURATION:-3m}}
CONCURRENCY=${SOAK_CONCURRENCY:-16}
MAX_REQUESTS=${SOAK_MAX_REQUESTS:-400000}
SETTLE=${SOAK_SETTLE:-150s}

mkdir -p bin
echo "== building bin/caddy and bin/soak"
go build -o bin/caddy ./cmd/caddy
go build -o bin/soak ./scripts/soak

echo "== soak for $DURATION (concurrency $CONCURRENCY, at most $MAX_REQUESTS requests)"
exec bin/soak -mode soak -caddy bin/caddy -duration "$DURATION" \
	-concurrency "$CONCURRENCY" -max-requests "$MAX_REQUESTS" -settle "$SETTLE" "$@"
