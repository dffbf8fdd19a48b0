#!/usr/bin/env bash
# End-to-end tests: the built Caddy with arbstr, driven by real clients.
#   1. build the binary once (bin/caddy, copied to a temp dir for the suites)
#   2. Node: the official `openai` and `@anthropic-ai/sdk` npm SDKs (e2e/node,
#      node --test)
#   3. Go: the official openai-go and anthropic-sdk-go SDKs (e2e/go, its own
#      module)
#   4. curl: scripts/demo.sh --once, exactly as the README runs it
# Suites 2 and 3 start their own Caddy on free ports of 127.0.0.1 from
# e2e/Caddyfile.tmpl; only the demo uses its fixed ports (8080-8082, 2019).
# Needs Go 1.26 and Node 20 with npm; fetches the rest (npm ci, the Go module
# proxy). Exits non-zero when any part fails; every part runs regardless.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

section() { printf '\n========== e2e: %s ==========\n' "$*"; }

failed=()
part() {
	local name=$1
	shift
	section "$name"
	local start=$SECONDS
	if "$@"; then
		echo "---------- e2e: $name: passed ($((SECONDS - start))s)"
	else
		echo "---------- e2e: $name: FAILED ($((SECONDS - start))s)"
		failed+=("$name")
	fi
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/arbstr-e2e.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

section "tools"
go version
node_major=$(node -p 'process.versions.node.split(".")[0]')
echo "node $(node --version), npm $(npm --version)"
if [ "$node_major" -lt 20 ]; then
	echo "Node 20 or later is needed (found $(node --version))"
	exit 1
fi
if ! command -v curl >/dev/null; then
	echo "curl is missing; installing it (the demo test runs it)"
	apt-get update -qq && apt-get install -y -qq curl
fi

section "build"
mkdir -p bin
go build -o bin/caddy ./cmd/caddy
# The suites run a copy, so that a rebuild of bin/caddy by someone running
# the demo meanwhile cannot change the binary under them.
cp bin/caddy "$tmp/caddy"
export ARBSTR_E2E_CADDY="$tmp/caddy"
"$ARBSTR_E2E_CADDY" list-modules | grep arbstr

node_suite() {
	(cd e2e/node && npm ci --no-audit --no-fund && node --test --test-reporter=spec)
}

go_suite() {
	# Its own module (e2e/go/go.mod): the root module's go test ./... never
	# enters it, and its dependencies come from the module proxy.
	(cd e2e/go && go test -count=1 -v ./...)
}

# ports_in_use prints those of the given ports that something listens on.
ports_in_use() {
	node -e '
		const net = require("net");
		const free = (port, host) => new Promise((resolve) => {
			const s = net.createServer();
			s.once("error", (e) => resolve(e.code === "EADDRNOTAVAIL" || e.code === "EAFNOSUPPORT"));
			s.listen({ port, host, ipv6Only: host === "::" }, () => s.close(() => resolve(true)));
		});
		(async () => {
			const busy = [];
			for (const p of process.argv.slice(1).map(Number)) {
				if (!(await free(p, "0.0.0.0")) || !(await free(p, "::"))) busy.push(p);
			}
			console.log(busy.join(" "));
		})();
	' "$@"
}

demo_test() {
	local busy
	busy=$(ports_in_use 8080 8081 8082 2019)
	if [ -n "$busy" ]; then
		echo "FAIL: the demo uses Caddyfile.example as written, on ports 8080, 8081, 8082 and 2019,"
		echo "but port(s) $busy are in use. Stop what listens there (ss -ltnp) and run again."
		return 1
	fi
	local out
	if ! out=$(scripts/demo.sh --once 2>&1); then
		echo "$out"
		echo "FAIL: scripts/demo.sh --once exited non-zero"
		return 1
	fi
	echo "$out"
	out=$(printf '%s\n' "$out" | tr -d '\r')
	local ok=0
	expect() {
		if printf '%s\n' "$out" | grep -Eiq "$1"; then
			echo "ok: $2"
		else
			echo "FAIL: $2"
			ok=1
		fi
	}
	expect '^HTTP/1\.1 200 ' 'the answer is HTTP 200'
	expect '^x-arbstr-provider: steady$' 'x-arbstr-provider: steady'
	expect '^x-arbstr-retries: 2/flaky$' 'x-arbstr-retries: 2/flaky'
	expect '^data: \{.*"content":"Hello' 'the stream carries the answer'
	if [ "$(printf '%s\n' "$out" | grep -v '^$' | tail -n 1)" = "data: [DONE]" ]; then
		echo "ok: the stream ends with data: [DONE]"
	else
		echo "FAIL: the stream does not end with data: [DONE]"
		ok=1
	fi
	busy=$(ports_in_use 8080 8081 8082 2019)
	if [ -n "$busy" ]; then
		echo "FAIL: the demo left port(s) $busy in use"
		ok=1
	fi
	return $ok
}

part "node: openai and anthropic npm SDKs" node_suite
part "go: openai-go and anthropic-sdk-go SDKs" go_suite
part "curl: scripts/demo.sh --once" demo_test

section "summary"
if [ ${#failed[@]} -ne 0 ]; then
	printf 'FAILED: %s\n' "${failed[@]}"
	exit 1
fi
echo "all end-to-end tests passed"
