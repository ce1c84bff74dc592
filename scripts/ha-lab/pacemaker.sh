#!/usr/bin/env bash
# Pacemaker/Corosync peer for the sipfront HA lab: a classic VIP + Kamailio active/standby cluster on the three
# node namespaces of a lab built by tests/netns/topology.rs (sf{T}-n1..n3 at 10.201.T.11..13 on eth0, VIP
# 10.201.T.100/24).
#
#   pacemaker.sh install                       apt-get install the stack (when missing); keep it off the host
#   pacemaker.sh up T TOKEN_MS KAMAILIO_CFG    start corosync+pacemaker on n1..n3, configure VIP + Kamailio,
#                                              wait until one node holds the VIP and runs Kamailio; print it
#   pacemaker.sh kill-ha T NODE                kill -9 corosync + pacemaker daemons of node NODE (1..3)
#   pacemaker.sh kill-node T NODE              kill -9 every process of node NODE (its PID namespace)
#   pacemaker.sh restart T NODE                start that node's corosync + pacemaker again (rejoin)
#   pacemaker.sh status T                      one line per node
#   pacemaker.sh down T                        kill everything of tag T, remove its state dir (idempotent)
#
# Each node runs in `ip netns exec sf{T}-nI unshare -m -u -p -f --mount-proc` : its own mount, UTS (hostname
# nI = the corosync node name) and PID namespace (the kamailio agent finds Kamailio with pgrep -f), a private
# tmpfs on /run and /dev/shm, and per-node state dirs from /tmp/ha-lab-pcmk-T/nI bind-mounted on
# /etc/corosync, /var/lib/corosync, /var/lib/pacemaker, /var/log/corosync, /var/log/pacemaker.
# The namespace's PID 1 is this script (`_init`); killing it with SIGKILL kills the whole node.
# Progress and errors go to stderr; `up` prints the VIP holder (`n1`..`n3`) on stdout.
#
# Environment: HA_LAB_PCMK_UP_TIMEOUT (s, default 90), HA_LAB_PCMK_KEEP=1 (down keeps the state dir/logs),
# HA_LAB_PCMK_STATE_ROOT (default /tmp).
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
STATE_ROOT=${HA_LAB_PCMK_STATE_ROOT:-/tmp}
UP_TIMEOUT=${HA_LAB_PCMK_UP_TIMEOUT:-90}
DC_DEADTIME=${HA_LAB_PCMK_DC_DEADTIME:-5s}
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

log() { echo "pacemaker.sh: $*" >&2; }
die() { echo "pacemaker.sh: error: $*" >&2; exit 1; }

state_dir() { echo "$STATE_ROOT/ha-lab-pcmk-$1"; }
node_ns() { echo "sf$1-n$2"; }
node_ip() { echo "10.201.$1.$((10 + $2))"; }
vip() { echo "10.201.$1.100"; }

check_tag() {
	[[ $1 =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= 250)) || die "bad lab tag '$1' (1..250)"
}
check_node() {
	[[ $1 =~ ^[1-3]$ ]] || die "bad node '$1' (1..3)"
}

# ---------------------------------------------------------------------------------------------------------
# process helpers (host side)

# Host PID of node I's PID 1, if that namespace is alive.
init_pid() {
	local f pid
	f="$(state_dir "$1")/n$2/init.pid"
	[[ -f $f ]] || return 1
	pid=$(<"$f")
	[[ -n $pid && -d /proc/$pid ]] || return 1
	# still our init? (its pid namespace differs from ours)
	[[ $(readlink "/proc/$pid/ns/pid" 2>/dev/null) != "$(readlink /proc/self/ns/pid)" ]] || return 1
	echo "$pid"
}

# PIDs (host view) of the processes living in node I's PID namespace.
node_pids() {
	local T=$1 I=$2 ipid nsid pid
	ipid=$(init_pid "$T" "$I") || return 0
	nsid=$(readlink "/proc/$ipid/ns/pid") || return 0
	for pid in $(ip netns pids "$(node_ns "$T" "$I")" 2>/dev/null); do
		[[ $(readlink "/proc/$pid/ns/pid" 2>/dev/null) == "$nsid" ]] && echo "$pid"
	done
	return 0
}

# PIDs of corosync / pacemaker daemons in node I's network namespace.
ha_pids() {
	local T=$1 I=$2 pid comm
	[[ -e /run/netns/$(node_ns "$T" "$I") ]] || return 0
	for pid in $(ip netns pids "$(node_ns "$T" "$I")" 2>/dev/null); do
		comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
		case $comm in corosync | pacemaker*) echo "$pid" ;; esac
	done
	return 0
}

kamailio_pids() {
	local T=$1 I=$2 pid
	for pid in $(node_pids "$T" "$I"); do
		[[ $(cat "/proc/$pid/comm" 2>/dev/null) == kamailio ]] && echo "$pid"
	done
	return 0
}

# A process exists and is not a zombie.
is_alive() {
	local st
	st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	st=${st##*) }
	[[ ${st:0:1} != Z ]]
}

# Wait (bounded, $3 tenths of a second) until none of the given PIDs exist.
wait_gone() {
	local tenths=$1 pid alive
	shift
	for ((i = 0; i < tenths; i++)); do
		alive=0
		for pid in "$@"; do is_alive "$pid" && alive=1 && break; done
		((alive)) || return 0
		sleep 0.1
	done
	return 1
}

# Run a command inside node I (its mount, UTS, net and PID namespaces).
in_node() {
	local T=$1 I=$2 ipid
	shift 2
	ipid=$(init_pid "$T" "$I") || return 1
	nsenter -t "$ipid" -m -u -n -p -- "$@"
}

has_vip() {
	ip -n "$(node_ns "$1" "$2")" -4 -o addr show dev eth0 2>/dev/null | grep -q " $(vip "$1")/"
}

# ---------------------------------------------------------------------------------------------------------
# install

cmd_install() {
	local pkgs=(pacemaker corosync crmsh resource-agents sipsak) missing=() p made_policy=0
	for p in "${pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
	done
	if ((${#missing[@]})); then
		log "installing ${missing[*]}"
		# keep the package scripts from starting the daemons on the host
		if [[ ! -e /usr/sbin/policy-rc.d ]]; then
			printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
			chmod +x /usr/sbin/policy-rc.d
			made_policy=1
		fi
		local rc=0
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/tmp/ha-lab-pcmk-apt.log 2>&1 || rc=$?
		((made_policy)) && rm -f /usr/sbin/policy-rc.d
		if ((rc)); then
			tail -20 /tmp/ha-lab-pcmk-apt.log >&2
			die "apt-get install failed (log: /tmp/ha-lab-pcmk-apt.log)"
		fi
	fi
	command -v kamailio >/dev/null || log "warning: kamailio is not installed (apt-get install kamailio)"
	# never run in the host namespace
	if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
		systemctl disable --now pacemaker.service corosync.service >/dev/null 2>&1 || true
		systemctl disable --now corosync-notifyd.service >/dev/null 2>&1 || true
	else
		for p in pacemaker corosync; do
			command -v update-rc.d >/dev/null && update-rc.d "$p" disable >/dev/null 2>&1 || true
			[[ -x /etc/init.d/$p ]] && /etc/init.d/$p stop >/dev/null 2>&1 || true
		done
	fi
	log "installed: $(pacemakerd --version | head -1), $(corosync -v | head -1)"
}

# ---------------------------------------------------------------------------------------------------------
# configuration

write_corosync_conf() {
	local T=$1 token=$2 out=$3 consensus
	consensus=$(((token * 12 + 9) / 10))
	cat >"$out" <<EOF
# generated by scripts/ha-lab/pacemaker.sh for lab tag $T
totem {
	version: 2
	cluster_name: sf$T
	transport: knet
	token: $token
	token_coefficient: 0
	consensus: $consensus
	crypto_cipher: none
	crypto_hash: none
}

nodelist {
	node {
		name: n1
		nodeid: 1
		ring0_addr: $(node_ip "$T" 1)
	}
	node {
		name: n2
		nodeid: 2
		ring0_addr: $(node_ip "$T" 2)
	}
	node {
		name: n3
		nodeid: 3
		ring0_addr: $(node_ip "$T" 3)
	}
}

quorum {
	provider: corosync_votequorum
}

logging {
	to_logfile: yes
	logfile: /var/log/corosync/corosync.log
	to_stderr: no
	to_syslog: no
	timestamp: on
}
EOF
}

write_crm_conf() {
	local T=$1 cfg=$2 out=$3
	cat >"$out" <<EOF
property cib-bootstrap-options: stonith-enabled=false no-quorum-policy=stop
rsc_defaults rsc-options: resource-stickiness=100 multiple-active=stop_unexpected
primitive vip ocf:heartbeat:IPaddr2 params ip=$(vip "$T") cidr_netmask=24 nic=eth0 op monitor interval=1s timeout=10s
primitive kamailio ocf:heartbeat:kamailio params conffile="$cfg" listen_address=$(vip "$T") port=5060 proto=udp kamctlrc="" op start timeout=30s interval=0 op stop timeout=30s interval=0 op monitor interval=2s timeout=10s
colocation kamailio-with-vip inf: kamailio vip
order kamailio-after-vip Mandatory: vip kamailio
EOF
}

# The initial CIB of every node: only cluster options, so that the first DC election does not wait for the
# default dc-deadtime of 20 s (the resources are loaded with crm once a DC exists). No .sig file: pacemaker-based
# accepts an unsigned cib.xml and signs it on the first write.
write_seed_cib() {
	cat >"$1" <<EOF
<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="cib-bootstrap-options-dc-deadtime" name="dc-deadtime" value="${DC_DEADTIME}"/>
        <nvpair id="cib-bootstrap-options-stonith-enabled" name="stonith-enabled" value="false"/>
        <nvpair id="cib-bootstrap-options-no-quorum-policy" name="no-quorum-policy" value="stop"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
EOF
}

prepare_node_dirs() {
	local T=$1 I=$2 nd
	nd="$(state_dir "$T")/n$I"
	mkdir -p "$nd"/{etc-corosync,var-lib-corosync,log-corosync,log-pacemaker/bundles}
	mkdir -p "$nd"/var-lib-pacemaker/{cib,pengine,cores,blackbox}
	cp "$(state_dir "$T")/corosync.conf" "$nd/etc-corosync/corosync.conf"
	[[ -d /etc/corosync/uidgid.d ]] && cp -r /etc/corosync/uidgid.d "$nd/etc-corosync/" 2>/dev/null || true
	write_seed_cib "$nd/var-lib-pacemaker/cib/cib.xml"
	chown -R hacluster:haclient "$nd/var-lib-pacemaker" "$nd/log-pacemaker"
	chmod 600 "$nd/var-lib-pacemaker/cib/cib.xml"
	chmod 750 "$nd"/var-lib-pacemaker/{cib,pengine,cores,blackbox}
	chmod 770 "$nd/log-pacemaker"
}

# ---------------------------------------------------------------------------------------------------------
# inside a node

# PID 1 of a node's namespaces (started by launch_node through unshare).
cmd__init() {
	local T=$1 I=$2 nd
	nd="$(state_dir "$T")/n$I"
	mount --make-rprivate /
	mount -t tmpfs -o mode=755,size=64m tmpfs-run /run
	mount -t tmpfs -o mode=1777,size=256m tmpfs-shm /dev/shm
	mkdir -p /run/lock /run/crm /run/pacemaker /run/resource-agents /run/corosync /run/kamailio
	chown hacluster:haclient /run/crm /run/pacemaker
	mount --bind "$nd/etc-corosync" /etc/corosync
	mount --bind "$nd/var-lib-corosync" /var/lib/corosync
	mount --bind "$nd/var-lib-pacemaker" /var/lib/pacemaker
	mount --bind "$nd/log-corosync" /var/log/corosync
	mount --bind "$nd/log-pacemaker" /var/log/pacemaker
	hostname "n$I"
	sysctl -qw net.ipv4.ip_nonlocal_bind=1
	"$SELF" _start-daemons "$T" "$I"
	# reap orphans forever; SIGKILL from the host (kill-node, down) ends the whole namespace
	trap '' TERM INT HUP
	while :; do
		sleep 3600 &
		wait $! || true
	done
}

# Start corosync, wait until it answers, then pacemakerd; both detached, output to the node's log dirs.
cmd__start_daemons() {
	local T=$1 I=$2 i
	[[ $(hostname) == "n$I" ]] || die "_start-daemons must run inside node n$I (hostname is $(hostname))"
	local envs=(env -i PATH="$PATH" LANG=C.UTF-8 HOME=/root)
	setsid "${envs[@]}" corosync -f </dev/null >>/var/log/corosync/stdout.log 2>&1 &
	for ((i = 0; i < 100; i++)); do
		corosync-cmapctl -g totem.cluster_name >/dev/null 2>&1 && break
		sleep 0.1
	done
	((i < 100)) || die "corosync on n$I did not come up in 10 s (see /var/log/corosync/)"
	setsid "${envs[@]}" PCMK_logfile=/var/log/pacemaker/pacemaker.log PCMK_logfacility=none \
		pacemakerd </dev/null >>/var/log/pacemaker/stdout.log 2>&1 &
	return 0
}

# ---------------------------------------------------------------------------------------------------------
# host side

launch_node() {
	local T=$1 I=$2 nd upid ipid i pidns
	nd="$(state_dir "$T")/n$I"
	[[ -e /run/netns/$(node_ns "$T" "$I") ]] || die "namespace $(node_ns "$T" "$I") does not exist"
	if init_pid "$T" "$I" >/dev/null; then
		die "node n$I of lab $T is already running (init $(init_pid "$T" "$I"))"
	fi
	rm -f "$nd/init.pid" "$nd/unshare.pid"
	setsid ip netns exec "$(node_ns "$T" "$I")" \
		unshare -m -u -p -f --mount-proc --propagation private "$SELF" _init "$T" "$I" \
		</dev/null >>"$nd/init.log" 2>&1 &
	upid=$!
	echo "$upid" >"$nd/unshare.pid"
	for ((i = 0; i < 50; i++)); do
		# unshare's forked child, once it runs this script's _init (PID 1 of the new PID namespace)
		for ipid in $(cat "/proc/$upid/task/$upid/children" 2>/dev/null); do
			pidns=$(readlink "/proc/$ipid/ns/pid" 2>/dev/null) || continue
			[[ $pidns != "$(readlink /proc/self/ns/pid)" ]] || continue
			tr '\0' ' ' <"/proc/$ipid/cmdline" 2>/dev/null | grep -q " _init $T $I" || continue
			echo "$ipid" >"$nd/init.pid"
			return 0
		done
		sleep 0.1
	done
	tail -5 "$nd/init.log" >&2 || true
	die "node n$I: unshare did not start its init (see $nd/init.log)"
}

crm_mon_node() {
	in_node "$1" "$2" timeout 5 crm_mon -1 "${@:3}" 2>/dev/null
}

# DC name as node I sees it ("" when none / unknown).
dc_of() {
	local out
	out=$(crm_mon_node "$1" "$2") || return 0
	sed -n 's/^.*Current DC: \([^ ]*\) .*/\1/p' <<<"$out" | grep -v '^NONE$' || true
}

cmd_up() {
	local T=$1 token=$2 cfg=$3 sd I deadline out holders n r
	check_tag "$T"
	[[ $token =~ ^[0-9]+$ ]] && ((token >= 100)) || die "bad TOKEN_MS '$token'"
	[[ -r $cfg ]] || die "Kamailio config '$cfg' not readable"
	cfg=$(readlink -f "$cfg")
	for cmd in corosync pacemakerd crm crm_mon kamailio sipsak nsenter unshare; do
		command -v "$cmd" >/dev/null || die "'$cmd' missing: run '$0 install' (and apt-get install kamailio)"
	done
	for I in 1 2 3; do
		[[ -e /run/netns/$(node_ns "$T" "$I") ]] || die "namespace $(node_ns "$T" "$I") does not exist"
	done
	kamailio -c -f "$cfg" >/dev/null 2>&1 || die "kamailio -c -f $cfg: config check failed"
	cmd_down "$T" quiet
	sd=$(state_dir "$T")
	mkdir -p "$sd"
	echo "$token" >"$sd/token_ms"
	write_corosync_conf "$T" "$token" "$sd/corosync.conf"
	write_crm_conf "$T" "$cfg" "$sd/crm.conf"
	local t0=$SECONDS
	deadline=$((SECONDS + UP_TIMEOUT))
	for I in 1 2 3; do
		prepare_node_dirs "$T" "$I"
		launch_node "$T" "$I"
	done
	log "lab $T: nodes started (token ${token} ms), waiting for a DC with all three nodes online"
	while :; do
		out=$(crm_mon_node "$T" 1) || out=""
		if grep -q 'Current DC: n[123] .*partition with quorum' <<<"$out" &&
			grep -q 'Online: \[ n1 n2 n3 \]' <<<"$out"; then
			break
		fi
		((SECONDS < deadline)) || {
			echo "$out" >&2
			die "lab $T: no DC with n1 n2 n3 online after ${UP_TIMEOUT}s (logs: $sd/n*/log-*)"
		}
		sleep 0.5
	done
	log "lab $T: cluster formed after $((SECONDS - t0))s; loading the configuration"
	cp "$sd/crm.conf" "$sd/n1/var-lib-corosync/crm.conf"
	out=$(in_node "$T" 1 timeout 60 crm configure load update /var/lib/corosync/crm.conf 2>&1) || {
		echo "$out" >&2
		die "lab $T: crm configure load failed"
	}
	while :; do
		holders=()
		out=$(crm_mon_node "$T" 1) || out=""
		for I in 1 2 3; do has_vip "$T" "$I" && holders+=("$I"); done
		if ((${#holders[@]} == 1)); then
			n=${holders[0]}
			if [[ -n $(kamailio_pids "$T" "$n") ]] &&
				grep -Eq "kamailio.*Started n$n" <<<"$out" && grep -Eq "vip.*Started n$n" <<<"$out"; then
				break
			fi
		fi
		# a resource that failed to start on every node will not start: say why now
		for r in vip kamailio; do
			if (($(grep -Eo "\* $r start on n[123] returned" <<<"$out" | sort -u | wc -l) == 3)); then
				echo "$out" >&2
				grep -h "$r(" "$sd"/n*/log-pacemaker/pacemaker.log | grep -E 'ERROR|error' | tail -5 >&2 || true
				die "lab $T: resource $r failed to start on every node"
			fi
		done
		((SECONDS < deadline)) || {
			crm_mon_node "$T" 1 >&2 || true
			die "lab $T: VIP holders after ${UP_TIMEOUT}s: [${holders[*]}], Kamailio not confirmed running there"
		}
		sleep 0.25
	done
	log "lab $T: up after $((SECONDS - t0))s, VIP and Kamailio on n$n"
	echo "n$n"
}

cmd_kill_ha() {
	local T=$1 I=$2 pids
	check_tag "$T"
	check_node "$I"
	pids=$(ha_pids "$T" "$I")
	[[ -n $pids ]] || {
		log "kill-ha: no corosync/pacemaker process on n$I"
		return 0
	}
	# shellcheck disable=SC2086
	kill -9 $pids 2>/dev/null || true
	# shellcheck disable=SC2086
	wait_gone 50 $pids || die "kill-ha: processes still alive on n$I: $pids"
	log "kill-ha: killed corosync+pacemaker on n$I ($(echo $pids | wc -w) processes)"
}

cmd_kill_node() {
	local T=$1 I=$2 ipid pids
	check_tag "$T"
	check_node "$I"
	ipid=$(init_pid "$T" "$I") || {
		log "kill-node: node n$I is not running"
		return 0
	}
	pids=$(node_pids "$T" "$I")
	# SIGKILL to a PID namespace's init kills every process in it
	kill -9 "$ipid" 2>/dev/null || true
	# shellcheck disable=SC2086
	kill -9 $pids 2>/dev/null || true
	# shellcheck disable=SC2086
	wait_gone 50 "$ipid" $pids || die "kill-node: processes still alive on n$I"
	# a dead host does not answer ARP for the VIP any more: drop the address it held
	if has_vip "$T" "$I"; then
		ip -n "$(node_ns "$T" "$I")" addr del "$(vip "$T")/24" dev eth0 2>/dev/null || true
		log "kill-node: removed the VIP from dead n$I's eth0"
	fi
	log "kill-node: n$I killed"
}

cmd_restart() {
	local T=$1 I=$2 sd deadline out
	check_tag "$T"
	check_node "$I"
	sd=$(state_dir "$T")
	[[ -f $sd/corosync.conf ]] || die "restart: lab $T was never brought up (no $sd)"
	if init_pid "$T" "$I" >/dev/null; then
		[[ -z $(ha_pids "$T" "$I") ]] || die "restart: corosync/pacemaker still running on n$I"
		in_node "$T" "$I" "$SELF" _start-daemons "$T" "$I" </dev/null >>"$sd/n$I/init.log" 2>&1 ||
			die "restart: could not start the daemons on n$I (see $sd/n$I/init.log)"
	else
		launch_node "$T" "$I"
	fi
	deadline=$((SECONDS + UP_TIMEOUT))
	while :; do
		out=$(crm_mon_node "$T" "$I") || out=""
		if grep -q 'Current DC: n[123] ' <<<"$out" && grep -q "Online: \[.* n$I[ ]" <<<"$out"; then
			break
		fi
		((SECONDS < deadline)) || die "restart: n$I did not rejoin within ${UP_TIMEOUT}s"
		sleep 0.5
	done
	log "restart: n$I rejoined ($(grep -m1 'Current DC' <<<"$out" | sed 's/^ *//'))"
}

cmd_status() {
	local T=$1 I state ha vipq kam dc
	check_tag "$T"
	for I in 1 2 3; do
		if init_pid "$T" "$I" >/dev/null; then state=alive; else state=dead; fi
		ha=$(ha_pids "$T" "$I" | wc -l)
		if ((ha >= 8)); then ha=running; elif ((ha == 0)); then ha=stopped; else ha="partial($ha)"; fi
		if has_vip "$T" "$I"; then vipq=yes; else vipq=no; fi
		kam=$(kamailio_pids "$T" "$I" | wc -l)
		dc=""
		[[ $ha == stopped ]] || dc=$(dc_of "$T" "$I")
		echo "n$I node=$state ha=$ha vip=$vipq kamailio=$kam dc=${dc:--}"
	done
}

cmd_down() {
	local T=$1 quiet=${2:-} sd I pids ipid upid pid host_ns
	check_tag "$T"
	sd=$(state_dir "$T")
	host_ns=$(readlink /proc/self/ns/pid)
	for I in 1 2 3; do
		pids=""
		if ipid=$(init_pid "$T" "$I"); then
			pids="$ipid $(node_pids "$T" "$I")"
			kill -9 "$ipid" 2>/dev/null || true
		fi
		if [[ -f $sd/n$I/unshare.pid ]]; then
			upid=$(<"$sd/n$I/unshare.pid")
			[[ $(cat "/proc/$upid/comm" 2>/dev/null) == unshare ]] && pids="$pids $upid" && { kill -9 "$upid" 2>/dev/null || true; }
		fi
		# anything else of ours in the node's netns: processes in a foreign PID namespace, or HA daemons
		if [[ -e /run/netns/$(node_ns "$T" "$I") ]]; then
			for pid in $(ip netns pids "$(node_ns "$T" "$I")" 2>/dev/null); do
				if [[ $(readlink "/proc/$pid/ns/pid" 2>/dev/null) != "$host_ns" ]] ||
					[[ $(cat "/proc/$pid/comm" 2>/dev/null) =~ ^(corosync|pacemaker) ]]; then
					kill -9 "$pid" 2>/dev/null || true
					pids="$pids $pid"
				fi
			done
			ip -n "$(node_ns "$T" "$I")" addr del "$(vip "$T")/24" dev eth0 2>/dev/null || true
		fi
		# shellcheck disable=SC2086
		[[ -z ${pids// /} ]] || wait_gone 50 $pids || log "down: warning: processes of n$I still alive: $pids"
	done
	# the bind mounts live in the nodes' private mount namespaces; nothing should be mounted on the host
	if [[ -d $sd ]]; then
		awk -v p="$sd" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
			umount -l "$m" 2>/dev/null || true
		done
		if [[ -n ${HA_LAB_PCMK_KEEP:-} ]]; then
			[[ -n $quiet ]] || log "down: kept $sd"
		else
			rm -rf "$sd"
		fi
	fi
	[[ -n $quiet ]] || log "down: lab $T stopped"
	return 0
}

usage() {
	sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

case ${1:-} in
install) cmd_install ;;
up) (($# == 4)) || usage; cmd_up "$2" "$3" "$4" ;;
kill-ha) (($# == 3)) || usage; cmd_kill_ha "$2" "$3" ;;
kill-node) (($# == 3)) || usage; cmd_kill_node "$2" "$3" ;;
restart) (($# == 3)) || usage; cmd_restart "$2" "$3" ;;
status) (($# == 2)) || usage; cmd_status "$2" ;;
down) (($# == 2)) || usage; cmd_down "$2" ;;
_init) cmd__init "$2" "$3" ;;
_start-daemons) cmd__start_daemons "$2" "$3" ;;
*) usage ;;
esac
