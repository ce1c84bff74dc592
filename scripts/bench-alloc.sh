#!/usr/bin/env bash
# The allocator comparison (memory handed back to the OS after a load): one sipfront binary per allocator, each
# put through (1) the shared load bench (../shared/bench/run-bench.sh, Kamailio as the anchor in the same
# invocation) and (2) an INVITE flood against a silent PBX held by the transaction caps (as tests/attack.rs'
# invite_flood_is_held_by_the_transaction_cap_and_memory_comes_back), sampling sipfront's VmRSS and Pss every
# second from before the load until --tail seconds after it.
#
#   scripts/bench-alloc.sh [options]
#     --variants "V .."     glibc (malloc + the once-a-minute malloc_trim, the default build), glibc-notrim (the
#                           same binary with malloc_trim made a no-op by an LD_PRELOAD shim), mimalloc, jemalloc
#                           (features alloc-mimalloc / alloc-jemalloc), jemalloc-nobg (jemalloc with its background
#                           purge thread turned off at run time)              [glibc glibc-notrim mimalloc jemalloc]
#     --rates "R .."        the ladder's call rates, calls/s                  [2000 4000 6000]
#     --step-seconds N      each step places rate*N calls                     [10]
#     --tail "S .."         RSS reported this many seconds after the load     [10 30 60 90 120]
#     --flood "RATE MAX S"  the flood: INVITEs/s, at most MAX, at most S seconds   [2500 25000 10]
#     --no-ladder / --no-flood
#     --uas-port P          the ladder's SIPp UAS port on 127.0.0.1 (sipfront's backend in a copy of
#                           config/bench.toml); auto: the first of 5080 5082 .. 5088 that no one has bound  [auto]
#                           (Kamailio's port likewise: the first free of 5060 5062 .. 5068)
#     --nice N              autogroup nice of everything started here (as run-bench.sh --nice)   [-10]
#     --build               build the three binaries first (cargo build --release --no-default-features
#                           [--features alloc-X]; $CARGO_TARGET_DIR), copied to $BINS
#     --out DIR             results: table.md, per variant the bench folders, samples, logs
#                           [/tmp/sipfront-bench-alloc/run-DATE]
#
# Binaries: $BINS/sipfront-{glibc,mimalloc,jemalloc}, BINS default ${CARGO_TARGET_DIR:-target}/alloc-bins.
# Extra allocator settings per variant: $ENV_mimalloc / $ENV_jemalloc (e.g. ENV_jemalloc="_RJEM_MALLOC_CONF=
# background_thread:false"). Everything is on 127.0.0.x; every load is bounded (run-bench.sh's own bounds, the
# flood by count and time); only PIDs started here are stopped. Takes ~7 minutes per variant.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ORIG_ARGS=("$@")
HELP="$ROOT/scripts/bench-alloc.py"
BENCH=${BENCH:-$ROOT/../shared/bench/run-bench.sh}
[ -x "$BENCH" ] || BENCH=/work/shared/bench/run-bench.sh

VARIANTS="glibc glibc-notrim mimalloc jemalloc"
RATES="2000 4000 6000"
STEP_S=10
TAIL="10 30 60 90 120"
FLOOD="2500 25000 10"
LADDER=1; FLOODING=1; NICE=-10; BUILD=0; OUT=""; UAS_PORT=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --variants) VARIANTS=$2; shift 2;;
    --rates) RATES=$2; shift 2;;
    --step-seconds) STEP_S=$2; shift 2;;
    --tail) TAIL=$2; shift 2;;
    --flood) FLOOD=$2; shift 2;;
    --no-ladder) LADDER=0; shift;;
    --no-flood) FLOODING=0; shift;;
    --uas-port) UAS_PORT=$2; shift 2;;
    --nice) NICE=$2; shift 2;;
    --build) BUILD=1; shift;;
    --out) OUT=$2; shift 2;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done

# A session of our own and its autogroup nice (see ../shared/bench/README.md); run-bench.sh then stays in it
# (PB_SETSID), so sipfront (started here) and Kamailio (started there) share one autogroup.
if [ "$NICE" != 0 ] && [ -z "${BA_SETSID:-}" ]; then
  export BA_SETSID=1
  exec setsid --wait "$0" "${ORIG_ARGS[@]}"
fi
if [ "$NICE" != 0 ] && [ -w "/proc/$$/autogroup" ]; then echo "$NICE" > "/proc/$$/autogroup" 2>/dev/null; fi
export PB_SETSID=1

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BINS=${BINS:-$TARGET/alloc-bins}
OUT=${OUT:-/tmp/sipfront-bench-alloc/run-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" "$BINS"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
log "results in $OUT"

STARTED=()
stop_pid() {
  local p=$1 i
  kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null
  for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null; return 0; }; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null
}
cleanup() { local p; for p in "${STARTED[@]:-}"; do [ -n "$p" ] && stop_pid "$p"; done; STARTED=(); }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------------------ binaries
if [ "$BUILD" = 1 ]; then
  for a in glibc mimalloc jemalloc; do
    feat=(); [ "$a" != glibc ] && feat=(--features "alloc-$a")
    log "building $a"
    s=$SECONDS
    nice -n 10 cargo build --release --no-default-features "${feat[@]}" --bin sipfront >"$OUT/build-$a.log" 2>&1 \
      || { tail -20 "$OUT/build-$a.log" >&2; exit 1; }
    echo "$a: $((SECONDS - s)) s" >> "$OUT/build-times.txt"
    cp "$TARGET/release/sipfront" "$BINS/sipfront-$a"
  done
fi
NOTRIM_SO="$OUT/notrim.so"
printf 'int malloc_trim(unsigned long pad) { (void)pad; return 0; }\n' > "$OUT/notrim.c"
cc -shared -fPIC -O2 -o "$NOTRIM_SO" "$OUT/notrim.c" || exit 1

variant_bin() {
  case "$1" in
    glibc|glibc-notrim) echo "$BINS/sipfront-glibc";;
    jemalloc-nobg) echo "$BINS/sipfront-jemalloc";;
    *) echo "$BINS/sipfront-$1";;
  esac
}
variant_env() {
  case "$1" in
    glibc-notrim) echo "LD_PRELOAD=$NOTRIM_SO";;
    mimalloc) echo "${ENV_mimalloc:-}";;
    jemalloc) echo "${ENV_jemalloc:-}";;
    jemalloc-nobg) echo "_RJEM_MALLOC_CONF=background_thread:false";;
    *) echo "";;
  esac
}
for v in $VARIANTS; do
  b=$(variant_bin "$v"); [ -x "$b" ] || { echo "no binary $b for $v (--build?)" >&2; exit 2; }
done

# The trims are logged at debug by sipfront::memory ("allocator trimmed"): that target only, the rest at warn.
export RUST_LOG="warn,sipfront::memory=debug"
SF_PID=""; SAMPLER=""
start_sipfront() {  # $1 = variant, $2 = config, $3 = log, $4 = samples file; sets SF_PID
  local v=$1 bin env
  bin=$(variant_bin "$v"); env=$(variant_env "$v")
  # shellcheck disable=SC2086
  env $env nice -n "$NICE" "$bin" run --config "$2" > "$3" 2>&1 &
  SF_PID=$!; STARTED+=("$SF_PID")
  python3 "$HELP" sample "$SF_PID" "$4" --every 1 --max 1800 &
  SAMPLER=$!; STARTED+=("$SAMPLER")
  sleep 1
  kill -0 "$SF_PID" 2>/dev/null || { echo "sipfront ($v) did not start:" >&2; cat "$3" >&2; exit 1; }
}
stop_sipfront() { stop_pid "$SF_PID"; stop_pid "$SAMPLER"; SF_PID=""; SAMPLER=""; }
tail_max() { local m=0 x; for x in $TAIL; do [ "$x" -gt "$m" ] && m=$x; done; echo "$m"; }
sleep_until() { local now; now=$(date +%s.%N); awk -v a="$1" -v b="$now" 'BEGIN{d=a-b; if (d>0) print d; else print 0}' | xargs sleep; }

read -r FL_RATE FL_MAX FL_SECS <<< "$FLOOD"
BENCH_ARGS="--no-direct --rates \"$RATES\" --step-seconds $STEP_S --nice $NICE --peer 127.0.0.1:5070 --peer-name sipfront --peer-pid PID"
printf '{"date": "%s", "variants": %s, "bench_args": "%s", "flood": "%s INVITEs/s, at most %s, at most %s s, 127.0.2.1 -> sipfront 127.0.0.1:5074 -> silent PBX 127.0.1.1:5080; T1 100 ms, max_transactions 20000, per source 10000", "tail": "%s"}\n' \
  "$(date -Is)" "$(printf '%s\n' $VARIANTS | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().split()))')" \
  "${BENCH_ARGS//\"/\\\"}" "$FL_RATE" "$FL_MAX" "$FL_SECS" "$TAIL" > "$OUT/meta.json"

# The flood's sipfront: like tests/attack.rs (T1 100 ms, health 500 ms, the caps, the flooder exempt from the guard).
FLOOD_CFG="$OUT/flood.toml"
cat > "$FLOOD_CFG" <<'EOF'
[node]
id = 1
name = "alloc-flood"

[sip]
listen = ["udp:127.0.0.1:5074"]
advertise = "127.0.0.1"
max_transactions = 20000
max_transactions_per_source = 10000

[timers]
t1 = "100ms"

[security]
allow = ["127.0.2.1"]

[log]
level = "warn"

[[backend]]
name = "pbx"
uri = "sip:127.0.1.1:5080"

[health]
interval = "500ms"
timeout = "500ms"
down_after = 3
up_after = 2
EOF

TMAX=$(tail_max)
# run-bench.sh refuses a UAS port bound on any address (another session's SIPp on 127.0.77.2:5080 is enough).
port_busy() { ss -Hlun "sport = :$1" 2>/dev/null | grep -q . ; }
pick_uas_port() {
  local p
  if [ "$UAS_PORT" != auto ]; then echo "$UAS_PORT"; return; fi
  for p in 5080 5082 5084 5086 5088; do port_busy "$p" || { echo "$p"; return; }; done
  echo 5080
}
pick_kam_port() {   # the same for Kamailio's port (the attack tests of other sessions use 127.0.0.N:5060)
  local p
  for p in 5060 5062 5064 5066 5068; do port_busy "$p" || { echo "$p"; return; }; done
  echo 5060
}
LADDER_CFG="$OUT/bench.toml"
for v in $VARIANTS; do
  VD="$OUT/$v"; mkdir -p "$VD"
  bin=$(variant_bin "$v")
  printf '{"binary": "%s", "binary_mb": %s, "env": "%s"' "$(basename "$bin")" \
    "$(awk -v s="$(stat -c %s "$bin")" 'BEGIN{printf "%.1f", s/1048576}')" "$(variant_env "$v")" > "$VD/variant.json"

  if [ "$LADDER" = 1 ]; then
    log "== $v: ladder ($RATES calls/s, ${STEP_S} s steps), Kamailio first; uptime: $(uptime)"
    printf ', "uptime_ladder": "%s"' "$(uptime | sed 's/.*load/load/')" >> "$VD/variant.json"
    up=$(pick_uas_port); kp=$(pick_kam_port)
    sed "s#sip:127.0.0.1:5080#sip:127.0.0.1:$up#" "$ROOT/config/bench.toml" > "$LADDER_CFG"
    start_sipfront "$v" "$LADDER_CFG" "$VD/ladder-sipfront.log" "$VD/ladder-samples.txt"
    "$BENCH" --no-direct --rates "$RATES" --step-seconds "$STEP_S" --nice "$NICE" --out "$VD/ladder" \
      --uas-ports "$up" --peer 127.0.0.1:5070 --peer-name sipfront --peer-pid "$SF_PID" 127.0.0.1 "$kp" \
      > "$VD/ladder-bench.out" 2>&1
    # idle: just before the first sipfront step (its bg.json is written 1.5 s into the pre-step idle check);
    # end: the last step's start + its SIPp wall time.
    first=$(ls -d "$VD"/ladder/sipfront/step-* 2>/dev/null | head -1)
    last=$(ls -d "$VD"/ladder/sipfront/step-* 2>/dev/null | tail -1)
    if [ -n "$last" ]; then
      python3 - "$first" "$last" "$VD/ladder-times.json" <<'EOF'
import json, os, sys
first, last, out = sys.argv[1:4]
idle = os.path.getmtime(os.path.join(first, "bg.json")) - 2.0
wall = json.load(open(os.path.join(last, "meta.json")))["wall_s"]
end = os.path.getmtime(os.path.join(last, "bg.json")) + wall
json.dump({"idle": idle, "end": end}, open(out, "w"))
EOF
      end=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"])' "$VD/ladder-times.json")
      sleep_until "$(awk -v e="$end" -v t="$TMAX" 'BEGIN{printf "%.2f", e + t + 2}')"
    else
      log "$v: the ladder left no sipfront step (see $VD/ladder-bench.out)"
    fi
    stop_sipfront
    grep -E '^\s+sipfront|^\s+kamailio' "$VD/ladder-bench.out" >&2
  fi

  if [ "$FLOODING" = 1 ]; then
    log "== $v: flood ($FL_RATE/s, at most $FL_MAX, ${FL_SECS} s) at a silent PBX; uptime: $(uptime)"
    printf ', "uptime_flood": "%s"' "$(uptime | sed 's/.*load/load/')" >> "$VD/variant.json"
    timeout -k 5 $((FL_SECS + TMAX + 90)) python3 "$HELP" pbx 127.0.1.1:5080 --max $((FL_SECS + TMAX + 60)) &
    PBX=$!; STARTED+=("$PBX")
    start_sipfront "$v" "$FLOOD_CFG" "$VD/flood-sipfront.log" "$VD/flood-samples.txt"
    sleep 5   # the PBX marked up (2 probes at 500 ms), sipfront idle
    idle=$(date +%s.%N)
    nice -n "$NICE" timeout -k 5 $((FL_SECS + 30)) python3 "$HELP" flood 127.0.2.1 127.0.0.1:5074 \
      --rate "$FL_RATE" --max "$FL_MAX" --secs "$FL_SECS" > "$VD/flood.json"
    end=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"])' "$VD/flood.json" 2>/dev/null || date +%s)
    printf '{"idle": %s, "end": %s}\n' "$idle" "$end" > "$VD/flood-times.json"
    sleep_until "$(awk -v e="$end" -v t="$TMAX" 'BEGIN{printf "%.2f", e + t + 2}')"
    stop_sipfront; stop_pid "$PBX"
    log "$v: flood $(cat "$VD/flood.json")"
  fi
  echo "}" >> "$VD/variant.json"
done

python3 "$HELP" report "$OUT" --tail "$TAIL"
