#!/usr/bin/env bash
# Disk syncs per guest flush on each side (issue 17's flush job): strace -f -T of fdatasync and
# fsync on every thread of the agent and the hub, for one fio job through a fresh hub + agent on
# loopback. Prints, per process, syncs per guest write and the seconds they took (strace slows
# both sides: read the counts, not the speed).
# Usage: [ROOT=CHECKOUT] [PORT=26400] [SECS=4] [HUBARGS=] bash tools/bench/syncs-per-flush.sh [JOB]
set -uo pipefail
ROOT=${ROOT:-$PWD}; P=${PORT:-26400}; JOB=${1:-4k-randwrite-1-fsync}
W=$(mktemp -d /tmp/rephub-syncs.XXXX); truncate -s 256M "$W/V1.img"
LOG_LEVEL=warn node "$ROOT/dist/src/cli/rephub.js" --listen 127.0.0.1:$P --http 127.0.0.1:$((P + 80)) \
  --nbd 127.0.0.1:$((P + 50)) --vol "V1=$W/V1R" --data "$W/hub" ${HUBARGS:-} 2>"$W/hub.log" & H=$!
sleep 0.4
LOG_LEVEL=warn node "$ROOT/dist/src/cli/rephub-agent.js" --hub 127.0.0.1:$P --export "V1=$W/V1.img" \
  --nbd 127.0.0.1:$((P + 9)) --http 127.0.0.1:$((P + 90)) --state "$W/ast" --vm bench 2>"$W/agent.log" & A=$!
trap 'kill $A 2>/dev/null; wait $A 2>/dev/null; kill $H 2>/dev/null; wait $H 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 100); do nbdinfo --can connect nbd://127.0.0.1:$((P + 9))/V1 2>/dev/null && break; sleep 0.1; done
for _ in $(seq 300); do curl -s 127.0.0.1:$((P + 80))/status | grep -q '"protecting"' && break; sleep 0.1; done
strace -f -T -e trace=fdatasync,fsync -o "$W/a.st" -p $A 2>/dev/null & S1=$!
strace -f -T -e trace=fdatasync,fsync -o "$W/h.st" -p $H 2>/dev/null & S2=$!
sleep 0.5
j=$JOB extra=; [[ $j == *-fsync ]] && { extra=--fsync=1; j=${j%-fsync}; }
bs=${j%%-*}; rest=${j#*-}; rw=${rest%-*}; qd=${rest##*-}
fio --name=b --ioengine=nbd --uri=nbd://127.0.0.1:$((P + 9))/V1 --rw="$rw" --bs="$bs" --iodepth="$qd" $extra \
  --size=256m --time_based --runtime="${SECS:-4}" --output-format=json --output="$W/f.json" >/dev/null 2>&1
kill -INT $S1 $S2; sleep 1
n=$(jq -r '.jobs[0].write.total_ios' "$W/f.json"); iops=$(jq -r '.jobs[0].write.iops|floor' "$W/f.json")
echo "$n writes ($iops IOPS under strace)"
for x in a h; do
  grep -E 'fdatasync|fsync' "$W/$x.st" | grep -v 'resumed>' | grep -c . >/dev/null
  awk -v n="$n" -v who="$([ $x = a ] && echo agent || echo hub)" '
    /(fdatasync|fsync)\(/ || /<\.\.\. (fdatasync|fsync) resumed>/ {
      if ($0 ~ /unfinished/) next
      c++; if (match($0, /<[0-9.]+>$/)) t += substr($0, RSTART + 1, RLENGTH - 2)
    }
    END { printf "%s: %d syncs, %.2f per write, %.3f s in them (%.2f ms each)\n", who, c, c / n, t, c ? 1000 * t / c : 0 }' "$W/$x.st"
  # per file: the fd's path from /proc while the process still runs
  pid=$([ $x = a ] && echo $A || echo $H)
  grep -oE '(fdatasync|fsync)\([0-9]+' "$W/$x.st" | sort | uniq -c | while read -r c call; do
    fd=${call#*(}; printf '    %-9s %5.2f per write  %s\n' "${call%(*}" "$(echo "$c / $n" | bc -l)" "$(readlink /proc/$pid/fd/$fd)"
  done
done
