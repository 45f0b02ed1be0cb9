#!/bin/bash
# sip-tests/bench/calls_probe.sh RATE [MIN_BACKLOG]
#
# What grows first when calls are offered past capacity: runs call.xml at RATE
# for SECS through Tandem (as calls.sh does, but with the admin listener on) and
# prints, every 0.5 s, the UDP receive queue of 127.0.0.1:5060 (bytes waiting in
# the kernel), Tandem's CPU share over the half second, the overload gauges
# (unanswered INVITEs, projected wait), live server transactions, proxy
# contexts, absorbed retransmissions and 503s sent. MIN_BACKLOG (default
# 1000000000: observe only, never refuse) is [admission.calls] min_backlog,
# TARGET_MS (100) its target_wait_ms.
# A measurement aid, not a test. Needs sipp, ../shared, target/release/tandem.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
shared=${SHARED:-$repo/../shared}
tandem=${TANDEM:-$repo/target/release/tandem}
rate=$1 min_backlog=${2:-1000000000} SECS=${SECS:-10} target_ms=${TARGET_MS:-100}
work=$(mktemp -d /tmp/tandem-probe.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
cfg=$work/tandem.toml
sed -e 's/^authenticate = true/authenticate = false/' -e 's/^tcp = .*/tcp = []/' \
  -e 's/^level = .*/level = "warn"/' -e "s/^min_backlog = .*/min_backlog = $min_backlog/" -e "s/^target_wait_ms = 100$/target_wait_ms = $target_ms/" \
  -e "s#^path = .*#path = \"$work/tandem.db\"#" "$repo/config/tandem.toml" >"$cfg"
sed -i '/^\[admission\]/,/^\[admission.calls\]/ s/^enabled = true/enabled = false/' "$cfg"
cat >>"$cfg" <<'TOML'

[[gateways]]
name = "sipp-answer"
address = "127.0.0.1:5090"
group = "bench"
order = 1
probe = false

[[routes]]
pattern = "9XXX"
gateway_group = "bench"
TOML
sipp -sf "$shared/bench/sipp/answer.xml" -i 127.0.0.1 -p 5090 -nostdin >/dev/null 2>&1 &
pids+=($!)
"$tandem" --config "$cfg" >"$work/tandem.log" 2>&1 &
tpid=$!
pids+=($tpid)
sleep 1
metric() { echo "$1" | awk -v m="$2" '$1==m {print $2; f=1} END {if (!f) print "-"}'; }
(
  cpu0=$(bash "$shared/bench/cpu_of.sh" "$tpid")
  echo "t_s rxq_bytes cpu_pct unanswered wait_ms transactions contexts retrans_total 503_total"
  t=0
  while kill -0 "$tpid" 2>/dev/null; do
    sleep 0.5
    t=$(echo "$t + 0.5" | bc)
    cpu1=$(bash "$shared/bench/cpu_of.sh" "$tpid")
    m=$(curl -s --max-time 1 http://127.0.0.1:9060/metrics)
    rxq=$(ss -uanH 'sport = :5060' | awk '{print $2; exit}')
    wait=$(metric "$m" tandem_calls_projected_wait_seconds)
    [ "$wait" != - ] && wait=$(echo "$wait * 1000 / 1" | bc)
    echo "$t $rxq $(echo "($cpu1 - $cpu0) * 200 / 1" | bc) $(metric "$m" tandem_calls_unanswered_invites) $wait" \
      "$(metric "$m" tandem_transactions_active) $(metric "$m" tandem_proxy_contexts)" \
      "$(metric "$m" 'tandem_sip_retransmissions_total{method="INVITE"}')+$(metric "$m" 'tandem_sip_retransmissions_total{method="BYE"}')" \
      "$(metric "$m" 'tandem_sip_responses_total{method="INVITE",status="503"}')"
    cpu0=$cpu1
  done
) &
pids+=($!)
SIPP_ARGS="-s 9000" bash "$shared/bench/sipp/sweep.sh" 127.0.0.1:5060 "$rate" "$SECS" "$shared/bench/sipp/call.xml"
