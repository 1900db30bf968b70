#!/usr/bin/env bash
# System calls per guest write on the main threads of the agent and the hub (strace -c on each
# main thread, not -f: the threadpool's fdatasyncs are the guest's own flushes), for one fio job
# through a fresh hub + agent on loopback. Strace slows both, so read counts per write, not speed.
# Usage: [ROOT=CHECKOUT] [PORT=26400] [SECS=5] bash tools/bench/syscalls-per-write.sh [JOB]
#   JOB as mirror-bench's: 4k-randwrite-1-fsync (a flush after each write), 1m-write-4, ...
set -uo pipefail
ROOT=${ROOT:-$PWD}; JOB=${1:-4k-randwrite-1-fsync}
. "$(dirname "$0")/strace-pair.sh"
strace_pair_run "$JOB" "${SECS:-5}" -c
n=$(jq -r '.jobs[0].write.total_ios' "$W/f.json")
for x in a h; do
  printf '%s, %s writes, per write:' "$([ $x = a ] && echo agent || echo hub)" "$n"
  awk -v n="$n" 'NR > 2 && $NF != "total" && $4 + 0 > 0 && $4 / n >= 0.005 { printf " %s %.2f", $NF, $4 / n }' "$W/$x.st"
  echo
done
