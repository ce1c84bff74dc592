#!/usr/bin/env bash
# The load bench through the active node of a three-node cluster (issue: cluster vs single node).
#
#   scripts/bench-cluster.sh [extra run-bench.sh args]     e.g. --rates "2000 4000 6000 8000"
#
# Nodes 2 and 3 start first (on 127.0.0.2/.3); node 1 (SIP on 127.0.0.1:5070, like config/bench.toml) is the
# bench's peer, so its CPU and memory are what run-bench.sh samples. Node 1 initializes the cluster and, being
# the only one that can at first, becomes leader (the status printed at the end shows it). Replication
# to the two followers (fsync'd Raft log in a temp dir) runs during the whole ladder.
#
# The cluster's timing comes from ELECTION_TIMEOUT and HEARTBEAT (default: sipfront's defaults). At the end each
# node's term, leader and VIP acquire/release counters are read from its /metrics (admin on 127.0.0.$i:9090):
# a leader change or a release during the run is a false failover, and the script exits 3.
#   ELECTION_TIMEOUT=80ms HEARTBEAT=20ms scripts/bench-cluster.sh --no-kamailio --rates 8000 --step-seconds 600
set -eu -o pipefail
cd "$(dirname "$0")/.."
BIN=${SIPFRONT_BIN:-target/release/sipfront}
BENCH=${BENCH:-../shared/bench/run-bench.sh}
DIR=$(mktemp -d /tmp/sipfront-bench-cluster.XXXXXX)
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/key"
for i in 1 2 3; do
  cat > "$DIR/n$i.toml" <<TOML
[node]
id = $i
name = "bench-$i"
[sip]
listen = ["udp:127.0.0.$i:5070"]
advertise = "127.0.0.$i"
max_transactions_per_source = 20000
[dialogs]
max_per_source = 100000      # SIPp on loopback is one source for thousands of phones (as in config/bench.toml)
[security]
allow = ["127.0.0.0/8", "::1"]
[log]
level = "${LOG_LEVEL:-warn}"
[admin]
listen = "127.0.0.$i:9090"
[cluster]
listen = "127.0.0.$i:7070"
election_timeout = "${ELECTION_TIMEOUT:-300ms}"
heartbeat = "${HEARTBEAT:-60ms}"
peers = [ { id = 1, addr = "127.0.0.1:7070" }, { id = 2, addr = "127.0.0.2:7070" }, { id = 3, addr = "127.0.0.3:7070" } ]
secret_file = "$DIR/key"
data_dir = "$DIR/n$i"
[[backend]]
name = "uas"
uri = "sip:127.0.0.1:5080"
[health]
interval = "1s"
timeout = "500ms"
TOML
done
pids=()
# The nodes' logs are kept in $LOGS (if set) when the run ends.
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  if [ -n "${LOGS:-}" ]; then mkdir -p "$LOGS" && cp "$DIR"/n*.log "$LOGS"/ && echo "bench-cluster: logs in $LOGS"; fi
  rm -rf "$DIR"
}
trap cleanup EXIT
for i in 1 2 3; do "$BIN" run --config "$DIR/n$i.toml" > "$DIR/n$i.log" 2>&1 & pids+=($!); done
n1=${pids[0]}
metrics() { curl -s --max-time 5 "http://127.0.0.$1:9090/metrics" || true; }
value() { awk -v k="$2" '$1 == k {print $2}' <<<"$1"; }   # value METRICS_TEXT NAME
metric() { value "$(metrics "$1")" "$2"; }
for _ in $(seq 100); do [ "$(metric 1 sipfront_vip_held 2>/dev/null)" = 1 ] && break; sleep 0.1; done
term0=$(metric 1 sipfront_cluster_term)
echo "bench-cluster: node 1 leads, term ${term0:-?}"
"$BENCH" --no-direct --peer 127.0.0.1:5070 --peer-name sipfront-cluster --peer-pid "$n1" "$@"
"$BIN" status --config "$DIR/n1.toml" || true
# Every node still runs: a leader change, a VIP given up or taken again during the run is a false failover.
false_failover=0
for i in 1 2 3; do
  m=$(metrics "$i")
  term=$(value "$m" sipfront_cluster_term) leader=$(value "$m" sipfront_cluster_leader_id)
  acq=$(value "$m" 'sipfront_vip_changes_total{action="acquire"}')
  rel=$(value "$m" 'sipfront_vip_changes_total{action="release"}')
  echo "bench-cluster: node $i: term ${term:-?}, leader ${leader:-?}, VIP taken ${acq:-0} / released ${rel:-0} times"
  want_acq=0; [ "$i" = 1 ] && want_acq=1
  [ "${term:-x}" = "${term0:-y}" ] && [ "${leader:-x}" = 1 ] && [ "${acq:-0}" = "$want_acq" ] && [ "${rel:-0}" = 0 ] ||
    false_failover=1
done
grep -h "released the VIP\|leader without a quorum\|no leader" "$DIR"/n*.log | head -5 || true
echo "bench-cluster: election ${ELECTION_TIMEOUT:-300ms}, heartbeat ${HEARTBEAT:-60ms}"
if [ "$false_failover" != 0 ]; then echo "bench-cluster: FALSE FAILOVER during the run"; exit 3; fi
echo "bench-cluster: no leader change and no VIP release during the run"
