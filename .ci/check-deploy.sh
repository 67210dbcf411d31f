#!/usr/bin/env bash
# Checks the systemd units in deploy/ with `systemd-analyze verify` (docs/deploy.md).
#
# verify refuses a unit whose ExecStart binary does not exist, and /usr/local/bin/aftercart
# is not installed here, so each unit is copied to a temp dir with the binary of ExecStart
# rewritten to one that exists (the release or debug build, else /bin/true). verify exits
# 0 on an unknown key or a value it cannot parse ("Unknown key 'Restrat'", "Failed to
# parse signal name"), so any line it prints about the unit fails the check too. It works
# without systemd running as PID 1. Before the real units, a copy with a typo must be
# caught, so a verify that stays silent on this machine cannot pass broken units.
set -euo pipefail
cd "$(dirname "$0")/.."

units=(deploy/aftercart-worker.service deploy/aftercart-serve.service)

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "FATAL: systemd-analyze not found (Debian package systemd); cannot check ${units[*]}" >&2
  exit 1
fi

for unit in "${units[@]}"; do
  [ -f "$unit" ] || { echo "FATAL: $unit is missing" >&2; exit 1; }
done

target="${CARGO_TARGET_DIR:-$PWD/target}"
bin=/bin/true
for b in "$target/release/aftercart" "$target/debug/aftercart"; do
  if [ -x "$b" ]; then bin=$b; break; fi
done
echo "systemd-analyze: $(systemd-analyze --version | head -1)"
echo "ExecStart binary for the check: $bin"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# check UNIT_FILE: copies it to $tmp, points ExecStart at $bin, runs verify; prints what
# verify said and returns 1 when verify failed or said anything about the unit.
check() {
  local src=$1 name copy out rc=0
  name=$(basename "$src")
  copy="$tmp/$name"
  # The binary is the first word after ExecStart= and its optional prefixes (-@+!:).
  sed -E "s#^(ExecStart=[-@+!:]*)[^[:space:]]+#\1$bin#" "$src" > "$copy"
  out=$(systemd-analyze verify --man=no "$copy" 2>&1) || rc=$?
  if [ -n "$out" ]; then
    printf '%s\n' "$out" | sed 's/^/    /'
  fi
  if [ "$rc" -ne 0 ]; then
    echo "  systemd-analyze verify exited $rc" >&2
    return 1
  fi
  if printf '%s\n' "$out" | grep -qF "$name"; then
    return 1
  fi
  return 0
}

echo "==> self-test: a unit with a typo must be refused"
canary="$tmp/canary"
mkdir "$canary"
sed 's/^Restart=/Restrat=/' "${units[0]}" > "$canary/aftercart-canary.service"
grep -q '^Restrat=' "$canary/aftercart-canary.service"
if check "$canary/aftercart-canary.service"; then
  echo "FATAL: systemd-analyze verify accepted a unit with the unknown key Restrat=; the check cannot be trusted here" >&2
  exit 1
fi
echo "  refused, as it should be"

failed=0
for unit in "${units[@]}"; do
  echo "==> systemd-analyze verify $unit"
  grep -q '^ExecStart=/usr/local/bin/aftercart --config /etc/aftercart/config.toml ' "$unit" || {
    echo "FAIL: $unit: ExecStart must run /usr/local/bin/aftercart --config /etc/aftercart/config.toml" >&2
    failed=1
  }
  if ! check "$unit"; then
    echo "FAIL: $unit (see systemd-analyze's lines above)" >&2
    failed=1
    continue
  fi
  # With a real build, the command line of ExecStart must parse (--help stops after parsing).
  if [ "$bin" != /bin/true ]; then
    read -r -a argv <<< "$(sed -nE 's#^ExecStart=[-@+!:]*[^[:space:]]+[[:space:]]+##p' "$unit")"
    if ! "$bin" "${argv[@]}" --help >/dev/null; then
      echo "FAIL: $unit: aftercart refuses the arguments of ExecStart: ${argv[*]}" >&2
      failed=1
      continue
    fi
  fi
  # The hardening must not erode: systemd's exposure score (0 best, 10 worst) at most 3.0
  # (--threshold counts in tenths).
  rc=0
  score=$(systemd-analyze security --offline=yes --threshold=30 "$tmp/$(basename "$unit")" 2>&1) || rc=$?
  score=$(printf '%s\n' "$score" | grep -o 'Overall exposure level.*' || echo 'no exposure score')
  if [ "$rc" -ne 0 ]; then
    echo "FAIL: $unit: hardening too weak: $score (threshold 3.0)" >&2
    failed=1
    continue
  fi
  echo "  OK ($score)"
done

if [ "$failed" -ne 0 ]; then
  echo "check-deploy: FAILED" >&2
  exit 1
fi
echo "check-deploy: ${#units[@]} units OK"
