#!/bin/bash
# scripts/test.sh — the whole test suite:
#   1. as root, installs the SIP clients the tests drive, and PostgreSQL (the
#      cluster tests start their own throwaway server), if any is missing
#      (apt-get: sip-tester sipsak linphone-cli tmux postgresql)
#   2. cargo build --release
#   3. cargo test --release   (tests share the release build)
#   4. sip-tests/run.sh target/release/tandem   (SIPp, sipsak, linphonec against a running Tandem)
# Stops if the install or the build fails; otherwise runs steps 3 and 4 both and
# exits non-zero if either failed.
set -uo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s\n' "$*"; }
die() { printf '\n==== FAILED: %s\n' "$*" >&2; exit 1; }
failed=()

step "1/4 SIP test clients (sipp, sipsak, linphonec, tmux) and PostgreSQL"
missing=()
for tool in sipp sipsak linphonec tmux; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
pkgs="sip-tester sipsak linphone-cli tmux postgresql"
if [ ${#missing[@]} -eq 0 ]; then
  echo "all present"
elif [ "$(id -u)" = 0 ]; then
  echo "missing: ${missing[*]}; installing $pkgs"
  apt-get update || die "apt-get update"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y $pkgs || die "apt-get install -y $pkgs"
else
  echo "missing: ${missing[*]} (not root, so not installing: the sip-tests that need them will fail)"
fi

step "2/4 cargo build --release"
cargo build --release || die "cargo build --release"

step "3/4 cargo test --release"
cargo test --release || failed+=("cargo test --release")

step "4/4 sip-tests/run.sh target/release/tandem"
sip-tests/run.sh target/release/tandem || failed+=("sip-tests/run.sh")

if [ ${#failed[@]} -gt 0 ]; then
  printf '\n==== FAILED: %s\n' "$(IFS=,; echo "${failed[*]}" | sed 's/,/, /g')" >&2
  exit 1
fi
step "all steps passed"
