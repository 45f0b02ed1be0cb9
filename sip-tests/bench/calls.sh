#!/bin/bash
# sip-tests/bench/calls.sh [RATES...]
#
# Calls per second through a record-routing stateful proxy, side by side in one
# session: Kamailio 5.6 with the shared kamailio-mem.cfg (which routes every call to
# 127.0.0.1:5090) and Tandem (no auth, a route pattern 9XXX to a gateway at
# 127.0.0.1:5090). The caller is ../shared/bench/sipp/call.xml dialling 9000
# through ../shared/bench/sipp/sweep.sh; the answering party is SIPp answer.xml on
# 127.0.0.1:5090, restarted for every run. Prints the sweep line and the server's
# CPU per call (../shared/bench/cpu_of.sh before and after).
#
# A benchmark, not a test: it prints figures and asserts nothing. Needs shared/
# beside the repository, sipp and kamailio, and target/release/tandem.
# Environment: SECS (10), SKIP_KAMAILIO=1.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
shared=${SHARED:-$repo/../shared}
sweep=$shared/bench/sipp/sweep.sh
cpu_of=$shared/bench/cpu_of.sh
tandem=$repo/target/release/tandem
SECS=${SECS:-10}
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(1000 2000 3000)
for f in "$sweep" "$cpu_of" "$tandem"; do
  [ -e "$f" ] || { echo "missing $f" >&2; exit 2; }
done
command -v sipp >/dev/null && command -v kamailio >/dev/null || { echo "need sipp and kamailio" >&2; exit 2; }

work=$(mktemp -d /tmp/tandem-calls-bench.XXXXXX)
server_pid="" answer_pid=""
stop_all() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  server_pid=""
  [ -f "$work/kam.pid" ] && kill "$(cat "$work/kam.pid")" 2>/dev/null && sleep 1 && rm -f "$work/kam.pid"
  [ -n "$answer_pid" ] && kill "$answer_pid" 2>/dev/null && wait "$answer_pid" 2>/dev/null
  answer_pid=""
}
trap 'stop_all; rm -rf "$work"' EXIT

start_answer() {
  sipp -sf "$shared/bench/sipp/answer.xml" -i 127.0.0.1 -p 5090 -nostdin >/dev/null 2>&1 &
  answer_pid=$!
  sleep 1
}

run() { # LABEL TARGET PIDS...
  local label=$1 target=$2
  shift 2
  local c0 c1 line ok
  c0=$(bash "$cpu_of" "$@")
  line=$(SIPP_ARGS="-s 9000" bash "$sweep" "$target" "$rate" "$SECS" "$shared/bench/sipp/call.xml")
  c1=$(bash "$cpu_of" "$@")
  ok=$(echo "$line" | sed -n 's/.* ok=\([0-9]*\).*/\1/p')
  if [ -n "$ok" ] && [ "$ok" -gt 0 ]; then
    echo "$label $line cpu_us_per_call=$(echo "scale=1; ($c1 - $c0) * 1000000 / $ok" | bc)"
  else
    echo "$label $line"
  fi
}

cfg=$work/tandem.toml
sed -e 's/^authenticate = true/authenticate = false/' -e 's/^tcp = .*/tcp = []/' \
  -e '/^\[admin\]/,/^\[/ s/^enabled = true/enabled = false/' -e 's/^level = .*/level = "warn"/' "$repo/config/tandem.toml" >"$cfg"
cat >>"$cfg" <<'TOML'

[[gateways]]
name = "sipp-answer"
address = "127.0.0.1:5090"
group = "bench"
order = 1
# SIPp's answer.xml does not answer OPTIONS
probe = false

[[routes]]
pattern = "9XXX"
gateway_group = "bench"
TOML

echo "# $(date -u +%FT%TZ) $(nproc) cores; SECS=$SECS; $("$tandem" --version)"
for rate in "${rates[@]}"; do
  if [ "${SKIP_KAMAILIO:-0}" != 1 ]; then
    start_answer
    kamailio -f "$shared/bench/kamailio/kamailio-mem.cfg" -P "$work/kam.pid" -w "$work" -m 2048 -M 32 >"$work/kam.log" 2>&1
    sleep 2
    # shellcheck disable=SC2046
    run kamailio 127.0.0.1:5070 $(pgrep -d ' ' kamailio)
    stop_all
  fi
  start_answer
  rm -f "$work"/tandem.db*
  "$tandem" --config "$cfg" >"$work/tandem.log" 2>&1 &
  server_pid=$!
  sleep 1
  run tandem 127.0.0.1:5060 "$server_pid"
  stop_all
done
