#!/usr/bin/env bash
# One hub, two VMs: the durable-ack latency of a small steady writer (VM B: 4 KiB writes at
# RATE_B MB/s, tools/loadgen.ts --rate-mbps) alone, then while VM A streams 1 MiB writes as fast
# as its window allows. What a quiet VM pays for a loud neighbour on the same hub (event loop,
# group commit, disk). Not a test: numbers only.
# Usage: tools/bench/fairness.sh [REPS]   Env: SECS=10 RATE_B=4 PORT=28000 (PORT..PORT+2)
#   B_DIR=/dev/shm: B's recovery volume on another file system (the disk's share told from the hub's)
#   HUB_ARGS: more hub flags (e.g. --no-journal); REPHUB_CLI: another build (or tools/bench/profile-cli.js)
set -u
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
cd "$(dirname "$0")/../.."
REPS=${1:-3}; SECS=${SECS:-10}; RATE_B=${RATE_B:-4}; PORT=${PORT:-28000}
W=$(mktemp -d "${TMPDIR:-/tmp}/rephub-fair.XXXX")
HUB=""
cleanup() { [ -n "$HUB" ] && kill "$HUB" 2>/dev/null; wait 2>/dev/null; rm -rf "$W" "${B_DIR:-$W}/BR-$$"; }
trap cleanup EXIT
LOG_LEVEL=warn node $(binflags "${REPHUB_CLI:-dist/src/cli/rephub.js}") "${REPHUB_CLI:-dist/src/cli/rephub.js}" --listen "127.0.0.1:$PORT" --http "127.0.0.1:$((PORT + 1))" \
  --nbd "127.0.0.1:$((PORT + 2))" --vol "A=$W/AR" --vol "B=${B_DIR:-$W}/BR-$$" --data "$W/state" ${HUB_ARGS:-} 2>/dev/null &
HUB=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
b() { node dist/tools/loadgen.js --hub "127.0.0.1:$PORT" --name B --size-mib 256 --rate-mbps "$RATE_B" --bs 4096 \
  --seconds "$SECS" 2>/dev/null | grep RPO; }
for r in $(seq "$REPS"); do
  echo "rep $r, B alone:      $(b)"
  node dist/tools/loadgen.js --hub "127.0.0.1:$PORT" --name A --size-mib 1024 --workload 1m \
    --seconds $((SECS + 6)) > "$W/a.out" 2>/dev/null &
  A=$!
  sleep 3 # A's initial sync (1 GiB of zeroes) is over; its 1 MiB stream runs
  echo "rep $r, B beside A:   $(b)"
  wait "$A"
  echo "rep $r, A meanwhile:  $(grep '1 MiB' "$W/a.out")"
done
