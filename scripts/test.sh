#!/usr/bin/env bash
# Runs every test sipfront has, on a fresh machine too: installs what the tests need (SIPp from Debian's
# sip-tester, SIPVicious, iproute2 for `ip` and `bridge`, e2fsprogs and losetup for the volume tests, Chromium for the
# dashboard and WebRTC browser tests, JsSIP from the npm registry for the latter, the moto EC2 emulator from PyPI),
# then formatting, clippy, unit, in-process, real-binary, EC2-emulator, browser and (as root) network-namespace
# cluster and volume tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v sipsak >/dev/null 2>&1 || need+=(sipsak)
# SIPVicious (svmap, svwar, svcrack) for the scanner tests (tests/guard_sipvicious.rs, tests/attack.rs).
command -v svwar >/dev/null 2>&1 || need+=(sipvicious)
{ command -v ip && command -v bridge; } >/dev/null 2>&1 || need+=(iproute2)
PATH="$PATH:/usr/sbin:/sbin"
# The interop tests' real PBX and phones (tests/interop_kamailio.rs, tests/shared/baresip.rs).
command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
command -v baresip >/dev/null 2>&1 || need+=(baresip-core)
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
command -v losetup >/dev/null 2>&1 || need+=(mount)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
{ [ -x /usr/bin/chromium ] || [ -x /usr/bin/chromium-browser ]; } || need+=(chromium)
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test dependencies: ${need[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The EC2 emulator of the AWS tests: moto, pinned (its quirks are known per version).
if ! python3 -c 'import sys, moto, flask, flask_cors; sys.exit(moto.__version__ != "5.2.5")' 2>/dev/null; then
  echo "installing the EC2 emulator: moto[server]==5.2.5"
  python3 -m pip install -q 'moto[server]==5.2.5' flask flask-cors 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'moto[server]==5.2.5' flask flask-cors
fi
# The bridging PBX of the interop tests (tests/interop_sippy.rs): the Sippy B2BUA's b2bua_radius, pinned.
if ! { command -v b2bua_radius >/dev/null 2>&1 \
  && python3 -c 'import sys, importlib.metadata as m; sys.exit(m.version("sippy") != "2.5.0")' 2>/dev/null; }; then
  echo "installing the Sippy B2BUA: sippy==2.5.0"
  python3 -m pip install -q 'sippy==2.5.0' 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'sippy==2.5.0'
fi
# The WebRTC browser test's SIP stack: JsSIP and its dependencies from the npm registry, pinned and checked against
# their sha512 integrity, into a cache outside the clone (no node or npm).
SIPFRONT_JSSIP="$(scripts/fetch-jssip.sh)"
export SIPFRONT_JSSIP
# The volume tests (root only) attach loop devices.
if [ "$(id -u)" = 0 ] && [ ! -e /dev/loop-control ]; then
  modprobe loop 2>/dev/null || true
fi
# The VIP lives on a TUN device: the cluster and VIP tests (root only) need /dev/net/tun.
if [ "$(id -u)" = 0 ] && [ ! -c /dev/net/tun ]; then
  modprobe tun 2>/dev/null || true
  [ -c /dev/net/tun ] || { mkdir -p /dev/net && mknod -m 600 /dev/net/tun c 10 200; }
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (rustup.rs)" >&2; exit 1; }

# A target directory outside the clone keeps repeated runs incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sipfront-target}"
export CARGO_TERM_COLOR=never

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo check --no-default-features (without the AWS SDK)"
cargo check --locked --no-default-features --all-targets --quiet
echo "== cargo check --features alloc-jemalloc / alloc-mimalloc (the optional allocators, binary only)"
cargo check --locked --no-default-features --features alloc-jemalloc --bin sipfront --quiet
cargo check --locked --no-default-features --features alloc-mimalloc --bin sipfront --quiet
echo "== cargo check (fuzz crate)"
(cd fuzz && cargo check --locked --quiet)
echo "== cargo test (benches once each, in test mode)"
cargo test --locked --benches
echo "== cargo test"
cargo test --locked --lib --bins --tests
