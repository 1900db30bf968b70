#!/usr/bin/env bash
# `rephub restore` of a whole volume against nbdcopy of the same bytes, in one run: a hub and an
# agent converge a volume of random data (SIZE, default 1 GiB), a checkpoint is tagged, then
# alternately `rephub restore --at latest --to FILE` (the default path: the hub serves the point
# over NBD and nbdcopy copies it), the same `--via http` (the hub streams it), and `nbdcopy` from
# qemu-nbd serving the recovery volume read-only to a file.
# Usage: tools/bench/restore.sh [REPS]   Env: SIZE=1G
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
cd "$(dirname "$0")/../.."
REPS=${1:-3}; SIZE=${SIZE:-1G}
W=$(mktemp -d "${TMPDIR:-/tmp}/rephub-restore.XXXX")
cleanup() { kill -INT ${AP:-} ${HP:-} 2>/dev/null || true; [ -n "${QP:-}" ] && kill $QP 2>/dev/null; sleep 0.5; rm -rf "$W"; }
trap cleanup EXIT
head -c "$SIZE" /dev/urandom > "$W/V1.img"
HTTP=127.0.0.1:17581
LOG_LEVEL=warn node $(binflags dist/src/cli/rephub.js) dist/src/cli/rephub.js --listen 127.0.0.1:17500 --http $HTTP --nbd 127.0.0.1:17510 --vol "V1=$W/V1R" --data "$W/hub" 2>"$W/hub.log" & HP=$!
sleep 0.5
LOG_LEVEL=warn node $(binflags dist/src/cli/rephub-agent.js) dist/src/cli/rephub-agent.js --hub 127.0.0.1:17500 --export "V1=$W/V1.img" --nbd 127.0.0.1:17509 --http 127.0.0.1:17591 --state "$W/ast" --vm rv 2>"$W/agent.log" & AP=$!
for _ in $(seq 600); do curl -s $HTTP/status | grep -q '"state": "protecting"' && break; sleep 0.2; done
curl -s $HTTP/status | grep -q '"state": "protecting"' || { echo "the volume never reached protecting:"; tail -5 "$W/hub.log" "$W/agent.log"; exit 1; }
export REPHUB_ADMIN_TOKEN_FILE="$W/hub/admin-token"
node $(binflags dist/src/cli/rephub.js) dist/src/cli/rephub.js checkpoint --hub http://$HTTP --vm rv --label bench >/dev/null
med() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for r in $(seq "$REPS"); do
  t0=$(date +%s.%N)
  node $(binflags dist/src/cli/rephub.js) dist/src/cli/rephub.js restore --hub http://$HTTP --vm rv --volume V1 --at latest --to "$W/out.img" >/dev/null
  t1=$(date +%s.%N)
  cmp -s "$W/out.img" "$W/V1.img" || { echo "restore differs from the image"; exit 1; }
  rm -f "$W/out.img" "$W/copy.img"
  t4=$(date +%s.%N)
  node $(binflags dist/src/cli/rephub.js) dist/src/cli/rephub.js restore --via http --hub http://$HTTP --vm rv --volume V1 --at latest --to "$W/out.img" >/dev/null
  t5=$(date +%s.%N)
  cmp -s "$W/out.img" "$W/V1.img" || { echo "restore --via http differs from the image"; exit 1; }
  rm -f "$W/out.img"
  qemu-nbd -r -f raw -t -k "$W/nbd.sock" -x V1 "$W/V1R" & QP=$!
  for _ in $(seq 50); do [ -S "$W/nbd.sock" ] && break; sleep 0.1; done
  t2=$(date +%s.%N)
  nbdcopy --flush "nbd+unix:///V1?socket=$W/nbd.sock" "$W/copy.img"  # durable, as restore is
  t3=$(date +%s.%N)
  kill $QP; wait $QP 2>/dev/null || true; QP=
  rm -f "$W/copy.img"
  echo "$t0 $t1 $t2 $t3 $t4 $t5" | awk '{printf "%.3f %.3f %.3f\n", $2-$1, $4-$3, $6-$5}' >> "$W/t"
  echo "rep $r: restore $(tail -1 "$W/t" | cut -d' ' -f1) s, --via http $(tail -1 "$W/t" | cut -d' ' -f3) s, nbdcopy $(tail -1 "$W/t" | cut -d' ' -f2) s (load $(cut -d' ' -f1 /proc/loadavg))"
done
R=$(cut -d' ' -f1 "$W/t" | med); N=$(cut -d' ' -f2 "$W/t" | med); H=$(cut -d' ' -f3 "$W/t" | med)
echo "MEDIAN restore $R s, --via http $H s, nbdcopy $N s: restore speed = $(echo "scale=2; $N / $R" | bc) x nbdcopy (http $(echo "scale=2; $N / $H" | bc) x)"
