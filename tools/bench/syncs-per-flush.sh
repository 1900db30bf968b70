#!/usr/bin/env bash
# Disk syncs per guest flush on each side (issue 17's flush job): strace -f -T of fdatasync and
# fsync on every thread of the agent and the hub, for one fio job through a fresh hub + agent on
# loopback. Prints, per process, syncs per guest write and the seconds they took (strace slows
# both sides: read the counts, not the speed).
# Usage: [ROOT=CHECKOUT] [PORT=26400] [SECS=4] [HUBARGS=] bash tools/bench/syncs-per-flush.sh [JOB]
set -uo pipefail
ROOT=${ROOT:-$PWD}; JOB=${1:-4k-randwrite-1-fsync}
. "$(dirname "$0")/strace-pair.sh"
strace_pair_run "$JOB" "${SECS:-4}" -f -T -e trace=fdatasync,fsync
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
