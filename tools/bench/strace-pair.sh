# Sourced by syscalls-per-write.sh and syncs-per-flush.sh: a fresh hub + agent on loopback from
# $ROOT, then one fio job through the agent's NBD export while strace watches both processes.
# strace_pair_run JOB SECS STRACE_ARGS...  -> $W/a.st (agent), $W/h.st (hub), $W/f.json (fio);
# sets W, A (agent pid), H (hub pid); the caller's EXIT trap stops both and removes $W.
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
P=${PORT:-26400}
strace_pair_run() {
  local job=$1 secs=$2; shift 2
  W=$(mktemp -d /tmp/rephub-strace.XXXX); truncate -s 256M "$W/V1.img"
  LOG_LEVEL=warn node $(binflags "$ROOT/dist/src/cli/rephub.js") "$ROOT/dist/src/cli/rephub.js" --listen 127.0.0.1:$P --http 127.0.0.1:$((P + 80)) \
    --nbd 127.0.0.1:$((P + 50)) --vol "V1=$W/V1R" --data "$W/hub" ${HUBARGS:-} 2>"$W/hub.log" & H=$!
  sleep 0.4
  LOG_LEVEL=warn node $(binflags "$ROOT/dist/src/cli/rephub-agent.js") "$ROOT/dist/src/cli/rephub-agent.js" --hub 127.0.0.1:$P --export "V1=$W/V1.img" \
    --nbd 127.0.0.1:$((P + 9)) --http 127.0.0.1:$((P + 90)) --state "$W/ast" --vm bench 2>"$W/agent.log" & A=$!
  trap 'kill $A 2>/dev/null; wait $A 2>/dev/null; kill $H 2>/dev/null; wait $H 2>/dev/null; rm -rf "$W"' EXIT
  for _ in $(seq 100); do nbdinfo --can connect nbd://127.0.0.1:$((P + 9))/V1 2>/dev/null && break; sleep 0.1; done
  for _ in $(seq 300); do curl -s 127.0.0.1:$((P + 80))/status | grep -q '"protecting"' && break; sleep 0.1; done
  strace "$@" -o "$W/a.st" -p $A 2>/dev/null & local s1=$!
  strace "$@" -o "$W/h.st" -p $H 2>/dev/null & local s2=$!
  sleep 0.5
  local j=$job extra=; [[ $j == *-fsync ]] && { extra=--fsync=1; j=${j%-fsync}; }
  local bs=${j%%-*} rest=${j#*-}; local rw=${rest%-*} qd=${rest##*-}
  fio --name=b --ioengine=nbd --uri=nbd://127.0.0.1:$((P + 9))/V1 --rw="$rw" --bs="$bs" --iodepth="$qd" $extra \
    --size=256m --time_based --runtime="$secs" --output-format=json --output="$W/f.json" >/dev/null 2>&1
  kill -INT $s1 $s2; sleep 1
}
