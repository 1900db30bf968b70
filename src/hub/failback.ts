// Failback write-back for one agent session: regions of a recovery volume written to the
// protected volume with remote IO writes (is_read=0), a bounded number in flight, each settled
// by its REMOTE_IO_RES (which the agent sends once the write is durable). Owns the write-backs
// waiting for their answer.
import { SECTOR, IO_OK, encodeRemoteIoReqHead } from '../../protocol';
import type { RemoteIoRes } from '../../protocol';
import type { DirtyBitmap } from '../../storage/bitmap';
import type { FailbackWatcher, Replica } from './replica';

export interface WriteBackIo {
  send(bufs: Buffer[]): void;
  /** A req_id shared with the sync engine's remote reads. */
  nextReqId(): number;
  isClosed(): boolean;
}

interface Pending {
  first: number; // regions written
  last: number;
  watch: FailbackWatcher;
  resolve(): void;
  reject(e: Error): void;
}

export class WriteBack {
  private readonly pending = new Map<number, Pending>(); // by req_id

  constructor(
    private readonly io: WriteBackIo,
    private readonly maxInflight: number,
    private readonly maxBytes: number,
  ) {}

  /**
   * Write `regions` of `rep`'s recovery volume to protected volume `volumeId`; the bytes moved.
   * `watch` hears of each answer as it is applied, in stream order.
   */
  async run(rep: Replica, volumeId: number, regions: DirtyBitmap, watch: FailbackWatcher): Promise<number> {
    const regionSize = regions.regionSize,
      max = Math.max(1, Math.floor(this.maxBytes / regionSize));
    let moved = 0;
    const inflight = new Set<Promise<void>>();
    for (const [a, b] of regions.runs()) {
      for (let r = a; r < b; r += max) {
        if (this.io.isClosed()) throw new Error(`agent session for ${rep.name} closed during failback`);
        const start = r * regionSize,
          end = Math.min(Math.min(b, r + max) * regionSize, regions.sizeBytes);
        const data = Buffer.allocUnsafe(end - start);
        await rep.target!.base.read(data, start);
        const reqId = this.io.nextReqId();
        const first = r,
          last = Math.min(b, r + max) - 1;
        const done = new Promise<void>((resolve, reject) =>
          this.pending.set(reqId, { first, last, watch, resolve, reject }),
        );
        this.io.send([encodeRemoteIoReqHead(reqId, (end - start) / SECTOR, volumeId, start / SECTOR, false), data]);
        moved += end - start;
        const p = done.finally(() => inflight.delete(p));
        inflight.add(p);
        if (inflight.size >= this.maxInflight) await Promise.race(inflight);
      }
    }
    await Promise.all(inflight);
    return moved;
  }

  /** The answer to a write-back, if `m` is one (false: not ours). */
  settle(m: RemoteIoRes): boolean {
    const p = this.pending.get(m.reqId);
    if (!p) return false;
    this.pending.delete(m.reqId);
    if (m.ioStatus === IO_OK) {
      p.watch.settled(p.first, p.last); // now, before the next frame is applied: stream order
      p.resolve();
    } else p.reject(new Error(`remote write on the protected volume failed: io_status ${m.ioStatus}`));
    return true;
  }

  /** The session ends: every write-back still waiting fails. */
  cancel(e: Error): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }
}
