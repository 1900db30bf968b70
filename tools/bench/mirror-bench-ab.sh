#!/usr/bin/env bash
# mirror-bench-ab.sh — ../shared/tools/mirror-bench.sh adapted for before/after runs (issue 17):
# a second rephub, "rephubB", runs from another built checkout (BASE=DIR, default
# /work/wt/ispeed-base), CPU microseconds per written MiB of each server's processes (user+sys
# from /proc: hub+agent, qemu-storage-daemon+qemu-nbd, ...) under each result, ports 263xx or PORT_BASE (so
# that it can run beside the original), no build step (run `npx tsc -p .` in both first).
# Example: SECS=4 JOBS="4k-randwrite-1-fsync 1m-write-4" SERVERS="rephub rephubB qemu-bg qemu-nbd" \
#          bash tools/bench/mirror-bench-ab.sh 2
# Variants of any rephub server (rephub, rephubB), issue 17's TLS and UNIX rows:
#   …-tls    the agent link with mutual-certificate TLS as the README advises (certificates made
#            by tools/make-certs.sh in the run's temp dir); ratio rows …-tls/… give TLS's cost
#   …-unix   the agent's NBD on a UNIX socket (fio: nbd+unix:///V1?socket=PATH)
#   qemu-bg-unix, qemu-sync-unix, qemu-nbd-unix: the peers with their NBD server on a UNIX socket
#            (tools/bench/qemu-mirror-peer.sh, qemu-nbd -k)
# e.g. SERVERS="rephub rephub-tls" or SERVERS="rephub-unix qemu-bg-unix qemu-nbd-unix"
# The original's description:
# mirror-bench.sh — side by side in one run, servers that keep a second copy of every write:
#   rephub      rephub-agent serving the image, mirroring to a rephub hub (both on loopback)
#   qemu-bg     qemu-storage-daemon + blockdev-mirror copy-mode=background to qemu-nbd (async)
#   qemu-sync   the same with copy-mode=write-blocking (active mirror, synchronous)
# and, for the ceiling, servers that keep one copy: qemu-nbd and nbdkit's file plugin.
# Same fio jobs (nbd engine) on each, rounds interleaved, medians; after each rephub and QEMU
# round the two copies are compared.
# Usage (from the project root, after `npm install`):  bash ../shared/tools/mirror-bench.sh [ROUNDS]
# Env: SIZE_MIB=256 SECS=5 JOBS="4k-randwrite-16 1m-write-4" (also e.g. 4k-randwrite-1-fsync: a flush after each write) SERVERS="rephub qemu-bg qemu-sync qemu-nbd nbdkit"
#      REPHUB_HUB_ARGS= REPHUB_AGENT_ARGS= (extra flags)
#      IO=1: data moved and pages allocated per written MiB, per job (see pio below)
#      REPHUBB_HUB_ARGS, REPHUBB_AGENT_ARGS: rephubB's own (default: the same); with BASE=$PWD they
#      compare two settings of one build, e.g. REPHUBB_HUB_ARGS=--no-journal
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
PB=${PORT_BASE:-263} # ports ${PB}00-${PB}90: give each concurrent run its own (e.g. PORT_BASE=271)
ROUNDS=${1:-3}; SIZE_MIB=${SIZE_MIB:-256}; SECS=${SECS:-5}
JOBS=${JOBS:-"4k-randwrite-16 1m-write-4"}
SERVERS=${SERVERS:-"rephub qemu-bg qemu-sync qemu-nbd nbdkit"}
ROOT=$PWD
PEER=$ROOT/tools/bench/qemu-mirror-peer.sh
[ -f "$ROOT/package.json" ] || { echo "run from the project root" >&2; exit 2; }
:
bin() { node -p "require('$ROOT/package.json').bin['$1']"; }
HUB="node $(binflags "$ROOT/$(bin rephub)") $ROOT/$(bin rephub)"; AGENT="node $(binflags "$ROOT/$(bin rephub-agent)") $ROOT/$(bin rephub-agent)"
BASE=${BASE:-/work/wt/ispeed-base}
W=$(mktemp -d /tmp/mirror-bench.XXXX); PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 0.5
             for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; PIDS=(); }
trap 'stop_all; rm -rf "$W"' EXIT
CERTS=$W/certs
[[ " $SERVERS " == *-tls* ]] && { bash "$ROOT/tools/make-certs.sh" "$CERTS" 127.0.0.1 bench >/dev/null || exit 2; }
wait_nbd() { for _ in $(seq 200); do nbdinfo --can connect "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
fio_job() { # uri job -> number (IOPS for 4k, MiB/s for 1m); job BS-RW-QD[-fsync]: -fsync flushes after every write
  local j=$2 extra=
  [[ $j == *-fsync ]] && { extra=--fsync=1; j=${j%-fsync}; }
  local bs=${j%%-*} rest=${j#*-}; local rw=${rest%-*} qd=${rest##*-}
  timeout 120 fio --name=b --ioengine=nbd --uri="$1" --rw="$rw" --bs="$bs" --iodepth="$qd" $extra \
    --size="${SIZE_MIB}m" --time_based --runtime="$SECS" --output-format=json --output="$W/fio.json" \
    >/dev/null 2>&1 || { echo 0; return; }
  if [ "$bs" = 4k ]; then jq -r '.jobs[0].write.iops|floor' "$W/fio.json"
  else jq -r '.jobs[0].write.bw/1024|floor' "$W/fio.json"; fi
}
start_server() { # name -> sets URI; servers' pids in PIDS
  local d="$W/$1"; rm -rf "$d"; mkdir -p "$d"
  case $1 in
  rephub|rephubB|rephub-*|rephubB-*)
    local HUB=$HUB AGENT=$AGENT hubx= agentx= nbd=127.0.0.1:${PB}09 ha=${REPHUB_HUB_ARGS:-} aa=${REPHUB_AGENT_ARGS:-}
    URI=nbd://127.0.0.1:${PB}09/V1
    [[ $1 == rephubB* ]] && { HUB="node $(binflags "$BASE/dist/src/cli/rephub.js") $BASE/dist/src/cli/rephub.js"
                              AGENT="node $(binflags "$BASE/dist/src/cli/rephub-agent.js") $BASE/dist/src/cli/rephub-agent.js"
                              ha=${REPHUBB_HUB_ARGS-$ha}; aa=${REPHUBB_AGENT_ARGS-$aa}; }
    [[ $1 == *-tls ]] && { hubx="--tls-cert $CERTS/hub.pem --tls-key $CERTS/hub.key --tls-ca $CERTS/ca.pem"
                          agentx="--tls-cert $CERTS/bench.pem --tls-key $CERTS/bench.key --tls-ca $CERTS/ca.pem"; }
    [[ $1 == *-unix ]] && { nbd="unix:$d/nbd.sock"; URI="nbd+unix:///V1?socket=$d/nbd.sock"; }
    truncate -s "${SIZE_MIB}M" "$d/V1.img"
    LOG_LEVEL=warn $HUB --listen 127.0.0.1:${PB}00 --http 127.0.0.1:${PB}80 --vol "V1=$d/V1R" --data "$d/hub" --nbd 127.0.0.1:${PB}50 $hubx $ha 2>"$d/hub.log" & PIDS+=($!)
    sleep 0.3
    LOG_LEVEL=warn $AGENT --hub 127.0.0.1:${PB}00 --export "V1=$d/V1.img" --nbd "$nbd" --state "$d/ast" --vm bench --http 127.0.0.1:${PB}90 $agentx $aa 2>"$d/agent.log" & PIDS+=($!)
    wait_nbd "$URI" || return 1
    # a round whose agent never reached its hub would time a lone agent (4 KiB at 3x, copies DIFFER)
    local up=
    for _ in $(seq 300); do curl -s 127.0.0.1:${PB}80/status | grep -q '"protecting"' && { up=1; break; }; sleep 0.1; done
    [ -n "$up" ] || { echo "$1: the hub never reported protecting; hub.log:" >&2; tail -5 "$d/hub.log" >&2; return 1; } ;;
  qemu-bg|qemu-sync|qemu-bg-unix|qemu-sync-unix)
    local mode=background addr=${PB}20; [[ $1 == qemu-sync* ]] && mode=write-blocking
    [[ $1 == *-unix ]] && addr=unix:$d/nbd.sock
    MODE=$mode TGT_PORT=${PB}26 bash "$PEER" start "$d" "$addr" "$SIZE_MIB" >"$d/uri" || return 1
    URI=$(cat "$d/uri") ;;
  qemu-nbd|qemu-nbd-unix)
    local where="-b 127.0.0.1 -p ${PB}30"; URI=nbd://127.0.0.1:${PB}30/V1
    [ $1 = qemu-nbd-unix ] && { where="-k $d/nbd.sock"; URI="nbd+unix:///V1?socket=$d/nbd.sock"; }
    truncate -s "${SIZE_MIB}M" "$d/q.img"
    qemu-nbd --persistent --shared=8 -f raw -x V1 $where "$d/q.img" 2>"$d/log" & PIDS+=($!)
    wait_nbd "$URI" || return 1 ;;
  nbdkit)
    truncate -s "${SIZE_MIB}M" "$d/k.img"
    nbdkit -f -i 127.0.0.1 -p ${PB}40 --exportname=V1 file "$d/k.img" 2>"$d/log" & PIDS+=($!)
    wait_nbd nbd://127.0.0.1:${PB}40/V1 && URI=nbd://127.0.0.1:${PB}40/V1 ;;
  esac
}
stop_server() { # name -> sets EQ: "equal in Ns" (copies equal N s after the last write) / "DIFFER" / "-"
  local d="$W/$1" t0; t0=$(date +%s.%N)
  case $1 in
  rephub|rephubB|rephub-*|rephubB-*)
    local ok=DIFFER
    for _ in $(seq 600); do cmp -s "$d/V1.img" "$d/V1R" && { ok=equal; break; }; sleep 0.05; done
    [ $ok = equal ] && ok="equal in $(echo "$(date +%s.%N) - $t0" | bc | xargs printf '%.1f')s"
    stop_all; EQ=$ok ;;
  qemu-bg*|qemu-sync*) EQ=$(bash "$PEER" stop "$d" | sed 's/copies //') ;;
  *) stop_all; EQ=- ;;
  esac
}
TCK=$(getconf CLK_TCK)
srv_pids() { case $1 in qemu-bg*|qemu-sync*) cat "$W/$1/qsd.pid" "$W/$1/tgt.pid";; *) printf '%s\n' "${PIDS[@]}";; esac; }
# IO=1: after each job, pages the kernel allocated per written MiB (all processes, /proc/vmstat)
# and each server process's read/write syscall bytes per written MiB (rchar/wchar of /proc/PID/io;
# socket reads by recvmsg, as QEMU's, are not counted): qemu-nbd's wchar under QEMU's background
# mirror is the share of the guest's bytes that reached the second copy (0.42 in issue 17's run).
pio() { local p; for p in $(srv_pids "$1"); do awk -v p="$p" '/^rchar/{r=$2} /^wchar/{w=$2} END{printf "%s:%.0f:%.0f ", p, r, w}' /proc/$p/io 2>/dev/null; done; }
pgalloc() { awk '/^pgalloc_/{n+=$2} END{printf "%.0f", n}' /proc/vmstat; }
pio_delta() { # before after MiB -> "pid r/w MiB per MiB ..."
  local b a out=; for a in $2; do for b in $1; do [ "${a%%:*}" = "${b%%:*}" ] || continue
    out+=$(echo "$a $b $3" | awk '{split($1,x,":"); split($2,y,":"); printf "%s r%.2f/w%.2f ", x[1], (x[2]-y[2])/1048576/$3, (x[3]-y[3])/1048576/$3}'); done; done; echo "$out"; }
ticks() { local t=0 p; for p in $(srv_pids "$1"); do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo $t; }
declare -A R M C
for r in $(seq "$ROUNDS"); do
  for s in $SERVERS; do
    URI=; start_server "$s" || { echo "round $r: $s did not start" >&2; stop_all; continue; }
    uri=$URI
    line="round $r $s:"
    # sync first: every job starts with no dirty pages of the one before (another server's 1 MiB
    # job left gigabytes to write back, and the next 4 KiB job ran at a third of its speed)
    for j in $JOBS; do sync; t0=$(ticks "$s"); io0=$(pio "$s"); pg0=$(pgalloc); v=$(fio_job "$uri" "$j"); t1=$(ticks "$s"); pg1=$(pgalloc)
      mib=$(jq -r '.jobs[0].write.io_bytes/1048576' "$W/fio.json" 2>/dev/null || echo 0)
      [ -n "${IO:-}" ] && { echo "  $s $j pages allocated per MiB (all processes): $(echo "($pg1 - $pg0) / ($mib + 0.001)" | bc)"
                            sleep 1; echo "  $s $j io per MiB: $(pio_delta "$io0" "$(pio "$s")" "$mib")"; }
      c=$(echo "scale=0; ($t1 - $t0) * 1000000 / $TCK / ($mib + 0.001)" | bc)
      R[$s.$j]+="$v "; C[$s.$j]+="$c "; line+=" $j=$v (${c}us/MiB)"; done
    stop_server "$s"; echo "$line copies=$EQ"
  done
done
med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
echo
# ratio rows: A/B for every pair given both (RATIOS="a/b ..."), by default the issue's
RATIOS=${RATIOS:-"rephub/qemu-bg rephub/qemu-sync rephub/qemu-nbd rephub/rephubB rephub-tls/rephub rephubB-tls/rephubB
  rephub-tls/rephubB-tls rephub-unix/qemu-bg-unix rephub-unix/qemu-sync-unix rephub-unix/qemu-nbd-unix rephub-unix/rephub"}
printf '%-22s' job; for s in $SERVERS; do printf '%14s' "$s"; done; echo
for j in $JOBS; do
  printf '%-22s' "$j"
  for s in $SERVERS; do M[$s]=$(med "${R[$s.$j]:-0}"); printf '%14s' "${M[$s]}"; done; echo
  printf '%-22s' "  cpu us/MiB"; for s in $SERVERS; do printf '%14s' "$(med "${C[$s.$j]:-0}")"; done; echo
  for pr in $RATIOS; do a=${pr%/*} b=${pr#*/}
    [[ " $SERVERS " == *" $a "* && " $SERVERS " == *" $b "* ]] || continue
    [ "${M[$b]}" != 0 ] && printf '%-22s%14s\n' "  $a/$b" "$(echo "scale=2; ${M[$a]} / ${M[$b]}" | bc)"
  done
done
