// A recovery volume on a filesystem that fills up (a real 6 MiB tmpfs under a 16 MiB replica):
// the volume goes to 'error' with a clear error, its regions stay dirty, the hub keeps serving
// the other volume, and once space returns the replica converges byte-equal. With --cache none
// too, where a write fails after write() returned (the write window) and the failure surfaces
// at the next flush: the volume must still leave 'error' once a flush succeeds (sync.ts).
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Hub } from '../src/hub/hub';
import { openDirectTarget } from '../src/hub/replica';
import { LmdbStateStore } from '../storage/state';
import { silentLogger } from '../src/log';
import { tmpdir, makeImage, sha, waitFor } from './harness/util';
import { startTestAgent } from './harness/test-agent';

for (const cacheNone of [false, true])
  describe(`recovery volume on a full filesystem${cacheNone ? ', --cache none' : ''}`, function () {
    this.timeout(120_000);
    let mnt = '';
    after(() => {
      if (mnt) {
        try {
          execFileSync('umount', [mnt]);
        } catch {
          /* already gone */
        }
      }
    });

    it('ENOSPC: error state with dirty regions, the other volume unaffected, recovery when space returns', async () => {
      const dir = tmpdir();
      mnt = path.join(dir, 'small');
      fs.mkdirSync(mnt);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', mnt]); // needs root, as CI runs
      const a = path.join(dir, 'A.img'),
        b = path.join(dir, 'B.img');
      makeImage(a, 16 << 20, 1.0); // all data: 16 MiB cannot fit in 6 MiB
      makeImage(b, 4 << 20, 0.5);
      const ar = path.join(mnt, 'AR'),
        br = path.join(dir, 'BR');
      const hub = new Hub({
        volumes: [
          { name: 'A', path: ar },
          { name: 'B', path: br },
        ],
        store: new LmdbStateStore(path.join(dir, 'hub')),
        log: silentLogger(),
        openTarget: cacheNone ? openDirectTarget : undefined,
      });
      const { port } = await hub.listen('127.0.0.1', 0);
      const agent = startTestAgent({ port, images: { A: a, B: b } });

      await waitFor('A in error', () => hub.replicas.get('A')!.state === 'error');
      const st = hub.status().volumes.find((v) => v.name === 'A')!;
      assert.match(String(st.lastError), /ENOSPC/);
      assert.ok(st.dirtyBytes > 0, 'regions that could not be written stay dirty');
      await waitFor('B protecting meanwhile', () => hub.replicas.get('B')!.state === 'protecting');
      await agent.write('B', 0, randomBytes(65536));
      await waitFor('B equal', () => sha(b) === sha(br));

      execFileSync('mount', ['-o', 'remount,size=64m', mnt]); // space returns
      await waitFor('A protecting after space returned', () => hub.replicas.get('A')!.state === 'protecting', 60_000);
      await waitFor('A equal', () => sha(a) === sha(ar));
      assert.equal(hub.status().volumes.find((v) => v.name === 'A')!.lastError, null);
      await agent.stop();
      await hub.close();
    });
  });
