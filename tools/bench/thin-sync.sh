#!/usr/bin/env bash
# Initial sync of a fresh thin volume (a truncated image, all holes): agent start to protecting,
# the remote reads it took, and the longest agent /status reply meanwhile (sampled every ~50 ms
# from the moment it answers: how long the agent's event loop, the guest's IO with it, stopped).
# Hub and agent on loopback; the hub's /status polled every 20 ms.
# Usage: tools/bench/thin-sync.sh [SIZE] (default 256G). Env: ROOT=checkout (default this one) PORT=27500
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
ROOT=${ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}; P=${PORT:-27500}; SIZE=${1:-256G}
W=$(mktemp -d /tmp/rephub-thin.XXXX); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -INT $p 2>/dev/null || true; done; sleep 0.3; rm -rf "$W"' EXIT
truncate -s "$SIZE" "$W/src.img"
LOG_LEVEL=warn node $(binflags "$ROOT/dist/src/cli/rephub.js") "$ROOT/dist/src/cli/rephub.js" --listen 127.0.0.1:$P --http 127.0.0.1:$((P + 80)) \
  --nbd 127.0.0.1:$((P + 10)) --vol "S=$W/SR" --data "$W/hub" 2>"$W/hub.log" & PIDS+=($!)
sleep 0.6; s=$(date +%s%3N)
LOG_LEVEL=warn node $(binflags "$ROOT/dist/src/cli/rephub-agent.js") "$ROOT/dist/src/cli/rephub-agent.js" --hub 127.0.0.1:$P --export "S=$W/src.img" \
  --nbd 127.0.0.1:$((P + 9)) --http 127.0.0.1:$((P + 90)) --state "$W/ast" --vm s 2>"$W/agent.log" & PIDS+=($!)
(
  until curl -s 127.0.0.1:$((P + 90))/status >/dev/null; do sleep 0.02; done; worst=0
  while [ ! -e "$W/done" ]; do
    t0=$(date +%s%3N); curl -s -m 60 127.0.0.1:$((P + 90))/status >/dev/null; t1=$(date +%s%3N)
    [ $((t1 - t0)) -gt $worst ] && worst=$((t1 - t0)); sleep 0.05
  done
  echo $worst > "$W/stall"
) & STALL=$!
until curl -s 127.0.0.1:$((P + 80))/status | grep -q '"state": "protecting"'; do sleep 0.02; done; e=$(date +%s%3N)
touch "$W/done"; wait $STALL
echo "$SIZE thin: protecting after $((e - s)) ms, $(curl -s 127.0.0.1:$((P + 90))/status | jq .remoteReads) remote reads," \
  "longest agent /status reply $(cat "$W/stall") ms"
