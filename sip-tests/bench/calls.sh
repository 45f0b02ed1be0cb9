#!/bin/bash
# sip-tests/bench/calls.sh [RATES...]
#
# Calls per second through a record-routing stateful proxy, side by side in one
# session: Kamailio 5.6 with the shared kamailio-mem.cfg (which routes every call to
# 127.0.0.1:5090) and Tandem (no auth, a route pattern 9XXX to a gateway at
# 127.0.0.1:5090). The caller is ../shared/bench/sipp/call.xml dialling 9000
# through ../shared/bench/sipp/sweep.sh; the answering party is SIPp answer.xml on
# 127.0.0.1:5090, restarted for every run. Prints the sweep line, the goodput
# (calls completed per second from second 2 to second SECS) and the server's
# CPU per call (../shared/bench/cpu_of.sh before and after).
#
# A benchmark, not a test: it prints figures and asserts nothing. Needs shared/
# beside the repository, sipp and kamailio, and target/release/tandem.
# Environment: SECS (10), SKIP_KAMAILIO=1, OVERLOAD=on|off (Tandem's
# [admission.calls] call overload control; default on, as in the shipped config),
# TANDEM (the binary; default target/release/tandem).
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
shared=${SHARED:-$repo/../shared}
cpu_of=$shared/bench/cpu_of.sh
tandem=${TANDEM:-$repo/target/release/tandem}
SECS=${SECS:-10}
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(1000 2000 3000)
for f in "$cpu_of" "$tandem"; do
  [ -e "$f" ] || { echo "missing $f" >&2; exit 2; }
done
command -v sipp >/dev/null && command -v kamailio >/dev/null || { echo "need sipp and kamailio" >&2; exit 2; }

work=$(mktemp -d /tmp/tandem-calls-bench.XXXXXX)
server_pid="" answer_pid=""
stop_all() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  server_pid=""
  if [ -f "$work/kam.pid" ]; then
    kill "$(cat "$work/kam.pid")" 2>/dev/null
    rm -f "$work/kam.pid"
    # Kamailio's children take seconds to exit (and free its 2 GB of shared
    # memory): the next server must not share the CPU with them
    for _ in $(seq 60); do pgrep -x kamailio >/dev/null || break; sleep 0.5; done
    sleep 1
  fi
  [ -n "$answer_pid" ] && kill "$answer_pid" 2>/dev/null && wait "$answer_pid" 2>/dev/null
  answer_pid=""
}
trap 'stop_all; rm -rf "$work"' EXIT

start_answer() {
  sipp -sf "$shared/bench/sipp/answer.xml" -i 127.0.0.1 -p 5090 -nostdin >/dev/null 2>&1 &
  answer_pid=$!
  sleep 1
}

# The shared sweep.sh's SIPp command, keeping SIPp's per-second statistics in
# $work/stat.csv for the goodput below; prints the same line as sweep.sh.
sweep() { # TARGET
  local n=$((rate * SECS))
  rm -f "$work/stat.csv"
  timeout $((SECS * 4 + 20)) sipp "$1" -sf "$shared/bench/sipp/call.xml" -s 9000 -r "$rate" -m "$n" \
    -l $((rate * 5)) -i 127.0.0.1 -p 5081 -trace_stat -fd 1 -stf "$work/stat.csv" -nostdin \
    -timeout $((SECS * 3 + 10))s >"$work/sipp.txt" 2>&1
  tail -n 1 "$work/stat.csv" | awk -F';' -v r="$rate" \
    '{print "rate="r" ok="$16" failed="$18" elapsed="$5" maxretrans="$22" unexpected="$28}'
}

run() { # LABEL TARGET PIDS...
  local label=$1 target=$2
  shift 2
  local c0 c1 line ok
  c0=$(bash "$cpu_of" "$@")
  line=$(sweep "$target")
  # goodput: calls completed per second between second 2 and second SECS of the
  # offered load (the steady state, before the tail of late calls)
  if [ -f "$work/stat.csv" ]; then
    line="$line $(awk -F';' -v s="$SECS" 'NR > 1 {
        split($5, t, ":"); e = t[1] * 3600 + t[2] * 60 + t[3]
        if (!a && e >= 2) { a = 1; ok0 = $16; e0 = e }
        if (a && e <= s) { ok1 = $16; e1 = e } }
      END { if (e1 > e0) printf "goodput=%d", (ok1 - ok0) / (e1 - e0); else print "goodput=?" }' "$work/stat.csv")"
    rm -f "$work/stat.csv"
  fi
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
# call overload control ([admission.calls]) is on in the shipped config
if [ "${OVERLOAD:-on}" = off ]; then
  awk '/^\[/{s=$0} s=="[admission.calls]" && /^enabled = /{$0="enabled = false"} {print}' "$cfg" >"$cfg.new" && mv "$cfg.new" "$cfg"
fi
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

echo "# $(date -u +%FT%TZ) $(nproc) cores; SECS=$SECS; OVERLOAD=${OVERLOAD:-on}; $("$tandem" --version)"
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
