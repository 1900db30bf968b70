#!/usr/bin/env bash
# tiny-vm.sh (from shared/tools) — end-to-end check through a real kernel block layer: boot a tiny Linux VM
# (Debian cloud kernel + busybox initramfs) whose virtio disk is an NBD export. The guest
# writes a seed-derived pattern to /dev/vda with dd (O_DIRECT, fsync), reads it back,
# prints both checksums and powers off. The host then reads the export over NBD (libnbd)
# and checks all checksums agree. Exit 0 = pass.
# Usage: tiny-vm.sh NBD_URI SEED [MIB]     (MIB = pattern size in MiB, default 4)
#        tiny-vm.sh --build                 (only build the cache, for tests that boot their own init)
# Env:   ACCEL=tcg|kvm (default tcg)   VM_TIMEOUT=120 (seconds)
# Needs: qemu-system-x86 busybox-static cpio python3-libnbd (install-tools.sh), and a
#        done "apt-get update" (the kernel .deb is fetched once with apt-get download).
# DESTRUCTIVE: overwrites the first MIB MiB of the export.
set -euo pipefail
BUILD_ONLY=; [ "${1:-}" = --build ] && { BUILD_ONLY=1; set -- x x; }
URI=${1:?usage: $0 nbd://host:port/export seed [mib]}
SEED=${2:?usage: $0 nbd://host:port/export seed [mib]}
MIB=${3:-4}
VM_TIMEOUT=${VM_TIMEOUT:-120}
W=/tmp/tiny-vm                              # build cache: vmlinuz, initrd.gz, root/
[[ $SEED =~ ^[A-Za-z0-9._-]{1,64}$ ]] || { echo "seed: 1-64 chars of [A-Za-z0-9._-]" >&2; exit 2; }
MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk"

build() {  # once: kernel from the Debian archive + busybox-static initramfs
  rm -rf "$W"; mkdir -p "$W/dl" "$W/root"/{bin,dev,proc,sys,tmp,lib/modules}
  grep -q 'not a dynamic' <<<"$(ldd /bin/busybox 2>&1)" || { echo "need busybox-static" >&2; exit 2; }
  local pkg; pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$pkg" ] || { echo "no kernel package found (apt-get update?)" >&2; exit 2; }
  (cd "$W/dl" && apt-get download "$pkg" >/dev/null 2>&1 && dpkg -x ./*.deb x)
  cp "$W"/dl/x/boot/vmlinuz-* "$W/vmlinuz"
  for m in $MODS; do  # virtio-blk is a module in Debian kernels (uncompressed .ko in 12)
    find "$W/dl/x/lib/modules" -name "$m.ko" -exec cp {} "$W/root/lib/modules/" \;
  done
  cp /bin/busybox "$W/root/bin/busybox"
  # Pattern generator, shared by guest and host (same busybox awk both sides):
  # MIB MiB where each 512-byte sector names the seed and its own index.
  cat >"$W/root/bin/pattern" <<'EOF'
#!/bin/busybox sh
exec busybox awk -v seed="$1" -v n="$(( $2 * 2048 ))" \
  'BEGIN { for (i = 0; i < n; i++) printf "%-511s\n", "tiny-vm seed=" seed " sector=" i }'
EOF
  cat >"$W/root/init" <<EOF
#!/bin/busybox sh
# PID 1: load virtio-blk, write pattern to /dev/vda, read it back, power off.
/bin/busybox --install -s /bin; export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $MODS; do insmod /lib/modules/\$m.ko; done
i=0; while [ ! -b /dev/vda ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i+1)); done
for kv in \$(cat /proc/cmdline); do
  case \$kv in tv.seed=*) SEED=\${kv#*=};; tv.mib=*) MIB=\${kv#*=};; esac
done
KVM=\$(dmesg | grep -c 'Hypervisor detected: KVM')
echo "TINYVM-START seed=\$SEED mib=\$MIB kvm=\$KVM uptime=\$(cut -d' ' -f1 /proc/uptime)"
if pattern "\$SEED" "\$MIB" | dd of=/dev/vda bs=1M iflag=fullblock oflag=direct conv=fsync 2>/tmp/dd.err; then
  sync
  W=\$(pattern "\$SEED" "\$MIB" | sha256sum | cut -d' ' -f1)
  R=\$(dd if=/dev/vda bs=1M count="\$MIB" iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
  echo "TINYVM-RESULT ok write=\$W readback=\$R uptime=\$(cut -d' ' -f1 /proc/uptime)"
else
  echo "TINYVM-RESULT fail \$(cat /tmp/dd.err)"
fi
poweroff -f
EOF
  chmod +x "$W/root/init" "$W/root/bin/pattern"
  (cd "$W/root" && find . | cpio -o -H newc --quiet | gzip -1) >"$W/initrd.gz"
  rm -rf "$W/dl"
}
[ -s "$W/vmlinuz" ] && [ -s "$W/initrd.gz" ] || build
[ -n "$BUILD_ONLY" ] && exit 0

# TCG by default: it boots here in ~3 s. /dev/kvm exists on this sandbox, but a guest
# under it hung right after "Probing EDD" (nested KVM), so KVM is opt-in only.
ACCEL_ARGS="-accel tcg -cpu max"
[ "${ACCEL:-tcg}" = kvm ] && ACCEL_ARGS="-accel kvm -cpu host"
LOG="$W/console-$SEED.log"
S=$(date +%s.%N)
# shellcheck disable=SC2086
timeout -k 5 "$VM_TIMEOUT" qemu-system-x86_64 $ACCEL_ARGS -m 256 -smp 1 \
  -nographic -no-reboot -nic none \
  -kernel "$W/vmlinuz" -initrd "$W/initrd.gz" \
  -append "console=ttyS0 panic=-1 quiet tv.seed=$SEED tv.mib=$MIB" \
  -drive "file=$URI,format=raw,if=virtio,cache=writeback" </dev/null >"$LOG" 2>&1 || true
E=$(date +%s.%N)
grep -a TINYVM "$LOG" || { echo "no TINYVM output; console log: $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
printf 'vm wall time: %.1f s\n' "$(echo "$E - $S" | bc)"

# host side: expected pattern vs what the guest saw vs what the server now holds
EXP=$(busybox sh "$W/root/bin/pattern" "$SEED" "$MIB" | sha256sum | cut -d' ' -f1)
HOST=$(/usr/bin/python3 - "$URI" $(( MIB << 20 )) <<'EOF'
import sys, hashlib, nbd          # libnbd's python binding (python3-libnbd)
h = nbd.NBD(); h.connect_uri(sys.argv[1]); n = int(sys.argv[2]); d = hashlib.sha256(); off = 0
while off < n:
    c = min(16 << 20, n - off); d.update(h.pread(c, off)); off += c
h.shutdown(); print(d.hexdigest())
EOF
)
GW=$(grep -ao 'write=[0-9a-f]*' "$LOG" | cut -d= -f2); GR=$(grep -ao 'readback=[0-9a-f]*' "$LOG" | cut -d= -f2)
echo "expected=$EXP guest_write=$GW guest_readback=$GR host_readback=$HOST"
[ "$EXP" = "$GW" ] && [ "$EXP" = "$GR" ] && [ "$EXP" = "$HOST" ] && { echo PASS; exit 0; }
echo FAIL; exit 1
