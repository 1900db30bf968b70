// The verify engine on its own (src/hub/verify.ts): its ordering rule. A region written (touched)
// between a CHECKSUM_REQ and the applying of its CHECKSUM_RES, or dirty, is inconclusive and
// checked again, never a mismatch; a region that differs counts only when a second check agrees,
// and is then marked for resync unless the run is report-only.
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { Cmd, Cap, CHECKSUM_BYTES, HEADER_SIZE, IO_OK, decode } from '../protocol';
import type { ChecksumReq } from '../protocol';
import { DirtyBitmap } from '../storage/bitmap';
import { VolumeSync } from '../src/hub/sync';
import { VerifyEngine, VerifyPacer, VerifyRun, MAX_RANGES } from '../src/hub/verify';
import type { Replica } from '../src/hub/replica';
import { silentLogger } from '../src/log';
import { waitFor } from './harness/util';

const REGION = 64 * 1024;
const REGIONS = 4;
const SIZE = REGION * REGIONS;

function digest(b: Buffer): Buffer {
  return createHash('sha256').update(b).digest().subarray(0, CHECKSUM_BYTES);
}

/** A replica over memory (the hub's side), the agent's image beside it, and the engine between. */
function setup(reportOnly = false) {
  const hubData = Buffer.alloc(SIZE, 7);
  const agentData = Buffer.alloc(SIZE, 7);
  const marked: [number, number][] = [];
  const bitmap = new DirtyBitmap(SIZE, REGION);
  const replica = {
    name: 'V1',
    failover: null,
    state: 'protecting',
    lastWriteOk: true,
    bitmap,
    record: { sizeBytes: SIZE },
    setState(s: string) {
      this.state = s;
    },
    target: {
      read: async (buf: Buffer, offset: number) => void hubData.copy(buf, 0, offset, offset + buf.length),
    },
    markDiffering: async (first: number, last: number) => {
      marked.push([first, last]);
      bitmap.setRegions(first, last);
    },
  };
  const sync = new VolumeSync(replica as unknown as Replica, 9, false);
  const sent: ChecksumReq[] = [];
  const link = {
    send: (bufs: Buffer[]) => sent.push(decode(Cmd.CHECKSUM_REQ, Buffer.concat(bufs).subarray(HEADER_SIZE)) as any),
    has: (cap: number) => cap === Cap.CHECKSUM,
  };
  const engine = new VerifyEngine(link, new VerifyPacer(0), silentLogger());
  const run = new VerifyRun(1, 'V1', SIZE, REGION, reportOnly);
  /** The agent's answer to `req`, from its image as it is now. */
  const answer = (req: ChecksumReq) => {
    const bytes = req.regionSectors * 512,
      start = req.offsetSectors * 512;
    const digests = Buffer.concat(
      Array.from({ length: req.count }, (_, i) =>
        digest(agentData.subarray(start + i * bytes, start + (i + 1) * bytes)),
      ),
    );
    return { cmd: Cmd.CHECKSUM_RES as const, reqId: req.reqId, ioStatus: IO_OK, volumeId: req.volumeId, digests };
  };
  return { hubData, agentData, marked, bitmap, sync, sent, engine, run, answer };
}

/** From now on the recovery volume's reads wait until the returned function is called. */
function slowReads(t: ReturnType<typeof setup>): () => void {
  let open = () => {};
  const gate = new Promise<void>((r) => (open = r));
  const target = t.sync.replica.target as unknown as { read: (b: Buffer, o: number) => Promise<void> };
  const read = target.read;
  target.read = async (b, o) => (await gate, read(b, o));
  return open;
}

describe('verify engine: the inconclusive rule', () => {
  it('a region written between the request and its answer is re-checked, not a mismatch', async () => {
    const t = setup();
    t.engine.start(t.sync, t.run);
    assert.equal(t.sent.length, 1);
    const req = t.sent[0];
    assert.equal(req.count, REGIONS);
    const res = t.answer(req); // the agent read its image before the write below
    // A protected write to region 2 reaches both sides after the agent's read: the hub applies it.
    t.agentData.fill(9, 2 * REGION, 3 * REGION);
    t.hubData.fill(9, 2 * REGION, 3 * REGION);
    t.sync.touch(2, 2);
    await t.engine.onChecksumRes(res);
    assert.equal(t.run.report.mismatchedRegions, 0);
    assert.ok(t.run.recheck.has(2) && !t.run.suspects.has(2), 'inconclusive, not suspect');
    assert.equal(t.run.report.checkedBytes, 3 * REGION);
    await waitFor('re-check of region 2 sent', () => t.sent.length === 2, 5000, 10);
    assert.equal(t.sent[1].offsetSectors, (2 * REGION) / 512);
    assert.equal(t.sent[1].count, 1);
    await t.engine.onChecksumRes(t.answer(t.sent[1]));
    assert.equal(t.run.report.state, 'done');
    assert.equal(t.run.report.mismatchedRegions, 0);
    assert.equal(t.run.report.checkedBytes, SIZE);
    assert.deepEqual(t.marked, []);
  });

  it('held (the connection ended): an answer already received still lands, no new check is asked', async () => {
    const t = setup();
    t.hubData.fill(1, 1 * REGION, 2 * REGION); // differs once: a re-check would follow
    t.engine.start(t.sync, t.run);
    assert.equal(t.sent.length, 1);
    t.engine.hold();
    await t.engine.onChecksumRes(t.answer(t.sent[0])); // an answer the session still applies
    assert.ok(t.run.suspects.has(1), 'the answer was applied');
    t.engine.pump();
    await new Promise((r) => setTimeout(r, 300)); // past the re-check pause (RECHECK_MS), had one been armed
    assert.equal(t.sent.length, 1, 'nothing more asked of an agent that is gone');
    t.engine.stop();
    assert.equal(t.run.report.state, 'failed');
  });

  it('a dirty region is inconclusive; a region that differs twice is a mismatch, marked for resync', async () => {
    const t = setup();
    t.hubData.fill(1, 1 * REGION, 2 * REGION); // corrupted behind the hub's back
    t.bitmap.setRegions(3, 3); // a region the hub knows is not in sync
    t.engine.start(t.sync, t.run);
    await t.engine.onChecksumRes(t.answer(t.sent[0]));
    assert.ok(t.run.suspects.has(1), 'differs once: checked again before it counts');
    assert.ok(t.run.recheck.has(3), 'dirty: inconclusive');
    assert.equal(t.run.report.mismatchedRegions, 0);
    t.bitmap.clearRegions(3, 3); // resynced meanwhile
    await waitFor('re-checks of regions 1 and 3 sent', () => t.sent.length === 3, 5000, 10);
    assert.deepEqual(
      t.sent.slice(1).map((r) => r.offsetSectors),
      [REGION / 512, (3 * REGION) / 512],
    );
    await t.engine.onChecksumRes(t.answer(t.sent[1]));
    await t.engine.onChecksumRes(t.answer(t.sent[2]));
    assert.equal(t.run.report.state, 'done');
    assert.equal(t.run.report.mismatchedRegions, 1);
    assert.deepEqual(t.run.report.mismatches, [{ offset: REGION, length: REGION }]);
    assert.deepEqual(t.marked, [[1, 1]]);
    assert.equal(t.sync.replica.state, 'syncing', 'the volume is no longer in sync');
    assert.equal(t.run.report.checkedBytes, SIZE);
  });

  it('a write between a suspect check and its re-check makes it inconclusive again; report-only marks nothing', async () => {
    const t = setup(true);
    t.hubData.fill(1, 0, REGION);
    t.engine.start(t.sync, t.run);
    await t.engine.onChecksumRes(t.answer(t.sent[0]));
    await waitFor('re-check sent', () => t.sent.length === 2, 5000, 10);
    t.sync.touch(0, 0); // a write overlaps the re-check: its answer proves nothing
    await t.engine.onChecksumRes(t.answer(t.sent[1]));
    assert.equal(t.run.report.mismatchedRegions, 0);
    await waitFor('third check sent', () => t.sent.length === 3, 5000, 10);
    await t.engine.onChecksumRes(t.answer(t.sent[2]));
    assert.equal(t.sent.length, 3, 'one check per region and round');
    assert.equal(t.run.report.mismatchedRegions, 1, 'the region was still suspect');
    assert.deepEqual(t.marked, [], 'report-only');
  });

  it('a pump while an answer is still being compared starts no round: a mismatch is confirmed once', async () => {
    const t = setup(true);
    t.hubData.fill(1, REGION, 2 * REGION);
    t.engine.start(t.sync, t.run);
    await t.engine.onChecksumRes(t.answer(t.sent[0]));
    await waitFor('re-check sent', () => t.sent.length === 2, 5000, 10);
    const open = slowReads(t); // the recovery volume is slow to read
    const compared = t.engine.onChecksumRes(t.answer(t.sent[1]));
    t.engine.pump(); // a timer or another volume's answer, while region 1 is compared
    open();
    await compared;
    assert.equal(t.run.report.state, 'done', 'no round of re-checks armed over a region still compared');
    await new Promise((r) => setTimeout(r, 300)); // past RECHECK_MS
    assert.equal(t.sent.length, 2, 'region 1 checked twice in all');
    assert.equal(t.run.report.mismatchedRegions, 1);
    assert.deepEqual(t.run.report.mismatches, [{ offset: REGION, length: REGION }]);
  });

  it('a run that ends while an answer is being compared records nothing more, marks nothing', async () => {
    const t = setup();
    t.hubData.fill(1, REGION, 2 * REGION);
    t.engine.start(t.sync, t.run);
    await t.engine.onChecksumRes(t.answer(t.sent[0]));
    await waitFor('re-check sent', () => t.sent.length === 2, 5000, 10);
    const open = slowReads(t);
    const compared = t.engine.onChecksumRes(t.answer(t.sent[1]));
    t.engine.stop(); // the session closes while region 1 is read
    open();
    await compared;
    assert.equal(t.run.report.state, 'failed');
    assert.equal(t.run.report.mismatchedRegions, 0, 'a finished report does not change');
    assert.deepEqual(t.marked, [], 'nothing marked for a session that is gone');
  });

  it('mismatched ranges are kept in offset order, adjacent ones merged, the lowest MAX_RANGES kept', () => {
    const run = new VerifyRun(1, 'V1', 1000 * REGION, REGION, true);
    for (const r of [5, 3, 4, 9, 7, 8, 1]) run.mismatch(r);
    assert.deepEqual(run.report.mismatches, [
      { offset: 1 * REGION, length: REGION },
      { offset: 3 * REGION, length: 3 * REGION },
      { offset: 7 * REGION, length: 3 * REGION },
    ]);
    for (let r = 999; r >= 20; r -= 2) run.mismatch(r);
    assert.equal(run.report.mismatches.length, MAX_RANGES);
    assert.equal(run.report.mismatches[3].offset, 21 * REGION);
    assert.equal(run.report.mismatchedRegions, 7 + 490);
  });

  it('a session that closes ends its runs as failed', () => {
    const t = setup();
    t.engine.start(t.sync, t.run);
    t.engine.stop();
    assert.equal(t.run.report.state, 'failed');
    assert.equal(t.sync.watch, null);
  });
});
