#!/usr/bin/env bash
# The hub's event-loop lag under a long 1 MiB ingest (tools/loadgen.ts, acked durable), from
# prom-client's nodejs_eventloop_lag_* on the hub's /metrics, scraped every second (each scrape
# resets the sampler): the worst max and the median p99 over the run, initial sync included.
# BASE=<worktree of another build>: its hub too, alternating in each rep.
# Usage: tools/bench/loop-lag.sh [REPS]   Env: SECS=20 PORT=27800 (PORT..PORT+2) HUB_ARGS=...
set -u
cd "$(dirname "$0")/../.."
REPS=${1:-3}; SECS=${SECS:-20}; PORT=${PORT:-27800}
W=$(mktemp -d "${TMPDIR:-/tmp}/rephub-looplag.XXXX"); trap 'rm -rf "$W"' EXIT
one() { # $1: label, $2: the hub's cli ('' = this build)
  : > "$W/scrape"
  (while :; do
    curl -s "http://127.0.0.1:$((PORT + 1))/metrics" 2>/dev/null |
      awk '/^nodejs_eventloop_lag_(max|p99)_seconds /{print $1, $2}' >> "$W/scrape"
    sleep 1
  done) &
  local scraper=$!
  local mb
  mb=$(PORT=$PORT REPHUB_CLI="$2" node dist/tools/loadgen.js --seconds "$SECS" --workload 1m 2>/dev/null |
    awk '/1 MiB/{print $(NF-9)}')
  kill "$scraper"; wait "$scraper" 2>/dev/null
  local max p99 n
  max=$(awk '$1 ~ /max/ {if ($2 > m) m = $2} END{printf "%.1f", m * 1000}' "$W/scrape")
  p99=$(awk '$1 ~ /p99/ {print $2 * 1000}' "$W/scrape" | sort -n | awk '{a[NR]=$1} END{printf "%.1f", a[int((NR+1)/2)]}')
  n=$(grep -c max "$W/scrape")
  echo "$1: ingest $mb MB/s, event-loop lag max $max ms, median p99 $p99 ms ($n scrapes)"
}
for r in $(seq "$REPS"); do
  one "rep $r this build" ""
  if [ -n "${BASE:-}" ]; then one "rep $r base $BASE" "$BASE/dist/src/cli/rephub.js"; fi
done
