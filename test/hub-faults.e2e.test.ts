// End to end with the hub as a real process on loopback TCP and the test agent: initial sync
// under writes, link cut and restored (delta resync), hub kill -9 and restart, agent restart
// from its persisted dirty log. Each ends with the recovery volume byte-equal.
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { randomBytes, randomInt } from 'node:crypto';
import { tmpdir, makeImage, sha, waitFor } from './harness/util';
import { startTestAgent } from './harness/test-agent';
import { HubProcess, v1Hub } from './harness/hub-process';
import { CutProxy } from './harness/cut-proxy';
import type { ReplicationAgent } from '../src/agent/agent';

const MiB = 1 << 20;

async function writeSome(agent: ReplicationAgent, name: string, size: number, n: number, bs = 4096): Promise<number> {
  for (let i = 0; i < n; i++) await agent.write(name, randomInt(0, size / bs) * bs, randomBytes(bs));
  return n * bs;
}

describe('hub process end to end: faults', function () {
  this.timeout(120_000);
  let dir: string, hub: HubProcess, agent: ReplicationAgent | undefined, proxy: CutProxy | undefined;
  const size = 32 * MiB;

  beforeEach(() => {
    dir = tmpdir();
  });
  afterEach(async () => {
    await agent?.stop(500);
    proxy?.close();
    await hub?.stop();
    agent = undefined;
    proxy = undefined;
  });

  it('initial sync, link cut with writes while apart (delta resync), then clean stop', async () => {
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R'),
      img2 = path.join(dir, 'V2.img'),
      rep2 = path.join(dir, 'V2R');
    makeImage(img, size);
    makeImage(img2, 8 * MiB);
    hub = new HubProcess(['--vol', `V1=${rep}`, '--vol', `V2=${rep2}`, '--data', path.join(dir, 'hub')]);
    await hub.start();
    proxy = new CutProxy(hub.port);
    agent = startTestAgent({ port: await proxy.listen(), images: { V1: img, V2: img2 }, stateDir: dir });
    await writeSome(agent, 'V1', size, 300);
    await waitFor('both protecting', async () =>
      (await hub.status()).volumes.every((v: any) => v.state === 'protecting'),
    );
    assert.equal(sha(img), sha(rep));
    assert.equal(sha(img2), sha(rep2));
    const before = (await hub.volume('V1')).syncBytes;

    proxy.cut();
    await waitFor('degraded', async () => (await hub.volume('V1')).state === 'degraded');
    const apart = await writeSome(agent, 'V1', size, 50, 64 * 1024); // the VM keeps running
    proxy.restore();
    await waitFor(
      'protecting again',
      async () => (await hub.volume('V1')).state === 'protecting' && (await hub.volume('V1')).dirtyBytes === 0,
    );
    await waitFor('byte-equal', () => sha(img) === sha(rep));
    const resynced = (await hub.volume('V1')).syncBytes - before;
    // Delta, not full: at most what was written while apart (64 KiB aligned writes, 64 KiB regions).
    assert.ok(resynced <= apart, `resynced ${resynced} bytes for ${apart} bytes written while apart`);
    assert.ok(resynced > 0, 'writes made while apart must be resynced');
    process.stdout.write(`      link cut: ${apart} bytes written while apart, ${resynced} bytes resynced\n`);

    await agent.stop();
    agent = undefined;
    await waitFor('stopped', async () => (await hub.volume('V1')).state === 'stopped');
  });

  it('hub kill -9 during sync and under writes, restart resumes and converges', async () => {
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R');
    makeImage(img, size, 0.9);
    hub = v1Hub(dir, rep);
    await hub.start();
    agent = startTestAgent({ port: hub.port, images: { V1: img }, stateDir: dir });
    await waitFor(
      'sync under way',
      async () => {
        const v = await hub.volume('V1');
        return v.state === 'syncing' && v.dirtyBytes < size;
      },
      30000,
      5,
    );
    await hub.kill9();
    await writeSome(agent, 'V1', size, 100); // the VM keeps running with the hub dead
    await hub.start();
    await writeSome(agent, 'V1', size, 100);
    await waitFor('protecting after restart', async () => (await hub.volume('V1')).state === 'protecting', 60000);
    await waitFor('byte-equal', () => sha(img) === sha(rep));
    const v = await hub.volume('V1');
    assert.ok(v.generation >= 2, 'a restarted hub resumes the same replica (generation bumps, id kept)');

    // kill -9 while protecting, with writes in flight
    const writes = writeSome(agent, 'V1', size, 400);
    await new Promise((r) => setTimeout(r, 20));
    await hub.kill9();
    await writes;
    await hub.start();
    await waitFor(
      'protecting after second restart',
      async () => (await hub.volume('V1')).state === 'protecting',
      60000,
    );
    await waitFor('byte-equal again', () => sha(img) === sha(rep));
  });

  it('agent restart: the persisted dirty log brings writes made while the hub was away', async () => {
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R');
    makeImage(img, 8 * MiB);
    hub = v1Hub(dir, rep);
    await hub.start();
    agent = startTestAgent({ port: hub.port, images: { V1: img }, stateDir: dir });
    await waitFor('protecting', async () => (await hub.volume('V1')).state === 'protecting');
    await hub.stop(); // hub away
    await writeSome(agent, 'V1', 8 * MiB, 64);
    await agent.stop(200); // agent stops too, with unsent writes only in its dirty log
    agent = startTestAgent({ port: hub.port, images: { V1: img }, stateDir: dir });
    await hub.start();
    await waitFor(
      'protecting',
      async () => (await hub.volume('V1')).state === 'protecting' && (await hub.volume('V1')).dirtyBytes === 0,
    );
    await waitFor('byte-equal', () => sha(img) === sha(rep));
  });
});
