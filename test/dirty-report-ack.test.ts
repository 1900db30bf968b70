// The hub's answer to an agent's DIRTY_REPORT (src/hub/sync.ts onDirtyReport), with a real
// Replica over a file and a state store whose commits we release by hand: the regions turn dirty
// in memory at once (the stream goes on), and the DIRTY_REPORT_ACK, on which the agent forgets
// them, leaves only once the bits are persisted. A commit that fails ends the session, unacked.
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { Cmd, Cap, DIRTY_FINAL, HEADER_SIZE, SECTOR, decode } from '../protocol';
import { DirtyBitmap } from '../storage/bitmap';
import { MemoryStateStore } from '../storage/state';
import type { Durability } from '../storage/state';
import { Replica, openFileTarget } from '../src/hub/replica';
import { SyncEngine, VolumeSync } from '../src/hub/sync';
import { silentLogger } from '../src/log';
import { tmpdir } from './harness/util';

const REGION = 64 * 1024;
const SIZE = 64 * REGION;

/** A memory store whose 'flushed' saves wait for release() (or fail at fail()). */
class GatedStore extends MemoryStateStore {
  private gates: { release: () => void; fail: (e: Error) => void }[] = [];
  override async saveBitmap(name: string, bm: DirtyBitmap, durable: Durability = true): Promise<void> {
    if (durable === 'flushed')
      await new Promise<void>((release, fail) => this.gates.push({ release, fail: (e) => fail(e) }));
    return super.saveBitmap(name, bm, durable === 'flushed' ? false : durable);
  }
  get waiting(): number {
    return this.gates.length;
  }
  release(): void {
    this.gates.shift()!.release();
  }
  fail(e: Error): void {
    this.gates.shift()!.fail(e);
  }
}

async function rig() {
  const store = new GatedStore();
  const rep = new Replica({ name: 'V1', path: path.join(tmpdir(), 'V1R') }, store, REGION, silentLogger());
  const rec = await rep.attach(SIZE, openFileTarget, true, 'vm1');
  const bm = rep.bitmap!;
  bm.clearRegions(0, bm.regions - 1); // converged, for the test: only the report dirties
  await rep.checkpoint(); // flushed, then the clears persisted
  const acks: number[] = [];
  const failures: Error[] = [];
  const link = {
    send: (bufs: Buffer[]) => {
      const f = Buffer.concat(bufs);
      const m = decode(f.readUInt16LE(4), f.subarray(HEADER_SIZE));
      if (m.cmd === Cmd.DIRTY_REPORT_ACK) acks.push(m.reportId);
    },
    has: (cap: number) => cap !== Cap.CHECKSUM,
  };
  const engine = new SyncEngine(link, { maxInflightReads: 4, maxReadBytes: 1 << 20 }, silentLogger(), (e) =>
    failures.push(e),
  );
  const sync = new VolumeSync(rep, rec.id, false);
  engine.add(sync);
  const report = (reportId: number, firstRegion: number, regions: number) =>
    engine.onDirtyReport({
      cmd: Cmd.DIRTY_REPORT,
      volumeId: rec.id,
      reportId,
      flags: DIRTY_FINAL,
      extents: [{ offsetSectors: (firstRegion * REGION) / SECTOR, sizeSectors: (regions * REGION) / SECTOR }],
    });
  const persisted = () => {
    const b = new DirtyBitmap(SIZE, REGION);
    store.loadBitmap('V1', b);
    return b;
  };
  return { store, rep, engine, acks, failures, report, persisted };
}

const tick = () => new Promise<void>((r) => setImmediate(r));

describe('hub: a dirty report is acked only once persisted', () => {
  it('the regions are dirty in memory at once; the ack waits for the commit', async () => {
    const r = await rig();
    await r.report(7, 10, 3); // returns without waiting for the disk
    assert.equal(r.rep.bitmap!.dirtyRegions, 3);
    assert.ok(r.rep.bitmap!.get(10) && r.rep.bitmap!.get(12));
    assert.equal(r.store.waiting, 1, 'one commit under way');
    await tick();
    assert.deepEqual(r.acks, [], 'no ack before the bits are on disk');
    assert.equal(r.persisted().dirtyRegions, 0);
    r.store.release();
    await tick();
    assert.deepEqual(r.acks, [7]);
    const p = r.persisted();
    assert.ok(p.get(10) && p.get(11) && p.get(12), 'the reported regions persisted dirty');
    r.engine.stop();
  });

  it('reports acked in the order their commits end; a failed commit ends the session unacked', async () => {
    const r = await rig();
    await r.report(1, 0, 1);
    await r.report(2, 5, 1);
    r.store.release();
    await tick();
    assert.deepEqual(r.acks, [1]);
    r.store.fail(new Error('MDB_MAP_FULL'));
    await tick();
    assert.deepEqual(r.acks, [1], 'report 2 never acked: the agent keeps its regions');
    assert.equal(r.failures.length, 1);
    assert.match(r.failures[0].message, /volume V1: cannot persist a dirty report: MDB_MAP_FULL/);
    r.engine.stop();
  });
});
