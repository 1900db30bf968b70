#!/usr/bin/env bash
# Initial sync of a volume with data vs nbdcopy copying the same image between two nbdkit
# exports, in one run. Usage: tools/bench/sync-vs-nbdcopy.sh [SIZE_MIB] [FILL_PERCENT]
# FILL_PERCENT of the 64 KiB blocks hold random data, the rest are holes (default 100).
# Both start with a cold page cache and end when their data is on disk (sync).
set -euo pipefail
cd "$(dirname "$0")/../.."
MIB=${1:-1024}; FILL=${2:-100}
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
truncate -s "${MIB}M" "$W/dst.img"
nbdkit -f -i 127.0.0.1 -p 17511 --exportname=S file "$W/src.img" 2>/dev/null & PIDS+=($!)
nbdkit -f -i 127.0.0.1 -p 17512 --exportname=D file "$W/dst.img" 2>/dev/null & PIDS+=($!)
sleep 0.5
quiet
s=$(now); nbdcopy nbd://127.0.0.1:17511/S nbd://127.0.0.1:17512/D; sync; e=$(now)
T_COPY=$(echo "$e - $s" | bc)
quiet
LOG_LEVEL=warn node dist/src/cli/rephub.js --listen 127.0.0.1:17500 --http 127.0.0.1:17580 --nbd 127.0.0.1:17510 --vol "S=$W/SR" --data "$W/hub" 2>"$W/hub.log" & PIDS+=($!)
sleep 0.5
s=$(now)
LOG_LEVEL=warn node dist/src/cli/rephub-agent.js --hub 127.0.0.1:17500 --export "S=$W/src.img" --nbd 127.0.0.1:17509 --http 127.0.0.1:17590 --state "$W/ast" --vm s 2>"$W/agent.log" & PIDS+=($!)
until curl -s 127.0.0.1:17580/status | grep -q '"state": "protecting"'; do sleep 0.05; done
sync; e=$(now)
T_SYNC=$(echo "$e - $s" | bc)
cmp "$W/src.img" "$W/SR" && echo "replica byte-equal"
LINK=$(curl -s 127.0.0.1:17590/status | jq '.remoteReadBytes')
printf 'size %d MiB, %d%% data: nbdcopy nbdkit->nbdkit %.2f s; rephub initial sync %.2f s (agent start to protecting); ratio %.2f; %d MiB crossed the link\n' \
  "$MIB" "$FILL" "$T_COPY" "$T_SYNC" "$(echo "$T_SYNC / $T_COPY" | bc -l)" "$((LINK >> 20))"
