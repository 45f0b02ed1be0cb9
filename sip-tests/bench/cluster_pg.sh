#!/bin/bash
# sip-tests/bench/cluster_pg.sh
#
# Two cluster figures of issue 4, with Tandem nodes on one throwaway PostgreSQL 15
# (default settings: fsync on, synchronous_commit on) on this machine:
#
# 1. Replication lag. Node A (127.0.0.2) and node B (127.0.0.3) share a fresh
#    database; SIPp register.xml (../shared/bench/sipp/sweep.sh, a distinct user per
#    call) registers at RATE/s for SECS at A. tcpdump records every response A sends
#    (kernel timestamps); cluster_probe.py polls /health of A and B every POLL_MS ms
#    (bindings count). Each distinct Call-ID's 200 OK is one durable registration:
#    the k-th 200 OK in time at A is level k, and the lag of level k is the time
#    until B's count first shows k bindings. Printed as p50/p90/p99/max, upper bound
#    (first sample showing the level) and lower bound (the sample before it).
# 2. Join time. A fresh database; node A gets JOIN_N registrations (SIPp at
#    JOIN_RATE/s); then node C (127.0.0.4) is started JOIN_RUNS times (a new node id
#    each time) and timed from process start to its /health answering, and to its
#    /health reporting every binding (the join snapshot is loaded after the
#    listeners are bound, so /health answers with 0 bindings first).
#
# Each measurement waits (at most QUIET_MAX s, 60) until no compiler has run for
# 3 s (the machine is shared) and reports how many of its seconds one ran.
# A benchmark, not a test: prints figures, asserts nothing. Needs the shared/ harness
# beside the repository, sipp, tcpdump (both installed as root if missing),
# python3, PostgreSQL 15 (PG_BIN) and target/release/tandem (copied to a private
# path first: it may be rebuilt meanwhile).
# Environment: RATE (5000), SECS (10), JOIN_N (100000), JOIN_RATE (10000),
# JOIN_RUNS (3), POLL_MS (2: /health sampling interval), SKIP_LAG=1, SKIP_JOIN=1,
# SIP_PORT (5072, on 127.0.0.2/.3/.4), ADMIN_PORT (9072, ditto), PG_PORT (55432),
# PG_BIN.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
shared=${SHARED:-$repo/../shared}
sweep=$shared/bench/sipp/sweep.sh
cpu_of=$shared/bench/cpu_of.sh
probe=$here/cluster_probe.py
RATE=${RATE:-5000}
SECS=${SECS:-10}
JOIN_N=${JOIN_N:-100000}
JOIN_RATE=${JOIN_RATE:-10000}
JOIN_RUNS=${JOIN_RUNS:-3}
SIP_PORT=${SIP_PORT:-5072}
POLL_MS=${POLL_MS:-2}
ADMIN_PORT=${ADMIN_PORT:-9072}
# shellcheck source=pg_lib.sh
. "$here/pg_lib.sh"

[ -x "$repo/target/release/tandem" ] || { echo "missing target/release/tandem (cargo build --release)" >&2; exit 2; }
for f in "$sweep" "$cpu_of" "$probe"; do
  [ -e "$f" ] || { echo "missing $f" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "need python3" >&2; exit 2; }
if ! command -v sipp >/dev/null || ! command -v tcpdump >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "need sipp and tcpdump" >&2; exit 2; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sip-tester tcpdump bc >/dev/null
fi

work=$(mktemp -d /tmp/tbench-cluster.XXXXXX)
chmod 755 "$work"
tandem=$work/tandem
cp -p "$repo/target/release/tandem" "$tandem"
declare -A node_pid=()
aux_pids=()
stop_node() { # NAME
  local p=${node_pid[$1]:-}
  [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
  unset "node_pid[$1]"
}
cleanup() {
  local n p
  for n in "${!node_pid[@]}"; do stop_node "$n"; done
  for p in "${aux_pids[@]}" $busy_pid; do kill "$p" 2>/dev/null; done
  pg_stop
  rm -rf "$work"
}
trap cleanup EXIT

pg_start "$work/pg" || exit 2
url="postgres://postgres@127.0.0.1:$PG_PORT/tandem"
fresh_db() {
  PGOPTIONS='-c client_min_messages=warning' pg_psql postgres \
    -c 'DROP DATABASE IF EXISTS tandem' -c 'CREATE DATABASE tandem'
}

# node_config ID IP: the default config, no auth, backend postgres, SIP (UDP only)
# and admin on IP; cluster defaults (heartbeat 1 s, peer timeout 5 s, poll 1 s).
node_config() {
  local cfg=$work/$1.toml
  sed -e 's/^authenticate = true/authenticate = false/' "$repo/config/tandem.toml" >"$cfg"
  sed -i -e "s/^id = .*/id = \"$1\"/" -e "s/^udp = .*/udp = [\"$2:$SIP_PORT\"]/" -e "s/^tcp = .*/tcp = []/" \
    -e "s/^listen = .*/listen = \"$2:$ADMIN_PORT\"/" -e 's/^level = .*/level = "info"/' \
    -e "s|^backend = \"sqlite\"|backend = \"postgres\"\nurl = \"$url\"|" "$cfg"
  "$tandem" check-config "$cfg" >/dev/null || exit 2
  echo "$cfg"
}

# start_node ID IP: starts a node; prints nothing; T0 of the start in $work/ID.t0
start_node() {
  local cfg
  cfg=$(node_config "$1" "$2")
  date +%s.%N >"$work/$1.t0"
  "$tandem" --config "$cfg" >"$work/$1.log" 2>&1 &
  node_pid[$1]=$!
}

wait_health() { # IP: until /health answers (at most 30 s)
  local i
  for i in $(seq 300); do
    curl -sf "http://$1:$ADMIN_PORT/health" >/dev/null && return 0
    sleep 0.1
  done
  echo "no /health on $1:$ADMIN_PORT" >&2
  return 1
}
bindings_of() { curl -sf "http://$1:$ADMIN_PORT/health" | sed -n 's/.*"bindings":\([0-9]*\).*/\1/p'; }
load1() { cut -d' ' -f1 /proc/loadavg; }
cpu_s() { bash "$cpu_of" "$@"; }

echo "# $(date -u +%FT%TZ) $(nproc) cores; $(uptime | sed 's/^ *//')"
echo "# tandem $("$tandem" --version) (built $(date -u -r "$tandem" +%FT%TZ), HEAD $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)); $("$PG_BIN/postgres" --version); fsync=$(pg_psql postgres -c 'SHOW fsync'), synchronous_commit=$(pg_psql postgres -c 'SHOW synchronous_commit')"

if [ "${SKIP_LAG:-0}" != 1 ]; then
  echo "## Replication lag: $RATE registrations/s for $SECS s at node A (127.0.0.2), B (127.0.0.3) on the same database"
  fresh_db
  start_node node-a 127.0.0.2
  start_node node-b 127.0.0.3
  wait_health 127.0.0.2 && wait_health 127.0.0.3 || exit 1
  sleep 1
  tcpdump -i lo -Z root -B 65536 -s 0 -w "$work/a.pcap" "udp and src host 127.0.0.2 and src port $SIP_PORT" \
    2>"$work/tcpdump.err" &
  tcpdump_pid=$!
  aux_pids+=("$tcpdump_pid")
  for i in $(seq 100); do grep -q 'listening on' "$work/tcpdump.err" && break; sleep 0.1; done
  python3 "$probe" poll "$work/samples.csv" "$(echo "scale=3; $POLL_MS / 1000" | bc)" "http://127.0.0.2:$ADMIN_PORT/health" \
    "http://127.0.0.3:$ADMIN_PORT/health" &
  poll_pid=$!
  aux_pids+=("$poll_pid")
  sleep 1
  quiet_wait || echo "# (still compiling after ${QUIET_MAX:-60} s: measuring anyway)"
  l=$(load1)
  busy_start
  ca0=$(cpu_s "${node_pid[node-a]}") cb0=$(cpu_s "${node_pid[node-b]}") p0=$(pg_cpu)
  line=$(bash "$sweep" "127.0.0.2:$SIP_PORT" "$RATE" "$SECS")
  ca1=$(cpu_s "${node_pid[node-a]}") cb1=$(cpu_s "${node_pid[node-b]}") p1=$(pg_cpu)
  echo "sweep at A: $line load1=$l $(busy_stop)"
  ok=$(echo "$line" | sed -n 's/.* ok=\([0-9]*\).*/\1/p')
  # let B catch up (its poll interval is 1 s if a notification was missed)
  for i in $(seq 50); do
    [ "$(bindings_of 127.0.0.3)" = "$(bindings_of 127.0.0.2)" ] && break
    sleep 0.1
  done
  sleep 0.5
  kill -INT "$tcpdump_pid" "$poll_pid"
  wait "$tcpdump_pid" "$poll_pid" 2>/dev/null
  aux_pids=()
  echo "bindings: A=$(bindings_of 127.0.0.2) B=$(bindings_of 127.0.0.3) database=$(pg_psql tandem -c 'SELECT count(*) FROM bindings WHERE NOT deleted'); tcpdump: $(grep -h 'dropped by kernel' "$work/tcpdump.err")"
  if [ -n "$ok" ] && [ "$ok" -gt 0 ]; then
    echo "cpu_us_per_register: A $(echo "scale=1; ($ca1 - $ca0) * 1000000 / $ok" | bc), B $(echo "scale=1; ($cb1 - $cb0) * 1000000 / $ok" | bc), postgres $(echo "scale=1; ($p1 - $p0) * 1000000 / $ok" | bc)"
  fi
  python3 "$probe" lag "$work/a.pcap" "$work/samples.csv" 1 0
  stop_node node-a
  stop_node node-b
fi

if [ "${SKIP_JOIN:-0}" != 1 ]; then
  echo "## Join: node C loads $JOIN_N bindings registered at node A"
  fresh_db
  start_node node-a 127.0.0.2
  wait_health 127.0.0.2 || exit 1
  sleep 1
  l=$(load1)
  line=$(bash "$sweep" "127.0.0.2:$SIP_PORT" "$JOIN_RATE" $((JOIN_N / JOIN_RATE)))
  echo "sweep at A: $line load1=$l"
  sleep 2
  n=$(pg_psql tandem -c 'SELECT count(*) FROM bindings WHERE NOT deleted')
  echo "bindings: A=$(bindings_of 127.0.0.2) database=$n"
  for run in $(seq "$JOIN_RUNS"); do
    quiet_wait || echo "# (still compiling after ${QUIET_MAX:-60} s: measuring anyway)"
    l=$(load1)
    busy_start
    # the poller first (it keeps trying while nothing listens), then the node
    python3 "$probe" wait "http://127.0.0.4:$ADMIN_PORT/health" "$n" "$work/node-c$run.t0" 120 \
      >"$work/wait.out" &
    probe_pid=$!
    sleep 1
    start_node "node-c$run" 127.0.0.4
    wait "$probe_pid"
    # the node's own log: when the snapshot was in its table
    joined=$(sed 's/\x1b\[[0-9;]*m//g' "$work/node-c$run.log" | grep -m1 'joined the cluster' | awk '{print $1}')
    [ -n "$joined" ] && joined="; log 'joined the cluster' at $(printf %.3f "$(echo "$(date -d "$joined" +%s.%N) - $(cat "$work/node-c$run.t0")" | bc)") s"
    echo "join $run: $(cat "$work/wait.out")$joined; load1=$l $(busy_stop); rss_kib=$(ps -o rss= -p "${node_pid[node-c$run]}")"
    stop_node "node-c$run"
    sleep 1
  done
  stop_node node-a
fi
