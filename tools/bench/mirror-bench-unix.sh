#!/usr/bin/env bash
# mirror-bench-unix.sh — ../shared/tools/mirror-bench.sh adapted to the agent's two NBD
# listeners: the same agent and hub (loopback), the client (fio's nbd engine, libnbd) on TCP
# (nbd://127.0.0.1:PORT/V1) or on a UNIX socket (nbd+unix:///V1?socket=PATH, as rephub-qemu
# gives QEMU). Rounds alternate, medians; after each round the two copies are compared.
# Usage (from the project root):  bash tools/bench/mirror-bench-unix.sh [ROUNDS]
# Env: SIZE_MIB=256 SECS=5 JOBS="4k-randwrite-16 1m-write-4"
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
ROUNDS=${1:-3}; SIZE_MIB=${SIZE_MIB:-256}; SECS=${SECS:-5}
JOBS=${JOBS:-"4k-randwrite-16 1m-write-4"}
SERVERS="tcp unix"
ROOT=$PWD
[ -f "$ROOT/package.json" ] || { echo "run from the project root" >&2; exit 2; }
(cd "$ROOT" && npx tsc -p . >/dev/null) || { echo "build failed" >&2; exit 2; }
HUB="node $(binflags "$ROOT/dist/src/cli/rephub.js") $ROOT/dist/src/cli/rephub.js"
AGENT="node $(binflags "$ROOT/dist/src/cli/rephub-agent.js") $ROOT/dist/src/cli/rephub-agent.js"
W=$(mktemp -d /tmp/mirror-bench-unix.XXXX); PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 0.5
             for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; PIDS=(); }
trap 'stop_all; rm -rf "$W"' EXIT
wait_nbd() { for _ in $(seq 200); do nbdinfo --can connect "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
fio_job() { # uri job -> number (IOPS for 4k, MiB/s for 1m)
  local j=$2 bs=${2%%-*} rest=${2#*-}; local rw=${rest%-*} qd=${rest##*-}
  timeout 120 fio --name=b --ioengine=nbd --uri="$1" --rw="$rw" --bs="$bs" --iodepth="$qd" \
    --size="${SIZE_MIB}m" --time_based --runtime="$SECS" --output-format=json --output="$W/fio.json" \
    >/dev/null 2>&1 || { echo 0; return; }
  if [ "$bs" = 4k ]; then jq -r '.jobs[0].write.iops|floor' "$W/fio.json"
  else jq -r '.jobs[0].write.bw/1024|floor' "$W/fio.json"; fi
}
start_server() { # tcp|unix -> sets URI
  local d="$W/$1"; rm -rf "$d"; mkdir -p "$d"
  truncate -s "${SIZE_MIB}M" "$d/V1.img"
  LOG_LEVEL=warn $HUB --listen 127.0.0.1:17800 --http 127.0.0.1:17880 --nbd 127.0.0.1:17881 --vol "V1=$d/V1R" --data "$d/hub" 2>"$d/hub.log" & PIDS+=($!)
  sleep 0.3
  local listen=127.0.0.1:17809; URI=nbd://127.0.0.1:17809/V1
  [ "$1" = unix ] && { listen="unix:$d/nbd.sock"; URI="nbd+unix:///V1?socket=$d/nbd.sock"; }
  LOG_LEVEL=warn $AGENT --hub 127.0.0.1:17800 --export "V1=$d/V1.img" --nbd "$listen" --http off --state "$d/ast" --vm bench 2>"$d/agent.log" & PIDS+=($!)
  wait_nbd "$URI" || return 1
  for _ in $(seq 300); do curl -s 127.0.0.1:17880/status | grep -q '"protecting"' && break; sleep 0.1; done
}
stop_server() { # -> EQ: copies equal N s after the last write, or DIFFER
  local d="$W/$1" t0 ok=DIFFER; t0=$(date +%s.%N)
  for _ in $(seq 600); do cmp -s "$d/V1.img" "$d/V1R" && { ok=equal; break; }; sleep 0.05; done
  [ $ok = equal ] && ok="equal in $(echo "$(date +%s.%N) - $t0" | bc | xargs printf '%.1f')s"
  stop_all; EQ=$ok
}
declare -A R M
for r in $(seq "$ROUNDS"); do
  for s in $SERVERS; do
    start_server "$s" || { echo "round $r: $s did not start" >&2; stop_all; continue; }
    line="round $r $s:"
    for j in $JOBS; do v=$(fio_job "$URI" "$j"); R[$s.$j]+="$v "; line+=" $j=$v"; done
    stop_server "$s"; echo "$line copies=$EQ"
  done
done
med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
echo; printf '%-16s%12s%12s%12s\n' job tcp unix unix/tcp
for j in $JOBS; do
  for s in $SERVERS; do M[$s]=$(med "${R[$s.$j]:-0}"); done
  printf '%-16s%12s%12s%12s\n' "$j" "${M[tcp]}" "${M[unix]}" "$(echo "scale=2; ${M[unix]} / ${M[tcp]}" | bc)"
done
