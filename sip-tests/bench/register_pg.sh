#!/bin/bash
# sip-tests/bench/register_pg.sh [RATES...]
#
# Durable REGISTER throughput on PostgreSQL (issue 4), side by side in one
# session, every server on the same throwaway PostgreSQL 15 (default settings:
# fsync on, synchronous_commit on) on this machine:
#
#   kamailio-mem  ../shared/bench/kamailio/kamailio-mem.cfg (location in memory only:
#                 the CPU reference of the bar)
#   kamailio-pg1  kamailio-pg1.cfg (usrloc db_mode 1, write-through: one INSERT per
#                 REGISTER, committed before the 200 OK)
#   kamailio-pg2  kamailio-pg2.cfg (usrloc db_mode 2, write-back: the table is
#                 written to PostgreSQL every 60 s, not before the 200 OK)
#   tandem-pg     Tandem, one node, [store] backend = "postgres" (group commit; the
#                 200 OK only after the binding's transaction committed), no auth
#
# Each rate runs against a freshly started server and an empty table (Tandem: a
# fresh database), with ../shared/bench/sipp/sweep.sh (SIPp register.xml, a
# distinct user per call). CPU per REGISTER is the server's CPU
# (../shared/bench/cpu_of.sh over its processes) plus, for the PostgreSQL variants,
# the database server's (cpu_of.sh over the postmaster and all its children, plus
# the postmaster's reaped children), before and after the sweep, divided by the
# successful REGISTERs. For kamailio-pg2's first rate it also waits for the
# write-back (until the location table holds every registration, at most
# PG2_FLUSH_MAX s, 300) and prints the CPU including it. For Tandem it splits
# PostgreSQL's CPU by process (writer connection, cluster pool, background).
# The machine is shared with another engineer's compiles: each sweep waits (at most
# QUIET_MAX s, 60) until no compiler has run for 3 s, and its line ends with the
# 1-minute load average at its start and how many of its seconds a compiler ran
# (compiling=X/Ys).
#
# A benchmark, not a test: it prints figures and asserts nothing. Needs the shared/
# harness beside the repository, sipp, kamailio + kamailio-postgres-modules
# (installed as root if missing), PostgreSQL 15 (PG_BIN) and target/release/tandem
# (copied to a private path first: it may be rebuilt meanwhile).
# Environment: SECS (10, per rate); rates per server: MEM_RATES, PG2_RATES (default:
# the arguments), PG1_RATES (default 1000 2000 3000), TANDEM_RATES (default: the
# arguments); SKIP_KAMAILIO=1, SKIP_TANDEM=1; TANDEM_PORT (5071; Kamailio's 5070 is
# fixed by its configs), PG_PORT (55432), PG_BIN.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
shared=${SHARED:-$repo/../shared}
sweep=$shared/bench/sipp/sweep.sh
cpu_of=$shared/bench/cpu_of.sh
SECS=${SECS:-10}
TPORT=${TANDEM_PORT:-5071}
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(10000 15000 20000)
read -r -a mem_rates <<<"${MEM_RATES:-${rates[*]}}"
read -r -a pg1_rates <<<"${PG1_RATES:-1000 2000 3000}"
read -r -a pg2_rates <<<"${PG2_RATES:-${rates[*]}}"
read -r -a tandem_rates <<<"${TANDEM_RATES:-${rates[*]}}"
# shellcheck source=pg_lib.sh
. "$here/pg_lib.sh"

[ -x "$repo/target/release/tandem" ] || { echo "missing target/release/tandem (cargo build --release)" >&2; exit 2; }
for f in "$sweep" "$cpu_of"; do
  [ -e "$f" ] || { echo "missing $f" >&2; exit 2; }
done
if ! command -v sipp >/dev/null || ! command -v kamailio >/dev/null ||
  [ ! -e /usr/share/kamailio/postgres/usrloc-create.sql ]; then
  [ "$(id -u)" = 0 ] || { echo "need sipp, kamailio and kamailio-postgres-modules" >&2; exit 2; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sip-tester kamailio \
    kamailio-postgres-modules bc >/dev/null
fi

work=$(mktemp -d /tmp/tbench-pg.XXXXXX)
chmod 755 "$work"
tandem=$work/tandem
cp -p "$repo/target/release/tandem" "$tandem"
server_pid="" kam_main=""
stop_server() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  server_pid=""
  if [ -n "$kam_main" ]; then
    # every Kamailio process gone before the next server binds 127.0.0.1:5070
    local procs i
    procs="$kam_main $(pgrep -d ' ' -P "$kam_main")"
    # shellcheck disable=SC2086
    kill $procs 2>/dev/null
    for i in $(seq 300); do
      # shellcheck disable=SC2086
      kill -0 $procs 2>/dev/null || break
      sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -9 $procs 2>/dev/null
    rm -f "$work/kam.pid"
    kam_main=""
  fi
}
trap 'stop_server; [ -n "$busy_pid" ] && kill "$busy_pid" 2>/dev/null; pg_stop; rm -rf "$work"' EXIT

pg_start "$work/pg" || exit 2
url_tandem="postgres://postgres@127.0.0.1:$PG_PORT/tandem"
url_kam="postgres://kamailio:kamailiorw@127.0.0.1:$PG_PORT/kamailio"
pg_psql postgres -c "CREATE ROLE kamailio LOGIN PASSWORD 'kamailiorw'" -c "CREATE DATABASE kamailio OWNER kamailio"
for f in standard-create.sql usrloc-create.sql; do
  "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U kamailio -d kamailio -X -q -v ON_ERROR_STOP=1 \
    -f "/usr/share/kamailio/postgres/$f" >/dev/null || exit 2
done
# The configs point at 127.0.0.1 (port 5432): this session's server is on $PG_PORT.
for c in pg1 pg2; do
  sed -e "s|postgres://kamailio:kamailiorw@127.0.0.1/kamailio|$url_kam|" \
    "$shared/bench/kamailio/kamailio-$c.cfg" >"$work/kamailio-$c.cfg"
done

cfg=$work/tandem.toml
sed -e 's/^authenticate = true/authenticate = false/' "$repo/config/tandem.toml" >"$cfg"
sed -i -e "s/^udp = .*/udp = [\"127.0.0.1:$TPORT\"]/" -e "s/^tcp = .*/tcp = []/" \
  -e '/^\[admin\]/,/^\[/ s/^enabled = true/enabled = false/' -e 's/^level = .*/level = "warn"/' \
  -e "s|^backend = \"sqlite\"|backend = \"postgres\"\nurl = \"$url_tandem\"|" "$cfg"
"$tandem" check-config "$cfg" >/dev/null || exit 2

load1() { cut -d' ' -f1 /proc/loadavg; }

# run_sweep LABEL TARGET DB(kamailio|tandem|-) SERVER_PIDS...
run_sweep() {
  local label=$1 target=$2 db=$3
  shift 3
  local l c0 p0 c1 p1 line ok srv pg extra="" busy split=""
  quiet_wait || echo "# (still compiling after ${QUIET_MAX:-60} s: measuring anyway)"
  l=$(load1)
  busy_start
  pg_ticks >"$work/pg_ticks0"
  c0=$(bash "$cpu_of" "$@")
  p0=$(pg_cpu)
  line=$(bash "$sweep" "$target" "$rate" "$SECS")
  c1=$(bash "$cpu_of" "$@")
  p1=$(pg_cpu)
  busy=$(busy_stop)
  ok=$(echo "$line" | sed -n 's/.* ok=\([0-9]*\).*/\1/p')
  if [ -z "$ok" ] || [ "$ok" -eq 0 ]; then
    echo "$label $line load1=$l $busy"
    return
  fi
  srv=$(echo "scale=1; ($c1 - $c0) * 1000000 / $ok" | bc)
  pg=$(echo "scale=1; ($p1 - $p0) * 1000000 / $ok" | bc)
  case $db in
    kamailio) extra=" rows=$(pg_psql kamailio -c 'SELECT count(*) FROM location')" ;;
    tandem)
      extra=" rows=$(pg_psql tandem -c 'SELECT count(*) FROM bindings WHERE NOT deleted')"
      split=$(pg_split tandem "$work/pg_ticks0" "$ok")
      last_ok=$ok
      ;;
  esac
  echo "$label $line cpu_us_per_register=$(echo "scale=1; $srv + $pg" | bc) (server $srv + postgres $pg)$extra load1=$l $busy"
  [ -n "$split" ] && echo "  $label $split"
  if [ "$label" = kamailio-pg2 ] && [ "$pg2_flush" = 1 ]; then
    # write-back: wait (up to PG2_FLUSH_MAX s) for the timer to flush every contact
    local i n=0
    pg2_flush=0
    for i in $(seq "${PG2_FLUSH_MAX:-300}"); do
      n=$(pg_psql kamailio -c 'SELECT count(*) FROM location' 2>/dev/null); n=${n:-0}
      [ "$n" -ge "$ok" ] && break
      sleep 1
    done
    sleep 2
    c1=$(bash "$cpu_of" "$@")
    p1=$(pg_cpu)
    srv=$(echo "scale=1; ($c1 - $c0) * 1000000 / $ok" | bc)
    pg=$(echo "scale=1; ($p1 - $p0) * 1000000 / $ok" | bc)
    echo "  kamailio-pg2 after write-back (${i} s later, rows=$n): cpu_us_per_register=$(echo "scale=1; $srv + $pg" | bc) (server $srv + postgres $pg)"
  fi
}

# kamailio_run CFG LABEL DB
kamailio_run() {
  local cfgf=$1 label=$2 db=$3 main i
  [ "$db" = kamailio ] && pg_psql kamailio -c 'TRUNCATE location'
  rm -f "$work/kam.pid"
  kamailio -f "$cfgf" -P "$work/kam.pid" -w "$work" -m 2048 -M 32 >"$work/kam.log" 2>&1
  for i in $(seq 100); do [ -s "$work/kam.pid" ] && break; sleep 0.1; done
  sleep 2
  main=$(cat "$work/kam.pid" 2>/dev/null)
  kam_main=$main
  if [ -z "$main" ]; then
    echo "$label: kamailio did not start: $(tail -n 3 "$work/kam.log")"
    return
  fi
  # shellcheck disable=SC2046
  run_sweep "$label" 127.0.0.1:5070 "$db" "$main" $(pgrep -d ' ' -P "$main")
  stop_server
}

echo "# $(date -u +%FT%TZ) $(nproc) cores; SECS=$SECS; $(uptime | sed 's/^ *//')"
echo "# tandem $("$tandem" --version) (built $(date -u -r "$tandem" +%FT%TZ), HEAD $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)); $("$PG_BIN/postgres" --version); PostgreSQL on 127.0.0.1:$PG_PORT, data in $work/pg (fsync=$(pg_psql postgres -c 'SHOW fsync'), synchronous_commit=$(pg_psql postgres -c 'SHOW synchronous_commit'))"
if [ "${SKIP_KAMAILIO:-0}" != 1 ]; then
  kv=$(kamailio -v 2>/dev/null | head -1 | awk '{print $3}')
  echo "## Kamailio $kv kamailio-mem.cfg (location in memory; CPU reference)"
  for rate in "${mem_rates[@]}"; do
    kamailio_run "$shared/bench/kamailio/kamailio-mem.cfg" kamailio-mem -
  done
  echo "## Kamailio $kv kamailio-pg1.cfg (write-through to PostgreSQL)"
  for rate in "${pg1_rates[@]}"; do
    kamailio_run "$work/kamailio-pg1.cfg" kamailio-pg1 kamailio
  done
  echo "## Kamailio $kv kamailio-pg2.cfg (write-back to PostgreSQL every 60 s)"
  pg2_flush=1 # wait for the write-back after the first rate only
  for rate in "${pg2_rates[@]}"; do
    kamailio_run "$work/kamailio-pg2.cfg" kamailio-pg2 kamailio
  done
fi

if [ "${SKIP_TANDEM:-0}" != 1 ]; then
  echo "## Tandem, one node, backend postgres (committed before each 200 OK), no auth"
  for rate in "${tandem_rates[@]}"; do
    PGOPTIONS='-c client_min_messages=warning' pg_psql postgres \
      -c 'DROP DATABASE IF EXISTS tandem' -c 'CREATE DATABASE tandem'
    "$tandem" --config "$cfg" >"$work/tandem.log" 2>&1 &
    server_pid=$!
    sleep 1.5
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "tandem-pg: did not start: $(tail -n 3 "$work/tandem.log")"
      server_pid=""
      continue
    fi
    last_ok=0
    run_sweep tandem-pg 127.0.0.1:$TPORT tandem "$server_pid"
    stop_server
    # Rows PostgreSQL read from the bindings table (sequential and index scans) per
    # REGISTER; read once Tandem's connections closed (they flush their statistics).
    [ "$last_ok" -gt 0 ] && sleep 1 && echo "  tandem-pg rows_read_per_register=$(pg_psql tandem -c \
      "SELECT round((coalesce(seq_tup_read,0) + coalesce(idx_tup_fetch,0))::numeric / $last_ok, 1) FROM pg_stat_user_tables WHERE relname = 'bindings'")"
  done
fi
