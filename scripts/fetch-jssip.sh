#!/usr/bin/env bash
# Fetches the SIP stack of the browser test (tests/webrtc_browser.rs): JsSIP and its runtime dependencies from the
# npm registry, each pinned and checked against the sha512 `dist.integrity` the registry publishes for it, unpacked
# as a node_modules tree into a cache outside the clone. No node or npm: curl, tar and python3 (for the hash).
# JsSIP's npm package ships CommonJS sources only (lib/, no browser bundle); the test wraps them for the page.
#
#   scripts/fetch-jssip.sh [DIR]     DIR defaults to /var/tmp/sipfront-npm/jssip-3.13.8
#
# Prints DIR; the test reads it from SIPFRONT_JSSIP (scripts/test.sh exports it) or finds it at that default.
set -euo pipefail

JSSIP_VERSION=3.13.8
dir="${1:-/var/tmp/sipfront-npm/jssip-$JSSIP_VERSION}"

# name version integrity: the exact versions a `npm install jssip@3.13.8` resolves (debug ^4.3.1, ms ^2.1.3,
# events ^3.3.0, sdp-transform ^2.14.1), with the registry's integrity of each tarball.
packages=(
  "jssip $JSSIP_VERSION sha512-ErxEdy13vXR5izGo42fpXOU64UmC2VF7Shg4oYG7R2NzZF0FTPeYikffkIIQa9w+/11YvTlgezG1nSaycWYXPA=="
  "debug 4.4.3 sha512-RGwwWnwQvkVfavKVt22FGLw+xYSdzARwm0ru6DhTVA3umU5hZc28V3kO4stgYryrTlLpuvgI9GiijltAjNbcqA=="
  "ms 2.1.3 sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA=="
  "events 3.3.0 sha512-mQw+2fkQbALzQ7V0MY0IqdnXNOeTtP4r0lN9z7AAawCXgqea7bDii20AYrIBrFd/Hx0M2Ocz6S111CaFkUcb0Q=="
  "sdp-transform 2.15.0 sha512-KrOH82c/W+GYQ0LHqtr3caRpM3ITglq3ljGUIb8LTki7ByacJZ9z+piSGiwZDsRyhQbYBOBJgr2k6X4BZXi3Kw=="
)

# The stamp names every package and integrity: a changed pin fetches again.
stamp="$(printf '%s\n' "${packages[@]}")"
if [ -f "$dir/.complete" ] && [ "$(cat "$dir/.complete")" = "$stamp" ]; then
  echo "$dir"
  exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/sipfront-npm.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/node_modules"
for p in "${packages[@]}"; do
  read -r name version integrity <<<"$p"
  tgz="$work/$name-$version.tgz"
  curl -fsS --retry 3 -o "$tgz" "https://registry.npmjs.org/$name/-/$name-$version.tgz"
  got="$(python3 -c 'import base64, hashlib, sys
print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tgz")"
  if [ "$got" != "$integrity" ]; then
    echo "fetch-jssip: $name-$version.tgz does not match its pinned integrity (got $got)" >&2
    exit 1
  fi
  # Every npm tarball holds one top directory (`package/` for these); strip it.
  mkdir -p "$work/node_modules/$name"
  tar -xzf "$tgz" -C "$work/node_modules/$name" --strip-components=1 --no-same-owner
done
printf '%s\n' "$stamp" >"$work/node_modules/.stamp"
rm -rf "$dir"
mkdir -p "$dir"
mv "$work/node_modules" "$dir/node_modules"
mv "$dir/node_modules/.stamp" "$dir/.complete"
echo "$dir"
