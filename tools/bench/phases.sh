#!/usr/bin/env bash
# The order compare-servers.sh runs jobs in, for rephub alone: hub + agent on a fresh 256 MiB
# image, fio 4 KiB randwrite for 5 s (PRE=0 skips it), then two 5 s fio 1 MiB write jobs; for
# each, MiB/s and each process's CPU microseconds per MiB. DIR: the checkout to run (another
# commit's worktree, to compare builds in one sitting). HUBARGS: extra hub options.
# Usage: tools/bench/phases.sh        Env: DIR=. PRE=1 HUBARGS=
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
cd "${DIR:-$(dirname "$0")/../..}"
W=$(mktemp -d /tmp/rephub-phases.XXXX); truncate -s 256M "$W/V1.img"
LOG_LEVEL=warn node $(binflags dist/src/cli/rephub.js) dist/src/cli/rephub.js --listen 127.0.0.1:17800 --http 127.0.0.1:17880 --vol "V1=$W/V1R" --data "$W/hub" ${HUBARGS:-} 2>"$W/hub.log" & HP=$!
sleep 0.5
LOG_LEVEL=warn node $(binflags dist/src/cli/rephub-agent.js) dist/src/cli/rephub-agent.js --hub 127.0.0.1:17800 --export "V1=$W/V1.img" --nbd 127.0.0.1:17809 --http 127.0.0.1:17890 --state "$W/ast" --vm q 2>"$W/agent.log" & AP=$!
trap 'kill $AP $HP 2>/dev/null || true; sleep 0.5; rm -rf "$W"' EXIT
for _ in $(seq 100); do curl -s 127.0.0.1:17880/status | grep -q '"state": "protecting"' && break; sleep 0.1; done
U=nbd://127.0.0.1:17809/V1
[ "${PRE:-1}" = 1 ] && fio --name=r --ioengine=nbd --uri=$U --rw=randwrite --bs=4k --iodepth=16 --size=256m --time_based --runtime=5 >/dev/null 2>&1
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)
for i in 1 2; do
  a0=$(cpu $AP); h0=$(cpu $HP)
  fio --name=s --ioengine=nbd --uri=$U --rw=write --bs=1m --iodepth=4 --size=256m --time_based --runtime=5 --output-format=json --output="$W/s.json" >/dev/null 2>&1
  a1=$(cpu $AP); h1=$(cpu $HP)
  n=$(jq '.jobs[0].write.total_ios' "$W/s.json"); bw=$(jq '.jobs[0].write.bw/1024|floor' "$W/s.json")
  echo "1 MiB job $i: $bw MiB/s; CPU us per MiB: agent $(( (a1 - a0) * 1000000 / TCK / n )) hub $(( (h1 - h0) * 1000000 / TCK / n ))"
done
