// The answer to one remote read of the sync engine, onto the recovery volume: its checks
// (status, length, the ZEROES and SPARSE forms) and writing any byte range of it. Shared by
// whole-region reads (sync.ts) and a checksum resync's reads of differing blocks
// (checksum-sync.ts); neither the read's bookkeeping nor its dirty bits are this file's.
import { Cap, IO_OK, IO_ZEROES, IO_SPARSE, ProtocolError, decodeSparse, SparsePiece } from '../../protocol';
import type { RemoteIoRes } from '../../protocol';
import type { GuardedTarget } from '../../storage/overlay';
import { SYNC_WRITE_MAX } from '../../storage/volume';
import { assert } from '../assert';
import type { Replica } from './replica';

const SYNC_RUN_MAX = 256 * 1024;

/** A checked answer to a read of [start, end). */
export interface ReadAnswer {
  start: number;
  end: number;
  data: Buffer; // IO_OK: end - start bytes
  zeroes: boolean; // IO_ZEROES: the range reads as zeroes
  pieces: SparsePiece[] | null; // IO_SPARSE: zero runs and data
}

/**
 * Check the answer to a read of [start, end): null when the agent could not read (io_status
 * < 0, or an answer form not negotiated); a ProtocolError when its length is wrong.
 */
export function checkAnswer(
  m: RemoteIoRes,
  start: number,
  end: number,
  has: (cap: number) => boolean,
): ReadAnswer | null {
  const zeroes = m.ioStatus === IO_ZEROES && has(Cap.ZEROES) && m.data.length === 0;
  const sparse = m.ioStatus === IO_SPARSE && has(Cap.SPARSE);
  if (m.ioStatus !== IO_OK && !zeroes && !sparse) return null;
  if (!zeroes && !sparse && m.data.length !== end - start) {
    throw new ProtocolError(`REMOTE_IO_RES ${m.reqId}: ${m.data.length} bytes, requested ${end - start}`);
  }
  const pieces = sparse ? decodeSparse(end - start, m.data) : null;
  return { start, end, data: m.data, zeroes, pieces };
}

/** Write bytes [a, b) of `ans` to the recovery volume (zeroes skip regions known zero). */
export async function writeRange(rep: Replica, ans: ReadAnswer, a: number, b: number): Promise<void> {
  assert(ans.start <= a && a < b && b <= ans.end, 'a range written lies inside its answer');
  if (ans.pieces) return writeSparse(rep, ans.pieces, ans.start, a, b);
  if (!ans.zeroes) return writeRun(rep.target!, ans.data.subarray(a - ans.start, b - ans.start), a);
  if (rep.knownZeroCovers(a, b)) return; // a fresh replica's holes: nothing to write (a whole run at once)
  const regionSize = rep.bitmap!.regionSize;
  for (let at = a; at < b;) {
    const next = Math.min(b, (Math.floor(at / regionSize) + 1) * regionSize);
    await rep.zeroBytes(at, next); // nothing written where the replica is known zero
    at = next;
  }
}

/** Apply [a, b) of a sparse answer to a read that began at `start`: zero runs, then data. */
async function writeSparse(rep: Replica, pieces: SparsePiece[], start: number, a: number, b: number): Promise<void> {
  // Zero runs first: they are checked against the replica's known-zero regions, which this
  // answer's own data would otherwise clear.
  for (const zero of [true, false]) {
    for (const p of pieces) {
      if ((p.data === null) !== zero) continue;
      const pa = Math.max(a, start + p.offset),
        pb = Math.min(b, start + p.offset + p.length);
      if (pa >= pb) continue;
      if (p.data) await writeRun(rep.target!, p.data.subarray(pa - start - p.offset, pb - start - p.offset), pa);
      else await rep.zeroBytes(pa, pb);
    }
  }
}

/**
 * Sync data goes straight to the page cache: sync answers are applied one at a time, and a
 * threadpool round trip per run left answers waiting in the queue (the reads were idle half
 * the time). Runs up to SYNC_RUN_MAX in SYNC_WRITE_MAX pieces, always; larger ones where the
 * target takes them synchronously (GuardedTarget.tryWriteSync: a page-cache copy, no read).
 */
async function writeRun(t: GuardedTarget, d: Buffer, at: number): Promise<void> {
  if (d.length > SYNC_RUN_MAX) {
    if (t.tryWriteSync(d, at)) return;
  } else {
    let o = 0;
    while (o < d.length && t.tryWriteSync(d.subarray(o, Math.min(o + SYNC_WRITE_MAX, d.length)), at + o)) {
      o += SYNC_WRITE_MAX;
    }
    if (o >= d.length) return;
    d = d.subarray(o);
    at += o;
  }
  await t.write(d, at);
}
