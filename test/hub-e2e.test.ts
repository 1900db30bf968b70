import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { randomBytes, randomInt } from 'node:crypto';
import { Hub } from '../src/hub/hub';
import { LmdbStateStore } from '../storage/state';
import { silentLogger } from '../src/log';
import { tmpdir, makeImage, sha, waitFor } from './helpers/util';
import { startTestAgent } from './helpers/test-agent';

describe('hub end to end over TCP (in-process hub, test agent)', () => {
  it('initial sync with writes during sync converges byte-equal', async () => {
    const dir = tmpdir();
    const img = path.join(dir, 'V1.img'), rep = path.join(dir, 'V1R');
    makeImage(img, 16 << 20);
    const hub = new Hub({ volumes: [{ name: 'V1', path: rep }], store: new LmdbStateStore(path.join(dir, 'hub')), log: silentLogger(), session: { maxInflightReads: 2, maxReadBytes: 128 << 10 } });
    const { port } = await hub.listen('127.0.0.1', 0);
    const agent = startTestAgent({ port, images: { V1: img } });
    // write while the initial sync runs
    for (let i = 0; i < 200; i++) {
      await agent.write('V1', randomInt(0, (16 << 20) / 4096) * 4096, randomBytes(4096));
      if (i % 20 === 0) await new Promise((r) => setTimeout(r, 2));
    }
    await waitFor('protecting', () => hub.replicas.get('V1')!.state === 'protecting');
    await waitFor('byte-equal', () => sha(img) === sha(rep));
    assert.ok(hub.replicas.get('V1')!.record!.syncPass >= 0);
    await agent.stop();
    await waitFor('stopped', () => hub.replicas.get('V1')!.state === 'stopped');
    await hub.close();
  });
});
