#!/usr/bin/env bash
# overflow-cost.sh — what a mirrored 1 MiB write job costs until the copies are equal (issue 17),
# for agent variants run alternately in one sitting. The guest never waits for the hub, so the
# CPU of the job alone hides what overflowed into dirty regions and is resynced after it; this
# counts agent + hub CPU (user+sys from /proc) from the job's start until the replica is
# byte-equal, per MiB fio wrote, and the agent's overflowed writes and mirrored bytes.
# Usage: tools/bench/overflow-cost.sh [ROUNDS]
# Env: VARIANTS="A=--max-queue 64M;B=--max-queue 8M" (name=agent flags, ';'-separated; NAME@DIR
#      runs DIR's build instead), SECS=5 BS=1m QD=4 RW=write, HUBARGS=, PORT=27700
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}; SECS=${SECS:-5}; BS=${BS:-1m}; QD=${QD:-4}; RW=${RW:-write}; PORT=${PORT:-27700}
VARIANTS=${VARIANTS:-"q64=--max-queue 64M;q8=--max-queue 8M"}
TCK=$(getconf CLK_TCK)
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo $t; }
IFS=';' read -ra VS <<<"$VARIANTS"
for r in $(seq "$ROUNDS"); do
  for v in "${VS[@]}"; do
    name=${v%%=*}; flags=${v#*=}; root=$PWD
    [[ $name == *@* ]] && { root=${name#*@}; name=${name%@*}; }
    W=$(mktemp -d /tmp/overflow-cost.XXXX); truncate -s 256M "$W/V1.img"
    LOG_LEVEL=warn node $(binflags "$root/dist/src/cli/rephub.js") "$root/dist/src/cli/rephub.js" --listen 127.0.0.1:$PORT --http 127.0.0.1:$((PORT + 80)) \
      --vol "V1=$W/V1R" --data "$W/hub" ${HUBARGS:-} 2>"$W/hub.log" & HP=$!
    sleep 0.5
    # shellcheck disable=SC2086
    LOG_LEVEL=warn node $(binflags "$root/dist/src/cli/rephub-agent.js") "$root/dist/src/cli/rephub-agent.js" --hub 127.0.0.1:$PORT --export "V1=$W/V1.img" \
      --nbd 127.0.0.1:$((PORT + 9)) --http 127.0.0.1:$((PORT + 90)) --state "$W/ast" --vm q $flags 2>"$W/agent.log" & AP=$!
    for _ in $(seq 200); do curl -s 127.0.0.1:$((PORT + 80))/status | grep -q '"state": *"protecting"' && break; sleep 0.1; done
    t0=$(ticks $AP $HP); a0=$(ticks $AP)
    fio --name=r --ioengine=nbd --uri=nbd://127.0.0.1:$((PORT + 9))/V1 --rw="$RW" --bs="$BS" --iodepth="$QD" \
      --size=256m --time_based --runtime="$SECS" --output-format=json --output="$W/r.json" >/dev/null 2>&1
    t1=$(ticks $AP $HP); a1=$(ticks $AP); e0=$(date +%s.%N); eq=DIFFER
    for _ in $(seq 1200); do cmp -s "$W/V1.img" "$W/V1R" && { eq=$(echo "$(date +%s.%N) - $e0" | bc); break; }; sleep 0.05; done
    t2=$(ticks $AP $HP)
    st=$(curl -s 127.0.0.1:$((PORT + 90))/status)
    mib=$(jq -r '.jobs[0].write.io_bytes/1048576' "$W/r.json"); bw=$(jq -r '.jobs[0].write.bw/1024|floor' "$W/r.json")
    per() { echo "scale=0; $1 * 1000000 / $TCK / ($mib + 0.001)" | bc; }
    echo "round $r $name: MiB/s $bw; cpu us/MiB job $(per $((t1 - t0))) (agent $(per $((a1 - a0)))) until-equal $(per $((t2 - t0))); equal after ${eq}s;" \
      "overflowed $(jq -r '.overflowWrites' <<<"$st") of $(jq -r '.jobs[0].write.total_ios' "$W/r.json") writes;" \
      "mirrored MiB $(jq -r '(.mirroredBytes/1048576)|floor' <<<"$st")"
    kill -INT $AP; sleep 0.3; kill -INT $HP; wait $AP $HP 2>/dev/null; rm -rf "$W"
  done
done
