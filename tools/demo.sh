#!/usr/bin/env bash
# Runs a hub and an agent on this machine over loopback, with local image files and LMDB state
# under ./demo (override with DEMO_DIR). Ctrl-C stops both (the agent sends AGENT_SHUTDOWN).
# It says "running" only once both answer GET /status and the agent is connected to the hub;
# if either fails to start (a port in use, say) it stops the other, shows the failed one's log
# tail and exits 1. Ports: DEMO_HUB_PORT (7000), DEMO_HTTP_PORT (7080), DEMO_HUB_NBD_PORT (10810),
# DEMO_NBD_PORT (10809), DEMO_AGENT_HTTP_PORT (10899). DEMO_NO_BUILD=1 skips the tsc build.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bench/bin-flags.sh" # binflags
cd "$(dirname "$0")/.."
[ "${DEMO_NO_BUILD:-}" = 1 ] || npx tsc -p .
D=${DEMO_DIR:-$PWD/demo}
SIZE_MIB=${SIZE_MIB:-256}
HUB_PORT=${DEMO_HUB_PORT:-7000}
HTTP_PORT=${DEMO_HTTP_PORT:-7080}
HUB_NBD_PORT=${DEMO_HUB_NBD_PORT:-10810}
NBD_PORT=${DEMO_NBD_PORT:-10809}
AGENT_HTTP_PORT=${DEMO_AGENT_HTTP_PORT:-10899}
START_TIMEOUT_S=30
mkdir -p "$D"
if [ ! -f "$D/V1.img" ]; then  # a protected volume with some data on it
  truncate -s "${SIZE_MIB}M" "$D/V1.img"
  head -c 32M /dev/urandom | dd of="$D/V1.img" conv=notrunc status=none
fi
HUB='' AGENT=''
stop() {
  [ -z "$AGENT" ] || kill "$AGENT" 2>/dev/null || true
  [ -z "$AGENT" ] || sleep 1
  [ -z "$HUB" ] || kill "$HUB" 2>/dev/null || true
  wait || true
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Fails the demo (exit 1) with the process's log tail when it is not running.
alive() { # NAME PID LOG
  if ! kill -0 "$2" 2>/dev/null; then
    local rc=0
    wait "$2" || rc=$?
    echo "rephub demo: the $1 failed to start (exit code $rc); the end of $3:" >&2
    tail -n 5 "$3" >&2
    exit 1
  fi
}

# The JSON of GET URL, or nothing when it does not answer.
status_json() {
  node -e 'fetch(process.argv[1]).then((r) => r.text()).then((t) => process.stdout.write(t), () => {})' "$1" 2>/dev/null || true
}

# Until the hub and the agent answer /status and the agent reports itself connected to the hub.
wait_up() {
  local until=$((SECONDS + START_TIMEOUT_S))
  while [ $SECONDS -lt $until ]; do
    alive hub "$HUB" "$D/hub.log"
    alive agent "$AGENT" "$D/agent.log"
    if [ -n "$(status_json "http://127.0.0.1:$HTTP_PORT/status")" ] &&
      status_json "http://127.0.0.1:$AGENT_HTTP_PORT/status" | grep -q '"connected": *true'; then
      return 0
    fi
    sleep 0.2
  done
  echo "rephub demo: hub or agent not up within ${START_TIMEOUT_S} s (logs: $D/hub.log, $D/agent.log)" >&2
  exit 1
}

node $(binflags dist/src/cli/rephub.js) dist/src/cli/rephub.js --listen "127.0.0.1:$HUB_PORT" --http "127.0.0.1:$HTTP_PORT" \
  --nbd "127.0.0.1:$HUB_NBD_PORT" --vol "V1=$D/V1R" --data "$D/hub-state" 2>"$D/hub.log" & HUB=$!
node $(binflags dist/src/cli/rephub-agent.js) dist/src/cli/rephub-agent.js --hub "127.0.0.1:$HUB_PORT" --export "V1=$D/V1.img" \
  --nbd "127.0.0.1:$NBD_PORT" --http "127.0.0.1:$AGENT_HTTP_PORT" --state "$D/agent-state" --vm demo \
  2>"$D/agent.log" & AGENT=$!
wait_up
HUB_URL=http://127.0.0.1:$HTTP_PORT
cat <<MSG
rephub demo running (logs: $D/hub.log, $D/agent.log)
  protected volume  $D/V1.img  served as nbd://127.0.0.1:$NBD_PORT/V1
  recovery volume   $D/V1R
Try:
  node dist/src/cli/rephub.js status --hub $HUB_URL
  qemu-io -f raw -c 'write -P 0x5a 0 1M' nbd://127.0.0.1:$NBD_PORT/V1
  cmp $D/V1.img $D/V1R && echo replica equal
  node dist/src/cli/rephub.js failover-test start --hub $HUB_URL --admin-token-file $D/hub-state/admin-token
  qemu-system-x86_64 -m 512 -drive file=nbd://127.0.0.1:$NBD_PORT/V1,format=raw,if=virtio ...
Ctrl-C to stop.
MSG
# Until either process ends: then the demo is over, with that process's status.
rc=0
wait -n "$HUB" "$AGENT" || rc=$?
echo "rephub demo: a process ended (exit code $rc); logs: $D/hub.log, $D/agent.log" >&2
exit "$rc"
