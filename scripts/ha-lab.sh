#!/usr/bin/env bash
# The peer lab (issue 16, tests/ha_lab.rs): sipfront's failover beside Kamailio + keepalived (VRRPv2 1 s, VRRPv3
# 0.1 s) and Kamailio + Pacemaker/Corosync, in the same network namespaces with the same phones, prober and
# calls. Installs what is missing (SIPp, iproute2, Kamailio, keepalived, Pacemaker, Corosync, crmsh, the resource
# agents, sipsak for the Kamailio agent's monitor), builds, runs the ignored `full` test and prints the table.
#
#   sudo scripts/ha-lab.sh                  # 5 trials per fault and stack, ~25-35 minutes
#   HA_LAB_TRIALS=1 scripts/ha-lab.sh       # a quick pass
#   HA_LAB_STACKS=sipfront,vrrp3 scripts/ha-lab.sh     # some stacks only (sipfront, vrrp2, vrrp3, pacemaker3s, pacemaker1s)
#   HA_LAB_OUT=/tmp/table.md scripts/ha-lab.sh         # where the table goes (default target/ha-lab/table.md)
#
# Root only (network namespaces). Nothing is started on the host's own network: every daemon runs in the lab's
# namespaces under `timeout -s KILL`, and the lab removes them when it ends. Keep other load off the machine:
# the times measured are the stacks', and two cores are easily shared away.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$PATH:/usr/sbin:/sbin"

[ "$(id -u)" = 0 ] || { echo "ha-lab.sh: needs root (ip netns, veth, VRRP)" >&2; exit 1; }

need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
{ command -v ip && command -v bridge; } >/dev/null 2>&1 || need+=(iproute2)
command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
command -v keepalived >/dev/null 2>&1 || need+=(keepalived)
command -v corosync >/dev/null 2>&1 || need+=(corosync)
command -v pacemakerd >/dev/null 2>&1 || need+=(pacemaker)
command -v crm >/dev/null 2>&1 || need+=(crmsh)
[ -x /usr/lib/ocf/resource.d/heartbeat/IPaddr2 ] || need+=(resource-agents)
command -v sipsak >/dev/null 2>&1 || need+=(sipsak)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "ha-lab.sh: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The Debian packages enable their services; the lab runs its own copies inside namespaces, never the host's.
for svc in keepalived corosync pacemaker; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    echo "ha-lab.sh: note: $svc is running on the host; the lab does not use or touch it"
  fi
done
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (rustup.rs)" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sipfront-ci}"
export HA_LAB_OUT="${HA_LAB_OUT:-$PWD/target/ha-lab/table.md}"
cargo test --no-run --test ha_lab
echo "ha-lab.sh: load before: $(uptime)"
# The test prints the table and writes it to $HA_LAB_OUT; its progress lines go to stderr.
cargo test --test ha_lab full -- --ignored --nocapture --test-threads 1
echo "ha-lab.sh: load after: $(uptime)"
echo "ha-lab.sh: table in $HA_LAB_OUT"
