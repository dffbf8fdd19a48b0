#!/usr/bin/env bash
# bench/run.sh — arbstr against Caddy's own reverse_proxy, in one Caddy
# process and one run, so that every figure is a ratio against a baseline
# measured on the same machine at the same time (the load generator shares
# the CPU with Caddy: absolute numbers mean little, ratios do).
#
# One Caddy serves, on free ports of 127.0.0.1:
#   - a stand-in upstream (arbstr_standin, no latency): /plain/ answers at
#     once, /stream/ sends 200-event streams unpaced, /stall/ sends the first
#     events of a stream and then stays silent;
#   - a reverse_proxy site to it (the baseline);
#   - an arbstr site: one provider per stand-in path, and /p10/, /p100/,
#     /p1000/ with that many providers (one cheap, all at the same upstream).
# Measured, in alternating A/B rounds: non-streaming throughput and latency
# (wrk), streaming time to first event and per event (chat completions and
# the Responses API), latency by request
# body size and by number of providers, Caddy's CPU time per request, memory
# under load and per idle stream (each variant in a fresh Caddy), and, unless
# LEDGER=off, arbstr with the ledger on vs 'ledger off' (alternating rounds,
# switched by a config reload). Results:
# bench/out/results.md (and the table on stdout), raw figures in raw.txt,
# heap profiles of the held streams in heap-held-*.pprof / *.top.txt.
#
#   bench/run.sh             full run (~3-4 minutes)
#   QUICK=1 bench/run.sh     smoke check (~1 minute)
#   LEDGER=off bench/run.sh  without the ledger (default: SQLite, as installed)
#   LEDGER=postgres bench/run.sh
#                            the ledger in PostgreSQL: a database of its own,
#                            created and dropped by the run, on the server of
#                            PG_SERVER (default postgres://postgres@127.0.0.1:5432;
#                            psql must be installed)
#   PROFILE=1 bench/run.sh   also CPU profiles of Caddy under the non-streaming
#                            load, arbstr and reverse_proxy (bench/out/cpu-*)
#
# It exits non-zero only when something fails (a build, a non-2xx answer, a
# broken stream), never because a figure is slow: it is a benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=bench/out
mkdir -p "$OUT" bin
QUICK=${QUICK:-0}
PROFILE=${PROFILE:-0}
CONNS=32
THREADS=2
if [ "$QUICK" = 1 ]; then
	ROUNDS=2 NS_SECS=2 LAT_SECS=1 STREAMS=30 HOLD=200
else
	ROUNDS=4 NS_SECS=5 LAT_SECS=3 STREAMS=200 HOLD=1000
fi

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

if ! command -v wrk >/dev/null; then
	log "installing wrk"
	apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi

log "building bin/caddy and the bench tool"
go build -o bin/caddy ./cmd/caddy
go build -o "$OUT/benchtool" ./bench/benchtool
TOOL=$OUT/benchtool

read -r ADMIN_PORT UP_PORT RP_PORT ARB_PORT < <("$TOOL" ports 4)
ADMIN=http://127.0.0.1:$ADMIN_PORT
UP=http://127.0.0.1:$UP_PORT
RP=http://127.0.0.1:$RP_PORT
ARB=http://127.0.0.1:$ARB_PORT
CHAT=v1/chat/completions

# --- request bodies -------------------------------------------------------
SYSTEM='You are a helpful assistant.'
printf '{"model":"bench-model","messages":[{"role":"system","content":"%s"},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":64}' \
	"$SYSTEM" >"$OUT/body_small.json"
printf '{"model":"bench-model","stream":true,"messages":[{"role":"system","content":"%s"},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":64}' \
	"$SYSTEM" >"$OUT/body_stream.json"
printf '{"model":"bench-model","stream":true,"instructions":"%s","input":"Say hello in one short sentence.","max_output_tokens":64}' \
	"$SYSTEM" >"$OUT/body_responses.json"
# body_sized NAME BYTES: a chat request of exactly BYTES bytes, padded with
# prose in the user message (what large bodies are: long prompts).
body_sized() {
	local head='{"model":"bench-model","messages":[{"role":"user","content":"' tail='"}],"max_tokens":64}'
	local pad=$(($2 - ${#head} - ${#tail}))
	{
		printf '%s' "$head"
		# (a process substitution: yes dying of SIGPIPE must not trip pipefail)
		head -c "$pad" < <(yes 'Lorem ipsum dolor sit amet, consectetur adipiscing elit.' | tr '\n' ' ')
		printf '%s' "$tail"
	} >"$OUT/body_$1.json"
}
body_sized 1k 1024
body_sized 100k 102400
body_sized 2m 2097152

# --- Caddyfile --------------------------------------------------------------
# providers N PATH: N providers at the stand-in's PATH, rates all different;
# the cheapest, "cheap", sits in the middle so that no list order favours it.
providers() {
	local n=$1 path=$2 i
	for ((i = 0; i < n; i++)); do
		if ((i == n / 2)); then
			printf '\t\tprovider cheap {\n\t\t\turl %s/%s/v1\n\t\t\tmodels bench-model\n\t\t\tinput_rate 1\n\t\t\toutput_rate 2\n\t\t}\n' "$UP" "$path"
		else
			printf '\t\tprovider p%04d {\n\t\t\turl %s/%s/v1\n\t\t\tmodels bench-model other-model\n\t\t\tinput_rate %d\n\t\t\toutput_rate %d\n\t\t\tbase_fee %d\n\t\t}\n' \
				"$i" "$UP" "$path" $((1000 + i * 37 % 997)) $((2000 + i * 53 % 991)) $((i % 3))
		fi
	done
}
arbstr_handle() { # PREFIX N STANDIN_PATH
	printf '\thandle /%s/* {\n\t\tarbstr {\n' "$1"
	providers "$2" "$3" | sed 's/^/\t/'
	printf '\t\t}\n\t}\n'
}
CADDYFILE=$OUT/Caddyfile
# The ledger as a fresh install has it (SQLite), in the output folder;
# LEDGER=off measures the router without it; LEDGER=postgres puts it in a
# fresh PostgreSQL database, dropped when the run ends.
LEDGER=${LEDGER:-sqlite $OUT/ledger.db}
rm -f "$OUT"/ledger.db*
PG_DB=
if [ "$LEDGER" = postgres ]; then
	command -v psql >/dev/null || die "LEDGER=postgres needs psql"
	PG_SERVER=${PG_SERVER:-postgres://postgres@127.0.0.1:5432}
	PG_DB=arbstr_bench_$$
	psql -q "$PG_SERVER/postgres?sslmode=disable" -c "CREATE DATABASE $PG_DB" ||
		die "cannot create database $PG_DB on $PG_SERVER; is PostgreSQL running?"
	LEDGER="postgres $PG_SERVER/$PG_DB?sslmode=disable"
fi
drop_pg_db() {
	[ -z "$PG_DB" ] || psql -q "$PG_SERVER/postgres?sslmode=disable" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" || true
}
{
	cat <<EOF
{
	admin 127.0.0.1:$ADMIN_PORT
	persist_config off
	auto_https off
	skip_install_trust
	grace_period 2s
	log {
		level ERROR
	}
	arbstr {
		ledger $LEDGER
	}
}

# The stand-in upstream: instant answers.
$UP {
	handle /plain/* {
		arbstr_standin
	}
	handle /stream/* {
		arbstr_standin {
			events 200
		}
	}
	handle /stall/* {
		arbstr_standin {
			first_token 0
			fault stall
			fault_after 1
		}
	}
}

# Baseline: Caddy's reverse_proxy, same paths.
$RP {
	handle /plain/* {
		reverse_proxy 127.0.0.1:$UP_PORT
	}
	handle /stream/* {
		reverse_proxy 127.0.0.1:$UP_PORT
	}
	handle /stall/* {
		reverse_proxy 127.0.0.1:$UP_PORT
	}
}

$ARB {
EOF
	arbstr_handle plain 1 plain
	arbstr_handle stream 1 stream
	arbstr_handle stall 1 stall
	arbstr_handle p10 10 plain
	arbstr_handle p100 100 plain
	arbstr_handle p1000 1000 plain
	echo "}"
} >"$CADDYFILE"

# --- Caddy ------------------------------------------------------------------
CADDY_PID=
start_caddy() {
	log "starting Caddy (admin $ADMIN)"
	bin/caddy run --config "$CADDYFILE" --adapter caddyfile >>"$OUT/caddy.log" 2>&1 &
	CADDY_PID=$!
	for _ in $(seq 200); do
		curl -fsS -o /dev/null "$ARB/plain/v1/models" 2>/dev/null && return 0
		kill -0 "$CADDY_PID" 2>/dev/null || { cat "$OUT/caddy.log" >&2; die "Caddy exited"; }
		sleep 0.1
	done
	die "Caddy did not come up; see $OUT/caddy.log"
}
stop_caddy() {
	if [ -n "$CADDY_PID" ] && kill -0 "$CADDY_PID" 2>/dev/null; then
		kill "$CADDY_PID" 2>/dev/null || true
		wait "$CADDY_PID" 2>/dev/null || true
	fi
	CADDY_PID=
}
trap 'stop_caddy; drop_pg_db' EXIT
: >"$OUT/caddy.log"
start_caddy

# check URL BODY [PROVIDER]: one request must succeed (and be served by
# PROVIDER), so that no figure below is the speed of an error.
check() {
	local hdr
	hdr=$(curl -sS -o /dev/null -D - -w '%{http_code}' -H 'Content-Type: application/json' --data-binary "@$2" "$1") ||
		die "POST $1 failed"
	[ "$(tail -n1 <<<"$hdr")" = 200 ] || die "POST $1: status $(tail -n1 <<<"$hdr")"
	if [ -n "${3:-}" ]; then
		grep -qi "^x-arbstr-provider: $3" <<<"$hdr" || die "POST $1 was not served by provider $3"
	fi
}
check "$RP/plain/$CHAT" "$OUT/body_small.json"
check "$ARB/plain/$CHAT" "$OUT/body_small.json" cheap
for n in 10 100 1000; do check "$ARB/p$n/$CHAT" "$OUT/body_small.json" cheap; done
for s in 1k 100k 2m; do
	check "$RP/plain/$CHAT" "$OUT/body_$s.json"
	check "$ARB/plain/$CHAT" "$OUT/body_$s.json" cheap
done

RAW=$OUT/raw.txt
: >"$RAW"
# record GROUP VARIANT ROUND "k=v k=v...": one raw line per figure.
record() {
	local g=$1 v=$2 r=$3 kv
	for kv in $4; do
		echo "$g ${kv%%=*} $v $r ${kv#*=}" >>"$RAW"
	done
}
url_of() { # VARIANT PATH [API_PATH, default chat completions]
	case $1 in
	rp) echo "$RP/$2/${3:-$CHAT}" ;;
	*) echo "$ARB/$2/${3:-$CHAT}" ;;
	esac
}
# order ROUND: the two variants, swapped every other round (A B, B A, ...)
# so that drift over the run weighs on both alike.
order() { if (($1 % 2)); then echo "arbstr rp"; else echo "rp arbstr"; fi; }

# Caddy's CPU time (user + system, all threads) in clock ticks: a steadier
# figure than wall time when the load generator and other processes compete
# for the cores. It includes the stand-in's share, the same for A and B.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$CADDY_PID/stat"; }
# per N TICKS: CPU µs per unit
per() { awk -v n="$1" -v t="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0) ? (t * 1e6 / hz / n) : 0 }'; }

# wrk_run CONNS THREADS SECS URL BODY: prints the WRK line's pairs and
# cpu_us, Caddy's CPU time per request.
wrk_run() {
	local out t0 reqs
	t0=$(cpu_ticks)
	out=$(wrk -c "$1" -t "$2" -d "${3}s" --timeout 10s -s bench/wrk.lua "$4" -- "$5" 2>&1) ||
		die "wrk failed: $out"
	out=$(grep '^WRK ' <<<"$out") || die "wrk printed no summary"
	[[ $out == *" errors=0" ]] || die "wrk saw failed requests against $4: $out"
	reqs=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$out")
	echo "${out#WRK } cpu_us=$(per "$reqs" $(($(cpu_ticks) - t0)))"
}

# db_ticks: CPU ticks of the machine's PostgreSQL processes (server and
# backends), for LEDGER=postgres.
db_ticks() {
	cat /proc/[0-9]*/stat 2>/dev/null | awk '$2 == "(postgres)" { t += $14 + $15 } END { print t + 0 }'
}
hwm_reset() { echo 5 >"/proc/$CADDY_PID/clear_refs"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$CADDY_PID/status"; }

# --- 1. non-streaming throughput and latency -------------------------------
log "warm-up"
for v in arbstr rp; do wrk_run $CONNS $THREADS 1 "$(url_of $v plain)" "$OUT/body_small.json" >/dev/null; done

log "non-streaming: $ROUNDS rounds × ${NS_SECS}s per variant, $CONNS connections"
for ((r = 1; r <= ROUNDS; r++)); do
	for v in $(order $r); do
		hwm_reset
		res=$(wrk_run $CONNS $THREADS "$NS_SECS" "$(url_of $v plain)" "$OUT/body_small.json")
		record nonstream $v $r "$res hwm_kb=$(hwm_kb)"
		log "  round $r $v: $res"
	done
done

if [ "$PROFILE" = 1 ]; then
	for v in arbstr rp; do
		log "CPU profile of Caddy under the $v load (5s)"
		curl -fsS -o "$OUT/cpu-$v.pprof" "$ADMIN/debug/pprof/profile?seconds=5" &
		cpid=$!
		wrk_run $CONNS $THREADS 6 "$(url_of $v plain)" "$OUT/body_small.json" >/dev/null
		wait $cpid || die "profile download failed"
		go tool pprof -top -nodecount=40 bin/caddy "$OUT/cpu-$v.pprof" >"$OUT/cpu-$v.top.txt" 2>/dev/null
		go tool pprof -top -cum -nodecount=60 bin/caddy "$OUT/cpu-$v.pprof" >"$OUT/cpu-$v.cum.txt" 2>/dev/null
	done
fi

# --- 1b. the ledger on vs off -------------------------------------------------
# The same load against arbstr with the run's ledger and with 'ledger off',
# switched by a config reload between rounds, alternating, so that both
# see the same machine at the same time.
if [ "${LEDGER%% *}" != off ]; then
	CADDYFILE_OFF=$OUT/Caddyfile.ledger-off
	sed -E 's/^(\s*)ledger .*/\1ledger off/' "$CADDYFILE" >"$CADDYFILE_OFF"
	use_config() {
		bin/caddy reload --config "$1" --adapter caddyfile --address "127.0.0.1:$ADMIN_PORT" >>"$OUT/caddy.log" 2>&1 ||
			die "caddy reload --config $1 failed; see $OUT/caddy.log"
	}
	LEDGER_ROUNDS=$((ROUNDS < 4 ? 4 : ROUNDS))
	log "ledger on vs off: $LEDGER_ROUNDS rounds × ${NS_SECS}s per variant, $CONNS connections"
	for ((r = 1; r <= LEDGER_ROUNDS; r++)); do
		variants="on off"
		((r % 2)) || variants="off on"
		for v in $variants; do
			if [ "$v" = on ]; then use_config "$CADDYFILE"; else use_config "$CADDYFILE_OFF"; fi
			wrk_run $CONNS $THREADS 1 "$(url_of arbstr plain)" "$OUT/body_small.json" >/dev/null
			t0=$(db_ticks)
			res=$(wrk_run $CONNS $THREADS "$NS_SECS" "$(url_of arbstr plain)" "$OUT/body_small.json")
			if [ -n "$PG_DB" ]; then
				# The database server shares the machine: its CPU is the
				# ledger's cost as much as Caddy's own.
				db_us=$(per "$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$res")" $(($(db_ticks) - t0)))
				res="$res db_cpu_us=$db_us all_cpu_us=$(awk -v a="${res##*cpu_us=}" -v b="$db_us" 'BEGIN { printf "%.1f", a + b }')"
			fi
			record ledger $v $r "$res"
			log "  round $r ledger $v: $res"
		done
	done
	use_config "$CADDYFILE"
fi

# --- 2. streaming: first event and per event --------------------------------
# stream_rounds GROUP API_PATH BODY: streams of 200 events through both
# variants, alternating rounds.
stream_rounds() {
	local group=$1 api=$2 body=$3 r v t0 res
	"$TOOL" stream -url "$(url_of arbstr stream "$api")" -body "$body" -n 3 -warmup 2 >/dev/null
	"$TOOL" stream -url "$(url_of rp stream "$api")" -body "$body" -n 3 -warmup 2 >/dev/null
	for ((r = 1; r <= ROUNDS; r++)); do
		for v in $(order $r); do
			t0=$(cpu_ticks)
			res=$("$TOOL" stream -url "$(url_of $v stream "$api")" -body "$body" -n "$STREAMS" -warmup 0 -events 200) ||
				die "$group benchmark failed ($v)"
			res="$res cpu_us=$(per "$STREAMS" $(($(cpu_ticks) - t0)))"
			record "$group" $v $r "$res"
			log "  round $r $v: $res"
		done
	done
}
log "streaming: $ROUNDS rounds × $STREAMS streams of 200 events per variant"
stream_rounds stream "$CHAT" "$OUT/body_stream.json"

# --- 2b. Responses API streams: the same, with named events ----------------
log "Responses streams: $ROUNDS rounds × $STREAMS streams of 200 deltas per variant"
stream_rounds responses v1/responses "$OUT/body_responses.json"

# --- 3. cost growth: body size, number of providers -------------------------
log "body size: 1 KB, 100 KB, 2 MB; $ROUNDS rounds × ${LAT_SECS}s, 1 connection"
for s in 1k 100k 2m; do
	for ((r = 1; r <= ROUNDS; r++)); do
		for v in $(order $r); do
			res=$(wrk_run 1 1 "$LAT_SECS" "$(url_of $v plain)" "$OUT/body_$s.json")
			record "body_$s" $v $r "$res"
			log "  $s round $r $v: $res"
		done
	done
done

log "providers: 1, 10, 100, 1000; $ROUNDS rounds × ${LAT_SECS}s, 1 connection"
for ((r = 1; r <= ROUNDS; r++)); do
	ns="1 10 100 1000"
	if ((r % 2 == 0)); then ns="1000 100 10 1"; fi
	for n in $ns; do
		path=p$n
		[ "$n" = 1 ] && path=plain
		res=$(wrk_run 1 1 "$LAT_SECS" "$(url_of arbstr $path)" "$OUT/body_small.json")
		record "providers_$n" arbstr $r "$res"
		log "  round $r $n providers: $res"
	done
done

# --- 4. memory per idle stream -----------------------------------------------
# A fresh Caddy for each variant: the Go heap and RSS keep the marks of
# earlier work, which would flatter whichever variant came second.
log "idle streams: $HOLD held open at once, per variant, each in a fresh Caddy"
for v in rp arbstr; do
	stop_caddy
	start_caddy
	res=$("$TOOL" hold -url "$(url_of $v stall)" -body "$OUT/body_stream.json" -n "$HOLD" -admin "$ADMIN" -pid "$CADDY_PID" \
		-heapprofile "$OUT/heap-held-$v.pprof") || die "holding $HOLD streams failed ($v)"
	go tool pprof -top -sample_index=inuse_space -nodecount=25 bin/caddy "$OUT/heap-held-$v.pprof" \
		>"$OUT/heap-held-$v.top.txt" 2>/dev/null || true
	record idle $v 1 "$(tr '\n' ' ' <<<"$res")"
	log "  $v: $(tr '\n' ' ' <<<"$res")"
done

# --- summary -----------------------------------------------------------------
mode="full"
[ "$QUICK" = 1 ] && mode="QUICK=1"
{
	echo "# arbstr benchmark results"
	echo
	echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $mode run of \`bench/run.sh\` (ledger: ${LEDGER%% *}); $(nproc) cores, $(go env GOVERSION), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- '*.go' 2>/dev/null || echo ' + local changes')."
	echo "One Caddy process serves the stand-in upstream, the reverse_proxy baseline and arbstr; the load"
	echo "generator runs on the same cores. Ratio = arbstr / baseline, median over $ROUNDS alternating rounds"
	echo "(range in brackets). Lower is better except for throughput."
	"$TOOL" report -raw "$RAW"
} >"$OUT/results.md"
echo
cat "$OUT/results.md"
log "written to $OUT/results.md (raw figures: $RAW)"
