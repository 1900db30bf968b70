// rephub-qemu's lifecycle beyond the happy path, with real hub and agent processes and a fake
// QEMU that is a real NBD client (libnbd): a SIGKILLed rephub-qemu leaves QEMU running, and the
// agent must serve it on until QEMU is gone, then stop cleanly; a hub that is reachable but
// refuses the agent (no such --vol, another live agent holds the volume, a wrong PSK) gives one
// warning line on rephub-qemu's stderr while the VM runs.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { tmpdir, sha, waitFor, readRegion, MiB } from './harness/util';
import { HubProcess } from './harness/hub-process';
import { AgentProcess } from './harness/agent-process';
import { rephubQemu, lines, twoDiskInitrd, vmArgs } from './harness/qemu-vm';
import { HEAP_FLAGS } from '../src/cli/heap-flags';

const KiB64 = 64 * 1024;
const chunkOf = (tag: string) => Buffer.from(`${tag.padEnd(511)}\n`.repeat(128));
/** A to vda, flushed; then it waits for GO on the read-only vdc (the test's signal); then B to vdb, flushed. */
const ORPHAN = `chunk() { busybox awk -v t="$1" 'BEGIN { for (i = 0; i < 128; i++) printf "%-511s\\n", t }'; }
chunk A | dd of=/dev/vda bs=64k count=1 iflag=fullblock oflag=direct conv=fsync,notrunc 2>/dev/null
until [ "$(dd if=/dev/vdc bs=512 count=1 iflag=direct 2>/dev/null | head -c 2)" = GO ]; do sleep 0.1; done
chunk B | dd of=/dev/vdb bs=64k count=1 iflag=fullblock oflag=direct conv=fsync,notrunc 2>/dev/null
echo "TINYVM-RESULT orphan done"`;

/** Whether process `pid` exists and is not a zombie. */
function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\S+ \(.*\) [ZX]/.test(stat);
  } catch {
    return false;
  }
}

/** The children of `pid`, by their command lines. */
function children(pid: number): { pid: number; args: string }[] {
  const out = execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(pid)], { encoding: 'utf8' });
  return lines(out).map((l) => {
    const m = /^\s*(\d+)\s+(.*)$/.exec(l)!;
    return { pid: Number(m[1]), args: m[2] };
  });
}

describe('rephub-qemu lifecycle: orphaned agent, refusing hub', function () {
  this.timeout(300_000);
  let dir: string, img: string, fake: string, ran: string;
  beforeEach(() => {
    dir = tmpdir('rephub-qemu-life-');
    img = path.join(dir, 'web1.img');
    fs.writeFileSync(img, Buffer.alloc(0));
    fs.truncateSync(img, 4 * MiB);
    ran = path.join(dir, 'qemu-ran');
    fake = path.join(dir, 'fake-qemu');
    // A fake QEMU holding one NBD connection open (as QEMU does for its whole life): 0x5a at 0,
    // then, once the test creates RAN.go, 0x66 at 128 KiB, a flush, and exit 0.
    fs.writeFileSync(
      fake,
      `#!/usr/bin/python3
import sys, os, time, nbd
uri = next(a[5:].split(',')[0] for a in sys.argv[1:] if a.startswith('file=nbd+unix'))
h = nbd.NBD(); h.connect_uri(uri)
h.pwrite(b'\\x5a' * ${KiB64}, 0); h.flush()
open('${ran}.waiting', 'w').close()
while not os.path.exists('${ran}.go'):
    if not os.path.isdir('${dir}'): sys.exit(1)  # the test is over: leave nothing behind
    time.sleep(0.05)
h.pwrite(b'\\x66' * ${KiB64}, 2 * ${KiB64}); h.flush(); h.shutdown()
`,
      { mode: 0o755 },
    );
  });
  let orphans: number[] = []; // what a failing test must not leave running: the agent, QEMU
  afterEach(() => {
    for (const p of orphans) if (alive(p)) process.kill(p, 'SIGKILL');
    orphans = [];
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('rephub-qemu SIGKILLed: the agent serves QEMU on, then stops cleanly once QEMU exits', async () => {
    const hub = new HubProcess(['--vol', `web1=${dir}/web1R`, '--data', path.join(dir, 'hub')]);
    await hub.start();
    try {
      let pid = 0;
      const done = rephubQemu(
        [fake, '-drive', `file=${img},format=raw`, '-repagent', `127.0.0.1:${hub.port},state=${dir}/agent`],
        (p) => (pid = p),
      );
      await waitFor('fake QEMU running', () => fs.existsSync(`${ran}.waiting`), 60_000, 50);
      await waitFor('web1 protecting', async () => (await hub.volume('web1'))?.state === 'protecting', 60_000, 50);
      const kids = children(pid);
      const agent = kids.find((k) => /rephub-agent\.js/.test(k.args))!;
      const qemu = kids.find((k) => k.args.includes(fake))!;
      assert.ok(agent && qemu, JSON.stringify(kids));
      for (const f of HEAP_FLAGS)
        assert.ok(agent.args.split(' ').includes(f), `the agent runs with ${f}: ${agent.args}`);
      orphans = [agent.pid, qemu.pid];
      process.kill(pid, 'SIGKILL');
      const r = await done;
      assert.equal(r.code, null, 'rephub-qemu was killed');
      const log = path.join(dir, 'agent', 'web1.agent.log');
      await waitFor(
        'the agent saw its parent go',
        () => fs.readFileSync(log, 'utf8').includes('parent process'),
        30_000,
      );
      assert.ok(alive(agent.pid), 'the agent still serves: QEMU runs');
      assert.ok(alive(qemu.pid), 'QEMU still runs');
      fs.writeFileSync(`${ran}.go`, '');
      await waitFor('QEMU done', () => !alive(qemu.pid), 60_000, 50);
      await waitFor('the agent stops after QEMU', () => !alive(agent.pid), 60_000, 50);
      assert.ok(readRegion(img, 2 * KiB64, KiB64).equals(Buffer.alloc(KiB64, 0x66)), 'the write after the kill landed');
      const v = await hub.volume('web1');
      assert.equal(v.state, 'stopped', 'AGENT_SHUTDOWN: a clean stop, no resync owed');
      assert.equal(v.dirtyBytes, 0);
      assert.equal(sha(`${dir}/web1R`), sha(img), 'the replica holds the write made after rephub-qemu died');
    } finally {
      await hub.stop();
    }
  });

  it('a real VM: rephub-qemu SIGKILLed mid-run, the guest writes on, the agent stops cleanly after poweroff', async () => {
    const [d1, d2, go] = ['sys.img', 'data.img', 'go.img'].map((f) => path.join(dir, f));
    for (const d of [d1, d2, go]) fs.writeFileSync(d, Buffer.alloc(0));
    for (const d of [d1, d2, go]) fs.truncateSync(d, 4 * MiB);
    const hub = new HubProcess(['--vol', `disk1=${dir}/sysR`, '--vol', `data=${dir}/dataR`, '--data', `${dir}/hub`]);
    await hub.start();
    try {
      const args = vmArgs(twoDiskInitrd(dir, ORPHAN), 'orphan', d1, d2, `127.0.0.1:${hub.port},state=${dir}/agent`);
      args.push('-drive', `file=${go},format=raw,if=virtio,readonly=on`);
      let pid = 0;
      const done = rephubQemu(args, (p) => (pid = p));
      await waitFor('the guest wrote A', () => readRegion(d1, 0, KiB64).equals(chunkOf('A')), 240_000, 100);
      const kids = children(pid);
      const agent = kids.find((k) => /rephub-agent\.js/.test(k.args))!;
      const qemu = kids.find((k) => /qemu-system/.test(k.args))!;
      assert.ok(agent && qemu, JSON.stringify(kids));
      orphans = [agent.pid, qemu.pid];
      process.kill(pid, 'SIGKILL');
      await done;
      const log = path.join(dir, 'agent', 'web1.agent.log');
      await waitFor(
        'the agent saw its parent go',
        () => fs.readFileSync(log, 'utf8').includes('parent process'),
        30_000,
      );
      assert.ok(alive(agent.pid) && alive(qemu.pid), 'QEMU runs on, and the agent serves it');
      const fd = fs.openSync(go, 'r+');
      fs.writeSync(fd, 'GO', 0);
      fs.closeSync(fd);
      await waitFor('QEMU powered off', () => !alive(qemu.pid), 240_000, 100);
      await waitFor('the agent stops after QEMU', () => !alive(agent.pid), 60_000, 50);
      assert.ok(readRegion(d2, 0, KiB64).equals(chunkOf('B')), 'the guest wrote B after rephub-qemu died');
      for (const name of ['disk1', 'data']) {
        const v = await hub.volume(name);
        assert.deepEqual([v.vm, v.state, v.dirtyBytes], ['web1', 'stopped', 0], name);
      }
      assert.equal(sha(`${dir}/sysR`), sha(d1));
      assert.equal(sha(`${dir}/dataR`), sha(d2), 'the replica holds what the guest wrote after the kill');
    } finally {
      await hub.stop();
    }
  });

  it('rephub-qemu SIGKILLed, QEMU never opened its disks: the agent stops once that QEMU exits', async () => {
    const hub = new HubProcess(['--vol', `web1=${dir}/web1R`, '--data', path.join(dir, 'hub')]);
    await hub.start();
    try {
      // a QEMU that never opens its disks: only its pid (told on the parent pipe) holds the agent
      const quick = path.join(dir, 'quick-qemu');
      fs.writeFileSync(
        quick,
        `#!/bin/sh\ntouch '${ran}.waiting'\nwhile [ ! -e '${ran}.go' ] && [ -d '${dir}' ]; do sleep 0.05; done\n`,
        {
          mode: 0o755,
        },
      );
      const log = path.join(dir, 'agent', 'web1.agent.log');
      let pid = 0;
      const done = rephubQemu(
        [quick, '-drive', `file=${img},format=raw`, '-repagent', `127.0.0.1:${hub.port},state=${dir}/agent`],
        (p) => (pid = p),
      );
      await waitFor('QEMU running', () => fs.existsSync(`${ran}.waiting`), 60_000, 50);
      const agent = children(pid).find((k) => /rephub-agent\.js/.test(k.args))!;
      const qemu = children(pid).find((k) => k.args.includes(quick))!;
      orphans = [agent.pid, qemu.pid];
      process.kill(pid, 'SIGKILL');
      await done;
      await waitFor(
        'the agent saw its parent go',
        () => fs.readFileSync(log, 'utf8').includes('parent process'),
        30_000,
      );
      assert.ok(alive(qemu.pid) && alive(agent.pid), 'QEMU still runs: the agent waits for it');
      fs.writeFileSync(`${ran}.go`, '');
      await waitFor('QEMU done', () => !alive(qemu.pid), 60_000, 50);
      await waitFor('the agent stops after QEMU', () => !alive(agent.pid), 60_000, 50);
      await waitFor('web1 stopped', async () => (await hub.volume('web1'))?.state === 'stopped', 30_000, 50);
    } finally {
      await hub.stop();
    }
  });

  /** rephub-qemu with the fake QEMU until its stderr has a warning; then QEMU is let go. */
  async function warningOf(repagent: string): Promise<{ warnings: string[]; code: number | null }> {
    const r = await rephubQemu(
      [fake, '-drive', `file=${img},format=raw`, '-repagent', repagent],
      undefined,
      120_000,
      (all) => /warning/.test(all) && fs.writeFileSync(`${ran}.go`, ''),
    );
    fs.rmSync(`${ran}.go`, { force: true });
    fs.rmSync(`${ran}.waiting`, { force: true });
    return { warnings: lines(r.stderr).filter((l) => /warning|error/.test(l)), code: r.code };
  }

  it('a hub that refuses the agent: one warning line naming the cause, and QEMU runs', async () => {
    const psk = path.join(dir, 'hub.psk');
    fs.writeFileSync(psk, 'web1:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n');
    const other = path.join(dir, 'agent.psk');
    fs.writeFileSync(other, 'web1:ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n');
    const hub = new HubProcess(['--vol', `web2=${dir}/web2R`, '--vol', `web1=${dir}/web1R`, '--data', `${dir}/hub`]);
    const tlsHub = new HubProcess(['--vol', `web1=${dir}/tlsR`, '--data', `${dir}/hub2`, '--psk-file', psk]);
    await hub.start();
    await tlsHub.start();
    const holder = new AgentProcess(['--hub', `127.0.0.1:${hub.port}`, '--vm', 'web1', '--export', `web1=${img}`]);
    holder.args.push('--state', `${dir}/holder`);
    try {
      // no such --vol on this hub: the volume is named web3 by its drive's id
      const noVol = await rephubQemu(
        [fake, '-drive', `file=${img},format=raw,id=web3`, '-repagent', `127.0.0.1:${hub.port},state=${dir}/a1`],
        undefined,
        120_000,
        (all) => /warning/.test(all) && fs.writeFileSync(`${ran}.go`, ''),
      );
      fs.rmSync(`${ran}.go`, { force: true });
      assert.equal(noVol.code, 0, noVol.stderr);
      const w1 = lines(noVol.stderr).filter((l) => /warning|error/.test(l));
      assert.equal(w1.length, 1, noVol.stderr);
      assert.match(
        w1[0],
        new RegExp(
          `^rephub-qemu: warning: hub 127\\.0\\.0\\.1:${hub.port} refused the agent: volume web3: the hub has no recovery volume of that name; VM web1 boots anyway`,
        ),
      );

      // a wrong PSK
      const badPsk = await warningOf(`127.0.0.1:${tlsHub.port},psk-file=${other},state=${dir}/a2`);
      assert.equal(badPsk.code, 0);
      assert.equal(badPsk.warnings.length, 1, badPsk.warnings.join('\n'));
      assert.match(
        badPsk.warnings[0],
        new RegExp(
          `warning: hub 127\\.0\\.0\\.1:${tlsHub.port} refused the agent: TLS alert "(bad record mac|decrypt error)" from the hub .*; VM web1 boots anyway, `,
        ),
      );

      // another live agent holds web1: the second is refused, the first keeps protecting
      await holder.start();
      await waitFor(
        'holder protecting',
        async () => (await hub.volume('web1'))?.state === 'protecting',
        60_000,
        50,
      ).catch(async (e: Error) => {
        // once seen in CI (not reproduced): say what the hub and the agent saw
        const vol = JSON.stringify(await hub.volume('web1').catch((x: Error) => x.message));
        throw new Error(`${e.message}; the hub's web1: ${vol}; the holder's log: ${holder.stderr.slice(-3000)}`);
      });
      const copy = path.join(dir, 'copy', 'web1.img');
      fs.mkdirSync(path.dirname(copy));
      fs.copyFileSync(img, copy);
      const held = await rephubQemu(
        [fake, '-drive', `file=${copy},format=raw`, '-repagent', `127.0.0.1:${hub.port},state=${dir}/a3`],
        undefined,
        120_000,
        (all) => /warning/.test(all) && fs.writeFileSync(`${ran}.go`, ''),
      );
      const w3 = lines(held.stderr).filter((l) => /warning|error/.test(l));
      assert.equal(w3.length, 1, held.stderr);
      assert.match(w3[0], /refused the agent: volume web1: .*; VM web1 boots anyway/);
      assert.equal((await hub.volume('web1')).state, 'protecting', 'the first agent keeps protecting');

      // and a hub that takes the agent: no warning at all
      fs.rmSync(`${ran}.go`, { force: true });
      const ok = rephubQemu([
        fake,
        '-drive',
        `file=${img},format=raw,id=web2`,
        '-repagent',
        `127.0.0.1:${hub.port},state=${dir}/a4`,
      ]);
      await waitFor('web2 protecting', async () => (await hub.volume('web2'))?.state === 'protecting', 60_000, 50);
      fs.writeFileSync(`${ran}.go`, '');
      const r = await ok;
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(
        lines(r.stderr).filter((l) => /warning|error/.test(l)),
        [],
      );
    } finally {
      await holder.stop();
      await tlsHub.stop();
      await hub.stop();
    }
  });
});
