#!/usr/bin/env bash
# Side by side, in one run: the same real-client measurements (tools/bench/nbd-baseline.sh:
# fio nbd engine, qemu-img bench, nbdcopy) against
#   agent   rephub-agent serving the image and mirroring every write to a live hub (loopback)
#   qemu    qemu-nbd on the same kind of image, no mirroring
#   nbdkit  nbdkit's file plugin, no mirroring
# Usage: tools/bench/compare-servers.sh [RUNS]     Env: SIZE_MIB=256 FIO_SECONDS=5
# Prints each server's MEDIAN lines and a ratio table (agent / reference).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bin-flags.sh" # binflags
cd "$(dirname "$0")/../.."
RUNS=${1:-1}
SIZE_MIB=${SIZE_MIB:-256}
export TEST_MIB=$SIZE_MIB FIO_SECONDS=${FIO_SECONDS:-5}
W=$(mktemp -d /tmp/rephub-bench.XXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; sleep 0.5; rm -rf "$W"' EXIT
npx tsc -p . >/dev/null
wait_port() { for _ in $(seq 100); do nbdinfo --can connect "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "server at $1 did not come up" >&2; exit 1; }
bench() { # name uri
  echo "== $1 ($2)"
  bash tools/bench/nbd-baseline.sh "$2" "$RUNS" | tee "$W/$1.out" | grep -E '^(run|MEDIAN)'
}

# agent + hub
truncate -s "${SIZE_MIB}M" "$W/V1.img"
LOG_LEVEL=warn node $(binflags dist/src/cli/rephub.js) dist/src/cli/rephub.js --listen 127.0.0.1:17700 --http 127.0.0.1:17780 --vol "V1=$W/V1R" --data "$W/hub" 2>"$W/hub.log" & PIDS+=($!)
sleep 0.5
LOG_LEVEL=warn node $(binflags dist/src/cli/rephub-agent.js) dist/src/cli/rephub-agent.js --hub 127.0.0.1:17700 --export "V1=$W/V1.img" --nbd 127.0.0.1:17709 --state "$W/ast" --vm bench 2>"$W/agent.log" & PIDS+=($!)
wait_port nbd://127.0.0.1:17709/V1
for _ in $(seq 300); do curl -s 127.0.0.1:17780/status | grep -q '"state": "protecting"' && break; sleep 0.1; done
bench agent nbd://127.0.0.1:17709/V1
cmp "$W/V1.img" "$W/V1R" >/dev/null 2>&1 || sleep 3
if cmp "$W/V1.img" "$W/V1R" >/dev/null; then echo "replica byte-equal after the run"; else echo "REPLICA DIFFERS (still converging?)"; fi
kill "${PIDS[1]}"; sleep 1; kill "${PIDS[0]}"

truncate -s "${SIZE_MIB}M" "$W/q.img"
qemu-nbd --persistent --shared=8 -f raw -x V1 -b 127.0.0.1 -p 17710 "$W/q.img" 2>"$W/qemu.log" & PIDS+=($!)
wait_port nbd://127.0.0.1:17710/V1
bench qemu nbd://127.0.0.1:17710/V1
kill "${PIDS[2]}"

truncate -s "${SIZE_MIB}M" "$W/k.img"
nbdkit -f -i 127.0.0.1 -p 17711 --exportname=V1 file "$W/k.img" 2>"$W/nbdkit.log" & PIDS+=($!)
wait_port nbd://127.0.0.1:17711/V1
bench nbdkit nbd://127.0.0.1:17711/V1

echo
printf '%-28s %12s %12s %12s %9s %9s\n' metric agent qemu-nbd nbdkit agent/qemu agent/kit
for m in $(grep '^MEDIAN' "$W/agent.out" | awk '{print $2}'); do
  a=$(awk -v m="$m" '$1=="MEDIAN"&&$2==m{print $3}' "$W/agent.out")
  q=$(awk -v m="$m" '$1=="MEDIAN"&&$2==m{print $3}' "$W/qemu.out")
  k=$(awk -v m="$m" '$1=="MEDIAN"&&$2==m{print $3}' "$W/nbdkit.out")
  u=$(awk -v m="$m" '$1=="MEDIAN"&&$2==m{print $4}' "$W/agent.out")
  r() { [[ $1 =~ ^[0-9.]+$ && $2 =~ ^[0-9.]+$ ]] && echo "scale=2; $1 / $2" | bc || echo -; }
  printf '%-28s %12s %12s %12s %9s %9s  %s\n' "$m" "$a" "$q" "$k" "$(r "$a" "$q")" "$(r "$a" "$k")" "$u"
done
