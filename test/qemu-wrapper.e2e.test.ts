// rephub-qemu end to end: a tiny Linux VM (TCG) with two raw disks booted through
// `rephub-qemu qemu-system-x86_64 … -repagent 127.0.0.1:PORT` against a real hub (and the write
// order across its disks in every failover-test view and every journal point); and, with a
// fake QEMU that records whether it ran, the errors that must keep QEMU from starting, an
// unreachable hub that must not (a real NBD client writes through the rewritten disk), and
// SIGTERM going to QEMU first.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { tmpdir, sha, waitFor, readRegion, sleep, MiB } from './harness/util';
import { HubProcess, CLI as HUB_CLI } from './harness/hub-process';
import { freePort } from './harness/ports';
import { CACHE, CLI, TOOLS, rephubQemu, lines, twoDiskInitrd, vmArgs } from './harness/qemu-vm';

/** Pattern A to /dev/vda, flushed, then B to /dev/vdb, flushed; each read back and hashed. */
const PATTERNS = ['vda:A', 'vdb:B']
  .map((x) => x.split(':'))
  .map(
    ([disk, tag]) =>
      `pattern "${tag}-$SEED" "$MIB" | dd of=/dev/${disk} bs=1M iflag=fullblock oflag=direct conv=fsync 2>/tmp/dd.err || FAIL=1
sync
${tag}=$(dd if=/dev/${disk} bs=1M count="$MIB" iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)`,
  )
  .join('\n')
  .concat('\necho "TINYVM-RESULT fail=$FAIL a=$A b=$B"');

/** Steps 0..STEPS-1: 64 KiB "A<i>" at chunk i of vda, flushed, then "B<i>" at chunk i of vdb, flushed. */
const STEPS = 24;
const CHUNK = 64 * 1024;
const ORDERED = `chunk() { busybox awk -v t="$1" 'BEGIN { for (i = 0; i < 128; i++) printf "%-511s\\n", t }'; }
i=0; while [ $i -lt ${STEPS} ]; do
  chunk "A$i" | dd of=/dev/vda bs=64k seek=$i count=1 iflag=fullblock oflag=direct conv=fsync,notrunc 2>/dev/null
  chunk "B$i" | dd of=/dev/vdb bs=64k seek=$i count=1 iflag=fullblock oflag=direct conv=fsync,notrunc 2>/dev/null
  sleep 0.2; i=$((i+1))
done
echo "TINYVM-RESULT ordered steps=$i"`;
/** `len` bytes at the start of an NBD export, read with libnbd. */
const readNbd = (uri: string, len: number): Buffer =>
  execFileSync(
    '/usr/bin/python3',
    [
      '-c',
      'import sys, nbd\nh = nbd.NBD(); h.connect_uri(sys.argv[1]); sys.stdout.buffer.write(h.pread(int(sys.argv[2]), 0)); h.shutdown()',
      uri,
      String(len),
    ],
    { maxBuffer: len + MiB },
  );

const chunkOf = (tag: string) => Buffer.from(`${tag.padEnd(511)}\n`.repeat(128));

/**
 * How many steps disk 2 holds in this picture of the VM, asserting each step's B comes with its
 * A, and that every chunk is either untouched or whole.
 */
function stepsOf(v1: Buffer, v2: Buffer, what: string): number {
  const zero = Buffer.alloc(CHUNK);
  let bs = 0;
  for (let i = 0; i < STEPS; i++) {
    const [a, b] = [v1.subarray(i * CHUNK, (i + 1) * CHUNK), v2.subarray(i * CHUNK, (i + 1) * CHUNK)];
    assert.ok(a.equals(zero) || a.equals(chunkOf(`A${i}`)), `${what}: disk 1 step ${i} torn`);
    assert.ok(b.equals(zero) || b.equals(chunkOf(`B${i}`)), `${what}: disk 2 step ${i} torn`);
    if (b.equals(zero)) continue;
    bs++;
    assert.ok(a.equals(chunkOf(`A${i}`)), `${what}: disk 2 has step ${i}, disk 1 does not`);
  }
  return bs;
}

/** The first `len` bytes of a volume of VM web1 as of checkpoint `id`, through POST /restore. */
async function restoreAt(hub: HubProcess, volume: string, id: number, len: number): Promise<Buffer> {
  const token = fs.readFileSync(hub.adminTokenFile, 'utf8').trim();
  const r = await fetch(`http://${hub.http}/restore`, {
    method: 'POST',
    body: JSON.stringify({ vm: 'web1', volume, at: String(id) }),
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
  });
  assert.equal(r.status, 200, `restore ${volume} at ${id}: ${r.status}`);
  return Buffer.from(await r.arrayBuffer()).subarray(0, len);
}

const patternSha = (tag: string, mib: number) =>
  execFileSync('bash', ['-c', `busybox sh ${CACHE}/root/bin/pattern '${tag}' ${mib} | sha256sum | cut -d' ' -f1`])
    .toString()
    .trim();

describe('rephub-qemu: the seed command line, -repagent HUB', function () {
  this.timeout(300_000);
  let dir: string;
  beforeEach(() => (dir = tmpdir('rephub-qemu-')));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('boots a VM with two raw disks; the guest writes both; both replicas byte-equal, one VM, stopped cleanly', async () => {
    const d1 = path.join(dir, 'sys.img');
    const d2 = path.join(dir, 'data.img');
    for (const d of [d1, d2]) fs.writeFileSync(d, Buffer.alloc(0));
    fs.truncateSync(d1, 16 * MiB);
    fs.truncateSync(d2, 16 * MiB);
    // data the guest does not touch: the initial sync has to carry it
    const fd = fs.openSync(d2, 'r+');
    fs.writeSync(fd, Buffer.alloc(MiB, 0x6b), 0, MiB, 12 * MiB);
    fs.closeSync(fd);
    const hub = new HubProcess([
      '--vol',
      `disk1=${dir}/sysR`,
      '--vol',
      `data=${dir}/dataR`,
      '--data',
      path.join(dir, 'hub'),
    ]);
    await hub.start();
    try {
      const initrd = twoDiskInitrd(dir, `FAIL=0\n${PATTERNS}`);
      const seed = 'rq-e2e';
      const r = await rephubQemu(vmArgs(initrd, seed, d1, d2, `127.0.0.1:${hub.port},state=${dir}/agent`));
      assert.equal(r.code, 0, `${r.stderr}\n${r.stdout.slice(-2000)}`);
      const [a, b] = [patternSha(`A-${seed}`, 4), patternSha(`B-${seed}`, 4)];
      assert.match(r.stdout, new RegExp(`TINYVM-RESULT fail=0 a=${a} b=${b}`), r.stdout.slice(-2000));
      assert.equal(sha(d1, 4 * MiB), a, 'the guest wrote disk 1 through the agent');
      assert.equal(sha(d2, 4 * MiB), b, 'the guest wrote disk 2 through the agent');
      assert.doesNotMatch(r.stderr, /warning|error/i, r.stderr);
      const st = await hub.status();
      const vols = st.volumes.filter((v: any) => ['disk1', 'data'].includes(v.name));
      assert.equal(vols.length, 2);
      for (const v of vols) {
        assert.equal(v.vm, 'web1', `${v.name} under VM web1`);
        assert.equal(v.state, 'stopped', `${v.name} stopped cleanly (AGENT_SHUTDOWN)`);
        assert.equal(v.dirtyBytes, 0, `${v.name} clean`);
      }
      assert.equal(sha(`${dir}/sysR`), sha(d1), 'disk1 replica byte-equal');
      assert.equal(sha(`${dir}/dataR`), sha(d2), 'data replica byte-equal');
      assert.ok(readRegion(`${dir}/dataR`, 12 * MiB, MiB).equals(Buffer.alloc(MiB, 0x6b)));
      assert.equal(fs.readdirSync(path.join(dir, 'agent')).filter((f) => f.endsWith('.dirty')).length, 2);
    } finally {
      await hub.stop();
    }
  });

  it('write order across the two disks: no failover-test view and no journal point holds B<i> without A<i>', async () => {
    const d1 = path.join(dir, 'sys.img');
    const d2 = path.join(dir, 'data.img');
    for (const d of [d1, d2]) fs.writeFileSync(d, Buffer.alloc(0));
    fs.truncateSync(d1, 4 * MiB);
    fs.truncateSync(d2, 4 * MiB);
    const hub = new HubProcess(['--vol', `disk1=${dir}/sysR`, '--vol', `data=${dir}/dataR`, '--data', `${dir}/hub`]);
    await hub.start();
    try {
      const initrd = twoDiskInitrd(dir, ORDERED);
      let finished = false;
      const run = rephubQemu(vmArgs(initrd, 'order', d1, d2, `127.0.0.1:${hub.port},state=${dir}/agent`)).finally(
        () => (finished = true),
      );
      const len = STEPS * CHUNK;
      const progress: number[] = [];
      while (!finished) {
        const started = await hub.post('/failover-test/start', { vm: 'web1' });
        if (started.status !== 200) {
          await sleep(50); // not converged yet, or no session: try again
          continue;
        }
        const views = started.body.volumes as { name: string; uri: string }[];
        const uri = (n: string) => views.find((v) => v.name === n)!.uri;
        const [v1, v2] = [readNbd(uri('disk1'), len), readNbd(uri('data'), len)];
        const stopped = await hub.post('/failover-test/stop', {});
        assert.equal(stopped.status, 200, JSON.stringify(stopped.body));
        progress.push(stepsOf(v1, v2, `view ${progress.length}`));
      }
      const r = await run;
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`TINYVM-RESULT ordered steps=${STEPS}`));
      assert.ok(progress.length > 0, 'at least one view was taken while the VM ran');
      process.stdout.write(`      views taken while the guest wrote (B steps seen in each): ${progress.join(' ')}\n`);
      // every journal point too: failover-test --at each checkpoint holds no B<i> without A<i>
      const listed: any = await (await fetch(`http://${hub.http}/checkpoints?vm=web1`)).json();
      const ids: number[] = listed[0].checkpoints.map((c: any) => c.id);
      assert.ok(ids.length >= 2, `checkpoints at the guest's flushes (${ids.length})`);
      const viewed: number[] = [];
      for (const id of ids) {
        const started = await hub.post('/failover-test/start', { vm: 'web1', at: String(id) });
        assert.equal(started.status, 200, JSON.stringify(started.body));
        const views = started.body.volumes as { name: string; uri: string }[];
        const uri = (n: string) => views.find((v) => v.name === n)!.uri;
        const [v1, v2] = [readNbd(uri('disk1'), len), readNbd(uri('data'), len)];
        const stopped = await hub.post('/failover-test/stop', {});
        assert.equal(stopped.status, 200, JSON.stringify(stopped.body));
        viewed.push(stepsOf(v1, v2, `checkpoint ${id} through failover-test --at`));
      }
      assert.ok(new Set(viewed).size >= 2, `the points hold different moments (B steps: ${viewed.join(' ')})`);
      for (let i = 0; i < STEPS; i++) assert.ok(readRegion(`${dir}/dataR`, i * CHUNK, CHUNK).equals(chunkOf(`B${i}`)));
      assert.equal(sha(`${dir}/sysR`), sha(d1));
      assert.equal(sha(`${dir}/dataR`), sha(d2));

      // every journal point of the VM, both volumes restored through the hub's /restore
      const journal = (await (await fetch(`http://${hub.http}/checkpoints?vm=web1`)).json()) as any[];
      const points: { id: number; kind: string }[] = journal[0].checkpoints;
      const seen: number[] = [];
      for (const p of points) {
        const [v1, v2] = [await restoreAt(hub, 'disk1', p.id, len), await restoreAt(hub, 'data', p.id, len)];
        seen.push(stepsOf(v1, v2, `checkpoint ${p.id} (${p.kind})`));
      }
      process.stdout.write(`      journal points (B steps in each): ${seen.join(' ')}\n`);
      // a point at each guest flush: the journal saw the VM part-way, not only before and after
      assert.ok(points.filter((p) => p.kind === 'flush').length >= STEPS, `flush points: ${JSON.stringify(points)}`);
      assert.ok(
        seen.some((n) => n > 0 && n < STEPS),
        `some point holds part of the steps: ${seen.join(' ')}`,
      );
      assert.equal(seen[seen.length - 1], STEPS, 'the newest point holds every step');
      // the CLI's restore of a middle point agrees with the API's
      const mid = points[Math.floor(points.length / 2)];
      const out = path.join(dir, 'mid-data.img');
      execFileSync(
        process.execPath,
        [HUB_CLI, 'restore', '--hub', `http://${hub.http}`, '--vm', 'web1'].concat([
          '--volume',
          'data',
          '--at',
          String(mid.id),
          '--to',
          out,
        ]),
        { env: { ...process.env, REPHUB_ADMIN_TOKEN_FILE: hub.adminTokenFile }, stdio: 'ignore' },
      );
      assert.ok(readRegion(out, 0, len).equals(await restoreAt(hub, 'data', mid.id, len)));
    } finally {
      await hub.stop();
    }
  });

  describe('with a fake QEMU that records whether it ran', () => {
    let fake: string, ran: string, img: string;
    beforeEach(() => {
      ran = path.join(dir, 'qemu-ran');
      img = path.join(dir, 'web1.img');
      fs.writeFileSync(img, Buffer.alloc(0));
      fs.truncateSync(img, 4 * MiB);
      fake = path.join(dir, 'fake-qemu');
      // Writes 64 KiB of 0x5a through each rewritten disk with a real NBD client (qemu-io),
      // then exits 3 (or waits, with FAKE_QEMU_WAIT); on SIGTERM it writes 0x77 through the
      // last disk, records the signal and exits 0.
      fs.writeFileSync(
        fake,
        `#!/bin/bash
printf '%s\\n' "$@" > '${ran}'
for a in "$@"; do
  case $a in file=nbd+unix*) u=\${a#file=}; u=\${u%%,*}; qemu-io -f raw -c 'write -P 0x5a 0 64k' "$u" >/dev/null || exit 9;; esac
done
# On SIGTERM the agent must still serve: one more write, then record the signal.
trap 'qemu-io -f raw -c "write -P 0x77 64k 64k" "$u" >/dev/null && echo TERM >> "${ran}.sig"; exit 0' TERM
[ -n "$FAKE_QEMU_WAIT" ] && { touch "${ran}.waiting"; while :; do sleep 0.1; done; }
exit 3
`,
        { mode: 0o755 },
      );
    });

    const refused = async (args: string[], re: RegExp) => {
      const r = await rephubQemu([fake, '-drive', `file=${img},format=raw`, ...args]);
      assert.equal(r.code, 2, r.stderr);
      assert.deepEqual(lines(r.stderr).length, 1, r.stderr);
      assert.match(r.stderr, re);
      assert.ok(!fs.existsSync(ran), 'QEMU never started');
    };

    it('a bad -repagent value: one error line, QEMU never started', async () => {
      await refused(['-repagent', '127.0.0.1:99999'], /^rephub-qemu: -repagent "127\.0\.0\.1:99999": port 99999/);
      await refused(['-repagent', 'h2,tls-cert=/c'], /tls-cert, tls-key and tls-ca go together/);
      await refused(['-repagent'], /-repagent needs a value/);
    });

    it('a missing image: one error line naming the disk, QEMU never started', async () => {
      await refused(
        ['-drive', `file=${dir}/gone.img,format=raw,id=data`, '-repagent', '127.0.0.1:7000'],
        /^rephub-qemu: -drive id=data \(.*gone\.img\): the image does not exist\n$/,
      );
    });

    it('a writable qcow2: refused with one line, QEMU never started', async () => {
      const q = path.join(dir, 'q.qcow2');
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', q, '16M']);
      await refused(
        ['-drive', `file=${q}`, '-repagent', '127.0.0.1:7000'],
        /a writable qcow2 image cannot be protected/,
      );
    });

    it('the agent failing at start: one error line naming the disk and the cause, QEMU never started', async () => {
      const state = path.join(dir, 'state');
      fs.mkdirSync(path.join(state, 'web1.web1.dirty'), { recursive: true }); // the dirty log cannot be opened
      await refused(
        ['-repagent', `127.0.0.1:7000,state=${state}`],
        /^rephub-qemu: -drive #1 \(.*web1\.img\): the agent cannot serve it: .*EISDIR.*; QEMU not started\n$/,
      );
      const blocker = path.join(dir, 'not-a-dir');
      fs.writeFileSync(blocker, 'x');
      await refused(['-repagent', `127.0.0.1:7000,state=${blocker}/s`], /^rephub-qemu: .*ENOTDIR.*QEMU not started\n$/);
    });

    it('an unreachable hub: one warning line, QEMU runs on the NBD socket, its exit status is returned', async () => {
      const port = await freePort(); // nothing listens there
      const r = await rephubQemu([fake, '-drive', `file=${img},format=raw,id=sys`, '-repagent', `127.0.0.1:${port}`]);
      assert.equal(r.code, 3, r.stderr);
      const warnings = lines(r.stderr).filter((l) => /warning/.test(l));
      assert.equal(warnings.length, 1, r.stderr);
      assert.match(warnings[0], new RegExp(`hub 127\\.0\\.0\\.1:${port} unreachable \\(ECONNREFUSED\\)`));
      const args = fs.readFileSync(ran, 'utf8').trim().split('\n');
      assert.equal(args.length, 2);
      assert.match(args[1], /^file=nbd\+unix:\/\/\/sys\?socket=\/.*\/nbd\.sock,format=raw,id=sys$/);
      assert.ok(readRegion(img, 0, 64 * 1024).equals(Buffer.alloc(64 * 1024, 0x5a)), 'the write reached the image');
      const sock = /socket=([^,]+)/.exec(args[1])![1];
      assert.ok(!fs.existsSync(path.dirname(sock)), 'the private runtime directory is removed');
    });

    it('SIGTERM goes to QEMU first; then the agent says goodbye: the hub shows the volume stopped', async () => {
      const hub = new HubProcess(['--vol', `web1=${dir}/web1R`, '--data', path.join(dir, 'hub')]);
      await hub.start();
      try {
        let pid = 0;
        process.env.FAKE_QEMU_WAIT = '1';
        const done = rephubQemu(
          [fake, '-drive', `file=${img},format=raw`, '-repagent', `127.0.0.1:${hub.port}`],
          (p) => {
            pid = p;
          },
        );
        delete process.env.FAKE_QEMU_WAIT;
        await waitFor('fake QEMU running', () => fs.existsSync(`${ran}.waiting`), 60_000, 50);
        await waitFor('web1 protecting', async () => (await hub.volume('web1'))?.state === 'protecting', 60_000, 50);
        process.kill(pid, 'SIGTERM');
        const r = await done;
        assert.equal(r.code, 0, r.stderr);
        assert.equal(fs.readFileSync(`${ran}.sig`, 'utf8'), 'TERM\n', 'QEMU got SIGTERM while the agent served');
        assert.ok(readRegion(img, 64 * 1024, 64 * 1024).equals(Buffer.alloc(64 * 1024, 0x77)));
        const v = await hub.volume('web1');
        assert.equal(v.state, 'stopped');
        assert.equal(v.vm, 'web1');
        assert.equal(sha(`${dir}/web1R`), sha(img));
      } finally {
        await hub.stop();
      }
    });
  });

  it("--help documents -repagent in QEMU's -help style", async () => {
    const r = await rephubQemu(['--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^usage: rephub-qemu QEMU-BINARY \[qemu options\] -repagent host\[:port\]/);
    assert.match(r.stdout, /\n-repagent host\[:port\]\[,psk-file=file\]\[,tls-cert=file,tls-key=file,tls-ca=file\]\n/);
    assert.match(r.stdout, /\n {16}replicate the VM's disks to the rephub hub at host:port \(default port 7000\)\n/);
  });

  it('libvirt: the emulator script runs QEMU unchanged without -repagent, through rephub-qemu with it', async () => {
    const img = path.join(dir, 'web1.img');
    fs.writeFileSync(img, Buffer.alloc(0));
    fs.truncateSync(img, 4 * MiB);
    const ran = path.join(dir, 'qemu-ran');
    const fake = path.join(dir, 'fake-qemu');
    // Finds the rewritten JSON file node and writes through it with a real NBD client.
    fs.writeFileSync(
      fake,
      `#!/bin/bash
printf '%s\\n' "$@" > '${ran}'
for a in "$@"; do
  case $a in *'"driver":"nbd"'*)
    s=$(sed 's/.*"path":"\\([^"]*\\)".*/\\1/' <<<"$a"); e=$(sed 's/.*"export":"\\([^"]*\\)".*/\\1/' <<<"$a")
    qemu-io -f raw -c 'write -P 0x5a 0 64k' "nbd+unix:///$e?socket=$s" >/dev/null || exit 9;;
  esac
done
# A VM runs on: exit once the hub protects the volume, as a guest that lives past its initial
# sync. Exiting at once stopped the agent mid-sync now and then on a loaded machine (the hub
# then rightly kept the regions dirty, and the copies differed).
if [ -n "$HUB_HTTP" ]; then
  for i in $(seq 400); do
    case $(curl -s "http://$HUB_HTTP/status") in *'"state": "protecting"'*) break;; esac
    sleep 0.05
  done
fi
`,
      { mode: 0o755 },
    );
    const script = path.join(TOOLS, 'libvirt/qemu-repagent.sh');
    const env = { ...process.env, REPHUB_QEMU_BINARY: fake, REPHUB_QEMU: `${process.execPath} ${CLI}` };
    const probeArgs = [
      '-S',
      '-no-user-config',
      '-nodefaults',
      '-nographic',
      '-machine',
      'none,accel=tcg',
      '-qmp',
      'stdio',
    ];
    execFileSync('sh', [script, ...probeArgs], { env });
    assert.deepEqual(fs.readFileSync(ran, 'utf8').trim().split('\n'), probeArgs, 'a capability probe runs QEMU as is');

    const hub = new HubProcess(['--vol', `web1=${dir}/web1R`, '--data', path.join(dir, 'hub')]);
    await hub.start();
    try {
      const storage = { driver: 'file', filename: img, 'node-name': 'libvirt-1-storage', 'auto-read-only': true };
      const format = '{"node-name":"libvirt-1-format","read-only":false,"driver":"raw","file":"libvirt-1-storage"}';
      const domain = ['-name', 'guest=web1,debug-threads=on', '-S', '-blockdev', JSON.stringify(storage)];
      domain.push('-blockdev', format, '-device', 'virtio-blk-pci,drive=libvirt-1-format,id=virtio-disk0');
      const extra = ['-repagent', `127.0.0.1:${hub.port},state=${dir}/agent`]; // <qemu:commandline>
      execFileSync('sh', [script, ...domain, ...extra], { env: { ...env, HUB_HTTP: hub.http }, stdio: 'ignore' });
      const got = fs.readFileSync(ran, 'utf8').trim().split('\n');
      assert.equal(got.length, domain.length);
      const node = JSON.parse(got[4]);
      assert.deepEqual([node.driver, node.export, node['node-name']], ['nbd', 'web1', 'libvirt-1-storage']);
      assert.equal(got[6], format);
      const v = await hub.volume('web1');
      assert.deepEqual([v.vm, v.state], ['web1', 'stopped']);
      assert.ok(readRegion(img, 0, 64 * 1024).equals(Buffer.alloc(64 * 1024, 0x5a)));
      assert.equal(sha(`${dir}/web1R`), sha(img));
    } finally {
      await hub.stop();
    }
  });
});
