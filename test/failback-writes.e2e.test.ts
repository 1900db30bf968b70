// Failback loses nothing: a protected write made while failback is writing back reaches the
// recovery volume (issue 13, scenario 2), and the winner can be chosen per volume. Real hub and
// agent processes, qemu-io as the NBD client on both sides, a fault proxy on the link to hold
// failback open long enough to write in the middle of it.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { tmpdir, makeImage, sha, waitFor, readRegion } from './harness/util';
import { HubProcess, CLI, v1Hub } from './harness/hub-process';
import { AgentProcess, v1Agent } from './harness/agent-process';
import { FaultProxy } from './harness/fault-proxy';

const MiB = 1 << 20;
const run = (cmd: string, args: string[], timeout = 120_000) =>
  execFileSync(cmd, args, { timeout, stdio: ['ignore', 'pipe', 'pipe'] }).toString();
// The fault proxy runs in this process: whatever runs while it must forward (the CLI) runs async.
const runAsync = async (cmd: string, args: string[]) => {
  try {
    return (await promisify(execFile)(cmd, args, { timeout: 120_000 })).stdout;
  } catch (e: any) {
    throw new Error(`${e.message} ${e.stderr ?? ''}`, { cause: e });
  }
};
const qio = (uri: string, ...cmds: string[]) => run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri]);
/** Offset of the first differing byte, or -1. */
function firstDiff(a: string, b: string): number {
  const x = fs.readFileSync(a),
    y = fs.readFileSync(b);
  if (x.length !== y.length) return Math.min(x.length, y.length);
  for (let i = 0; i < x.length; i += 4096) if (!x.subarray(i, i + 4096).equals(y.subarray(i, i + 4096))) return i;
  return -1;
}

describe('failback keeps protected writes and takes a winner per volume', function () {
  this.timeout(300_000);
  let dir: string, hub: HubProcess, agent: AgentProcess, proxy: FaultProxy | null;
  const size = 64 * MiB;
  const hubUri = (n: string) => `nbd://127.0.0.1:${hub.nbdPort}/${n}`;
  const img = (n: string) => path.join(dir, `${n}.img`);
  const rep = (n: string) => path.join(dir, `${n}R`);

  /** Hub and agent with volumes `names`, the agent dialling through a fault proxy, converged. */
  async function setUp(names: string[]): Promise<void> {
    dir = tmpdir();
    for (const n of names) makeImage(img(n), size, 0.5);
    hub = v1Hub(dir, rep(names[0]), ...names.slice(1).flatMap((n) => ['--vol', `${n}=${rep(n)}`]));
    await hub.start();
    proxy = new FaultProxy({ target: { host: '127.0.0.1', port: hub.port } });
    const pport = await proxy.listen();
    agent = v1Agent(dir, img(names[0]), pport, ...names.slice(1).flatMap((n) => ['--export', `${n}=${img(n)}`]));
    await agent.start();
    for (const n of names) await hub.converged(n, img(n), rep(n), 60_000);
  }

  afterEach(async () => {
    await agent?.stop();
    await proxy?.close();
    proxy = null;
    await hub?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('scenario 2: a protected write in the middle of failback, to a region the recovery side never touched, reaches the recovery volume', async () => {
    await setUp(['V1']);
    await waitFor(
      'agent log clean',
      async () => (await agent.clean()) && (await agent.status()).volumes.every((v: any) => v.logDirtyBytes === 0),
    );
    await agent.kill9(); // the protected site dies
    await waitFor('hub saw the agent go', async () => (await hub.status()).agents.length === 0);
    assert.equal((await hub.post('/failover')).status, 200);
    qio(hubUri('V1'), 'write -P 0x5a 0 48M', 'flush'); // the recovery VM: 48 MiB to write back
    await agent.start();
    await waitFor('agent attached', async () => (await hub.status()).agents.some((a: any) => a.volumes.includes('V1')));
    // 150 ms each way on the link: the 48 MiB write-back takes several round trips
    proxy!.setMode({ kind: 'delay', ms: 150 });
    let answered = false;
    const fb = hub.post('/failback').finally(() => (answered = true));
    // The agent has applied a write-back: failback fixed its regions and is writing back now.
    await waitFor('write-back under way', async () => (await agent.status()).remoteWrites > 0, 30_000, 10);
    qio(agent.uri('V1'), 'write -P 0xe7 60M 64k', 'flush'); // the protected VM, at a region never written back
    assert.equal(answered, false, 'the protected write was made while failback was still running');
    const done = await fb;
    assert.equal(done.status, 200, JSON.stringify(done.body));
    proxy!.setMode({ kind: 'pass' });
    assert.ok(
      readRegion(img('V1'), 60 * MiB, 64 * 1024).equals(Buffer.alloc(64 * 1024, 0xe7)),
      'the guest kept its write',
    );
    await waitFor('V1 protecting and clean', async () => {
      const v = await hub.volume('V1');
      return v.state === 'protecting' && v.dirtyBytes === 0 && (await agent.clean());
    });
    assert.equal(firstDiff(img('V1'), rep('V1')), -1, 'the recovery volume equals the protected volume (cmp)');
    assert.ok(readRegion(rep('V1'), 0, 48 * MiB).equals(Buffer.alloc(48 * MiB, 0x5a)), 'the write-back is there too');
  });

  it('--winner per volume: V1=recovery keeps the recovery VM writes, V2=protected keeps the protected VM writes', async () => {
    await setUp(['V1', 'V2']);
    const fo = await hub.post('/failover', { force: true }); // both sides write: split brain on purpose
    assert.equal(fo.status, 200, JSON.stringify(fo.body));
    for (const n of ['V1', 'V2']) {
      qio(hubUri(n), 'write -P 0x11 1M 1M');
      qio(agent.uri(n), 'write -P 0x22 10M 1M');
    }
    await waitFor('protected changes recorded', async () =>
      (await hub.status()).volumes.every((v: any) => v.failover.protectedChangedBytes > 0),
    );
    const hubUrl = `http://127.0.0.1:${hub.httpPort}`;
    const cli = (...args: string[]) =>
      runAsync(process.execPath, [CLI, 'failback', '--hub', hubUrl, '--admin-token-file', hub.adminTokenFile, ...args]);
    // bad input: clear errors, nothing done
    await assert.rejects(cli('--winner', 'V1=recovery,V2=sideways'), /the winner of V2 must be recovery or protected/);
    await assert.rejects(
      cli('--winner', 'V1=recovery,V9=protected'),
      /winner names volume V9, which is not failed over/,
    );
    const badSide = await hub.post('/failback', { winner: { V1: 'recovery', V2: 'left' } });
    assert.equal(badSide.status, 400, JSON.stringify(badSide.body));
    assert.match(badSide.body.error, /winner of volume V2 must be "recovery" or "protected"/);
    const missing = await hub.post('/failback', { winner: { V1: 'recovery' } });
    assert.equal(missing.status, 409, 'V2 diverged and has no winner');
    assert.match(missing.body.error, /both sides changed since the failover \(V2:/);
    for (const n of ['V1', 'V2'])
      assert.equal((await hub.volume(n)).state, 'failed-over', `${n} untouched by refusals`);

    const out = await cli('--winner', 'V1=recovery,V2=protected');
    assert.match(out, /V1\t.*winner recovery/);
    assert.match(out, /V2\t.*winner protected/);
    for (const n of ['V1', 'V2']) await hub.converged(n, img(n), rep(n), 60_000);
    assert.ok(readRegion(img('V1'), MiB, MiB).equals(Buffer.alloc(MiB, 0x11)), 'V1: the recovery side won');
    assert.ok(
      !readRegion(img('V1'), 10 * MiB, MiB).equals(Buffer.alloc(MiB, 0x22)),
      'V1: protected change rolled back',
    );
    assert.ok(readRegion(rep('V2'), 10 * MiB, MiB).equals(Buffer.alloc(MiB, 0x22)), 'V2: the protected side won');
    assert.ok(!readRegion(rep('V2'), MiB, MiB).equals(Buffer.alloc(MiB, 0x11)), 'V2: recovery change thrown away');
    assert.equal(sha(img('V2')), sha(rep('V2')));
    assert.equal((await hub.status()).failover, null, 'no volume left failed over');
  });

  it('scenario 9: a hub killed during failback keeps the volumes already failed back; failback runs again for the rest', async () => {
    await setUp(['V1', 'V2']);
    await waitFor(
      'agent log clean',
      async () => (await agent.clean()) && (await agent.status()).volumes.every((v: any) => v.logDirtyBytes === 0),
    );
    await agent.kill9();
    await waitFor('hub saw the agent go', async () => (await hub.status()).agents.length === 0);
    assert.equal((await hub.post('/failover')).status, 200);
    qio(hubUri('V1'), 'write -P 0x31 2M 1M', 'flush');
    qio(hubUri('V2'), 'write -P 0x32 0 48M', 'flush'); // a long write-back for V2
    await agent.start();
    await waitFor('agent attached', async () => (await hub.status()).agents.some((a: any) => a.volumes.includes('V2')));
    proxy!.setMode({ kind: 'delay', ms: 150 });
    const fb = hub.post('/failback').catch(() => null); // the hub dies before answering
    await waitFor(
      'V1 failed back, V2 not yet',
      async () => {
        const f = (await hub.status()).failover;
        return f !== null && f.volumes.length === 1 && f.volumes[0] === 'V2';
      },
      60_000,
      10,
    );
    await hub.kill9();
    await fb;
    proxy!.setMode({ kind: 'pass' });
    await hub.start();
    assert.notEqual((await hub.volume('V1')).state, 'failed-over', 'V1 stays failed back after the crash');
    assert.equal((await hub.volume('V2')).state, 'failed-over', 'V2 is still failed over: failback can run again');
    await waitFor('agent attached again', async () =>
      (await hub.status()).agents.some((a: any) => a.volumes.includes('V2')),
    );
    const again = await hub.post('/failback');
    assert.equal(again.status, 200, JSON.stringify(again.body));
    for (const n of ['V1', 'V2']) await hub.converged(n, img(n), rep(n), 60_000);
    assert.ok(
      readRegion(img('V1'), 2 * MiB, MiB).equals(Buffer.alloc(MiB, 0x31)),
      'V1: the recovery VM write came back',
    );
    assert.ok(
      readRegion(img('V2'), 0, 48 * MiB).equals(Buffer.alloc(48 * MiB, 0x32)),
      'V2: the recovery VM write came back',
    );
  });
});
