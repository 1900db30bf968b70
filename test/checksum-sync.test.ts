// The checksum resync's comparison logic on its own (src/hub/checksum-sync.ts, digests.ts):
// a real Replica over a file with the hub's sync engine, an agent emulated over a buffer that
// answers CHECKSUM_REQ and REMOTE_IO_REQ. Equal regions move nothing, differing regions move
// only their differing 4 KiB blocks, a region written while compared is read whole, and an
// agent without the CHECKSUM cap gets whole reads.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { Cmd, Cap, CHECKSUM_BYTES, HEADER_SIZE, IO_OK, SECTOR, ProtocolError, decode } from '../protocol';
import type { ChecksumReq, RemoteIoReq } from '../protocol';
import { MemoryStateStore } from '../storage/state';
import { Replica, openFileTarget } from '../src/hub/replica';
import { SyncEngine, VolumeSync } from '../src/hub/sync';
import { checkChecksumRes, differingBlocks, runsOf } from '../src/hub/digests';
import { silentLogger } from '../src/log';
import { tmpdir } from './harness/util';

const KiB = 1024;
const REGION = 64 * KiB;
const SIZE = 32 * REGION + 8 * KiB; // a shorter tail region too

function digest(b: Buffer): Buffer {
  return createHash('sha256').update(b).digest().subarray(0, CHECKSUM_BYTES);
}

interface Rig {
  engine: SyncEngine;
  sync: VolumeSync;
  rep: Replica;
  protectedData: Buffer;
  file: string;
  sent: (ChecksumReq | RemoteIoReq)[];
}

async function rig(recovery: Buffer, protectedData: Buffer, caps = Cap.CHECKSUM | Cap.ZEROES): Promise<Rig> {
  const dir = tmpdir();
  const file = path.join(dir, 'V1R');
  fs.writeFileSync(file, recovery); // seeded: the file exists with data
  const rep = new Replica({ name: 'V1', path: file }, new MemoryStateStore(), REGION, silentLogger());
  const rec = await rep.attach(SIZE, openFileTarget, true, 'vm1');
  const sent: (ChecksumReq | RemoteIoReq)[] = [];
  const link = {
    send: (bufs: Buffer[]) => {
      const f = Buffer.concat(bufs);
      sent.push(decode(f.readUInt16LE(4), f.subarray(HEADER_SIZE)) as ChecksumReq | RemoteIoReq);
    },
    has: (cap: number) => (caps & cap) !== 0,
  };
  const engine = new SyncEngine(link, { maxInflightReads: 4, maxReadBytes: 1 << 20 }, silentLogger());
  const sync = new VolumeSync(rep, rec.id, false);
  engine.add(sync);
  return { engine, sync, rep, protectedData, file, sent };
}

/** Answer everything sent, in order, until nothing is in flight; returns the data bytes read. */
async function drive(r: Rig, before?: (m: ChecksumReq | RemoteIoReq) => void): Promise<number> {
  let read = 0;
  r.engine.pump();
  for (let guard = 0; r.sent.length > 0; guard++) {
    assert.ok(guard < 10_000, 'the resync ends');
    const m = r.sent.shift()!;
    before?.(m);
    if (m.cmd === Cmd.CHECKSUM_REQ) {
      const bytes = m.regionSectors * SECTOR,
        at = m.offsetSectors * SECTOR;
      const digests = Buffer.concat(
        Array.from({ length: m.count }, (_, i) =>
          digest(r.protectedData.subarray(at + i * bytes, at + (i + 1) * bytes)),
        ),
      );
      await r.engine.onChecksumRes({
        cmd: Cmd.CHECKSUM_RES,
        reqId: m.reqId,
        ioStatus: IO_OK,
        volumeId: m.volumeId,
        digests,
      });
    } else {
      const at = m.offsetSectors * SECTOR,
        len = m.sizeSectors * SECTOR;
      read += len;
      const data = Buffer.from(r.protectedData.subarray(at, at + len));
      await r.engine.onRemoteIoRes({
        cmd: Cmd.REMOTE_IO_RES,
        reqId: m.reqId,
        ioStatus: IO_OK,
        volumeId: m.volumeId,
        data,
      });
    }
  }
  return read;
}

function differing4k(a: Buffer, b: Buffer): number {
  let n = 0;
  for (let o = 0; o < a.length; o += 4 * KiB) if (a.compare(b, o, o + 4 * KiB, o, o + 4 * KiB) !== 0) n += 4 * KiB;
  return n;
}

function seeded(): { recovery: Buffer; protectedData: Buffer } {
  const protectedData = randomBytes(SIZE);
  const recovery = Buffer.from(protectedData);
  for (const off of [4 * KiB, 20 * KiB, 5 * REGION + 60 * KiB, 9 * REGION, 12 * REGION])
    randomBytes(4 * KiB).copy(recovery, off);
  randomBytes(64 * KiB).copy(recovery, 20 * REGION + 32 * KiB); // across a region boundary
  recovery.fill(0, 31 * REGION, 31 * REGION + 64 * KiB); // zeroes on one side
  randomBytes(2 * KiB).copy(recovery, SIZE - 2 * KiB); // in the short tail
  return { recovery, protectedData };
}

describe('checksum resync: the comparison', () => {
  it('digest helpers: differing blocks, their runs, and the answer checks', () => {
    const a = randomBytes(16 * KiB),
      b = Buffer.from(a);
    b[5 * KiB] ^= 1;
    b[15 * KiB] ^= 1;
    const digests = Buffer.concat([0, 1, 2, 3].map((i) => digest(b.subarray(i * 4 * KiB, (i + 1) * 4 * KiB))));
    const flags = differingBlocks(a, 4 * KiB, digests);
    assert.deepEqual(flags, [false, true, false, true]);
    assert.deepEqual(runsOf([true, true, false, true]), [
      [0, 1],
      [3, 3],
    ]);
    const res = { cmd: Cmd.CHECKSUM_RES as const, reqId: 1, ioStatus: IO_OK, volumeId: 2, digests };
    assert.throws(() => checkChecksumRes(res, 3, 4), ProtocolError);
    assert.throws(() => checkChecksumRes(res, 2, 5), ProtocolError);
    checkChecksumRes(res, 2, 4);
  });

  it('a seeded replica syncs by checksum; only differing 4 KiB blocks are read', async () => {
    const { recovery, protectedData } = seeded();
    const r = await rig(recovery, protectedData);
    assert.ok(r.rep.checksumResync, 'an existing file with data is a seeded replica');
    const differing = differing4k(recovery, protectedData);
    const read = await drive(r);
    const got = fs.readFileSync(r.file);
    const bad = [];
    for (let o = 0; o < SIZE; o += 4096)
      if (got.compare(protectedData, o, Math.min(SIZE, o + 4096), o, Math.min(SIZE, o + 4096)) !== 0) bad.push(o);
    assert.deepEqual(bad, [], 'byte-equal');
    assert.equal(r.sync.bitmap.dirtyRegions, 0);
    // The short tail region has no finer digest: it is read whole (8 KiB).
    assert.ok(read <= differing + 8 * KiB, `read ${read} for ${differing} differing`);
    r.sync.settle();
    assert.equal(r.rep.checksumResync, null, 'done once clean');
    const c = r.rep.status().checksumResync!;
    assert.equal(c.comparedBytes, SIZE);
    assert.equal(c.movedBytes, read);
    assert.equal(r.rep.state, 'protecting');
  });

  it('a region written while its compare is in flight is read whole, not trusted', async () => {
    const protectedData = randomBytes(SIZE);
    const recovery = Buffer.from(protectedData);
    const r = await rig(recovery, protectedData);
    let touched = false;
    const read = await drive(r, (m) => {
      if (m.cmd !== Cmd.CHECKSUM_REQ || touched) return;
      touched = true;
      // A guest write lands on the protected side and reaches the hub before the answer.
      randomBytes(4 * KiB).copy(protectedData, 3 * REGION + 8 * KiB);
      fs.writeSync(fs.openSync(r.file, 'r+'), protectedData, 3 * REGION + 8 * KiB, 4 * KiB, 3 * REGION + 8 * KiB);
      r.sync.touch(3, 3);
    });
    assert.equal(read, REGION, 'the touched region was read whole; nothing else moved');
    assert.deepEqual(fs.readFileSync(r.file), protectedData);
  });

  it('without the CHECKSUM capability the regions are read whole', async () => {
    const { recovery, protectedData } = seeded();
    const r = await rig(recovery, protectedData, Cap.ZEROES);
    const read = await drive(r);
    assert.equal(read, SIZE);
    assert.deepEqual(fs.readFileSync(r.file), protectedData);
  });

  it('beginChecksumResync marks every region dirty, durably, and leaves protecting', async () => {
    const data = randomBytes(SIZE);
    const r = await rig(data, data);
    await drive(r);
    r.sync.settle();
    assert.equal(r.rep.state, 'protecting');
    r.rep.beginChecksumResync('identity mismatch (test)');
    assert.equal(r.rep.state, 'syncing');
    assert.equal(r.sync.bitmap.dirtyRegions, r.sync.bitmap.regions);
    assert.equal(r.rep.record!.checksumResync!.reason, 'identity mismatch (test)');
    const read = await drive(r);
    assert.equal(read, 0, 'equal data: nothing moves');
  });
});
