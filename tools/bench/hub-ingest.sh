#!/usr/bin/env bash
# Hub ingest against its ceilings, interleaved in one run (this disk's speed swings from run to
# run): loopback TCP between two Node processes (tools/bench/tcp-loopback.ts), the disk's
# sequential write speed (fio, 1 MiB buffered writes + fsync at the end, same file system; the
# raw device's O_DIRECT speed is printed too), and
# the hub applying 1 MiB protected writes acked durable (tools/loadgen.ts). Then the RPO lag at a
# steady 50 % of the smaller ceiling. Usage: tools/bench/hub-ingest.sh [REPS]   Env: SECS=4 RPO_SECS=10
# CACHE=none: the hub runs --cache none (O_DIRECT applies). BASE=<worktree of another build>: its
# hub's ingest is measured too, alternating in each rep, with the same flags. PORT: fixed ports
# (PORT..PORT+2) instead of random ones. LOADGEN_ARGS: more loadgen flags (--zeroes: the sync costs the
# sender nothing; --window-on acked: the window counts writes not durable, not the agent's way).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS=${1:-3}; SECS=${SECS:-4}; RPO_SECS=${RPO_SECS:-10}
W=$(mktemp -d "${TMPDIR:-/tmp}/rephub-ingest.XXXX"); trap 'rm -rf "$W"' EXIT
export HUB_ARGS="${HUB_ARGS:-} ${CACHE:+--cache $CACHE}"
ingest() { REPHUB_CLI="${REPHUB_CLI:-}" node dist/tools/loadgen.js --seconds "$SECS" --workload 1m ${LOADGEN_ARGS:-} 2>/dev/null | awk '/1 MiB/{print int($(NF-11))}'; }
med() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for r in $(seq "$REPS"); do
  node dist/tools/bench/tcp-loopback.js --seconds "$SECS" | awk '{print $(NF-1)}' >> "$W/tcp"
  fio --name=seq --filename="$W/fio.tmp" --rw=write --bs=1m --size=2g --ioengine=psync --end_fsync=1 --output-format=json 2>/dev/null |
    jq -r '.jobs[0].write.bw_bytes / 1e6 | floor' >> "$W/disk"; rm -f "$W/fio.tmp"
  fio --name=seqd --filename="$W/fio.tmp" --rw=write --bs=1m --size=2g --ioengine=libaio --iodepth=8 --direct=1 --output-format=json 2>/dev/null |
    jq -r '.jobs[0].write.bw_bytes / 1e6 | floor' >> "$W/direct"; rm -f "$W/fio.tmp"
  ingest >> "$W/hub"
  B=""; if [ -n "${BASE:-}" ]; then REPHUB_CLI="$BASE/dist/src/cli/rephub.js" ingest >> "$W/base"; B=", base $(tail -1 "$W/base") MB/s"; fi
  echo "rep $r: loopback $(tail -1 "$W/tcp") MB/s, disk $(tail -1 "$W/disk") MB/s (O_DIRECT qd8 $(tail -1 "$W/direct")), hub 1 MiB ingest $(tail -1 "$W/hub") MB/s$B"
done
T=$(med < "$W/tcp"); D=$(med < "$W/disk"); H=$(med < "$W/hub"); X=$(med < "$W/direct")
M=$(( T < D ? T : D ))
echo "MEDIAN loopback $T MB/s, disk $D MB/s, hub $H MB/s: hub / min(loopback, disk) = $(echo "scale=2; $H / $M" | bc)"
echo "       (the raw device, O_DIRECT qd8, $X MB/s: hub / it = $(echo "scale=2; $H / $X" | bc))"
if [ -n "${BASE:-}" ]; then BM=$(med < "$W/base"); echo "       base $BASE: $BM MB/s, / raw device = $(echo "scale=2; $BM / $X" | bc)"; fi
[ "$RPO_SECS" -gt 0 ] || exit 0
RATE=$(( M / 2 ))
for bs in 1048576 65536; do node dist/tools/loadgen.js --rate-mbps "$RATE" --bs "$bs" --seconds "$RPO_SECS" 2>/dev/null | grep RPO; done
