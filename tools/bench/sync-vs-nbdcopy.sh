#!/usr/bin/env bash
# Initial sync of a volume with data vs nbdcopy copying the same image between two nbdkit
# exports, in one run. Usage: tools/bench/sync-vs-nbdcopy.sh [SIZE_MIB] [FILL_PERCENT] [RUNS]
# FILL_PERCENT of the 64 KiB blocks hold random data, the rest are holes (default 100).
# HUB_ARGS, AGENT_ARGS: extra flags for the hub and the agent (e.g. HUB_ARGS=--no-journal).
# Both start with a cold page cache and end when their data is on disk (sync). RUNS (default 3)
# alternate the two and report each one's median: nbdcopy's time swings run to run here.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
P=${PORT:-17500} # ports P .. P+90
cd "$(dirname "$0")/../.."
MIB=${1:-1024}; FILL=${2:-100}; RUNS=${3:-3}
W=$(mktemp -d /tmp/rephub-syncbench.XXXX); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; sleep 0.5; rm -rf "$W"' EXIT
npx tsc -p . >/dev/null
python3 - "$W/src.img" "$MIB" "$FILL" <<'PY'
import os, random, sys
path, mib, fill = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, 'wb') as f:
    f.truncate(mib << 20)
    blk = os.urandom(64 << 10)
    for off in range(0, mib << 20, 64 << 10):
        if random.randrange(100) < fill:
            f.seek(off); f.write(blk[:32 << 10] + os.urandom(32 << 10))
PY
now() { date +%s.%N; }
quiet() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }  # same cold start for both
nbdkit -f -i 127.0.0.1 -p $((P+11)) --exportname=S file "$W/src.img" 2>/dev/null & PIDS+=($!)
DST=
med() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for run in $(seq "$RUNS"); do
  # A new, sparse destination each run, as the hub's replica is: overwriting the blocks of the
  # run before cost nbdkit a quarter of the CPU (no block allocation), 1.25 s against 2.65 s.
  kill "$DST" 2>/dev/null && wait "$DST" 2>/dev/null; rm -f "$W/dst.img"; truncate -s "${MIB}M" "$W/dst.img"
  nbdkit -f -i 127.0.0.1 -p $((P+12)) --exportname=D file "$W/dst.img" 2>/dev/null & DST=$!; PIDS+=($DST)
  sleep 0.5
  quiet
  s=$(now); nbdcopy nbd://127.0.0.1:$((P+11))/S nbd://127.0.0.1:$((P+12))/D; sync; e=$(now)
  T_COPY=$(echo "$e - $s" | bc); echo "$T_COPY" >> "$W/copy"
  rm -rf "$W/SR" "$W/hub" "$W/ast"
  quiet
  LOG_LEVEL=warn node $(binflags dist/src/cli/rephub.js) dist/src/cli/rephub.js --listen 127.0.0.1:$P --http 127.0.0.1:$((P+80)) --nbd 127.0.0.1:$((P+10)) --vol "S=$W/SR" --data "$W/hub" ${HUB_ARGS:-} 2>"$W/hub.log" & HUB=$!
  sleep 0.5
  s=$(now)
  LOG_LEVEL=warn node $(binflags dist/src/cli/rephub-agent.js) dist/src/cli/rephub-agent.js --hub 127.0.0.1:$P --export "S=$W/src.img" --nbd 127.0.0.1:$((P+9)) --http 127.0.0.1:$((P+90)) --state "$W/ast" --vm s ${AGENT_ARGS:-} 2>"$W/agent.log" & AG=$!
  until curl -s 127.0.0.1:$((P+80))/status | grep -q '"state": "protecting"'; do sleep 0.05; done
  sync; e=$(now)
  T_SYNC=$(echo "$e - $s" | bc); echo "$T_SYNC" >> "$W/sync"
  cmp "$W/src.img" "$W/SR" >/dev/null || { echo "REPLICA DIFFERS"; exit 1; }
  LINK=$(curl -s 127.0.0.1:$((P+90))/status | jq '.remoteReadBytes')
  printf 'run %d: nbdcopy %.2f s, rephub %.2f s, replica byte-equal, %d MiB crossed the link\n' "$run" "$T_COPY" "$T_SYNC" "$((LINK >> 20))"
  kill -INT $AG; wait $AG 2>/dev/null || true; kill -INT $HUB; wait $HUB 2>/dev/null || true
done
C=$(med < "$W/copy"); S=$(med < "$W/sync")
printf 'size %d MiB, %d%% data, median of %d: nbdcopy nbdkit->nbdkit %.2f s; rephub initial sync %.2f s (agent start to protecting); ratio %.2f\n' \
  "$MIB" "$FILL" "$RUNS" "$C" "$S" "$(echo "$S / $C" | bc -l)"
