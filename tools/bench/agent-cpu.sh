#!/usr/bin/env bash
# CPU cost per mirrored write, stable where IOPS on 2 shared cores is not: hub + agent on
# loopback, fio nbd engine (randwrite 4 KiB qd16 by default), and for each process the CPU it
# spent (user+sys from /proc/PID/stat) divided by the writes fio completed.
# Usage: tools/bench/agent-cpu.sh [REPS]   Env: SECS=5 BS=4k QD=16 RW=randwrite HUB=1 PROF=0
#   HUB=0: the agent alone; FILL=1: an image of random data (the sync then writes the replica);
#   FIO_ARGS: extra fio options (--fsync=1: a flush after each write); HUBARGS: extra hub options (--commit-interval 50, say); DROP=1: drop the page cache after the initial sync (shows what the sync's cached pages cost).
#   CTX=1: also the voluntary context switches per write of each process (every thread, from
#   /proc/PID/task/*/status): how often it slept and was woken, steadier than CPU on a loaded machine;
#   FLT=1: also the minor page faults per write of each process (a fresh page costs ~8 us on a
#   PVM guest: BENCHMARKS Round 24);
#   LAT=1: also fio's mean write and flush latencies (with --fsync=1: where a write+flush waits);
#   ROOT=CHECKOUT: run that checkout's build (a base side) with this script; NODE_FLAGS: node/V8
#   flags for hub and agent, before the bins' own (--trace-gc, say);
#   RSS=1: also the hub's peak and current RSS (VmHWM, VmRSS of /proc/PID/status) after the run,
#   MiB/s, and the protected writes the hub applied by then of those fio made (the rest overflowed
#   the agent's queue into dirty regions, to be resynced: a hub that cannot keep up); PORT=17800: the base of the ports used (hub, hub http +80, hub nbd +50, agent nbd +9, agent http +90).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
cd "${ROOT:-$(dirname "$0")/../..}"
REPS=${1:-3}; SECS=${SECS:-5}; BS=${BS:-4k}; QD=${QD:-16}; RW=${RW:-randwrite}; HUB=${HUB:-1}
TCK=$(getconf CLK_TCK); PORT=${PORT:-17800}
HUBP=$PORT; HUBH=$((PORT + 80)); NBDP=$((PORT + 9)); AGH=$((PORT + 90))
kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
cpu() { awk '{print $14" "$15}' "/proc/$1/stat"; }
flt() { awk '{print $10}' "/proc/$1/stat"; } # minor page faults of the whole process
ctx() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {n += $2} END {print n + 0}'; }
for rep in $(seq "$REPS"); do
  W=$(mktemp -d /tmp/rephub-cpu.XXXX)
  P=(${NODE_FLAGS:-}); [ "${PROF:-0}" = 1 ] && P+=(--cpu-prof --cpu-prof-dir="$W/prof")
  if [ -n "${FILL:-}" ]; then head -c 256M /dev/urandom > "$W/V1.img"; else truncate -s 256M "$W/V1.img"; fi
  HP=""
  if [ "$HUB" = 1 ]; then
    LOG_LEVEL=warn node "${P[@]}" $(binflags dist/src/cli/rephub.js) dist/src/cli/rephub.js --listen 127.0.0.1:$HUBP --http 127.0.0.1:$HUBH --nbd 127.0.0.1:$((PORT + 50)) --vol "V1=$W/V1R" --data "$W/hub" ${HUBARGS:-} 2>"$W/hub.log" & HP=$!
    sleep 0.5
  fi
  LOG_LEVEL=warn node "${P[@]}" $(binflags dist/src/cli/rephub-agent.js) dist/src/cli/rephub-agent.js --hub 127.0.0.1:$HUBP --export "V1=$W/V1.img" --nbd 127.0.0.1:$NBDP --http 127.0.0.1:$AGH --state "$W/ast" --vm q 2>"$W/agent.log" & AP=$!
  sleep 0.3
  for _ in $(seq 100); do nbdinfo --can connect nbd://127.0.0.1:$NBDP/V1 2>/dev/null && break; sleep 0.1; done
  if [ "$HUB" = 1 ]; then for _ in $(seq 100); do curl -s 127.0.0.1:$HUBH/status | grep -q '"state": "protecting"' && break; sleep 0.1; done; fi
  [ -n "${DROP:-}" ] && { sync; echo 1 > /proc/sys/vm/drop_caches; }
  read au0 as0 < <(cpu $AP); hu0=0; hs0=0; [ -n "$HP" ] && read hu0 hs0 < <(cpu $HP)
  ac0=$(ctx $AP); hc0=0; [ -n "$HP" ] && hc0=$(ctx $HP)
  af0=$(flt $AP); hf0=0; [ -n "$HP" ] && hf0=$(flt $HP)
  /usr/bin/time -f '%U %S' -o "$W/fio.time" fio --name=r --ioengine=nbd --uri=nbd://127.0.0.1:$NBDP/V1 --rw="$RW" --bs="$BS" --iodepth="$QD" \
    --size=256m --time_based --runtime="$SECS" ${FIO_ARGS:-} --output-format=json --output="$W/r.json" >/dev/null 2>&1
  read au1 as1 < <(cpu $AP); hu1=0; hs1=0; [ -n "$HP" ] && read hu1 hs1 < <(cpu $HP)
  ac1=$(ctx $AP); hc1=0; [ -n "$HP" ] && hc1=$(ctx $HP)
  af1=$(flt $AP); hf1=0; [ -n "$HP" ] && hf1=$(flt $HP)
  n=$(jq -r '.jobs[0].write.total_ios' "$W/r.json"); iops=$(jq -r '.jobs[0].write.iops|floor' "$W/r.json")
  f=$(awk '{print $1+$2}' "$W/fio.time")
  us() { echo "scale=1; $1 * 1000000 / $TCK / $n" | bc; }
  extra=""
  [ "${CTX:-0}" = 1 ] && extra=" ctxsw/write agent $(echo "scale=2; ($ac1 - $ac0) / $n" | bc) hub $(echo "scale=2; ($hc1 - $hc0) / $n" | bc);"
  [ "${FLT:-0}" = 1 ] && extra="$extra faults/write agent $(echo "scale=2; ($af1 - $af0) / $n" | bc) hub $(echo "scale=2; ($hf1 - $hf0) / $n" | bc);"
  [ "${LAT:-0}" = 1 ] && extra="$extra $(jq -r '.jobs[0] | "lat us: write \(.write.clat_ns.mean / 1000 | floor) flush \(.sync.lat_ns.mean / 1000 | floor);"' "$W/r.json")"
  if [ "${RSS:-0}" = 1 ] && [ -n "$HP" ]; then
    extra="$extra MiB/s $(jq -r '.jobs[0].write.bw/1024|floor' "$W/r.json") hubHWM_KiB $(kib $HP VmHWM) hubRSS_KiB $(kib $HP VmRSS) hubApplied $(curl -s 127.0.0.1:$HUBH/status | jq '.volumes[0].writesApplied') of $n"
  fi
  echo "rep $rep $RW bs=$BS qd=$QD hub=$HUB:$extra $iops IOPS; CPU us/write: agent $(us $((au1 - au0)))+$(us $((as1 - as0)))sys hub $(us $((hu1 - hu0)))+$(us $((hs1 - hs0)))sys fio $(echo "scale=1; $f * 1000000 / $n" | bc)"
  kill -INT $AP; sleep 0.5; [ -n "$HP" ] && kill -INT $HP; sleep 0.5
  wait $AP 2>/dev/null || true; [ -n "$HP" ] && { wait $HP 2>/dev/null || true; }
  [ "${PROF:-0}" = 1 ] && echo "profiles in $W/prof" || rm -rf "$W"
done
