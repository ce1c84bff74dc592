#!/usr/bin/env bash
# The load bench over TLS next to UDP (issue 7): one generator (examples/sipload) for both transports, sipfront
# and Kamailio (the anchor, scripts/bench/kamailio-tls.cfg) running side by side, the same rate ladder, steps
# interleaved (for each rate: udp then tls, sipfront then kamailio) so background load hits both alike.
#
#   sipload uac --transport udp|tls ──▶ sipfront 127.0.0.1:5070 (udp) / :5071 (tls) ─┐
#                                  └──▶ kamailio 127.0.0.1:5060 (udp) / :5061 (tls) ─┴─UDP─▶ UAS 127.0.0.1:5080
#
#   scripts/bench-tls.sh [options]
#     --rates "250 500 .."   call-rate ladder, calls/s                      [$RATES]
#     --step-seconds N       each step places rate*N calls                  [10]
#     --hold-ms N            call hold time between ACK and BYE             [1000]
#     --connections K        TLS connections of the generator               [50]
#     --uas sipload|sipp     the PBX side: `sipload uas` or SIPp with tests/sipp/uas.xml   [sipload]
#     --no-kamailio          sipfront only
#     --stop-after-fails N   stop a (proxy, transport) ladder after N unclean steps in a row  [2]
#     --nice N               run everything under autogroup nice N (e.g. -10; see ../shared/bench/README.md)  [0]
#     --build                cargo build --release --no-default-features (binary and example) first
#     --out DIR              results (rows.jsonl, table.md, logs)           [/tmp/sipfront-bench-tls/run-DATE]
#
# Binaries: $SIPFRONT_BIN and $SIPLOAD_BIN, default ${CARGO_TARGET_DIR:-target}/release/{sipfront,examples/sipload}.
# A throwaway CA and server certificate are made per run (sipload gen-cert). Everything is on 127.0.0.1; every
# generator run is bounded (its own hard deadline, and coreutils timeout); only PIDs started here are stopped.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ORIG_ARGS=("$@")

RATES="250 500 1000 1500 2000 3000 4000"
STEP_S=10
HOLD_MS=1000
CONNS=50
UAS=sipload
RUN_KAM=1
STOP_AFTER=2
NICE=0
BUILD=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) RATES=$2; shift 2;;
    --step-seconds) STEP_S=$2; shift 2;;
    --hold-ms) HOLD_MS=$2; shift 2;;
    --connections) CONNS=$2; shift 2;;
    --uas) UAS=$2; shift 2;;
    --no-kamailio) RUN_KAM=0; shift;;
    --stop-after-fails) STOP_AFTER=$2; shift 2;;
    --nice) NICE=$2; shift 2;;
    --build) BUILD=1; shift;;
    --out) OUT=$2; shift 2;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done

# Under autogroup scheduling plain nice only ranks processes within one session: take a session of our own
# and set its autogroup nice (the shared bench does the same).
if [ "$NICE" != 0 ] && [ -z "${BT_SETSID:-}" ]; then
  export BT_SETSID=1
  exec setsid --wait "$0" "${ORIG_ARGS[@]}"
fi
if [ "$NICE" != 0 ] && [ -w "/proc/$$/autogroup" ]; then echo "$NICE" > "/proc/$$/autogroup" 2>/dev/null; fi

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SIPFRONT_BIN=${SIPFRONT_BIN:-$TARGET/release/sipfront}
SIPLOAD_BIN=${SIPLOAD_BIN:-$TARGET/release/examples/sipload}
if [ "$BUILD" = 1 ]; then
  # Two builds: one together would unify the example's dev-dependency features (tokio test-util) into sipfront.
  cargo build --release --no-default-features --bin sipfront || exit 1
  cargo build --release --no-default-features --example sipload || exit 1
fi
for b in "$SIPFRONT_BIN" "$SIPLOAD_BIN"; do
  [ -x "$b" ] || { echo "missing $b (run with --build)" >&2; exit 2; }
done
for b in python3 timeout ss; do command -v "$b" >/dev/null || { echo "missing $b" >&2; exit 2; }; done
if [ "$UAS" = sipp ]; then command -v sipp >/dev/null || { echo "missing sipp (apt-get install sip-tester)" >&2; exit 2; }; fi
KAM_MODS=/usr/lib/x86_64-linux-gnu/kamailio/modules
if [ "$RUN_KAM" = 1 ]; then
  command -v kamailio >/dev/null || { echo "missing kamailio (apt-get install kamailio), or --no-kamailio" >&2; exit 2; }
  if [ ! -e "$KAM_MODS/tls.so" ]; then
    echo "installing kamailio-tls-modules" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y kamailio-tls-modules >&2 || exit 2
  fi
fi

OUT=${OUT:-/tmp/sipfront-bench-tls/run-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# ------------------------------------------------------------ processes we own
STARTED=()
stop_pid() {
  local p=$1 i
  kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null
  for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null
}
cleanup() {
  local p
  for p in "${STARTED[@]:-}"; do [ -n "$p" ] && stop_pid "$p"; done
  wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

udp_busy() { ss -Hlun "sport = :$1" 2>/dev/null | grep -q .; }
tcp_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
wait_for() {  # $1 = udp|tcp, $2 = port
  local i; for i in $(seq 1 100); do "${1}_busy" "$2" && return 0; sleep 0.1; done; return 1
}
port_free() {  # $1 = udp|tcp, $2 = port; waits up to 10 s (a previous run's proxy may still be exiting)
  local i; for i in $(seq 1 100); do "${1}_busy" "$2" || return 0; sleep 0.1; done; return 1
}
for p in 5060 5070 5080; do port_free udp $p || { echo "UDP port $p busy (not ours)" >&2; exit 1; }; done
for p in 5061 5071; do port_free tcp $p || { echo "TCP port $p busy (not ours)" >&2; exit 1; }; done

# ------------------------------------------------------------ certificate, configs
"$SIPLOAD_BIN" gen-cert "$OUT/pki" 2>/dev/null || { echo "gen-cert failed" >&2; exit 1; }
cat > "$OUT/sipfront.toml" <<TOML
[node]
id = 1
name = "bench-tls"
[sip]
listen = ["udp:127.0.0.1:5070", "tls:127.0.0.1:5071"]
advertise = "127.0.0.1"
[tls]
cert_file = "$OUT/pki/server.crt"
key_file = "$OUT/pki/server.key"
[log]
level = "warn"
[[backend]]
name = "uas"
uri = "sip:127.0.0.1:5080"
[health]                # like the Kamailio anchor's dispatcher: an OPTIONS probe every second
interval = "1s"
timeout = "500ms"
TOML
echo "1 sip:127.0.0.1:5080 0 0" > "$OUT/dispatcher.list"

# ------------------------------------------------------------ start UAS, sipfront, kamailio
if [ "$UAS" = sipp ]; then
  nice -n "$NICE" sipp -sf "$ROOT/tests/sipp/uas.xml" -i 127.0.0.1 -p 5080 -aa -nostdin -bg \
    -buff_size 4194304 > "$OUT/uas.log" 2>&1 &
else
  nice -n "$NICE" "$SIPLOAD_BIN" --threads 1 uas --listen 127.0.0.1:5080 > "$OUT/uas.log" 2>&1 &
fi
UAS_PID=$!; STARTED+=("$UAS_PID")
wait_for udp 5080 || { echo "UAS did not start" >&2; cat "$OUT/uas.log" >&2; exit 1; }

nice -n "$NICE" "$SIPFRONT_BIN" run --config "$OUT/sipfront.toml" > "$OUT/sipfront.log" 2>&1 &
SF_PID=$!; STARTED+=("$SF_PID")
wait_for udp 5070 && wait_for tcp 5071 || { echo "sipfront did not start" >&2; cat "$OUT/sipfront.log" >&2; exit 1; }

KAM_PID=""
if [ "$RUN_KAM" = 1 ]; then
  # -n 2 UDP workers, -m 1024 MB, -x tlsf: the shared bench's settings for this 2-core box.
  nice -n "$NICE" kamailio -f "$ROOT/scripts/bench/kamailio-tls.cfg" -DD -E -m 1024 -M 8 -n 2 -x tlsf \
    -A "TLS_CERT=\"$OUT/pki/server.crt\"" -A "TLS_KEY=\"$OUT/pki/server.key\"" \
    -A "DSLIST=\"$OUT/dispatcher.list\"" -A "CTLSOCK=\"unix:$OUT/kamailio_ctl\"" > "$OUT/kamailio.log" 2>&1 &
  KAM_PID=$!; STARTED+=("$KAM_PID")
  wait_for udp 5060 && wait_for tcp 5061 || { echo "kamailio did not start" >&2; cat "$OUT/kamailio.log" >&2; exit 1; }
fi
sleep 3   # a few health-probe rounds: both proxies see the UAS up

{
  echo "date: $(date -Is)"; echo "host: $(uname -srm), $(nproc) cpu, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  "$SIPFRONT_BIN" --version 2>/dev/null; [ "$RUN_KAM" = 1 ] && kamailio -v | head -1
  echo "rates: $RATES; step ${STEP_S}s; hold ${HOLD_MS}ms; tls connections $CONNS; uas $UAS; nice $NICE"
} > "$OUT/env.txt"
log "results in $OUT"

# ------------------------------------------------------------ sampling
# CPU ticks (user+system, all threads) of a process and its direct children (kamailio's workers).
tree_ticks() {
  local p t=0 s
  for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
    s=$(cut -d')' -f2- "/proc/$p/stat" 2>/dev/null) || continue
    t=$((t + $(echo "$s" | awk '{print $12 + $13}')))
  done
  echo "$t"
}
tree_mem_kb() {  # "RSS PSS" in kB, summed over the tree (PSS shares shared memory out fairly)
  local p r=0 s=0 a b
  for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
    read -r a b < <(awk '/^Rss:/{r=$2} /^Pss:/{p=$2} END{print r+0, p+0}' "/proc/$p/smaps_rollup" 2>/dev/null) || continue
    r=$((r + a)); s=$((s + b))
  done
  echo "$r $s"
}
HZ=$(getconf CLK_TCK)
cpu_window() {  # $1 = pid, $2 = delay s, $3 = length s, $4 = out file: CPU % of one core over the window
  local a b
  sleep "$2"; a=$(tree_ticks "$1")
  sleep "$3"; b=$(tree_ticks "$1")
  awk -v a="$a" -v b="$b" -v hz="$HZ" -v l="$3" 'BEGIN{printf "%.1f\n", (b - a) * 100 / hz / l}' > "$4"
}

# ------------------------------------------------------------ one step
run_step() {  # $1 = peer name, $2 = pid, $3 = transport, $4 = port, $5 = rate
  local peer=$1 pid=$2 tr=$3 port=$4 rate=$5
  local calls=$((rate * STEP_S)) sd="$OUT/$peer-$tr-$rate"
  local tmo=$((STEP_S + HOLD_MS / 1000 + 30))
  local win=$((STEP_S - 2)); [ "$win" -lt 1 ] && win=1
  mkdir -p "$sd"
  local tls_args=()
  [ "$tr" = tls ] && tls_args=(--connections "$CONNS" --ca "$OUT/pki/ca.pem")
  cpu_window "$pid" 1 "$win" "$sd/cpu" &
  local wpid=$!
  nice -n "$NICE" timeout -k 5 "$tmo" "$SIPLOAD_BIN" uac --proxy "127.0.0.1:$port" --transport "$tr" \
    --rate "$rate" --calls "$calls" --hold-ms "$HOLD_MS" "${tls_args[@]}" > "$sd/uac.json" 2> "$sd/uac.log" &
  local upid=$!
  # The generator's own CPU over the same window (it shares the two cores).
  cpu_window "$upid" 1 "$win" "$sd/uac.cpu" &
  local gpid=$!
  wait "$upid"; local rc=$?
  wait "$wpid" "$gpid"
  read -r rss pss < <(tree_mem_kb "$pid")
  local alive=1; kill -0 "$pid" 2>/dev/null || alive=0
  python3 - "$sd" "$peer" "$tr" "$rate" "$rc" "$rss" "$pss" "$alive" >> "$OUT/rows.jsonl" <<'EOF'
import json, sys
sd, peer, tr, rate, rc, rss, pss, alive = sys.argv[1:]
rate = int(rate)
try:
    u = json.loads(open(f"{sd}/uac.json").read().strip().splitlines()[-1])
except Exception:
    u = {"attempted": rate, "succeeded": 0, "failed": 0, "timed_out": rate, "achieved_cps": 0,
         "setup_p50_ms": None, "setup_p99_ms": None, "retransmissions": 0}
def num(path):
    try:
        return float(open(path).read())
    except Exception:
        return None
clean = (int(rc) == 0 and u["succeeded"] == u["attempted"] and u["failed"] == 0 and u["timed_out"] == 0
         and u["achieved_cps"] >= 0.95 * rate)
row = {"peer": peer, "transport": tr, "rate": rate, "ok": u["succeeded"], "failed": u["failed"] + u["timed_out"],
       "achieved_cps": u["achieved_cps"], "p50_ms": u["setup_p50_ms"], "p99_ms": u["setup_p99_ms"],
       "retr": u["retransmissions"], "cpu": num(f"{sd}/cpu"), "gen_cpu": num(f"{sd}/uac.cpu"),
       "rss_mb": round(int(rss) / 1024, 1), "pss_mb": round(int(pss) / 1024, 1), "clean": clean,
       "died": alive != "1"}
if row["died"]:                     # its workers' ticks went with it: no CPU figure
    row["cpu"] = None
print(json.dumps(row))
EOF
  local row; row=$(tail -1 "$OUT/rows.jsonl")
  log "$peer $tr $rate/s: $(sed 's/.*sipload [a-z]* -> [^:]*: //' "$sd/uac.log" | tail -1) | cpu $(cat "$sd/cpu")% gen $(cat "$sd/uac.cpu")%"
  sleep 2
  echo "$row" | grep -q '"clean": true'
}

# ------------------------------------------------------------ the ladder, interleaved
declare -A FAILS
PEERS=("sipfront:$SF_PID:5070:5071")
[ "$RUN_KAM" = 1 ] && PEERS+=("kamailio:$KAM_PID:5060:5061")
for rate in $RATES; do
  for tr in udp tls; do
    for spec in "${PEERS[@]}"; do
      IFS=: read -r peer pid uport tport <<< "$spec"
      key="$peer-$tr"
      [ "${FAILS[$key]:-0}" -ge "$STOP_AFTER" ] && continue
      kill -0 "$pid" 2>/dev/null || { log "$peer died"; FAILS[$key]=$STOP_AFTER; continue; }
      port=$uport; [ "$tr" = tls ] && port=$tport
      if run_step "$peer" "$pid" "$tr" "$port" "$rate"; then FAILS[$key]=0; else FAILS[$key]=$((${FAILS[$key]:-0} + 1)); fi
    done
  done
done

# ------------------------------------------------------------ table
python3 - "$OUT/rows.jsonl" <<'EOF' | tee "$OUT/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["rate"], r["transport"], r["peer"]): r for r in rows}
def cell(r):
    if r is None:
        return "", "", ""
    verdict = f'{r["ok"]}/{r["failed"]}' + ("" if r["clean"] else " ✗") + (" (died)" if r.get("died") else "")
    return verdict, f'{r["cpu"]:.1f}' if r["cpu"] is not None else "?", r
print("| calls/s | transport | ok/failed sipfront | ok/failed kamailio | CPU % sipfront | CPU % kamailio | ratio | "
      "p50/p99 ms sipfront | p50/p99 ms kamailio | PSS MB sipfront | PSS MB kamailio |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for rate in sorted({r["rate"] for r in rows}):
    for tr in ("udp", "tls"):
        s, k = by.get((rate, tr, "sipfront")), by.get((rate, tr, "kamailio"))
        if s is None and k is None:
            continue
        sv, sc, _ = cell(s)
        kv, kc, _ = cell(k)
        ratio = ""
        if s and k and s["clean"] and k["clean"] and s["cpu"] and k["cpu"]:
            ratio = f'{s["cpu"] / k["cpu"]:.2f}'
        lat = lambda r: f'{r["p50_ms"]}/{r["p99_ms"]}' if r else ""
        pss = lambda r: f'{r["pss_mb"]}' if r else ""
        print(f"| {rate} | {tr} | {sv} | {kv} | {sc} | {kc} | {ratio} | {lat(s)} | {lat(k)} | {pss(s)} | {pss(k)} |")
print()
print("ratio = sipfront CPU / Kamailio CPU (both clean); CPU % of one core over the steady part of the step;"
      " ✗ = not clean (a failed or timed-out call, or < 95 % of the rate achieved)")
print()
for peer in ("sipfront", "kamailio"):
    for tr in ("udp", "tls"):
        ok = [r["rate"] for r in rows if r["peer"] == peer and r["transport"] == tr and r["clean"]]
        if any(r["peer"] == peer for r in rows):
            print(f"highest clean rate {peer} {tr}: {max(ok) if ok else 'none'}")
for peer in ("sipfront", "kamailio"):
    pairs = [(by[(r, "tls", peer)], by[(r, "udp", peer)]) for r in sorted({x["rate"] for x in rows})
             if (r, "tls", peer) in by and (r, "udp", peer) in by]
    pairs = [f'{t["rate"]}: {t["cpu"] / u["cpu"]:.2f}' for t, u in pairs if t["clean"] and u["clean"] and u["cpu"]]
    if pairs:
        print(f"{peer} CPU tls/udp: " + ", ".join(pairs))
EOF
log "done: $OUT/table.md"
