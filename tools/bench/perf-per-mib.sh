#!/usr/bin/env bash
# Where each side's CPU goes per written MiB: a fresh hub + agent on loopback (TLS=1: the agent
# link with mutual-certificate TLS), fio through the agent's NBD export, `perf record` of both
# processes for 4 s mid-job, then each side's top symbols in CPU us per MiB written (samples at
# 1 kHz: one sample is 1 ms). Two runs (TLS=0, TLS=1) side by side say what TLS adds, symbol by
# symbol (issue 17, BENCHMARKS Round 17). Needs perf; --perf-basic-prof names JIT-compiled JS.
# Usage: [TLS=1] [BS=1m] [QD=4] [RW=write] [TOP=15] [PORT=18200] bash tools/bench/perf-per-mib.sh
#   RW: fio's --rw; the default is sequential (write): mirror-bench's 4 KiB job is RW=randwrite.
#   ROOT=CHECKOUT: run that checkout's build (a base side, alternated with this one by hand);
#   FIO_ARGS: extra fio options (--fsync=1: a flush after each write); KEEP=DIR: keep the perf
#   data there (hub.data, agent.data; `perf report -i DIR/hub.data` for call graphs).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
cd "${ROOT:-$(dirname "$0")/../..}"
P=${PORT:-18200}; BS=${BS:-1m}; QD=${QD:-4}; RW=${RW:-write}
W=$(mktemp -d /tmp/rephub-perf.XXXX); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null; done; sleep 0.5; [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$W"/*.data "$KEEP"/; rm -rf "$W"' EXIT
truncate -s 256M "$W/V1.img"
HT=(); AT=()
if [ "${TLS:-0}" = 1 ]; then
  bash tools/make-certs.sh "$W/certs" 127.0.0.1 q >/dev/null
  HT=(--tls-cert "$W/certs/hub.pem" --tls-key "$W/certs/hub.key" --tls-ca "$W/certs/ca.pem")
  AT=(--tls-cert "$W/certs/q.pem" --tls-key "$W/certs/q.key" --tls-ca "$W/certs/ca.pem")
fi
LOG_LEVEL=warn node --perf-basic-prof $(binflags dist/src/cli/rephub.js) dist/src/cli/rephub.js --listen 127.0.0.1:$P --http 127.0.0.1:$((P + 80)) \
  --nbd 127.0.0.1:$((P + 50)) --vol "V1=$W/V1R" --data "$W/hub" "${HT[@]}" 2>"$W/hub.log" & H=$!; PIDS+=($H)
sleep 0.5
LOG_LEVEL=warn node --perf-basic-prof $(binflags dist/src/cli/rephub-agent.js) dist/src/cli/rephub-agent.js --hub 127.0.0.1:$P --export "V1=$W/V1.img" \
  --nbd 127.0.0.1:$((P + 9)) --http 127.0.0.1:$((P + 90)) --state "$W/ast" --vm q "${AT[@]}" 2>"$W/agent.log" & A=$!; PIDS+=($A)
for _ in $(seq 100); do curl -s 127.0.0.1:$((P + 80))/status | grep -q '"state": "protecting"' && break; sleep 0.1; done
fio --name=r --ioengine=nbd --uri=nbd://127.0.0.1:$((P + 9))/V1 --rw="$RW" --bs="$BS" --iodepth="$QD" --size=256m \
  --time_based --runtime=7 ${FIO_ARGS:-} --output-format=json --output="$W/r.json" >/dev/null 2>&1 & F=$!
sleep 1.5
perf record -F 1000 -g -o "$W/hub.data" -p $H -- sleep 4 2>/dev/null & S1=$!
perf record -F 1000 -g -o "$W/agent.data" -p $A -- sleep 4 2>/dev/null & S2=$!
wait $S1 $S2 $F
MIB=$(jq -r '.jobs[0].write.bw / 1024 * 4' "$W/r.json") # MiB written during the 4 s recorded
printf 'TLS=%s %s %s qd%s: %.0f MiB/s\n' "${TLS:-0}" "$RW" "$BS" "$QD" "$(echo "$MIB / 4" | bc -l)"
for side in agent hub; do
  perf report -i "$W/$side.data" --no-children --sort dso,sym --stdio -g none -n 2>/dev/null |
    awk -v mib="$MIB" -v side="$side" -v top="${TOP:-15}" '
      NF > 3 && $1 ~ /%$/ { n = $2; $1 = $2 = ""; t += n; if (k++ < top) row[k] = sprintf("  %6.0f  %s", n * 1000 / mib, substr($0, 3, 70)) }
      END { printf "%s: %.0f CPU us per MiB, top symbols (us per MiB):\n", side, t * 1000 / mib; for (i = 1; i <= k && i <= top; i++) print row[i] }'
done
