#!/usr/bin/env bash
# Runs a hub and an agent on this machine over loopback, with local image files and LMDB state
# under ./demo (override with DEMO_DIR). Ctrl-C stops both (the agent sends AGENT_SHUTDOWN).
set -euo pipefail
cd "$(dirname "$0")/.."
npx tsc -p .
D=${DEMO_DIR:-$PWD/demo}
SIZE_MIB=${SIZE_MIB:-256}
mkdir -p "$D"
if [ ! -f "$D/V1.img" ]; then  # a protected volume with some data on it
  truncate -s "${SIZE_MIB}M" "$D/V1.img"
  head -c 32M /dev/urandom | dd of="$D/V1.img" conv=notrunc status=none
fi
trap 'kill $AGENT 2>/dev/null; sleep 1; kill $HUB 2>/dev/null; wait' EXIT INT TERM
node dist/src/cli/rephub.js --listen 127.0.0.1:7000 --http 127.0.0.1:7080 --vol "V1=$D/V1R" --data "$D/hub-state" 2>"$D/hub.log" & HUB=$!
sleep 0.5
node dist/src/cli/rephub-agent.js --hub 127.0.0.1:7000 --export "V1=$D/V1.img" --nbd 127.0.0.1:10809 --state "$D/agent-state" --vm demo 2>"$D/agent.log" & AGENT=$!
cat <<MSG
rephub demo running (logs: $D/hub.log, $D/agent.log)
  protected volume  $D/V1.img  served as nbd://127.0.0.1:10809/V1
  recovery volume   $D/V1R
Try:
  node dist/src/cli/rephub.js status
  qemu-io -f raw -c 'write -P 0x5a 0 1M' nbd://127.0.0.1:10809/V1
  cmp $D/V1.img $D/V1R && echo replica equal
  node dist/src/cli/rephub.js failover-test start --admin-token-file $D/hub-state/admin-token
  qemu-system-x86_64 -m 512 -drive file=nbd://127.0.0.1:10809/V1,format=raw,if=virtio ...
Ctrl-C to stop.
MSG
wait
