#!/usr/bin/env bash
# converge-timeline.sh — what is queued where after a mirrored fio job until the copies are
# byte-equal (issue 17): hub + agent on loopback, fio for SECS, both /status sampled every
# 100 ms (converge-sample.js) during the job (its last JOBTAIL lines shown) and after it, and
# each cmp of image and replica with its start and end (s after the last write).
# Env: ROOT=this checkout SECS=4 BS=1m QD=4 RW=write PORT=27700 HUBARGS= AGENTARGS= KEEP=
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=${ROOT:-$(cd "$HERE/../.." && pwd)}; PORT=${PORT:-27700}; SECS=${SECS:-4}; BS=${BS:-1m}; QD=${QD:-4}; RW=${RW:-write}
W=$(mktemp -d /tmp/tl.XXXX); truncate -s 256M "$W/V1.img"
LOG_LEVEL=warn node $(binflags "$ROOT/dist/src/cli/rephub.js") "$ROOT/dist/src/cli/rephub.js" --listen 127.0.0.1:$PORT --http 127.0.0.1:$((PORT + 80)) \
  --vol "V1=$W/V1R" --data "$W/hub" ${HUBARGS:-} 2>"$W/hub.log" & HP=$!
sleep 0.5
LOG_LEVEL=warn node $(binflags "$ROOT/dist/src/cli/rephub-agent.js") "$ROOT/dist/src/cli/rephub-agent.js" --hub 127.0.0.1:$PORT --export "V1=$W/V1.img" \
  --nbd 127.0.0.1:$((PORT + 9)) --http 127.0.0.1:$((PORT + 90)) --state "$W/ast" --vm q ${AGENTARGS:-} 2>"$W/agent.log" & AP=$!
for _ in $(seq 200); do curl -s 127.0.0.1:$((PORT + 80))/status | grep -q '"state": *"protecting"' && break; sleep 0.1; done
node "$HERE/converge-sample.js" $((PORT + 90)) $((PORT + 80)) $W/stopj > $W/job.tl & SJ=$!
fio --name=r --ioengine=nbd --uri=nbd://127.0.0.1:$((PORT + 9))/V1 --rw="$RW" --bs="$BS" --iodepth="$QD" \
  --size=256m --time_based --runtime="$SECS" --output-format=json --output="$W/r.json" >/dev/null 2>&1
e0=$(date +%s.%N); touch $W/stopj; wait $SJ; tail -${JOBTAIL:-8} $W/job.tl; echo ---- after
echo "fio: $(jq -r '.jobs[0].write.bw/1024|floor' $W/r.json) MiB/s iops $(jq -r '.jobs[0].write.iops|floor' $W/r.json)"
node "$HERE/converge-sample.js" $((PORT + 90)) $((PORT + 80)) $W/stop $(date -d @$e0 +%s%3N) & SP=$!
for i in $(seq 300); do c0=$(date +%s.%N); cmp -s "$W/V1.img" "$W/V1R"; rc=$?; echo "cmp $(echo "$c0 - $e0" | bc) -> $(echo "$(date +%s.%N) - $e0" | bc) rc=$rc"; if [ $rc = 0 ]; then echo "EQUAL at $(echo "$(date +%s.%N) - $e0" | bc)"; break; fi; sleep 0.05; done
touch $W/stop; wait $SP
kill -INT $AP; sleep 0.3; kill -INT $HP; wait $AP $HP 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$W"; echo $W
