#!/usr/bin/env bash
# System calls per guest write on the main threads of the agent and the hub (strace -c on each
# main thread, not -f: the threadpool's fdatasyncs are the guest's own flushes), for one fio job
# through a fresh hub + agent on loopback. Strace slows both, so read counts per write, not speed.
# Usage: [ROOT=CHECKOUT] [PORT=26400] [SECS=5] bash tools/bench/syscalls-per-write.sh [JOB]
#   JOB as mirror-bench's: 4k-randwrite-1-fsync (a flush after each write), 1m-write-4, ...
set -uo pipefail
ROOT=${ROOT:-$PWD}; P=${PORT:-26400}; JOB=${1:-4k-randwrite-1-fsync}
W=$(mktemp -d /tmp/rephub-sysc.XXXX); truncate -s 256M "$W/V1.img"
LOG_LEVEL=warn node "$ROOT/dist/src/cli/rephub.js" --listen 127.0.0.1:$P --http 127.0.0.1:$((P + 80)) \
  --nbd 127.0.0.1:$((P + 50)) --vol "V1=$W/V1R" --data "$W/hub" 2>"$W/hub.log" & H=$!
sleep 0.4
LOG_LEVEL=warn node "$ROOT/dist/src/cli/rephub-agent.js" --hub 127.0.0.1:$P --export "V1=$W/V1.img" \
  --nbd 127.0.0.1:$((P + 9)) --http 127.0.0.1:$((P + 90)) --state "$W/ast" --vm bench 2>"$W/agent.log" & A=$!
trap 'kill $A 2>/dev/null; wait $A 2>/dev/null; kill $H 2>/dev/null; wait $H 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 100); do nbdinfo --can connect nbd://127.0.0.1:$((P + 9))/V1 2>/dev/null && break; sleep 0.1; done
for _ in $(seq 300); do curl -s 127.0.0.1:$((P + 80))/status | grep -q '"protecting"' && break; sleep 0.1; done
strace -c -o "$W/a.st" -p $A 2>/dev/null & S1=$!
strace -c -o "$W/h.st" -p $H 2>/dev/null & S2=$!
sleep 0.5
j=$JOB extra=; [[ $j == *-fsync ]] && { extra=--fsync=1; j=${j%-fsync}; }
bs=${j%%-*}; rest=${j#*-}; rw=${rest%-*}; qd=${rest##*-}
fio --name=b --ioengine=nbd --uri=nbd://127.0.0.1:$((P + 9))/V1 --rw="$rw" --bs="$bs" --iodepth="$qd" $extra \
  --size=256m --time_based --runtime="${SECS:-5}" --output-format=json --output="$W/f.json" >/dev/null 2>&1
kill -INT $S1 $S2; sleep 1
n=$(jq -r '.jobs[0].write.total_ios' "$W/f.json")
for x in a h; do
  printf '%s, %s writes, per write:' "$([ $x = a ] && echo agent || echo hub)" "$n"
  awk -v n="$n" 'NR > 2 && $NF != "total" && $4 + 0 > 0 && $4 / n >= 0.005 { printf " %s %.2f", $NF, $4 / n }' "$W/$x.st"
  echo
done
