#!/usr/bin/env bash
# Quick agent tap measurement: hub + agent on loopback, fio nbd engine 4 KiB randwrite qd16 and
# 1 MiB write qd4. PROF=1 writes --cpu-prof profiles of both to $W/prof (see cpuprof-top.js).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
cd "$(dirname "$0")/../.."
W=$(mktemp -d /tmp/rephub-quick.XXXX); SECS=${SECS:-5}
P=(); [ "${PROF:-0}" = 1 ] && P=(--cpu-prof --cpu-prof-dir="$W/prof")
truncate -s 256M "$W/V1.img"
LOG_LEVEL=warn node "${P[@]}" $(binflags dist/src/cli/rephub.js) dist/src/cli/rephub.js --listen 127.0.0.1:17600 --http 127.0.0.1:17680 --nbd 127.0.0.1:17610 --vol "V1=$W/V1R" --data "$W/hub" 2>"$W/hub.log" & HUB=$!
sleep 0.5
LOG_LEVEL=warn node "${P[@]}" $(binflags dist/src/cli/rephub-agent.js) dist/src/cli/rephub-agent.js --hub 127.0.0.1:17600 --export "V1=$W/V1.img" --nbd 127.0.0.1:17609 --http 127.0.0.1:17690 --state "$W/ast" --vm q 2>"$W/agent.log" & AG=$!
for _ in $(seq 100); do curl -s 127.0.0.1:17680/status | grep -q '"state": "protecting"' && break; sleep 0.1; done
U=nbd://127.0.0.1:17609/V1
fio --name=r --ioengine=nbd --uri=$U --rw=randwrite --bs=4k --iodepth=16 --size=256m --time_based --runtime=$SECS --output-format=json --output="$W/r.json" >/dev/null 2>&1
echo "randwrite 4k qd16: $(jq -r '.jobs[0].write.iops|floor' "$W/r.json") IOPS"
fio --name=s --ioengine=nbd --uri=$U --rw=write --bs=1m --iodepth=4 --size=256m --time_based --runtime=$SECS --output-format=json --output="$W/s.json" >/dev/null 2>&1
echo "write 1m qd4: $(jq -r '.jobs[0].write.bw/1024|floor' "$W/s.json") MiB/s"
for _ in $(seq 300); do  # converged: agent has nothing unacked, hub has nothing dirty
  [ "$(curl -s 127.0.0.1:17690/status | jq '.pendingWrites + .volumes[0].dirtyBytes')" = 0 ] &&
  [ "$(curl -s 127.0.0.1:17680/status | jq -r '.volumes[0].state + (.volumes[0].dirtyBytes|tostring)')" = protecting0 ] && break
  sleep 0.1
done
cmp "$W/V1.img" "$W/V1R" && echo "replica byte-equal"
kill -INT $AG; sleep 1; kill -INT $HUB; sleep 1
[ "${PROF:-0}" = 1 ] && echo "profiles in $W/prof" || rm -rf "$W"
