#!/usr/bin/env bash
# Config reloads under load: builds bin/caddy, starts healthy stand-in
# providers (streams of ~2s: 20 events, 100ms apart) and a router, and while
# streaming and non-streaming load runs, reloads the router every second
# (POST /load on the admin endpoint, what `caddy reload --config ...
# --address ...` does) alternating two configs that differ in a price.
#
# Phase 1 (grace_period RELOAD_GRACE, default 30s, longer than any stream):
#   no request may fail, every stream must end with [DONE] and all its
#   events, and the breaker state of a provider the configs share must be
#   the same after the reloads as before.
# Phase 2 (grace_period 1s, shorter than the streams): shows what happens to
#   streams still running when the grace period of a replaced config ends.
#   Cut streams are counted, not failures; any other failure still fails.
#
#   scripts/reload-under-load.sh
#   RELOAD_DURATION=2m RELOAD_GRACE=1m scripts/reload-under-load.sh
#   RELOAD_SKIP_SHORT_GRACE=1 scripts/reload-under-load.sh
#
# Everything runs on 127.0.0.1; the Caddy processes are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${RELOAD_DURATION:-60s}
GRACE=${RELOAD_GRACE:-30s}
CONCURRENCY=${RELOAD_CONCURRENCY:-16}
SETTLE=${RELOAD_SETTLE:-150s}

mkdir -p bin
echo "== building bin/caddy and bin/soak"
go build -o bin/caddy ./cmd/caddy
go build -o bin/soak ./scripts/soak

echo "== phase 1: reloads every 1s for $DURATION, grace_period $GRACE"
bin/soak -mode reload -caddy bin/caddy -grace "$GRACE" -duration "$DURATION" \
	-concurrency "$CONCURRENCY" -reload-every 1s -stream-events 20 -stream-pace 100ms -settle "$SETTLE"

if [ -z "${RELOAD_SKIP_SHORT_GRACE:-}" ]; then
	echo
	echo "== phase 2: reloads every 1s for 20s, grace_period 1s (streams last ~2s)"
	bin/soak -mode reload -caddy bin/caddy -grace 1s -duration 20s -allow-cut \
		-concurrency "$CONCURRENCY" -reload-every 1s -stream-events 20 -stream-pace 100ms -settle "$SETTLE"
fi
