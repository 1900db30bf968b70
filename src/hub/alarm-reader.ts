// The bytes a protected write is about to overwrite, for the encryption alarm: a synchronous
// pread through a descriptor of its own (the page cache is shared with the recovery volume's),
// so that a sampled write is scored inline and the writes behind it never wait in the apply
// queue for a threadpool read. RBD images have no such path: their writes are scored from the
// queue (write-apply.ts).
import * as fs from 'node:fs';
import { isRbdPath } from './rbd-target';
import { adviseRandom } from '../../storage/fileio';

export class AlarmReader {
  private fd = -1;
  private readonly buf: Buffer;

  constructor(
    private readonly path: string,
    bytes: number,
  ) {
    this.buf = Buffer.allocUnsafeSlow(bytes);
  }

  /** Up to `n` bytes at `offset` (valid until the next call), or null when not readable so. */
  read(offset: number, n: number): Buffer | null {
    if (isRbdPath(this.path)) return null;
    try {
      if (this.fd < 0) {
        this.fd = fs.openSync(this.path, 'r');
        // No readahead: a sampled 4 KiB read would fill large folios around it (holes zeroed
        // page by page), and mark them, so that the journal's own random reads of the
        // neighbours read ahead again: 10 % of the hub's CPU under 4 KiB sequential writes
        // (BENCHMARKS Round 19).
        adviseRandom(this.fd);
      }
      const got = fs.readSync(this.fd, this.buf, 0, Math.min(n, this.buf.length), offset);
      return this.buf.subarray(0, got);
    } catch {
      return null; // the write itself will report a failing volume
    }
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}
