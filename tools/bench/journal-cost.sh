#!/usr/bin/env bash
# The journal's cost: the hub with its journal (default) against --no-journal, alternating in one
# run (so load on a shared machine falls on both), ROUNDS rounds of each workload; prints every
# run and the medians of IOPS (4 KiB randwrite qd16), MiB/s (1 MiB write qd4) and the hub's peak
# RSS (VmHWM), with the load average before and after.
# Usage: tools/bench/journal-cost.sh [ROUNDS]   Env: SECS=5 PORT=17800 (passed to agent-cpu.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}; export SECS=${SECS:-5} RSS=1
OUT=$(mktemp /tmp/rephub-jcost.XXXX)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  for cfg in on off; do
    args=""; [ $cfg = off ] && args="--no-journal"
    HUBARGS="$args" bash tools/bench/agent-cpu.sh 1 | sed "s/^/$cfg 4k /" | tee -a "$OUT"
    HUBARGS="$args" BS=1m QD=4 RW=write bash tools/bench/agent-cpu.sh 1 | sed "s/^/$cfg 1m /" | tee -a "$OUT"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
med() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
field() { grep "^$1 $2 " "$OUT" | grep -o "$3 [0-9]*" | awk '{print $2}' | med; }
field2() { grep "^$1 $2 " "$OUT" | grep -o "[0-9]* $3" | awk '{print $1}' | med; }
for cfg in on off; do
  echo "median journal=$cfg: 4k $(field2 $cfg 4k IOPS) IOPS, hub HWM $(field $cfg 4k hubHWM_KiB) KiB; 1m $(field $cfg 1m MiB/s) MiB/s, hub HWM $(field $cfg 1m hubHWM_KiB) KiB"
done
rm -f "$OUT"
