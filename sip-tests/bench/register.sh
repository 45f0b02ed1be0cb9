#!/bin/bash
# sip-tests/bench/register.sh [RATES...]
#
# REGISTER throughput, side by side in one session: Kamailio 5.6 with the shared
# kamailio-mem.cfg, Tandem without authentication (SQLite store on: bindings are
# committed before each 200 OK), and Tandem with digest authentication (MD5,
# SIPp's only algorithm). Each rate runs against a freshly started server, with
# ../shared/bench/sipp/sweep.sh (SIPp register.xml, distinct user per call), and
# prints the sweep line plus the server's CPU per REGISTER from
# ../shared/bench/cpu_of.sh before and after the sweep. Finally it measures
# Tandem's resident memory per 100,000 bindings.
#
# A benchmark, not a test: it prints figures and asserts nothing. It needs the
# shared/ harness beside the repository, sipp and kamailio (installed as root if
# missing), and target/release/tandem (cargo build --release).
# Environment: SECS (10, per rate), BENCH_PORT (5060), KAM_PORT (5070, fixed by
# the Kamailio config), SKIP_KAMAILIO=1, SKIP_AUTH=1, SKIP_MEMORY=1.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
shared=${SHARED:-$repo/../shared}
sweep=$shared/bench/sipp/sweep.sh
cpu_of=$shared/bench/cpu_of.sh
tandem=$repo/target/release/tandem
SECS=${SECS:-10}
PORT=${BENCH_PORT:-5060}
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(10000 15000 20000 25000 30000)

for f in "$sweep" "$cpu_of" "$tandem"; do
  [ -e "$f" ] || { echo "missing $f" >&2; exit 2; }
done
if ! command -v sipp >/dev/null || ! command -v kamailio >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "need sipp and kamailio" >&2; exit 2; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sip-tester kamailio bc >/dev/null
fi

work=$(mktemp -d /tmp/tandem-bench.XXXXXX)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  [ -f "$work/kam.pid" ] && kill "$(cat "$work/kam.pid")" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# tandem_config NAME AUTH(true|false) [USERS]
tandem_config() {
  local cfg=$work/$1.toml
  if [ "$2" = true ]; then
    "$repo/sip-tests/gen_users.sh" -o "$cfg" -c "$work/users.csv" "${3:-10000}" >/dev/null
  else
    sed -e 's/^authenticate = true/authenticate = false/' "$repo/config/tandem.toml" >"$cfg"
  fi
  sed -i -e "s/^udp = .*/udp = [\"127.0.0.1:$PORT\"]/" -e "s/^tcp = .*/tcp = []/" \
    -e '/^\[admin\]/,/^\[/ s/^enabled = true/enabled = false/' -e 's/^level = .*/level = "warn"/' "$cfg"
  echo "$cfg"
}

start_tandem() {
  rm -f "$work"/tandem.db*
  "$tandem" --config "$1" >"$work/tandem.log" 2>&1 &
  server_pid=$!
  sleep 1
}

stop_server() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  server_pid=""
  if [ -f "$work/kam.pid" ]; then
    kill "$(cat "$work/kam.pid")" 2>/dev/null
    sleep 1
    rm -f "$work/kam.pid"
  fi
}

# run_sweep LABEL TARGET PIDS... (SCENARIO and SIPP_ARGS from the environment)
run_sweep() {
  local label=$1 target=$2
  shift 2
  local c0 c1 line ok
  c0=$(bash "$cpu_of" "$@")
  line=$(bash "$sweep" "$target" "$rate" "$SECS" ${SCENARIO:-})
  c1=$(bash "$cpu_of" "$@")
  ok=$(echo "$line" | sed -n 's/.* ok=\([0-9]*\).*/\1/p')
  if [ -n "$ok" ] && [ "$ok" -gt 0 ]; then
    echo "$label $line cpu_us_per_register=$(echo "scale=1; ($c1 - $c0) * 1000000 / $ok" | bc)"
  else
    echo "$label $line"
  fi
}

echo "# $(date -u +%FT%TZ) $(nproc) cores; SECS=$SECS; tandem $("$tandem" --version)"
if [ "${SKIP_KAMAILIO:-0}" != 1 ]; then
  echo "## Kamailio $(kamailio -v 2>/dev/null | head -1 | awk '{print $3}') kamailio-mem.cfg (no auth, location in memory)"
  for rate in "${rates[@]}"; do
    kamailio -f "$shared/bench/kamailio/kamailio-mem.cfg" -P "$work/kam.pid" -w "$work" -m 2048 -M 32 >"$work/kam.log" 2>&1
    sleep 2
    # shellcheck disable=SC2046
    run_sweep kamailio 127.0.0.1:5070 $(pgrep -d ' ' kamailio)
    stop_server
  done
fi

echo "## Tandem, no auth, SQLite store (committed before 200 OK)"
cfg=$(tandem_config noauth false)
for rate in "${rates[@]}"; do
  start_tandem "$cfg"
  run_sweep tandem-noauth 127.0.0.1:$PORT "$server_pid"
  stop_server
done

if [ "${SKIP_AUTH:-0}" != 1 ]; then
  echo "## Tandem, digest auth (MD5), SQLite store: 10,000 users from sip-tests/register_auth.xml (2 requests per registration)"
  cfg=$(tandem_config auth true 10000)
  for rate in "${rates[@]}"; do
    start_tandem "$cfg"
    SCENARIO=$repo/sip-tests/register_auth.xml SIPP_ARGS="-inf $work/users.csv" \
      run_sweep tandem-auth 127.0.0.1:$PORT "$server_pid"
    stop_server
  done
fi

if [ "${SKIP_MEMORY:-0}" != 1 ]; then
  echo "## Tandem resident memory per 100,000 bindings"
  cfg=$(tandem_config mem false)
  start_tandem "$cfg"
  before=$(ps -o rss= -p "$server_pid")
  rate=10000 SECS_SAVED=$SECS
  SECS=10 run_sweep tandem-100k 127.0.0.1:$PORT "$server_pid"
  SECS=$SECS_SAVED
  # Timer J keeps each UDP transaction (and its 200 OK) 32 s; wait them out.
  sleep 35
  after=$(ps -o rss= -p "$server_pid")
  echo "rss_before_kib=$before rss_after_100k_bindings_kib=$after per_100k_bindings_mib=$(echo "scale=1; ($after - $before) / 1024" | bc)"
  stop_server
fi
