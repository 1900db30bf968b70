// Recovery volumes on Ceph RBD, end to end, on a real one-node cluster (test/harness/ceph.ts):
// hub and agent processes, a VM's two volumes protected into RBD images, fio through the agent's
// NBD exports. A hub killed with -9 under load is replaced by a second hub process (its own
// --data, the same --vol definitions) that the agent moves to from its --hub list: the new hub
// takes the images' exclusive locks once the dead one's watch expires, resyncs by checksums (it
// has no record of the images) and converges byte-equal, and the agent later comes back to the
// first hub the same way. Two hubs for one VM: only the one holding the locks writes; the other
// refuses with a message naming the lock. Verify runs against the images, and finds a change made
// behind the hub's back. Each comparison is `rbd export` against the images.
import { strict as assert } from 'node:assert';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { startCeph, CephCluster } from './harness/ceph';
import { HubProcess } from './harness/hub-process';
import { AgentProcess } from './harness/agent-process';
import { freePort } from './harness/ports';
import { makeImage, sha, tmpdir, waitFor } from './harness/util';

const MiB = 1 << 20;
const SIZE = 24 * MiB;
const VOLS = ['V1', 'V2'];

describe('recovery volumes on Ceph RBD, hub takeover', function () {
  this.timeout(600_000);
  let ceph: CephCluster, dir: string;
  const imgs: Record<string, string> = {};
  const procs: { stop(): Promise<void> }[] = [];

  before(async () => {
    ceph = await startCeph();
    dir = tmpdir('rephub-rbd-');
    for (const v of VOLS) {
      imgs[v] = path.join(dir, `${v}.img`);
      makeImage(imgs[v], SIZE, 0.5);
    }
  });
  afterEach(function () {
    if (this.currentTest?.state !== 'failed') return;
    // The logs go with the directory: show the errors and the last lines of each before they do.
    for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.log'))) {
      const lines = fs.readFileSync(path.join(dir, f), 'utf8').trim().split('\n');
      const errors = lines.filter((l) => /"level":(50|60)/.test(l));
      console.error(
        `--- ${f}: ${errors.length} error lines, then the last 15 lines\n${[...errors.slice(-10), ...lines.slice(-15)].join('\n')}`,
      );
    }
  });
  after(async () => {
    for (const p of procs) await p.stop().catch(() => undefined);
    ceph?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  const rbdVol = (v: string) => `${v}=rbd:${ceph.pool}/vm1-${v.toLowerCase()}:conf=${ceph.conf}`;
  function hubOn(name: string, port: number): HubProcess {
    const h = new HubProcess([...VOLS.flatMap((v) => ['--vol', rbdVol(v)]), '--data', path.join(dir, name)], {
      logFile: path.join(dir, `${name}.log`),
    });
    h.port = port;
    procs.push(h);
    return h;
  }
  /** The image as `rbd export` reads it, hashed. */
  function rbdSha(v: string): string {
    const out = path.join(dir, `${v}.export`);
    fs.rmSync(out, { force: true });
    ceph.run('rbd', 'export', '--no-progress', `${ceph.pool}/vm1-${v.toLowerCase()}`, out);
    const h = sha(out);
    fs.rmSync(out);
    return h;
  }
  async function converged(hub: HubProcess, agent: AgentProcess, timeoutMs = 180_000): Promise<void> {
    await waitFor(
      'both volumes protecting, clean on both sides',
      async () => {
        const st = await hub.status();
        const ok = VOLS.every((n) => {
          const v = st.volumes.find((x: any) => x.name === n);
          return v?.state === 'protecting' && v.dirtyBytes === 0;
        });
        return ok && (await agent.clean());
      },
      timeoutMs,
      200,
    );
    for (const v of VOLS) assert.equal(rbdSha(v), sha(imgs[v]), `${v}: rbd export equals the protected image`);
  }
  function fio(agent: AgentProcess, seconds: number): Promise<unknown> {
    const jobs = VOLS.flatMap((v, i) => [
      `--name=${v}`,
      `--uri=${agent.uri(v)}`,
      '--rw=randwrite',
      '--bs=64k',
      '--iodepth=4',
      `--size=${SIZE}`,
      '--time_based',
      `--runtime=${seconds}`,
      '--rate=3m',
      `--randseed=${i + 7}`,
    ]);
    const p = spawn('fio', ['--ioengine=nbd', ...jobs], { stdio: 'ignore' });
    return new Promise((r) => p.on('exit', r));
  }

  let hubA: HubProcess, hubB: HubProcess, agent: AgentProcess;

  it('protects two volumes into RBD images created at their size; kill -9 of the hub under fio, a second hub takes over and converges', async () => {
    const [pa, pb] = [await freePort(), await freePort()];
    hubA = hubOn('hubA', pa);
    hubB = hubOn('hubB', pb);
    await hubA.start();
    await hubB.start(); // a standby: it opens nothing until an agent comes
    agent = new AgentProcess([
      '--hub',
      `127.0.0.1:${pa},127.0.0.1:${pb}`,
      ...VOLS.flatMap((v) => ['--export', `${v}=${imgs[v]}`]),
      '--state',
      path.join(dir, 'agent'),
      '--vm',
      'vm1',
    ]);
    procs.push(agent);
    await agent.start();
    await converged(hubA, agent);
    assert.match(ceph.run('rbd', 'info', `${ceph.pool}/vm1-v1`), /size 24 MiB/);

    const load = fio(agent, 8);
    await new Promise((r) => setTimeout(r, 2000));
    await hubA.kill9();
    const t0 = Date.now();
    await load;
    await converged(hubB, agent);
    const st = await hubB.status();
    for (const v of st.volumes) {
      // hub B had no record of the images, which held data: compared by checksums, not copied blindly
      assert.ok(v.checksumResync, `${v.name}: a checksum resync ran (${JSON.stringify(v)})`);
    }
    const log = fs.readFileSync(path.join(dir, 'hubB.log'), 'utf8');
    // hub B broke the dead hub's locks: its client is blocklisted, so it could never write again
    assert.match(ceph.run('ceph', 'osd', 'blocklist', 'ls'), /127\.0\.0\.1/, 'the dead hub is fenced');
    assert.doesNotMatch(log, /before-image was not recorded/, 'the journal captures through librbd');
    console.log(
      `      takeover: converged ${Date.now() - t0} ms after the kill; checksum resync`,
      JSON.stringify(st.volumes.map((v: any) => ({ name: v.name, ...v.checksumResync }))),
    );
  });

  it('the agent comes back to the first hub the same way: it sees the images were written by another hub since its record, and resyncs by checksums', async () => {
    await hubA.start(); // same --data: it has a record (and a claim) from before the takeover
    qioWrite(agent, 'V1', 0x5a, 3 * MiB);
    await hubB.kill9();
    qioWrite(agent, 'V2', 0x6b, 5 * MiB);
    await converged(hubA, agent);
    const log = fs.readFileSync(path.join(dir, 'hubA.log'), 'utf8');
    assert.match(log, /changed since this hub's record/, 'hub A noticed the images moved on without it');
  });

  it("two hubs for one VM: only the lock holder writes; the other refuses the volumes, naming the image's lock", async () => {
    await hubB.start(); // hub A holds the images (its agent is attached)
    const clone = path.join(dir, 'clone');
    fs.mkdirSync(clone);
    const cloneImgs = VOLS.map((v) => {
      const f = path.join(clone, `${v}.img`);
      fs.copyFileSync(imgs[v], f);
      return f;
    });
    const second = new AgentProcess([
      '--hub',
      `127.0.0.1:${hubB.port}`,
      ...VOLS.flatMap((v, i) => ['--export', `${v}=${cloneImgs[i]}`]),
      '--state',
      path.join(clone, 'agent'),
      '--vm',
      'vm1',
    ]);
    procs.push(second);
    await second.start();
    qioWrite(second, 'V1', 0xee, 1 * MiB); // the clone writes something the first VM never did
    await waitFor('hub B refuses, naming the lock', async () => {
      const v = (await hubB.status()).volumes.find((x: any) => x.name === 'V1');
      return /exclusive lock is held by/.test(v?.lastError ?? '');
    });
    await waitFor('the second agent is told why', () => /exclusive lock is held by/.test(second.stderr));
    qioWrite(agent, 'V1', 0x77, 2 * MiB);
    await converged(hubA, agent);
    await second.stop();
  });

  it('failover test, failover (the promoted image also read straight from rbd: by qemu-img) and failback, on RBD', async () => {
    const hubUri = `nbd://127.0.0.1:${hubA.nbdPort}/V1`;
    qioWrite(agent, 'V1', 0x11, 4 * MiB);
    await converged(hubA, agent);
    const before = path.join(dir, 'V1.before');
    fs.copyFileSync(imgs.V1, before);
    const t = await hubA.post('/failover-test/start', { vm: 'vm1' });
    assert.equal(t.status, 200, JSON.stringify(t.body));
    qioWrite(agent, 'V1', 0x22, 6 * MiB); // after the freeze: not in the view
    await converged(hubA, agent); // replication goes on under the test
    assert.equal(copyOut(hubUri, path.join(dir, 'view.raw')), sha(before), 'the view is the frozen point');
    assert.equal((await hubA.post('/failover-test/stop', {})).status, 200);

    await agent.stop(); // the protected site goes away (cleanly)
    const fo = await hubA.post('/failover', {});
    assert.equal(fo.status, 200, JSON.stringify(fo.body));
    execFileSync('qemu-io', ['-f', 'raw', '-c', `write -P 0x33 ${8 * MiB} 512k`, hubUri], { stdio: 'ignore' });
    const promoted = copyOut(hubUri, path.join(dir, 'promoted.raw'));
    const direct = path.join(dir, 'direct.raw');
    execFileSync('qemu-img', [
      'convert',
      '-f',
      'raw',
      '-O',
      'raw',
      `rbd:${ceph.pool}/vm1-v1:conf=${ceph.conf}`,
      direct,
    ]);
    assert.equal(sha(direct), promoted, 'QEMU reading rbd: sees the promoted volume');

    await agent.start();
    await waitFor(
      "the agent's volumes attached to hub A",
      async () => (await hubA.status()).agents[0]?.volumes.length === VOLS.length,
    );
    const fb = await hubA.post('/failback', {});
    assert.equal(fb.status, 200, JSON.stringify(fb.body));
    await converged(hubA, agent);
    const back = Buffer.alloc(512 * 1024);
    const fd = fs.openSync(imgs.V1, 'r');
    fs.readSync(fd, back, 0, back.length, 8 * MiB);
    fs.closeSync(fd);
    assert.ok(back.equals(Buffer.alloc(back.length, 0x33)), 'the recovery side write came back');
  });

  it("verify on RBD: converged images verify equal; a change made behind the hub's back is found, resynced and verified equal", async () => {
    await converged(hubA, agent);
    const clean = verifyCli(hubA);
    assert.equal(clean.code, 0, `verify of converged images: ${clean.stdout}${clean.stderr}`);
    // 64 KiB written into the protected image file itself, not through the agent: nothing mirrors it.
    const fd = fs.openSync(imgs.V2, 'r+');
    fs.writeSync(fd, Buffer.alloc(64 * 1024, 0x5c), 0, 64 * 1024, 5 * MiB);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    assert.notEqual(rbdSha('V2'), sha(imgs.V2), 'the image and the replica differ');
    const found = verifyCli(hubA);
    assert.equal(found.code, 1, `verify must report the difference: ${found.stdout}${found.stderr}`);
    assert.match(found.stdout, /V2\tmismatch\toffset \d+\tlength \d+/);
    assert.doesNotMatch(found.stdout, /V1\tmismatch/);
    await converged(hubA, agent); // the mismatched region was resynced: rbd export equals the image
    const again = verifyCli(hubA);
    assert.equal(again.code, 0, `verify after the resync: ${again.stdout}${again.stderr}`);
  });
});

function verifyCli(hub: HubProcess): { code: number | null; stdout: string; stderr: string } {
  const cli = path.join(__dirname, '../src/cli/rephub.js');
  const r = spawnSync(
    process.execPath,
    [cli, 'verify', '--hub', `http://${hub.http}`, '--admin-token-file', hub.adminTokenFile],
    { encoding: 'utf8', timeout: 180_000 },
  );
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function copyOut(uri: string, file: string): string {
  fs.rmSync(file, { force: true });
  execFileSync('nbdcopy', [uri, file], { timeout: 120_000 });
  return sha(file);
}

function qioWrite(agent: AgentProcess, v: string, pattern: number, offset: number): void {
  execFileSync('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} 256k`, agent.uri(v)], {
    stdio: 'ignore',
    timeout: 60_000,
  });
}
