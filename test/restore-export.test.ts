// The hub's restore exports (src/hub/restore-export.ts) end by themselves once their clients have
// gone: a real ExportRegistry, a fake journal (the view is only counted and closed).
import { strict as assert } from 'node:assert';
import { ExportRegistry } from '../src/nbd/exports';
import type { ExportUser } from '../src/nbd/exports';
import { RestoreExports } from '../src/hub/restore-export';
import type { HubJournals } from '../src/hub/journal';
import { makeLogger } from '../src/log';
import { waitFor } from './harness/util';

function fixture() {
  const exports = new ExportRegistry();
  let closed = 0;
  const view = { sizeBytes: 1 << 20, close: async () => void closed++ };
  const journals = {
    resolve: () => ({ id: 7, time: Date.now(), kind: 'interval', label: '' }),
    view: () => view,
  } as unknown as HubJournals;
  const r = new RestoreExports(journals, {
    exports,
    nbdUri: (n) => `nbd://127.0.0.1:1/${n}`,
    log: makeLogger('test', 'silent'),
  });
  const user: ExportUser = { detach: async () => {} };
  return { exports, r, user, closed: () => closed };
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

describe('restore exports (ended when their clients have gone)', function () {
  this.timeout(10_000);

  it('a client that attaches and leaves between two checks still ends the export', async () => {
    const f = fixture();
    const { name } = f.r.start('vm1', 'V1', '7') as { name: string };
    assert.ok(f.exports.has(name));
    assert.ok(f.exports.attach(name, f.user), 'served');
    f.exports.detach(name, f.user); // nbdcopy of a small point: done well inside one 250 ms check
    assert.equal(f.exports.attachedClients(name), 0);
    assert.equal(f.exports.attachesSince(name), 1);
    const t0 = Date.now();
    // GONE_MS (2 s) after the first check that saw it idle; the first-client wait would be 60 s
    await waitFor('the export gone once its only client left', () => !f.exports.has(name), 8_000);
    assert.ok(Date.now() - t0 >= 1_900, 'not before its clients had been gone GONE_MS');
    assert.equal(f.closed(), 1, 'the journal view is closed (its segments unpinned)');
    await f.r.close();
  });

  it('an export with a client attached stays; one never opened stays within the first-client wait', async () => {
    const f = fixture();
    const held = (f.r.start('vm1', 'V1', '7') as { name: string }).name;
    const unopened = (f.r.start('vm1', 'V1', '7') as { name: string }).name;
    f.exports.attach(held, f.user);
    await sleep(2_600);
    assert.ok(f.exports.has(held), 'a client is attached');
    assert.ok(f.exports.has(unopened), 'no client yet, within 60 s');
    await f.r.close();
    assert.deepEqual(f.exports.names(), [], 'the hub stops: every restore export ends');
    assert.equal(f.closed(), 2);
  });
});
