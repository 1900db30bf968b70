#!/usr/bin/env bash
# qemu-mirror-peer.sh — QEMU's own replication, the like-for-like peer of agent + hub (issue 17):
# qemu-storage-daemon serves IMAGE over NBD, on TCP or on a UNIX socket, while blockdev-mirror
# keeps a second copy on qemu-nbd (loopback TCP, standing in for the recovery host).
#   MODE=background      the mirror copies dirty regions behind the guest (asynchronous, as rephub)
#   MODE=write-blocking  active mirror: a write completes once both copies have it
# Usage: qemu-mirror-peer.sh start DIR ADDR [SIZE_MIB]   ADDR: PORT (127.0.0.1:PORT) or unix:PATH;
#          prints the client URI once the mirror is READY; the copy's qemu-nbd listens on PORT+1
#          (TCP) or on TGT_PORT (UNIX, default 10809+$$%1000)
#        qemu-mirror-peer.sh stop DIR    waits for the mirror to drain, stops both, compares copies
# DIR holds src.img (served), tgt.img (the copy), qmp.sock, logs, qsd.pid and tgt.pid.
set -euo pipefail
cmd=${1:?usage: $0 start DIR ADDR [SIZE_MIB] | stop DIR}; D=${2:?DIR}
MODE=${MODE:-background}

qmp() { # QMP command (JSON) -> its reply, after the capabilities negotiation
  /usr/bin/python3 - "$D/qmp.sock" "$1" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile('rw')
f.readline()  # greeting
for req in ('{"execute":"qmp_capabilities"}', sys.argv[2]):
    f.write(req + '\n'); f.flush()
    while True:
        m = json.loads(f.readline())
        if 'return' in m or 'error' in m: break  # skip events
print(json.dumps(m))
PY
}
connects() { for _ in $(seq 100); do nbdinfo --can connect "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

case $cmd in
start)
  ADDR=${3:?ADDR}; SIZE_MIB=${4:-256}
  if [[ $ADDR == unix:* ]]; then
    sock=${ADDR#unix:}; T=${TGT_PORT:-$((10809 + $$ % 1000))}
    server="addr.type=unix,addr.path=$sock"; URI="nbd+unix:///V1?socket=$sock"
  else
    T=$((ADDR + 1))
    server="addr.type=inet,addr.host=127.0.0.1,addr.port=$ADDR"; URI="nbd://127.0.0.1:$ADDR/V1"
  fi
  mkdir -p "$D"; rm -f "$D/qmp.sock"
  truncate -s "${SIZE_MIB}M" "$D/src.img" "$D/tgt.img"
  qemu-nbd --persistent --shared=4 -f raw -x V1 -b 127.0.0.1 -p "$T" "$D/tgt.img" 2>"$D/qemu-nbd.log" &
  echo $! >"$D/tgt.pid"
  connects "nbd://127.0.0.1:$T/V1" || { echo "qemu-nbd (the copy) did not start" >&2; exit 1; }
  qemu-storage-daemon \
    --blockdev file,node-name=file0,filename="$D/src.img",aio=threads \
    --blockdev raw,node-name=src,file=file0 \
    --blockdev nbd,node-name=tgt,server.type=inet,server.host=127.0.0.1,server.port="$T",export=V1 \
    --nbd-server "$server" \
    --export nbd,id=e0,node-name=src,name=V1,writable=on \
    --chardev socket,path="$D/qmp.sock",server=on,wait=off,id=qmp0 --monitor chardev=qmp0 \
    2>"$D/qsd.log" &
  echo $! >"$D/qsd.pid"
  for _ in $(seq 100); do [ -S "$D/qmp.sock" ] && break; sleep 0.1; done
  r=$(qmp '{"execute":"blockdev-mirror","arguments":{"job-id":"m0","device":"src","target":"tgt",'`
         `'"sync":"full","copy-mode":"'"$MODE"'","auto-finalize":false}}')
  [[ $r == *'"return"'* ]] || { echo "blockdev-mirror: $r" >&2; exit 1; }
  ready=
  for _ in $(seq 600); do qmp '{"execute":"query-block-jobs"}' | grep -q '"ready": true' && { ready=1; break; }; sleep 0.1; done
  [ -n "$ready" ] || { echo "the mirror never became READY" >&2; exit 1; }
  connects "$URI" || { echo "qemu-storage-daemon's NBD server does not answer at $URI" >&2; exit 1; }
  echo "$URI" ;;
stop)
  t0=$(date +%s.%N)
  for _ in $(seq 300); do # drained: offset == len and not busy
    qmp '{"execute":"query-block-jobs"}' | /usr/bin/python3 -c \
      'import json,sys; j=json.load(sys.stdin)["return"][0]; sys.exit(0 if j["offset"]==j["len"] and not j["busy"] else 1)' \
      2>/dev/null && break
    sleep 0.1
  done
  drained=$(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)")
  kill "$(cat "$D/qsd.pid")" 2>/dev/null || true; sleep 0.5
  kill "$(cat "$D/tgt.pid")" 2>/dev/null || true; sleep 0.3
  if cmp -s "$D/src.img" "$D/tgt.img"; then echo "copies equal in ${drained}s"; else echo "COPIES DIFFER"; fi ;;
esac
