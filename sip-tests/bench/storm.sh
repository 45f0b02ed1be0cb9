#!/bin/bash
# sip-tests/bench/storm.sh — registration storms (issue 9, seed 002), side by side
# in one session, every server durable on the same throwaway PostgreSQL 15:
#
#   tandem-admission  Tandem, one node, backend postgres, [admission] on (default)
#   tandem-off        the same with [admission] enabled = false
#   kamailio-pipelimit ../shared/bench/kamailio/kamailio-pg1-pipelimit.cfg
#                     (write-through, pipelimit TAILDROP, random Retry-After 5-30 s)
#   tandem-sim-token  Tandem with admission, driven by `tandem sim` in token mode
#                     with PRIORITY priority phones (Resource-Priority: ets.0)
#
# SIPp variants offer PHONES phones at RATE/s with ../shared/bench/sipp/register_retry.xml
# (an unmodified phone: honours 503 + Retry-After, up to 10 attempts; no auth).
# For each: registered, gave up, requests (first transmissions, SIPp's counts file),
# retransmissions (% of requests), 503s, the time to the last registration (SIPp's
# run time: it ends with the last phone), and CPU per registration (server +
# PostgreSQL). Divide the time by the drain time (phones / the capacity measured
# with register_pg.sh) for the ratio docs/benchmarks.md reports.
#
# A benchmark, not a test: it prints figures and asserts nothing.
# Environment: PHONES (100000), RATE (20000), PRIORITY (100), VARIANTS ("on off": Tandem
# with and without admission, in that order), SKIP_SIPP=1, SKIP_KAMAILIO=1,
# SKIP_SIM=1, TANDEM_PORT (5071), SIPP_PORT (5181), PG_PORT (55432), PG_BIN.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
shared=${SHARED:-$repo/../shared}
cpu_of=$shared/bench/cpu_of.sh
scenario=$shared/bench/sipp/register_retry.xml
PHONES=${PHONES:-100000}
RATE=${RATE:-20000}
PRIORITY=${PRIORITY:-100}
TPORT=${TANDEM_PORT:-5071}
APORT=$((TPORT + 1000))
# shellcheck source=sip-tests/bench/pg_lib.sh
. "$here/pg_lib.sh"

for f in "$scenario" "$cpu_of" "$repo/target/release/tandem"; do
  [ -e "$f" ] || { echo "missing $f" >&2; exit 2; }
done
if ! command -v sipp >/dev/null || ! command -v kamailio >/dev/null ||
  [ ! -e /usr/share/kamailio/postgres/usrloc-create.sql ]; then
  [ "$(id -u)" = 0 ] || { echo "need sipp, kamailio and kamailio-postgres-modules" >&2; exit 2; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sip-tester kamailio \
    kamailio-postgres-modules bc >/dev/null
fi

work=$(mktemp -d /tmp/tbench-storm.XXXXXX)
chmod 755 "$work"
tandem=$work/tandem
cp -p "$repo/target/release/tandem" "$tandem"
server_pid="" kam_main=""
stop_server() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  server_pid=""
  if [ -n "$kam_main" ]; then
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
    kam_main=""
  fi
}
trap 'stop_server; pg_stop; rm -rf "$work"' EXIT

pg_start "$work/pg" || exit 2
url_tandem="postgres://postgres@127.0.0.1:$PG_PORT/tandem"
url_kam="postgres://kamailio:kamailiorw@127.0.0.1:$PG_PORT/kamailio"
pg_psql postgres -c "CREATE ROLE kamailio LOGIN PASSWORD 'kamailiorw'" -c "CREATE DATABASE kamailio OWNER kamailio"
for f in standard-create.sql usrloc-create.sql; do
  "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U kamailio -d kamailio -X -q -v ON_ERROR_STOP=1 \
    -f "/usr/share/kamailio/postgres/$f" >/dev/null || exit 2
done
sed -e "s|postgres://kamailio:kamailiorw@127.0.0.1/kamailio|$url_kam|" \
  "$shared/bench/kamailio/kamailio-pg1-pipelimit.cfg" >"$work/kamailio.cfg"

# tandem_cfg OUT ADMISSION(true|false)
tandem_cfg() {
  sed -e 's/^authenticate = true/authenticate = false/' "$repo/config/tandem.toml" >"$1"
  sed -i -e "s/^udp = .*/udp = [\"127.0.0.1:$TPORT\"]/" -e "s/^tcp = .*/tcp = []/" \
    -e "s/^listen = .*/listen = \"127.0.0.1:$APORT\"/" \
    -e "/^\[admission\]/,/^\[/ s/^enabled = true/enabled = $2/" \
    -e "/^\[admission\]/,/^\[/ s/^priority_namespaces = .*/priority_namespaces = [\"ets\"]/" \
    -e 's/^level = .*/level = "warn"/' \
    -e "s|^backend = \"sqlite\"|backend = \"postgres\"\nurl = \"$url_tandem\"|" "$1"
  "$tandem" check-config "$1" >/dev/null || exit 2
}
tandem_cfg "$work/on.toml" true
tandem_cfg "$work/off.toml" false

start_tandem() {
  PGOPTIONS='-c client_min_messages=warning' pg_psql postgres \
    -c 'DROP DATABASE IF EXISTS tandem' -c 'CREATE DATABASE tandem'
  "$tandem" --config "$1" >"$work/tandem.log" 2>&1 &
  server_pid=$!
  sleep 1.5
  kill -0 "$server_pid" 2>/dev/null || { echo "tandem did not start: $(tail -n 3 "$work/tandem.log")"; server_pid=""; return 1; }
}

admission_json() { curl -s "http://127.0.0.1:$APORT/admission" 2>/dev/null; }

# counts CSV COLUMN-NAME: sum of the named column(s) on the last line of SIPp's -trace_counts file
counts_col() {
  awk -F';' -v pat="$2" 'NR==1 { for (i = 1; i <= NF; i++) if ($i ~ pat) c[i] = 1; next }
    { last = $0 } END { n = split(last, v, ";"); s = 0; for (i in c) s += v[i]; print s }' "$1"
}

# sipp_storm LABEL TARGET SERVER_PIDS...
sipp_storm() {
  local label=$1 target=$2
  shift 2
  local d=$work/$label c0 c1 p0 p1 t0 t1 stat counts ok gave retrans sent r503 secs cpu
  mkdir -p "$d"
  c0=$(bash "$cpu_of" "$@")
  p0=$(pg_cpu)
  t0=$(date +%s.%N)
  (cd "$d" && timeout 900 sipp "$target" -sf "$scenario" -r "$RATE" -m "$PHONES" -l "$PHONES" \
    -i 127.0.0.1 -p "${SIPP_PORT:-5181}" -trace_stat -fd 1 -stf stat.csv -trace_counts -nostdin \
    >sipp.out 2>&1)
  t1=$(date +%s.%N)
  c1=$(bash "$cpu_of" "$@")
  p1=$(pg_cpu)
  stat=$d/stat.csv
  counts=$(ls "$d"/*_counts.csv 2>/dev/null | head -1)
  ok=$(tail -1 "$stat" | cut -d';' -f16)
  gave=$((PHONES - ok))
  retrans=$(tail -1 "$stat" | cut -d';' -f58)
  sent=$(counts_col "$counts" '_REGISTER_Sent$')
  r503=$(counts_col "$counts" '_503_Recv$')
  secs=$(echo "$t1 - $t0" | bc)
  cpu=$(echo "scale=1; (($c1 - $c0) + ($p1 - $p0)) * 1000000 / ($ok + 1)" | bc)
  echo "$label registered=$ok gave_up=$gave requests=$sent retransmissions=$retrans ($(echo "scale=1; 100 * $retrans / ($sent + 1)" | bc) %) 503s=$r503 last_registration_s=$secs cpu_us_per_registration=$cpu"
}

echo "# $(date -u +%FT%TZ) $(nproc) cores; PHONES=$PHONES RATE=$RATE; $(uptime | sed 's/^ *//')"
echo "# tandem $("$tandem" --version) (HEAD $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)); $("$PG_BIN/postgres" --version); sipp $(sipp -v 2>/dev/null | grep -o 'v[0-9.]*' | head -1)"

for variant in ${VARIANTS:-on off}; do
  [ "${SKIP_SIPP:-0}" = 1 ] && break
  start_tandem "$work/$variant.toml" || continue
  label=tandem-admission
  [ "$variant" = off ] && label=tandem-off
  sipp_storm "$label" "127.0.0.1:$TPORT" "$server_pid"
  [ "$variant" = on ] && echo "  /admission: $(admission_json)"
  stop_server
done

if [ "${SKIP_KAMAILIO:-0}" != 1 ]; then
  pg_psql kamailio -c 'TRUNCATE location'
  kamailio -f "$work/kamailio.cfg" -P "$work/kam.pid" -w "$work" -m 2048 -M 32 >"$work/kam.log" 2>&1
  for i in $(seq 100); do [ -s "$work/kam.pid" ] && break; sleep 0.1; done
  sleep 2
  kam_main=$(cat "$work/kam.pid" 2>/dev/null)
  if [ -n "$kam_main" ]; then
    # shellcheck disable=SC2046
    sipp_storm kamailio-pipelimit 127.0.0.1:5070 "$kam_main" $(pgrep -d ' ' -P "$kam_main")
  else
    echo "kamailio did not start: $(tail -n 3 "$work/kam.log")"
  fi
  stop_server
fi

if [ "${SKIP_SIM:-0}" != 1 ]; then
  start_tandem "$work/on.toml" && {
    c0=$(bash "$cpu_of" "$server_pid")
    p0=$(pg_cpu)
    line=$("$tandem" sim --registrar "127.0.0.1:$TPORT" --phones "$PHONES" --rate "$RATE" \
      --mode token --priority "$PRIORITY" --domain 127.0.0.1 --ping-interval 0 --sockets 16 2>&1 | tail -1)
    c1=$(bash "$cpu_of" "$server_pid")
    p1=$(pg_cpu)
    echo "tandem-sim-token $line cpu_s=$(echo "($c1 - $c0) + ($p1 - $p0)" | bc)"
    echo "  /admission: $(admission_json)"
    stop_server
  }
fi
