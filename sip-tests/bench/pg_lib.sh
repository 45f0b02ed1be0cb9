# sip-tests/bench/pg_lib.sh — sourced by the PostgreSQL benchmarks (register_pg.sh,
# cluster_pg.sh): a throwaway PostgreSQL 15 server in a temporary directory, with
# the default settings (fsync on, synchronous_commit on: every commit is flushed
# to disk), and the CPU its processes spend.
#
# Environment: PG_BIN (/usr/lib/postgresql/15/bin), PG_PORT (55432).
# Needs $cpu_of (../shared/bench/cpu_of.sh) set by the sourcing script.
# Give pg_start a directory not named /tmp/tandem-pg-*: tests/common/pg.rs reaps
# those (without its lock file) when the other test suites start.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PORT=${PG_PORT:-55432}
pg_dir=""

# initdb and postgres refuse to run as root: as root they run as `postgres`.
pg_as() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_start DIR: initdb in DIR/data and start the server on 127.0.0.1:$PG_PORT
# (socket in DIR). Trust authentication: any user name and password get in.
pg_start() {
  pg_dir=$1
  mkdir -p "$pg_dir"
  [ "$(id -u)" = 0 ] && chown postgres "$pg_dir"
  [ -x "$PG_BIN/initdb" ] || { echo "no PostgreSQL in $PG_BIN (set PG_BIN)" >&2; return 2; }
  if ! pg_as "$PG_BIN/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 --locale=C \
      >"$pg_dir/initdb.log" 2>&1; then
    cat "$pg_dir/initdb.log" >&2
    return 2
  fi
  if ! pg_as "$PG_BIN/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" \
      -o "-p $PG_PORT -k $pg_dir -c listen_addresses=127.0.0.1" -w -t 60 start >/dev/null; then
    cat "$pg_dir/server.log" >&2
    return 2
  fi
}

pg_stop() {
  [ -n "$pg_dir" ] && [ -f "$pg_dir/data/postmaster.pid" ] &&
    pg_as "$PG_BIN/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null 2>&1
}

# pg_psql [DB] [psql args...]
pg_psql() {
  local db=${1:-postgres}
  shift
  "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$db" -X -q -t -A -v ON_ERROR_STOP=1 "$@"
}

pg_postmaster() { head -1 "$pg_dir/data/postmaster.pid"; }

# PIDs of this server: the postmaster and its children (backends, walwriter,
# checkpointer, autovacuum...).
pg_pids() {
  local pm
  pm=$(pg_postmaster)
  echo "$pm $(pgrep -d ' ' -P "$pm")"
}

# CPU seconds this server has spent so far: cpu_of.sh over the live processes plus
# the postmaster's cutime+cstime (children that exited and were reaped, e.g.
# autovacuum workers, so CPU of processes that end during a sweep is not lost).
pg_cpu() {
  local pm live dead
  pm=$(pg_postmaster)
  # shellcheck disable=SC2046
  live=$(bash "$cpu_of" $(pg_pids))
  dead=$(awk '{print $16+$17}' "/proc/$pm/stat")
  echo "scale=3; $live + $dead / $(getconf CLK_TCK)" | bc
}

# The machine is shared with compiles (cargo/rustc/cc/ld): quiet_wait waits (at most
# QUIET_MAX s, default 60) until none has run for 3 s, so that sweeps start on an
# idle machine; busy_start/busy_stop sample once a second whether one runs during a
# sweep and busy_stop prints "compiling=X/Ys".
compiling() { ps -eo comm= | grep -qxE 'rustc|cargo|cc1|cc1plus|ld|clippy-driver|build-script-.*'; }
quiet_wait() {
  local i quiet=0
  for i in $(seq "${QUIET_MAX:-60}"); do
    if compiling; then quiet=0; else quiet=$((quiet + 1)); fi
    [ "$quiet" -ge 3 ] && return 0
    sleep 1
  done
  return 1
}
busy_pid=""
busy_start() {
  busy_file=$(mktemp "${TMPDIR:-/tmp}/tbench-busy.XXXXXX")
  (while :; do if compiling; then echo 1; else echo 0; fi; sleep 1; done) >"$busy_file" &
  busy_pid=$!
}
busy_stop() {
  [ -n "$busy_pid" ] && kill "$busy_pid" 2>/dev/null && wait "$busy_pid" 2>/dev/null
  busy_pid=""
  echo "compiling=$(grep -c 1 "$busy_file")/$(wc -l <"$busy_file")s"
  rm -f "$busy_file"
}

# pg_ticks: "PID TICKS" (user+system clock ticks) of each process of this server.
pg_ticks() {
  local p
  for p in $(pg_pids); do
    [ -r "/proc/$p/stat" ] && echo "$p $(awk '{print $14+$15}' "/proc/$p/stat")"
  done
}

# pg_split DB BEFORE_FILE OK: PostgreSQL's CPU since BEFORE_FILE (pg_ticks output)
# by process role, in µs per REGISTER: Tandem's writer connection (its last
# statement was a COMMIT), its other client connections (the cluster pool: change-log
# reads, heartbeats; and the LISTEN connection), WAL writer + checkpointer + other
# background processes, and reaped children (autovacuum workers, short sessions).
pg_split() {
  local db=$1 before=$2 ok=$3 pm
  pm=$(pg_postmaster)
  {
    pg_ticks | sed 's/^/now /'
    sed 's/^/then /' "$before"
    pg_psql "$db" -F ' ' -c "SELECT 'role', pid, CASE
        WHEN backend_type <> 'client backend' THEN replace(backend_type, ' ', '_')
        WHEN query ILIKE 'COMMIT%' THEN 'writer'
        WHEN query ILIKE 'LISTEN%' THEN 'listener'
        ELSE 'pool' END
      FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
    echo "reaped $(awk '{print $16+$17}' "/proc/$pm/stat") $(getconf CLK_TCK)"
  } | awk -v ok="$ok" -v hz="$(getconf CLK_TCK)" '
    $1 == "now" { now[$2] = $3 } $1 == "then" { then_[$2] = $3 } $1 == "role" { role[$2] = $3 }
    END {
      for (p in now) { r = (p in role) ? role[p] : "other"; d[r] += now[p] - then_[p] }
      s = ""
      for (r in d) s = s sprintf(" %s=%.1f", r, d[r] * 1e6 / hz / ok)
      print "postgres CPU by process, us per REGISTER (reaped children not included):" s
    }'
}
