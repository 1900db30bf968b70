// A direct (O_DIRECT) write to a recovery volume resolves once it is in flight; its failure
// surfaces at the next flush. When that flush is a checkpoint's (not a group commit's), the
// region's held clear must not be released by the flush after it: the region would read clean,
// in memory and persisted, over data that never landed. A real Replica over a file with
// --cache none's target and the hub's sync engine; the agent's answer is handed in directly and
// one direct write fails with EIO (fs.write patched for it). The volume never reads protecting
// over it, and leaves error once a flush succeeds.
import { strict as assert } from 'node:assert';
import fs = require('node:fs'); // the module object itself: its write is patched below
import * as path from 'node:path';
import { Cmd, Cap, DIRTY_FINAL, HEADER_SIZE, SECTOR, decode } from '../protocol';
import type { Message, RemoteIoReq } from '../protocol';
import { DirtyBitmap } from '../storage/bitmap';
import { MemoryStateStore } from '../storage/state';
import { DIRECT_ALIGN } from '../storage/volume';
import { BufferPool } from '../src/buffer-pool';
import { Replica, openDirectTarget } from '../src/hub/replica';
import { SyncEngine, VolumeSync } from '../src/hub/sync';
import { silentLogger } from '../src/log';
import { tmpdir } from './harness/util';

const REGION = 64 * 1024,
  MiB = 1 << 20,
  SIZE = 16 * MiB;

type WriteCb = (e: NodeJS.ErrnoException | null, n: number) => void;

describe('hub --cache none: a direct sync write that fails in flight', () => {
  const realWrite = fs.write;
  afterEach(() => ((fs as { write: unknown }).write = realWrite));

  it('a checkpoint that meets the failure turns the volume dirty and error, not clean', async () => {
    let failed = false;
    (fs as { write: unknown }).write = (
      fd: number,
      buf: Buffer,
      off: number,
      len: number,
      pos: number,
      cb: WriteCb,
    ) => {
      if (!failed && len >= 256 * 1024 && pos === 0) {
        failed = true;
        return setTimeout(() => cb(Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' }), 0), 5);
      }
      return (realWrite as unknown as (...a: unknown[]) => void)(fd, buf, off, len, pos, cb);
    };
    const store = new MemoryStateStore();
    const pool = new BufferPool(MiB + 1024, 16, DIRECT_ALIGN);
    const file = path.join(tmpdir(), 'V1R');
    const rep = new Replica({ name: 'V1', path: file }, store, REGION, silentLogger());
    const rec = await rep.attach(SIZE, (p, s) => openDirectTarget(p, s, pool), true, 'vm1');
    const bm = rep.bitmap!;
    bm.clearRegions(0, bm.regions - 1); // converged, for the test
    await rep.checkpoint();
    const reqs: Message[] = [];
    const link = {
      send: (bufs: Buffer[]) => {
        const f = Buffer.concat(bufs);
        reqs.push(decode(f.readUInt16LE(4), f.subarray(HEADER_SIZE)));
      },
      has: (c: number) => c !== Cap.CHECKSUM,
    };
    const engine = new SyncEngine(link, { maxInflightReads: 4, maxReadBytes: MiB }, silentLogger());
    engine.add(new VolumeSync(rep, rec.id, false));
    await engine.onDirtyReport({
      cmd: Cmd.DIRTY_REPORT,
      volumeId: rec.id,
      reportId: 1,
      flags: DIRTY_FINAL,
      extents: [{ offsetSectors: 0, sizeSectors: MiB / SECTOR }],
    });
    await new Promise((r) => setTimeout(r, 20));
    engine.pump();
    const req = reqs.find((m): m is RemoteIoReq => m.cmd === Cmd.REMOTE_IO_REQ);
    assert.ok(req, 'the hub reads the reported megabyte');
    const payload = pool.take(16 + MiB, 16); // received as the listener does: data 4 KiB-aligned
    payload.fill(0xab);
    await engine.onRemoteIoRes({
      cmd: Cmd.REMOTE_IO_RES,
      reqId: req.reqId,
      ioStatus: 0,
      volumeId: rec.id,
      data: payload.subarray(16),
    });
    pool.give(payload);
    assert.ok(failed, 'the answer went as a direct write, and it failed');
    await new Promise((r) => setTimeout(r, 20)); // the failed write has landed
    assert.equal(rep.state, 'syncing', 'converged, but never protecting over a write that failed');

    await engine.checkpoint(); // meets the failure
    assert.equal(rep.state, 'error');
    assert.equal(bm.dirtyRegions, bm.regions, 'every region dirty at once');
    await engine.checkpoint(); // a good flush: the volume takes writes again
    const persisted = new DirtyBitmap(SIZE, REGION);
    store.loadBitmap('V1', persisted);
    assert.equal(rep.state, 'syncing', 'out of error once a flush succeeds, to resync everything');
    assert.equal(bm.dirtyRegions, bm.regions, 'every region dirty: resynced once the volume takes writes');
    assert.ok(persisted.get(0), 'region 0 persisted dirty (its data never landed)');
    engine.stop();
  });
});
