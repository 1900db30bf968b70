#!/usr/bin/env bash
# Why the 4 KiB job has half-speed rounds (BENCHMARKS Round 21): one 5 s fio job (randwrite 4 KiB
# qd16) through a fresh hub + agent on loopback, sampling every 10 ms the hub main thread's state
# (R running, S waiting in epoll, D in the kernel, with its top kernel frames) and, every 250 ms,
# the agent's pending writes and link queue. Prints IOPS, the writes owed (overflowed), the
# largest pending count and queue seen, and the state counts. Run it a few times: slow runs are
# the ones with writes owed (before Round 22's hold); the agent's queue holds, replies held and longest wait are printed
# too. Needs root for /proc/PID/stack.
# STOP_MS=400 makes the hiccup at will: the hub is stopped (SIGSTOP) that long, STOP_AT s into the
# job, and the IOPS of each second are printed, to see whether the job recovers after it.
# Usage: [PORT=18600] [RUNS=1] [SECS=5] [STOP_MS=0] [STOP_AT=2] [AGENT_ARGS=...] bash tools/bench/hub-stall.sh
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
cd "$(dirname "$0")/../.."
P=${PORT:-18600}
for run in $(seq "${RUNS:-1}"); do
  W=$(mktemp -d /tmp/hub-stall.XXXX); truncate -s 256M "$W/V1.img"
  LOG_LEVEL=warn node $(binflags dist/src/cli/rephub.js) dist/src/cli/rephub.js --listen 127.0.0.1:$P --http 127.0.0.1:$((P + 80)) \
    --nbd 127.0.0.1:$((P + 50)) --vol "V1=$W/V1R" --data "$W/hub" 2>"$W/hub.log" & HP=$!
  sleep 0.5
  LOG_LEVEL=warn node $(binflags dist/src/cli/rephub-agent.js) dist/src/cli/rephub-agent.js --hub 127.0.0.1:$P --export "V1=$W/V1.img" \
    --nbd 127.0.0.1:$((P + 9)) --http 127.0.0.1:$((P + 90)) --state "$W/ast" --vm q ${AGENT_ARGS:-} 2>"$W/agent.log" & AP=$!
  for _ in $(seq 100); do curl -s 127.0.0.1:$((P + 80))/status | grep -q '"state": "protecting"' && break; sleep 0.1; done
  timeout 60 fio --name=r --ioengine=nbd --uri=nbd://127.0.0.1:$((P + 9))/V1 --rw=randwrite --bs=4k --iodepth=16 --size=256m \
    --time_based --runtime=${SECS:-5} --output-format=json --output="$W/r.json" \
    --write_iops_log="$W/iops" --log_avg_msec=1000 >/dev/null 2>&1 & FP=$!
  if [ "${STOP_MS:-0}" -gt 0 ]; then
    (sleep "${STOP_AT:-2}"; kill -STOP $HP; sleep "$(echo "${STOP_MS} / 1000" | bc -l)"; kill -CONT $HP) & SP=$!
  fi
  n=0
  while kill -0 $FP 2>/dev/null; do
    st=$(awk '{print $3}' /proc/$HP/task/$HP/stat)
    if [ "$st" = D ]; then echo "D:$(head -3 /proc/$HP/task/$HP/stack | awk '{print $2}' | cut -d+ -f1 | paste -sd '<')"; else echo "$st"; fi >> "$W/states"
    if [ $((n++ % 25)) = 0 ]; then curl -s 127.0.0.1:$((P + 90))/status | jq -r '"\(.pendingWrites) \(.queueBytes)"' >> "$W/agent" 2>/dev/null; fi
    sleep 0.01
  done
  st=$(curl -s 127.0.0.1:$((P + 90))/status)
  owed=$(jq .overflowWrites <<<"$st"); holds=$(jq -r '"\(.lagBound.queueHolds // "-") queue holds, \(.lagBound.heldWrites) replies held, longest \(.lagBound.maxWaitMs) ms"' <<<"$st")
  peaks=$(awk '$1 > p {p = $1} $2 > q {q = $2} END {printf "pending max %d, queue max %.0f MiB", p, q / 1048576}' "$W/agent")
  echo "run $run: $(jq -r '.jobs[0].write.iops|floor' "$W/r.json") IOPS, owed $owed, $holds, $peaks; hub main thread: $(sort "$W/states" | uniq -c | sort -rn | head -5 | awk '{printf "%s %s, ", $2, $1}')"
  echo "  IOPS each second: $(cat "$W"/iops*.log 2>/dev/null | awk -F, '{printf "%d ", $2}')"
  [ "${STOP_MS:-0}" -gt 0 ] && wait $SP 2>/dev/null
  kill -INT $AP; sleep 0.5; kill -INT $HP; sleep 0.5; wait $AP $HP 2>/dev/null; rm -rf "$W"
done
