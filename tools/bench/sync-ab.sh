#!/usr/bin/env bash
# Initial sync of 1 GiB of data (random, no holes, cold page cache) by two or more builds, alternating, RUNS each:
# agent start to "protecting", then the data on disk (sync). Builds are checkouts with dist/
# built (a worktree: link node_modules and build/, the native addon, or its CRC runs in JS).
# Usage: tools/bench/sync-ab.sh RUNS DIR_A DIR_B ...   Env: PORT (default 27800, uses PORT..PORT+90)
# Example: git worktree add /work/wt/base HEAD~1 && (cd /work/wt/base && ln -s ../../main/node_modules
#          && ln -s ../../main/build && npx tsc -p .) && tools/bench/sync-ab.sh 5 /work/wt/base .
set -u
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
RUNS=$1; shift; DIRS=("$@"); P=${PORT:-27800}
W=$(mktemp -d /tmp/rephub-syncab.XXXX); trap 'rm -rf "$W"' EXIT
python3 - "$W/src.img" <<'PY'
import os, sys
with open(sys.argv[1], 'wb') as f:
    f.truncate(1024 << 20); blk = os.urandom(64 << 10)
    for off in range(0, 1024 << 20, 64 << 10):
        f.seek(off); f.write(blk[:32 << 10] + os.urandom(32 << 10))
PY
now() { date +%s.%N; }
for run in $(seq "$RUNS"); do
  for i in "${!DIRS[@]}"; do
    D=$(cd "${DIRS[$i]}" && pwd); rm -rf "$W/SR" "$W/hub" "$W/ast"
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true # the same cold start for each
    LOG_LEVEL=warn node $(binflags "$D/dist/src/cli/rephub.js") "$D/dist/src/cli/rephub.js" --listen 127.0.0.1:$P --http 127.0.0.1:$((P+80)) \
      --nbd 127.0.0.1:$((P+10)) --vol "S=$W/SR" --data "$W/hub" 2>"$W/hub.log" & HUB=$!
    sleep 0.6; s=$(now)
    LOG_LEVEL=warn node $(binflags "$D/dist/src/cli/rephub-agent.js") "$D/dist/src/cli/rephub-agent.js" --hub 127.0.0.1:$P --export "S=$W/src.img" \
      --nbd 127.0.0.1:$((P+9)) --http 127.0.0.1:$((P+90)) --state "$W/ast" --vm s 2>"$W/agent.log" & AG=$!
    n=0
    until curl -s 127.0.0.1:$((P+80))/status | grep -q '"state": "protecting"'; do
      sleep 0.05; n=$((n+1)); [ $n -gt 2400 ] && { echo "run $run $D: no convergence in 120 s" >&2; break; }
    done
    sync; t=$(echo "$(now) - $s" | bc); echo "$t" >> "$W/t$i"
    cmp "$W/src.img" "$W/SR" >/dev/null || echo "run $run $D: REPLICA DIFFERS" >&2
    kill -INT $AG; wait $AG; kill -INT $HUB; wait $HUB
    echo "run $run $D: $t s"
  done
done
for i in "${!DIRS[@]}"; do echo "MEDIAN ${DIRS[$i]} $(sort -n "$W/t$i" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}') s"; done
