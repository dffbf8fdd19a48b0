#!/usr/bin/env bash
# Builds Caddy with this checkout of arbstr exactly as a user would, with a
# pinned xcaddy, then checks that the binary lists every arbstr module.
#
#   scripts/build-with-xcaddy.sh [OUTPUT]     (default: bin/caddy-xcaddy)
#
# The module is not published, so xcaddy is pointed at this checkout with
# --with github.com/arbstr/caddy-arbstr=<dir>. GOPROXY is the machine's own
# setting with a trailing ",direct" turned into "|off": modules come from the
# configured proxy (or the module cache), never straight from version control.
set -euo pipefail
cd "$(dirname "$0")/.."

XCADDY_VERSION=v0.4.5
checkout=$(pwd)
output=${1:-bin/caddy-xcaddy}
case "$output" in
/*) ;;
*) output="$checkout/$output" ;;
esac
mkdir -p "$(dirname "$output")"

# The Caddy version this module is built and tested against (go.mod).
caddy_version=$(awk '$1 == "github.com/caddyserver/caddy/v2" { print $2; exit }' go.mod)
GOPROXY=$(go env GOPROXY | sed 's/,direct$/|off/')
export GOPROXY

echo "xcaddy $XCADDY_VERSION: Caddy $caddy_version with github.com/arbstr/caddy-arbstr=$checkout"
echo "GOPROXY=$GOPROXY"
start=$(date +%s)
go run "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION" build "$caddy_version" \
	--with "github.com/arbstr/caddy-arbstr=$checkout" \
	--output "$output"
echo "built $output in $(($(date +%s) - start))s"

# Every module the root package registers (ID: "…" in its non-test sources)
# must be in the binary: that package is what --with brings in.
modules=$("$output" list-modules)
missing=0
sources=$(ls -- *.go | grep -v '_test\.go$')
for id in $(grep -ho 'ID: *"[^"]*"' -- $sources | sed 's/.*"\(.*\)"/\1/' | sort -u); do
	if grep -qx "$id" <<<"$modules"; then
		echo "listed: $id"
	else
		echo "MISSING from $output list-modules: $id"
		missing=1
	fi
done
grep -qx "http.handlers.arbstr" <<<"$modules" || missing=1
exit $missing
