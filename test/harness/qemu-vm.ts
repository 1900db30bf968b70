// rephub-qemu in tests: the CLI run as a child (its exit, stdout and stderr collected), and the
// tiny Linux VM of tools/tiny-vm.sh (TCG) with two virtio disks and an init script of the test's.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';

export const CLI = path.join(__dirname, '../../src/cli/rephub-qemu.js');
export const TOOLS = path.join(__dirname, '../../../tools');
export const CACHE = '/tmp/tiny-vm'; // tools/tiny-vm.sh's build: kernel, busybox, virtio modules

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `onStderr` sees rephub-qemu's stderr so far, as it grows (QEMU's stdout may outlive it). */
export function rephubQemu(
  args: string[],
  onSpawn?: (pid: number) => void,
  timeoutMs = 240_000,
  onStderr?: (all: string) => void,
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => {
      stderr += d;
      onStderr?.(stderr);
    });
    const t = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`rephub-qemu timed out: ${stderr}`));
    }, timeoutMs);
    p.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
    if (onSpawn) onSpawn(p.pid!);
  });
}

export const lines = (s: string) => s.split('\n').filter((l) => l.length > 0);

/** An initramfs whose init waits for /dev/vda and /dev/vdb, runs `body`, and powers off. */
export function twoDiskInitrd(dir: string, body: string): string {
  if (!fs.existsSync(`${CACHE}/vmlinuz`)) execFileSync('bash', [path.join(TOOLS, 'tiny-vm.sh'), '--build']);
  const root = path.join(dir, 'root');
  execFileSync('cp', ['-a', `${CACHE}/root`, root]);
  const mods = 'virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk';
  fs.writeFileSync(
    path.join(root, 'init'),
    `#!/bin/busybox sh
/bin/busybox --install -s /bin; export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in ${mods}; do insmod /lib/modules/$m.ko; done
i=0; while { [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; } && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
for kv in $(cat /proc/cmdline); do case $kv in tv.seed=*) SEED=\${kv#*=};; tv.mib=*) MIB=\${kv#*=};; esac; done
${body}
poweroff -f
`,
    { mode: 0o755 },
  );
  const initrd = path.join(dir, 'initrd.gz');
  execFileSync('bash', ['-c', `cd '${root}' && find . | cpio -o -H newc --quiet | gzip -1 > '${initrd}'`]);
  return initrd;
}

/** The tiny VM, TCG, with d1 as drive id=disk1 and d2 (volume: its base name) on virtio. */
export const vmArgs = (initrd: string, seed: string, d1: string, d2: string, repagent: string) => [
  'qemu-system-x86_64',
  ...['-accel', 'tcg', '-cpu', 'max', '-m', '256', '-smp', '1', '-nographic', '-no-reboot', '-nic', 'none'],
  ...['-kernel', `${CACHE}/vmlinuz`, '-initrd', initrd],
  ...['-append', `console=ttyS0 panic=-1 quiet tv.seed=${seed} tv.mib=4`],
  ...['-drive', `file=${d1},format=raw,if=virtio,id=disk1,cache=writeback`, '--drive', `file=${d2},if=virtio`],
  ...['-name', 'guest=web1,debug-threads=on', '-repagent', repagent],
];
