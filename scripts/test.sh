#!/usr/bin/env bash
# The project's test command (README "Quick start", docs/development.md); .ci/run runs it too.
# Unit and integration tests (in-process Caddy on free ports of 127.0.0.1)
# under the race detector, short runs of every fuzz target, then the
# end-to-end tests that drive the built binary with the official SDKs, and
# a build of Caddy with xcaddy, as a user builds it.
set -euo pipefail
cd "$(dirname "$0")/.."

# A number of executions, not a duration: Go 1.26's fuzzing coordinator can
# fail a target with "context deadline exceeded" when a duration runs out
# while a worker is busy (golang/go#75804, fixed in Go 1.27); a count has
# no deadline. 10000 executions take 1–15 s per target here.
FUZZTIME=${FUZZTIME:-10000x}
# The dashboard's browser tests fail instead of skipping when chromium is
# missing (PostgreSQL tests always fail when the database is down).
export ARBSTR_REQUIRE_BROWSER=1

echo "== go vet"
go vet ./...

echo "== unit and integration tests (-race)"
# One package at a time: several packages start Caddy, which binds with
# SO_REUSEPORT, so two test processes could share a port that freePort
# found free (seen once: a request answered by the other process's Caddy).
go test -race -count=1 -p 1 ./...

echo "== fuzz targets, $FUZZTIME each"
# Every Fuzz function of every package (go test -fuzz takes one package and
# one target at a time).
for dir in $(go list -f '{{.Dir}}' ./...); do
	pkg=./${dir#"$PWD"/}
	[ "$dir" = "$PWD" ] && pkg=.
	for target in $(cat /dev/null "$dir"/*_test.go 2>/dev/null | grep -o '^func Fuzz[A-Za-z0-9_]*' | sed 's/^func //' | sort); do
		echo "-- $pkg $target"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 5s "$pkg"
	done
done

echo "== end-to-end tests"
e2e/run.sh

echo "== xcaddy build (as a user builds Caddy with arbstr)"
xcaddy_out=$(mktemp -d "${TMPDIR:-/tmp}/arbstr-xcaddy.XXXXXX")
trap 'rm -rf "$xcaddy_out"' EXIT
scripts/build-with-xcaddy.sh "$xcaddy_out/caddy"

# Each stage above stops the script on its first failure (set -e).
echo "stages: 5 passed, 0 failed"
