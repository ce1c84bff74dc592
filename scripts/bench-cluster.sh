#!/usr/bin/env bash
# The load bench through the active node of a three-node cluster (issue: cluster vs single node).
#
#   scripts/bench-cluster.sh [extra run-bench.sh args]     e.g. --rates "2000 4000 6000 8000"
#
# Nodes 2 and 3 start first (on 127.0.0.2/.3); node 1 (SIP on 127.0.0.1:5070, like config/bench.toml) is the
# bench's peer, so its CPU and memory are what run-bench.sh samples. Node 1 initializes the cluster and, being
# the only one that can at first, becomes leader (the status printed at the end shows it). Replication
# to the two followers (fsync'd Raft log in a temp dir) runs during the whole ladder.
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
[log]
level = "warn"
[cluster]
listen = "127.0.0.$i:7070"
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
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for i in 2 3; do "$BIN" run --config "$DIR/n$i.toml" > "$DIR/n$i.log" 2>&1 & pids+=($!); done
"$BENCH" --no-direct --peer 127.0.0.1:5070 --peer-name sipfront-cluster \
  --peer-cmd "$BIN run --config $DIR/n1.toml" "$@"
"$BIN" status --config "$DIR/n1.toml" || true
