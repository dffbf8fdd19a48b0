#!/usr/bin/env bash
# The project's test command (README: "Run the tests"); .ci/run runs it too.
# Unit and integration tests (in-process Caddy on free ports of 127.0.0.1)
# under the race detector, short runs of every fuzz target, then the
# end-to-end tests that drive the built binary with the official SDKs, and
# a build of Caddy with xcaddy, as a user builds it.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZTIME=${FUZZTIME:-10s}

echo "== go vet"
go vet ./...

echo "== unit and integration tests (-race)"
go test -race -count=1 ./...

echo "== fuzz targets, $FUZZTIME each"
for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' *_test.go | sed 's/^func //' | sort); do
	echo "-- $target"
	go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 5s .
done

echo "== end-to-end tests"
e2e/run.sh

echo "== xcaddy build (as a user builds Caddy with arbstr)"
xcaddy_out=$(mktemp -d "${TMPDIR:-/tmp}/arbstr-xcaddy.XXXXXX")
trap 'rm -rf "$xcaddy_out"' EXIT
scripts/build-with-xcaddy.sh "$xcaddy_out/caddy"

# Each stage above stops the script on its first failure (set -e).
echo "stages: 5 passed, 0 failed"
