// The hub's orderly stop reports what failed instead of swallowing it: with a real hub, store and
// agent, a state store that refuses the last save makes close() count the failed steps and log
// each with its volume and cause (the daemon then exits 1: cli/hub-daemon.ts); a clean stop
// counts none.
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import pino from 'pino';
import { Hub } from '../src/hub/hub';
import { LmdbStateStore } from '../storage/state';
import { tmpdir, makeImage, waitFor } from './harness/util';
import { startTestAgent } from './harness/test-agent';

/** A hub protecting V1 from a test agent, converged, and the lines it logs. */
async function protectingHub() {
  const dir = tmpdir();
  const img = path.join(dir, 'V1.img');
  makeImage(img, 4 << 20);
  const lines: any[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  const store = new LmdbStateStore(path.join(dir, 'hub'));
  const hub = new Hub({ volumes: [{ name: 'V1', path: path.join(dir, 'V1R') }], store, log });
  const { port } = await hub.listen('127.0.0.1', 0);
  const agent = startTestAgent({ port, images: { V1: img } });
  await waitFor('protecting', () => hub.replicas.get('V1')!.state === 'protecting');
  return { hub, store, agent, lines };
}

describe('hub close: every step logged, failures counted', () => {
  it('a clean stop logs its steps and counts no failure', async () => {
    const { hub, agent, lines } = await protectingHub();
    assert.equal(await hub.close(), 0);
    await agent.stop();
    const msgs = lines.map((l) => l.msg);
    for (const m of ['stop: agent sessions closed', 'stop: checkpoints saved, recovery volumes closed'])
      assert.ok(msgs.includes(m), m);
    assert.equal(lines.filter((l) => l.level >= 50).length, 0);
  });

  it('a store that refuses the last saves: close() counts them and logs each with the volume and cause', async () => {
    const { hub, store, agent, lines } = await protectingHub();
    store.putVolume = async () => {
      throw new Error('no space left on device');
    };
    const failed = await hub.close();
    await agent.stop();
    assert.ok(failed >= 1, `failed steps: ${failed}`);
    const errs = lines.filter((l) => l.level >= 50);
    assert.equal(errs.length, failed);
    for (const e of errs) {
      assert.equal(e.volume, 'V1');
      assert.equal(e.cause, 'no space left on device');
      assert.match(e.msg, /^stop: .* failed$/);
    }
    assert.equal(lines.find((l) => l.msg === 'stop: state store closed')?.failed, failed);
  });
});
