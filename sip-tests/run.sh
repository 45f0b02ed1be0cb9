#!/bin/bash
# sip-tests/run.sh [TANDEM_BINARY]
#
# Tests a built Tandem the way users meet it: real SIP clients (SIPp, sipsak,
# linphonec) against a running `tandem` on 127.0.0.1. Builds nothing; the binary
# defaults to target/release/tandem of this repository.
#
# Each phase starts Tandem on a temporary copy of config/tandem.toml (free ports,
# store in a temporary directory) and stops it afterwards:
#   demo  - the default config (demo users, SHA-256 + MD5 challenges):
#           sipsak OPTIONS (UDP, TCP), linphonec registering alice (UDP) and bob
#           (TCP) under tmux, /health bindings, unregistration, /metrics
#   auth  - sip-tests/gen_users.sh config (users u0.., MD5 challenge):
#           SIPp REGISTER with digest (UDP, TCP), sipsak registration with a
#           password, a wrong password rejected
#   load  - authenticate = false: SIPp register.xml at LOAD_RATE/s for LOAD_SECS s
#   storm - seed 002: SIPp register_retry.xml, STORM_N (1500) phones at once
#           against a node throttled to STORM_CAP (300) registrations/s: all
#           register, the refused ones by their implicit tokens (/admission)
#   calls - dial plan (9XXX, 7XXX, 8XXX) to SIPp gateways on 127.0.0.1 (which makes
#           the 127.0.0.1 callers trusted): SIPp call.xml through Tandem to a
#           gateway running answer.xml (50 calls at 25/s); failover from a gateway
#           answering 503 (answer_503.xml) to the next; CANCEL while ringing
#           (call_cancel.xml, answer_ring.xml); 404 for an unknown number and 480
#           for a user with no binding (call_reject.xml); /calls and /metrics
#
# Prints one PASS/FAIL/SKIP line per check, then "N passed, N failed"; exits 1
# if any check failed. Environment: LOAD_RATE (1000), LOAD_SECS (5),
# SIPTESTS_PORT (first of ten consecutive ports to use; default random, with
# retries if taken), SIPTESTS_KEEP=1 keeps the work directory (logs).
# As root, missing tools (sip-tester sipsak linphone-cli tmux) are installed
# with apt-get.
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
bin_arg=${1:-$repo/target/release/tandem}
LOAD_RATE=${LOAD_RATE:-1000}
LOAD_SECS=${LOAD_SECS:-5}
TIME_LIMIT=${SIPTESTS_TIME_LIMIT:-240}  # whole run, seconds

passed=0 failed=0 skipped=0
pass() { passed=$((passed + 1)); echo "PASS: $1"; }
fail() { failed=$((failed + 1)); echo "FAIL: $1${2:+ -- $2}"; }
skip() { skipped=$((skipped + 1)); echo "SKIP: $1${2:+ -- $2}"; }
note() { echo "      $*"; }
# Indented tail of a file, for the reason of a failure.
show() { [ -s "$1" ] && tail -n "${2:-15}" "$1" | indent; return 0; }
indent() { awk '{ print "      | " $0 }'; }

work=$(mktemp -d "${TMPDIR:-/tmp}/tandem-sip-tests.XXXXXX")
tandem_pid=""
tmux_sock=$work/tmux.sock
watchdog=""

summary() {
  [ "$skipped" -gt 0 ] && echo "($skipped skipped)"
  echo "$passed passed, $failed failed"
}

cleanup() {
  cleaned=1
  stop_tandem quiet
  if [ -S "$tmux_sock" ]; then tmux -S "$tmux_sock" kill-server >/dev/null 2>&1; fi
  if [ -n "$watchdog" ]; then kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null; fi
  if [ "${SIPTESTS_KEEP:-0}" = 1 ] || [ "$failed" -gt 0 ]; then
    echo "(work directory kept: $work)"
  else
    rm -rf "$work"
  fi
}
cleaned=0
on_exit() { [ $cleaned = 1 ] || cleanup; }
on_signal() {
  trap - EXIT INT TERM
  fail "run.sh" "interrupted or over the ${TIME_LIMIT}s time limit"
  [ $cleaned = 1 ] || cleanup
  summary
  exit 1
}
trap on_exit EXIT
trap on_signal INT TERM

# Whole-run limit: each command below has its own timeout too.
( sleep "$TIME_LIMIT"; kill -TERM $$ 2>/dev/null ) >/dev/null 2>&1 &
watchdog=$!

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v sipp >/dev/null || need_pkgs+=(sip-tester)
command -v sipsak >/dev/null || need_pkgs+=(sipsak)
command -v linphonec >/dev/null || need_pkgs+=(linphone-cli)
command -v tmux >/dev/null || need_pkgs+=(tmux)
command -v python3 >/dev/null || need_pkgs+=(python3)
if [ ${#need_pkgs[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${need_pkgs[*]} (apt-get)"
  { timeout 300 apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "${need_pkgs[@]}"; } \
    >"$work/apt.log" 2>&1 || { echo "apt-get failed:"; show "$work/apt.log"; }
fi
have() { command -v "$1" >/dev/null; }
missing_reason() { echo "$1 is not installed (apt-get install -y $2, or run as root to install it)"; }

# ---------------------------------------------------------------- helpers
# http_get PORT PATH: body of http://127.0.0.1:PORT/PATH (bash /dev/tcp, no curl needed).
http_get() {
  timeout 5 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
    printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$1" >&3
    cat <&3' "$1" "$2" 2>/dev/null | tr -d '\r' | sed '1,/^$/d'
}
# bindings: the "bindings" count of /health, or "?" if it cannot be read.
bindings() {
  local b
  b=$(http_get "$admin_port" /health | grep -o '"bindings":[0-9]*' | cut -d: -f2)
  echo "${b:-?}"
}
# wait_bindings N [SECONDS]: waits until /health reports N bindings.
wait_bindings() {
  local want=$1 tries=$((${2:-5} * 10)) b
  while :; do
    b=$(bindings)
    [ "$b" = "$want" ] && return 0
    tries=$((tries - 1))
    [ $tries -le 0 ] && { got_bindings=$b; return 1; }
    sleep 0.1
  done
}

# ---- linphonec sessions under tmux (headless: no terminal, no sound card)
# lp_start NAME [RC-EXTRA]: starts linphonec in tmux session NAME with its own HOME
# ($work/NAME) and linphonerc, log in $work/NAME/linphonec.log; waits for the prompt.
lp_start() {
  local name=$1 home=$work/$1 i
  # liblinphone keeps its database in $HOME/.local/share/linphone: without that
  # directory the core never starts (no socket, no REGISTER).
  mkdir -p "$home/.local/share/linphone" "$home/.config"
  # Random SIP ports (-1), no TLS; without a sound card the core has no audio
  # device (`soundcard use files` plays and records .wav files instead).
  cat >"$home/linphonerc" <<EOF
[sip]
sip_port=-1
sip_tcp_port=-1
sip_tls_port=0
register_only_when_network_is_up=0
[sound]
echocancellation=0
[video]
enabled=0
display=0
capture=0
${2:-}
EOF
  local cmd="env HOME='$home' XDG_CONFIG_HOME='$home/.config' XDG_DATA_HOME='$home/.local/share' \
     linphonec -c '$home/linphonerc' -d 6 -l '$home/linphonec.log'; echo LINPHONEC-EXITED status=\$?; sleep 120"
  env TERM=xterm tmux -S "$tmux_sock" new-session -d -s "$name" -x 220 -y 60 "$cmd"
  for i in $(seq 1 100); do
    if lp_pane "$name" | grep -q 'linphonec>'; then return 0; fi
    if lp_pane "$name" | grep -q LINPHONEC-EXITED; then return 1; fi
    sleep 0.1
  done
  return 1
}
lp_pane() { tmux -S "$tmux_sock" capture-pane -p -J -S -300 -t "$1" 2>/dev/null; }
lp_send() { tmux -S "$tmux_sock" send-keys -t "$1" "$2" Enter; }
lp_stop() { tmux -S "$tmux_sock" kill-session -t "$1" >/dev/null 2>&1; }
# lp_cmd_wait NAME CMD REGEX SECONDS: types CMD until the pane shows REGEX
# (re-typing CMD every second); REGEX is looked for only in output after CMD.
lp_cmd_wait() {
  local name=$1 cmd=$2 re=$3 secs=$4 n=0
  while [ $n -lt "$secs" ]; do
    lp_send "$name" "$cmd"
    sleep 1
    if lp_pane "$name" | awk -v c="$cmd" 'index($0, c) { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' |
         grep -Eq "$re"; then
      return 0
    fi
    n=$((n + 1))
  done
  return 1
}
# lp_wait NAME REGEX SECONDS: waits until the pane shows REGEX.
lp_wait() {
  local i
  for i in $(seq 1 $(($3 * 10))); do
    lp_pane "$1" | grep -Eq "$2" && return 0
    sleep 0.1
  done
  return 1
}

# mkconf BASE OUT: BASE with the listeners moved to our ports and the store in OUT's directory.
mkconf() {
  sed -e "s|^udp = .*|udp = [\"127.0.0.1:$sip_port\"]|" \
      -e "s|^tcp = .*|tcp = [\"127.0.0.1:$sip_port\"]|" \
      -e "s|^listen = .*|listen = \"127.0.0.1:$admin_port\"|" \
      -e "s|^enabled = .*|enabled = true|" \
      -e "s|^path = .*|path = \"$(dirname "$2")/tandem.db\"|" "$1" >"$2"
}

pick_ports() {
  local base=${SIPTESTS_PORT:-$((20000 + (RANDOM % 2000) * 10))}
  sip_port=$base admin_port=$((base + 1))
}

# start_tandem NAME BASECONFIG [SED-EXPR]: config from BASECONFIG (+ sed edit), then
# starts Tandem and waits for /health. Retries on other ports if ours are taken.
start_tandem() {
  local name=$1 base=$2 edit=${3:-} dir attempt
  for attempt in 1 2 3 4 5; do
    dir=$work/$name
    rm -rf "$dir"; mkdir -p "$dir"
    tandem_conf=$dir/tandem.toml
    tandem_log=$dir/tandem.log
    mkconf "$base" "$tandem_conf"
    [ -n "$edit" ] && sed -i -e "$edit" "$tandem_conf"
    "$tandem" --config "$tandem_conf" >"$tandem_log" 2>&1 &
    tandem_pid=$!
    local i
    for i in $(seq 1 100); do
      if ! kill -0 "$tandem_pid" 2>/dev/null; then break; fi
      if http_get "$admin_port" /health | grep -q '"status":"ok"'; then
        return 0
      fi
      sleep 0.1
    done
    stop_tandem quiet
    if [ -z "${SIPTESTS_PORT:-}" ] && grep -qi 'in use' "$tandem_log"; then
      pick_ports
      continue
    fi
    return 1
  done
  return 1
}

# stop_tandem [quiet]: SIGTERM, then SIGKILL after 10 s. Sets stop_rc.
stop_tandem() {
  stop_rc=""
  [ -n "$tandem_pid" ] || return 0
  kill -TERM "$tandem_pid" 2>/dev/null
  local i
  for i in $(seq 1 100); do
    kill -0 "$tandem_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$tandem_pid" 2>/dev/null; then
    kill -KILL "$tandem_pid" 2>/dev/null
    [ "${1:-}" = quiet ] || note "tandem did not stop within 10 s of SIGTERM; killed"
  fi
  wait "$tandem_pid" 2>/dev/null
  stop_rc=$?
  tandem_pid=""
}

# check_stop NAME: stops Tandem and checks it exits 0 on SIGTERM.
check_stop() {
  stop_tandem
  if [ "$stop_rc" = 0 ]; then pass "$1: Tandem exits cleanly on SIGTERM"
  else fail "$1: Tandem exits cleanly on SIGTERM" "exit status $stop_rc"; show "$tandem_log"; fi
}

# sipp_stat_last FILE COLUMN: the last value of a -trace_stat column, by name.
sipp_stat_last() {
  local hdr last
  hdr=$(head -n 1 "$1" 2>/dev/null) last=$(tail -n 1 "$1" 2>/dev/null)
  printf '%s\n%s\n' "$hdr" "$last" | awk -F';' -v col="$2" \
    'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i } NR == 2 && c { print $c }'
}

# run_sipp NAME EXPECTED_OK SECONDS SIPP-ARGS...: runs SIPp against Tandem; passes when
# SIPp exits 0 with EXPECTED_OK successful calls and no failed call.
run_sipp() {
  local name=$1 want=$2 secs=$3; shift 3
  local out=$work/sipp-${name//[^a-zA-Z0-9]/_}
  mkdir -p "$out"
  (cd "$out" && timeout -k 5 $((secs + 15)) sipp "127.0.0.1:$sip_port" "$@" -i 127.0.0.1 \
      -nostdin -trace_err -trace_stat -fd 1 -stf stat.csv -timeout "${secs}s" -timeout_error \
      >sipp.out 2>&1)
  local rc=$?
  local ok failed retrans elapsed
  ok=$(sipp_stat_last "$out/stat.csv" "SuccessfulCall(C)")
  failed=$(sipp_stat_last "$out/stat.csv" "FailedCall(C)")
  retrans=$(sipp_stat_last "$out/stat.csv" "Retransmissions(C)")
  elapsed=$(sipp_stat_last "$out/stat.csv" "ElapsedTime(C)")
  if [ "$rc" = 0 ] && [ "${ok:-x}" = "$want" ] && [ "${failed:-x}" = 0 ]; then
    pass "$name ($ok ok, 0 failed, ${retrans:-?} retransmissions, ${elapsed%%.*})"
  else
    fail "$name" "sipp exit $rc, successful ${ok:-?}/$want, failed ${failed:-?}"
    show "$out/sipp.out" 6
    ls "$out"/*errors.log >/dev/null 2>&1 && show "$(ls "$out"/*errors.log | head -n 1)" 20
  fi
}

# ---------------------------------------------------------------- binary
start_time=$SECONDS
if [ ! -x "$bin_arg" ]; then
  fail "tandem binary" "$bin_arg not found or not executable (build it: cargo build --release)"
  cleanup; summary; exit 1
fi
# A private copy: a concurrent `cargo build` cannot swap the binary between phases.
tandem=$work/tandem
cp "$bin_arg" "$tandem"
echo "sip-tests: $("$tandem" --version 2>/dev/null || echo tandem) from $bin_arg; work directory $work"
pick_ports

if "$tandem" check-config "$repo/config/tandem.toml" >"$work/check.out" 2>&1; then
  pass "tandem check-config config/tandem.toml"
else
  fail "tandem check-config config/tandem.toml" "$(cat "$work/check.out")"
fi

# ================================================================ phase demo
echo "== demo: default config (demo users, SHA-256 + MD5), Tandem on 127.0.0.1:$sip_port"
if ! start_tandem demo "$repo/config/tandem.toml"; then
  fail "demo: Tandem starts on the default config" "no /health on 127.0.0.1:$admin_port"
  show "$tandem_log"
else
  pass "demo: Tandem starts on the default config (UDP+TCP 127.0.0.1:$sip_port, admin :$admin_port)"
  demo_conf=$tandem_conf

  # ---- sipsak OPTIONS
  if ! have sipsak; then
    fail "sipsak OPTIONS" "$(missing_reason sipsak sipsak)"
  else
    for tr in udp tcp; do
      out=$work/sipsak-options-$tr.out
      timeout 15 sipsak -vv --transport=$tr -s "sip:127.0.0.1:$sip_port" >"$out" 2>&1
      rc=$?
      if [ "$rc" = 0 ] && grep -q '^SIP/2.0 200' "$out"; then
        pass "sipsak OPTIONS ping over ${tr^^} gets 200 OK"
      else
        fail "sipsak OPTIONS ping over ${tr^^} gets 200 OK" "sipsak exit $rc"; show "$out"
      fi
    done
  fi

  # ---- linphonec under tmux
  lp_checks=("linphonec registers alice over UDP" "linphonec registers bob over TCP"
             "linphonec unregisters on quit")
  lp_skip=""
  if ! have linphonec; then lp_skip=$(missing_reason linphonec linphone-cli); fi
  if [ -z "$lp_skip" ] && ! have tmux; then lp_skip=$(missing_reason tmux tmux); fi
  if [ -n "$lp_skip" ]; then
    for c in "${lp_checks[@]}"; do fail "$c" "$lp_skip"; done
  else
    if ! lp_start lp; then
      for c in "${lp_checks[@]}"; do fail "$c" "linphonec did not start (no prompt within 10 s)"; done
      lp_pane lp | grep -v '^$' | tail -n 10 | indent; show "$work/lp/linphonec.log"
    else
      # alice over UDP
      lp_send lp "register sip:alice@127.0.0.1:$sip_port sip:127.0.0.1:$sip_port alice-secret"
      if lp_cmd_wait lp "status register" "^registered, identity=sip:alice@127.0.0.1:$sip_port" 10; then
        if wait_bindings 1 5; then
          pass "linphonec registers alice over UDP (status register: registered; /health bindings=1)"
        else
          fail "linphonec registers alice over UDP" "linphonec says registered but /health bindings=$got_bindings"
        fi
      else
        fail "linphonec registers alice over UDP" "no 'registered' in status register within 10 s"
        lp_pane lp | grep -v '^$' | tail -n 8 | indent
        grep -E 'SIP/2.0 [0-9]|moving from state' "$work/lp/linphonec.log" | tail -n 6 | indent
      fi
      # bob over TCP: `register` replaces the account (alice is unregistered).
      lp_send lp "register sip:bob@127.0.0.1:$sip_port <sip:127.0.0.1:$sip_port;transport=tcp> bob-secret"
      if lp_cmd_wait lp "status register" "^registered, identity=sip:bob@127.0.0.1:$sip_port" 10; then
        if wait_bindings 1 5 && grep -q "message sent to \[TCP://127.0.0.1:$sip_port\]" "$work/lp/linphonec.log"; then
          pass "linphonec registers bob over TCP (status register: registered; /health bindings=1)"
        else
          fail "linphonec registers bob over TCP" "/health bindings=${got_bindings:-$(bindings)} (want 1: bob in, alice out) or no TCP REGISTER in the linphonec log"
        fi
      else
        fail "linphonec registers bob over TCP" "no 'registered' in status register within 10 s"
        lp_pane lp | grep -v '^$' | tail -n 8 | indent
        grep -E 'SIP/2.0 [0-9]|moving from state' "$work/lp/linphonec.log" | tail -n 6 | indent
      fi
      # quit: linphonec unregisters (REGISTER Expires: 0) before exiting.
      lp_send lp "quit"
      if wait_bindings 0 10; then
        pass "linphonec unregisters on quit (/health bindings=0)"
      else
        fail "linphonec unregisters on quit" "/health bindings=$got_bindings after quit"
      fi
    fi
    lp_stop lp
  fi

  # ---- two linphonec calling each other through Tandem (issue 3)
  # alice (UDP) calls bob (${bob_transport}); bob auto-answers. Both play a 440 Hz
  # tone from a .wav file and record what they hear: each recording must carry the
  # other's tone, so RTP flowed both ways between the phones (SDP relayed intact).
  bob_transport=TCP
  bob_proxy="<sip:127.0.0.1:$sip_port;transport=tcp>"
  call_checks=("linphonec alice (UDP) and bob ($bob_transport) register for a call"
               "linphonec alice calls bob: bob auto-answers, /calls shows the call confirmed"
               "media flows both ways between the two linphonec"
               "alice hangs up: bob sees the call end, /calls shows it terminated by BYE")
  call_skip=$lp_skip
  if [ -z "$call_skip" ] && ! have python3; then call_skip=$(missing_reason python3 python3); fi
  if [ -n "$call_skip" ]; then
    for c in "${call_checks[@]}"; do fail "$c" "$call_skip"; done
  # Each phone its own RTP port (both default to 7078 and would hear themselves).
  elif ! lp_start alice "$(printf '[rtp]\naudio_rtp_port=%d' $((sip_port + 4)))" ||
       ! lp_start bob "$(printf '[rtp]\naudio_rtp_port=%d' $((sip_port + 6)))"; then
    for c in "${call_checks[@]}"; do fail "$c" "linphonec did not start (no prompt within 10 s)"; done
  else
    python3 - "$work/tone.wav" <<'PYTONE'
import math, struct, sys, wave
w = wave.open(sys.argv[1], "wb")
w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)
w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 8000)))
                       for i in range(8000 * 30)))
w.close()
PYTONE
    # rms WAV: root mean square of a 16-bit recording (0 for silence; the tone is ~5600).
    rms() {
      python3 - "$1" <<'PYRMS' 2>/dev/null || echo 0
import array, math, sys, wave
w = wave.open(sys.argv[1])
a = array.array("h", w.readframes(w.getnframes()))
print(int(math.sqrt(sum(x * x for x in a) / len(a))) if a else 0)
PYRMS
    }
    lp_send alice "register sip:alice@127.0.0.1:$sip_port sip:127.0.0.1:$sip_port alice-secret"
    lp_send bob "register sip:bob@127.0.0.1:$sip_port $bob_proxy bob-secret"
    if lp_cmd_wait alice "status register" "^registered," 10 &&
       lp_cmd_wait bob "status register" "^registered," 10 && wait_bindings 2 5; then
      pass "${call_checks[0]} (/health bindings=2)"
      for u in alice bob; do
        lp_send $u "soundcard use files"
        lp_send $u "play $work/tone.wav"
        lp_send $u "record $work/$u-heard.wav"
      done
      lp_send bob "autoanswer enable"
      sleep 0.5
      lp_send alice "call sip:bob@127.0.0.1:$sip_port"
      calls_json=""
      if lp_wait alice "Call [0-9]+ with sip:bob@.* connected" 10 &&
         lp_wait bob "Call [0-9]+ with sip:alice@.* connected" 5; then
        calls_json=$(http_get "$admin_port" /calls)
        # bob's INVITE came over the connection he registered on (his flow)
        over=$(grep -A1 "new bytes from \[${bob_transport}://127.0.0.1:$sip_port\]" "$work/bob/linphonec.log" |
               grep -c '^INVITE sip:bob@')
        if grep -q '"caller":"sip:alice@127.0.0.1"' <<<"$calls_json" &&
           grep -q '"state":"confirmed"' <<<"$calls_json" && [ "$over" -ge 1 ]; then
          pass "${call_checks[1]} (INVITE reached bob over $bob_transport)"
        else
          fail "${call_checks[1]}" "INVITEs to bob over $bob_transport: $over; GET /calls: $calls_json"
        fi
        sleep 3 # three seconds of tone each way
        lp_send alice "terminate"
        if lp_wait bob "Call [0-9]+ with sip:alice@.* ended" 10; then
          ended=""
          for i in $(seq 1 30); do
            calls_json=$(http_get "$admin_port" /calls)
            grep -q '"state":"terminated"' <<<"$calls_json" && grep -q '"end_reason":"bye"' <<<"$calls_json" &&
              { ended=1; break; }
            sleep 0.1
          done
          if [ -n "$ended" ]; then pass "${call_checks[3]}"
          else fail "${call_checks[3]}" "GET /calls: $calls_json"; fi
        else
          fail "${call_checks[3]}" "bob's linphonec did not show the call ended within 10 s"
          lp_pane bob | grep -v '^$' | tail -n 6 | indent
        fi
        sleep 1 # the recorders close their files when the call ends
        alice_rms=$(rms "$work/alice-heard.wav") bob_rms=$(rms "$work/bob-heard.wav")
        if [ "$alice_rms" -gt 1000 ] && [ "$bob_rms" -gt 1000 ]; then
          pass "${call_checks[2]} (RMS of what each recorded: alice $alice_rms, bob $bob_rms; tone ~5600)"
        else
          fail "${call_checks[2]}" "RMS of what each recorded: alice $alice_rms, bob $bob_rms (silence is 0)"
          grep -h -A1 'Bandwidth usage' "$work/alice/linphonec.log" | grep RTP | tail -n 2 | indent
        fi
      else
        for c in "${call_checks[@]:1}"; do fail "$c" "the call did not connect within 10 s"; done
        lp_pane alice | grep -v '^$' | tail -n 6 | indent
        lp_pane bob | grep -v '^$' | tail -n 6 | indent
        lp_send alice "terminate"
      fi
    else
      for c in "${call_checks[@]}"; do fail "$c" "alice and bob not both registered (bindings=$(bindings))"; done
      lp_pane bob | grep -v '^$' | tail -n 6 | indent
    fi
    lp_send alice "quit"; lp_send bob "quit"
    wait_bindings 0 10 || note "bindings=$got_bindings after both linphonec quit"
  fi
  lp_stop alice; lp_stop bob

  # ---- /metrics
  metrics=$(http_get "$admin_port" /metrics)
  missing=""
  for m in tandem_sip_requests_total tandem_sip_responses_total tandem_register_total tandem_bindings_active; do
    grep -q "^$m" <<<"$metrics" || missing="$missing $m"
  done
  if [ -z "$missing" ]; then pass "/metrics exports the tandem_* series"
  else fail "/metrics exports the tandem_* series" "missing:$missing"; fi

  check_stop demo
fi

# ================================================================ phase auth
echo "== auth: gen_users.sh config (u0..u99, MD5), Tandem on 127.0.0.1:$sip_port"
gen_conf=$work/users-base.toml
users_csv=$work/users.csv
if ! "$here/gen_users.sh" -b "$repo/config/tandem.toml" -o "$gen_conf" -c "$users_csv" 100 >"$work/gen.out" 2>&1; then
  fail "gen_users.sh 100" "$(cat "$work/gen.out")"
elif ! start_tandem auth "$gen_conf"; then
  fail "auth: Tandem starts on the gen_users.sh config" "no /health on 127.0.0.1:$admin_port"
  show "$tandem_log"
else
  pass "auth: Tandem starts on the gen_users.sh config (100 users)"
  if ! have sipp; then
    fail "SIPp REGISTER with digest" "$(missing_reason sipp sip-tester)"
  else
    run_sipp "SIPp REGISTER with digest, UDP, users u0..u4" 5 20 \
      -sf "$here/register_auth.xml" -inf "$users_csv" -m 5 -r 10 -l 5
    if wait_bindings 5 3; then pass "/health reports the 5 SIPp bindings"
    else fail "/health reports the 5 SIPp bindings" "bindings=$got_bindings"; fi
    run_sipp "SIPp REGISTER with digest, TCP, users u0..u4" 5 20 \
      -sf "$here/register_auth.xml" -inf "$users_csv" -m 5 -r 10 -l 5 -t t1
  fi
  if ! have sipsak; then
    fail "sipsak registration with password" "$(missing_reason sipsak sipsak)"
  else
    before=$(bindings)
    out=$work/sipsak-register.out
    # -U usrloc mode, -C contact (registration only), -x expires (>= min_expires_secs),
    # -a password, -u auth username (sipsak otherwise derives "u7@" from the URI), -i no Via warning.
    timeout 15 sipsak -U -i -vv -C "sip:u7@127.0.0.1:5999" -s "sip:u7@127.0.0.1:$sip_port" \
      -u u7 -a pw-u7 -x 3600 >"$out" 2>&1
    rc=$?
    if [ "$rc" = 0 ] && grep -q 'usrloc tests completed successful' "$out" && wait_bindings $((before + 1)) 3; then
      pass "sipsak registration with password (u7: 401, then 200; /health bindings=$((before + 1)))"
    else
      fail "sipsak registration with password" "sipsak exit $rc, bindings ${got_bindings:-?} (want $((before + 1)))"
      show "$out" 25
    fi
    before=$(bindings)
    out=$work/sipsak-badpass.out
    timeout 15 sipsak -U -i -vv -C "sip:u8@127.0.0.1:5999" -s "sip:u8@127.0.0.1:$sip_port" \
      -u u8 -a wrong-password -x 3600 >"$out" 2>&1
    rc=$?
    if [ "$rc" != 0 ] && grep -q 'SIP/2.0 40[13]' "$out" && ! grep -q 'SIP/2.0 200' "$out" && [ "$(bindings)" = "$before" ]; then
      pass "sipsak registration with a wrong password is refused ($(grep -o 'SIP/2.0 40[13][^[:cntrl:]]*' "$out" | tail -n 1 | tr -d '\r'))"
    else
      fail "sipsak registration with a wrong password is refused" "sipsak exit $rc"
      show "$out" 25
    fi
  fi
  check_stop auth
fi

# ================================================================ phase load
echo "== load: authenticate = false, SIPp register.xml $LOAD_RATE/s for $LOAD_SECS s"
if ! start_tandem load "$repo/config/tandem.toml" 's/^authenticate = .*/authenticate = false/'; then
  fail "load: Tandem starts with authenticate = false" "no /health on 127.0.0.1:$admin_port"
  show "$tandem_log"
else
  pass "load: Tandem starts with authenticate = false"
  if ! have sipp; then
    fail "SIPp REGISTER load" "$(missing_reason sipp sip-tester)"
  else
    n=$((LOAD_RATE * LOAD_SECS))
    run_sipp "SIPp REGISTER load, $LOAD_RATE/s for ${LOAD_SECS}s, $n distinct users" "$n" $((LOAD_SECS * 3 + 10)) \
      -sf "$here/register.xml" -r "$LOAD_RATE" -m "$n" -l $((LOAD_RATE * 5))
    if wait_bindings "$n" 5; then pass "/health reports the $n load bindings"
    else fail "/health reports the $n load bindings" "bindings=$got_bindings"; fi
  fi
  check_stop load
fi

# ================================================================ phase storm
# Seed 002 with unmodified phones: SIPp register_retry.xml (honours 503 +
# Retry-After) offers STORM_N phones at once to a node throttled to STORM_CAP
# registrations a second. Every phone must register; the refused ones are told a
# staggered Retry-After and served at token priority when they retry (implicit
# tokens, docs/token-protocol.md).
STORM_N=${STORM_N:-1500} STORM_CAP=${STORM_CAP:-300}
echo "== storm: SIPp register_retry.xml, $STORM_N phones at once, node throttled to $STORM_CAP/s"
if ! start_tandem storm "$repo/config/tandem.toml" \
    "s/^authenticate = .*/authenticate = false/;s/^service_rate_limit = .*/service_rate_limit = $STORM_CAP/;s/^initial_rate = .*/initial_rate = $STORM_CAP.0/"; then
  fail "storm: Tandem starts with service_rate_limit = $STORM_CAP" "no /health on 127.0.0.1:$admin_port"
  show "$tandem_log"
else
  pass "storm: Tandem starts with service_rate_limit = $STORM_CAP"
  if ! have sipp; then
    fail "SIPp registration storm" "$(missing_reason sipp sip-tester)"
  else
    run_sipp "SIPp storm: $STORM_N unmodified phones at once all register" "$STORM_N" 90 \
      -sf "$here/register_retry.xml" -r "$STORM_N" -m "$STORM_N" -l "$STORM_N"
    adm=$(http_get "$admin_port" /admission)
    refused=$(grep -o '"refused_on_arrival":[0-9]*' <<<"$adm" | cut -d: -f2)
    implicit=$(grep -o '"implicit_used":[0-9]*' <<<"$adm" | cut -d: -f2)
    if [ "${refused:-0}" -gt 0 ] && [ "${implicit:-0}" -ge "$refused" ]; then
      pass "storm: $refused phones refused with a slot, every retry served by its implicit token ($implicit)"
    else
      fail "storm: refused phones' retries are served by their implicit tokens" "/admission: $adm"
    fi
    if wait_bindings "$STORM_N" 5; then pass "/health reports the $STORM_N storm bindings"
    else fail "/health reports the $STORM_N storm bindings" "bindings=$got_bindings"; fi
  fi
  check_stop storm
fi

# ================================================================ phase calls
# SIPp callers and SIPp gateways (UAS) on 127.0.0.1 around one Tandem. The dial plan
# sends 9XXX to gw-a, 7XXX to gw-503 (order 1, answers 503) and on to gw-b (order 2),
# 8XXX to gw-ring (rings until cancelled). The gateways listen on sip_port+2..+5 and
# do not answer OPTIONS (probe = false); being on 127.0.0.1 they make the SIPp callers
# on 127.0.0.1 trusted (no 407).
calls_n=50 calls_rate=25 cancel_n=10
echo "== calls: SIPp callers -> Tandem -> SIPp gateways (routes, failover, CANCEL, 404/480), Tandem on 127.0.0.1:$sip_port"
declare -A gw_port=([gw-a]=$((sip_port + 2)) [gw-503]=$((sip_port + 3)) [gw-b]=$((sip_port + 4))
                    [gw-ring]=$((sip_port + 5)))
declare -A gw_pid=()
calls_conf=$work/calls-base.toml
cp "$repo/config/tandem.toml" "$calls_conf"
cat >>"$calls_conf" <<EOF

# ---- added by sip-tests/run.sh (phase calls): SIPp gateways on 127.0.0.1
[[gateways]]
name = "gw-a"
address = "127.0.0.1:${gw_port[gw-a]}"
group = "pstn"
order = 1
probe = false

[[gateways]]
name = "gw-503"
address = "127.0.0.1:${gw_port[gw-503]}"
group = "failover"
order = 1
probe = false

[[gateways]]
name = "gw-b"
address = "127.0.0.1:${gw_port[gw-b]}"
group = "failover"
order = 2
probe = false

[[gateways]]
name = "gw-ring"
address = "127.0.0.1:${gw_port[gw-ring]}"
group = "ring"
order = 1
probe = false

[[routes]]
pattern = "9XXX"
gateway_group = "pstn"

[[routes]]
pattern = "7XXX"
gateway_group = "failover"

[[routes]]
pattern = "8XXX"
gateway_group = "ring"
EOF

# gw_start NAME SCENARIO CALLS: SIPp gateway NAME on 127.0.0.1:${gw_port[NAME]} in the
# background (output in $work/gw-NAME), exiting after CALLS calls or 25 s.
gw_start() {
  local out=$work/gw-$1 i
  mkdir -p "$out"
  (cd "$out" && exec timeout -k 5 30 sipp -sf "$2" -i 127.0.0.1 -p "${gw_port[$1]}" -m "$3" \
      -nostdin -trace_err -trace_stat -fd 1 -stf stat.csv -timeout 25s -timeout_error >sipp.out 2>&1) &
  gw_pid[$1]=$!
  for i in $(seq 1 30); do [ -e "$out/stat.csv" ] && break; sleep 0.1; done
}
# gw_check NAME CALLS WHAT: waits for gateway NAME to exit; passes when it exits 0 with
# CALLS successful calls (its scenario complete each time) and none failed.
gw_check() {
  local name=$1 want=$2 what=$3 out=$work/gw-$1 rc ok failed
  wait "${gw_pid[$name]}"; rc=$?
  gw_pid[$name]=""
  ok=$(sipp_stat_last "$out/stat.csv" "SuccessfulCall(C)")
  failed=$(sipp_stat_last "$out/stat.csv" "FailedCall(C)")
  if [ "$rc" = 0 ] && [ "${ok:-x}" = "$want" ] && [ "${failed:-x}" = 0 ]; then
    pass "$what ($name: $ok ok, 0 failed)"
  else
    fail "$what" "$name: sipp exit $rc, successful ${ok:-?}/$want, failed ${failed:-?}"
    show "$out/sipp.out" 6
    ls "$out"/*errors.log >/dev/null 2>&1 && show "$(ls "$out"/*errors.log | head -n 1)" 20
  fi
}
# calls_tally: GET /calls, one line per call: "NUMBER GATEWAY STATE STATUS END_REASON"
# ("-" for a null field).
calls_tally() {
  http_get "$admin_port" /calls | python3 -c '
import json, sys
for c in json.load(sys.stdin)["calls"]:
    n = c["callee"].split("@")[0].split(":")[-1]
    print(n, *("-" if c[k] is None else c[k] for k in ("gateway", "state", "status", "end_reason")))' 2>/dev/null
}
# calls_check NUMBER "GATEWAY STATE STATUS END_REASON" N WHAT: passes when /calls lists N
# calls to NUMBER, all of them so (an extended regex; waits up to 3 s for them to end).
calls_check() {
  local num=$1 want=$2 n=$3 what=$4 tally all match i
  for i in $(seq 1 30); do
    tally=$(calls_tally)
    all=$(grep -c "^$num " <<<"$tally") match=$(grep -cxE "$num $want" <<<"$tally")
    [ "$all" = "$n" ] && [ "$match" = "$n" ] && break
    sleep 0.1
  done
  if [ "$all" = "$n" ] && [ "$match" = "$n" ]; then
    pass "$what (/calls: $match x \"$(grep -m 1 -xE "$num $want" <<<"$tally")\")"
  else
    fail "$what" "/calls: $all calls to $num, $match of them \"$want\" (want $n)"
    grep "^$num " <<<"$tally" | sort | uniq -c | head -n 5 | indent
  fi
}

calls_skip=""
if ! have sipp; then calls_skip=$(missing_reason sipp sip-tester)
elif ! have python3; then calls_skip=$(missing_reason python3 python3); fi
if [ -n "$calls_skip" ]; then
  fail "calls: SIPp calls through Tandem" "$calls_skip"
elif ! start_tandem calls "$calls_conf"; then
  fail "calls: Tandem starts with routes 9XXX, 7XXX, 8XXX and 4 gateways" "no /health on 127.0.0.1:$admin_port"
  show "$tandem_log"
else
  pass "calls: Tandem starts with routes 9XXX, 7XXX, 8XXX and 4 gateways (127.0.0.1:${gw_port[gw-a]}-${gw_port[gw-ring]})"
  gw_start gw-a "$here/answer.xml" "$calls_n"
  gw_start gw-503 "$here/answer_503.xml" "$calls_n"
  gw_start gw-b "$here/answer.xml" "$calls_n"
  gw_start gw-ring "$here/answer_ring.xml" "$cancel_n"

  # ---- 1. caller -> Tandem -> gateway
  run_sipp "SIPp call.xml: $calls_n calls at $calls_rate/s to 9000 (route 9XXX -> gw-a), INVITE/ACK/BYE" \
    "$calls_n" 20 -sf "$here/call.xml" -s 9000 -m "$calls_n" -r "$calls_rate"
  gw_check gw-a "$calls_n" "gateway gw-a (SIPp answer.xml) answered all $calls_n calls and got their BYE"
  calls_check 9000 "gw-a terminated 200 bye" "$calls_n" "/calls lists the $calls_n calls to 9000 answered by gw-a, ended by BYE"

  # ---- 2. failover: gw-503 (order 1) answers 503, gw-b (order 2) answers
  name="failover: $calls_n calls to 7000 (gw-503 answers 503, gw-b answers) all succeed"
  run_sipp "$name" "$calls_n" 20 -sf "$here/call.xml" -s 7000 -m "$calls_n" -r "$calls_rate" -trace_msg
  msgs=$(ls "$work/sipp-${name//[^a-zA-Z0-9]/_}"/*_messages.log 2>/dev/null | head -n 1)
  responses=$(grep -c '^SIP/2.0 [0-9]' "${msgs:-/dev/null}" 2>/dev/null)
  seen503=$(grep -c '^SIP/2.0 503' "${msgs:-/dev/null}" 2>/dev/null)
  if [ -n "$msgs" ] && [ "${responses:-0}" -gt 0 ] && [ "$seen503" = 0 ]; then
    pass "failover: the caller never sees a 503 (0 of its $responses responses)"
  else
    fail "failover: the caller never sees a 503" "${seen503:-?} 503s in ${responses:-?} responses (${msgs:-no message log})"
  fi
  gw_check gw-503 "$calls_n" "failover: gw-503 (order 1) got all $calls_n INVITEs, answered 503 and got the ACK"
  gw_check gw-b "$calls_n" "failover: gw-b (order 2) answered all $calls_n calls and got their BYE"
  calls_check 7000 "gw-b terminated 200 bye" "$calls_n" "/calls lists the $calls_n calls to 7000 answered by gw-b, ended by BYE"

  # ---- 3. CANCEL before answer
  run_sipp "CANCEL while ringing: $cancel_n calls to 8000 (route 8XXX -> gw-ring): 180, CANCEL, 200, 487, ACK" \
    "$cancel_n" 15 -sf "$here/call_cancel.xml" -s 8000 -m "$cancel_n" -r 10
  gw_check gw-ring "$cancel_n" "CANCEL reaches gw-ring: it answers 200 to the CANCEL, 487 to the INVITE, gets the ACK"
  # (the gateway field: Tandem leaves it null for a call that no gateway answered)
  calls_check 8000 "[^ ]+ terminated 487 cancel" "$cancel_n" "/calls lists the $cancel_n calls to 8000 ended by CANCEL with 487"

  # ---- 4. rejected by Tandem: unknown number (404), local user without binding (480)
  run_sipp "INVITE to 5555 (no route matches) gets 404 Not Found, ACK" 1 5 \
    -sf "$here/call_reject.xml" -s 5555 -m 1
  sed 's/response="404"/response="480"/' "$here/call_reject.xml" >"$work/call_reject_480.xml"
  run_sipp "INVITE to alice (demo user, not registered) gets 480 Temporarily Unavailable, ACK" 1 5 \
    -sf "$work/call_reject_480.xml" -s alice -m 1

  # ---- /metrics
  metrics=$(http_get "$admin_port" /metrics)
  answered=$(sed -n 's/^tandem_call_attempts_total{outcome="answered"} //p' <<<"$metrics")
  cancelled=$(sed -n 's/^tandem_call_attempts_total{outcome="cancelled"} //p' <<<"$metrics")
  active=$(sed -n 's/^tandem_calls_active //p' <<<"$metrics")
  if [ "$answered" = $((2 * calls_n)) ] && [ "$cancelled" = "$cancel_n" ] && [ "$active" = 0 ]; then
    pass "/metrics counts the calls (attempts answered $answered, cancelled $cancelled; active $active)"
  else
    fail "/metrics counts the calls" "answered ${answered:-?} (want $((2 * calls_n))), cancelled ${cancelled:-?} (want $cancel_n), active ${active:-?} (want 0)"
  fi

  # a gateway still running (a check failed before it got its calls): stop it
  for g in "${!gw_pid[@]}"; do
    [ -n "${gw_pid[$g]}" ] && kill "${gw_pid[$g]}" 2>/dev/null && wait "${gw_pid[$g]}" 2>/dev/null
  done
  check_stop calls
fi

echo "(took $((SECONDS - start_time)) s)"
cleanup
summary
[ "$failed" = 0 ]
