// The descriptors of a file's bulk reads (sync, resync, checksums) and which one a read takes.
// Data in the page cache (a region the guest just wrote, owed to the hub) is read from there,
// through a descriptor advised RANDOM so no readahead leaves large folios under the guest's
// small writes. Cold data (an initial sync, a verify) is read around the cache with O_DIRECT:
// the device's DMA lands in the caller's buffer, where a buffered read would first fill fresh
// page-cache pages and then copy them out, and the guest's cache is not flooded with the whole
// image. Issue 17: a 1 GiB initial sync took 2.9-3.4 s, with 1.4-1.6 s of the agent's system
// time spent filling and copying pages; read direct, 1.5-1.9 s. Coherent either way: an
// O_DIRECT read writes back dirty pages of its range first.
import * as fs from 'node:fs';
import { DIRECT_ALIGN, adviseRandom, cachedPages, misalign } from './fileio';

export const BULK_DIRECT_MIN = 64 << 10; // smaller reads gain little from going around the cache

export class BulkReader {
  private randomFd = -1;
  private directFd = -1; // -2: this file cannot be opened O_DIRECT (tmpfs)
  private directOff = false; // an aligned direct read was refused: buffered from now on
  directReadBytes = 0;

  constructor(private readonly fd: number) {}

  /** The buffered descriptor: the same open file (even if renamed since), no readahead. */
  buffered(): number {
    if (this.randomFd < 0) {
      this.randomFd = fs.openSync(`/proc/self/fd/${this.fd}`, 'r');
      adviseRandom(this.randomFd);
    }
    return this.randomFd;
  }

  /**
   * The O_DIRECT descriptor when a read of `buf` at `offset` should go around the page cache:
   * none of its pages cached, offset, length and memory aligned; else -1.
   */
  direct(buf: Buffer, offset: number): number {
    if (this.directOff || buf.length < BULK_DIRECT_MIN) return -1;
    if (offset % DIRECT_ALIGN !== 0 || buf.length % DIRECT_ALIGN !== 0 || misalign(buf, DIRECT_ALIGN) !== 0) return -1;
    if (cachedPages(this.fd, offset, buf.length) !== 0) return -1; // cached, or unknown
    if (this.directFd === -1) {
      try {
        this.directFd = fs.openSync(`/proc/self/fd/${this.fd}`, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
      } catch {
        this.directFd = -2;
        this.directOff = true;
        return -1;
      }
    }
    return this.directFd;
  }

  /** The file refused an aligned direct read (EINVAL): buffered from now on. */
  refuseDirect(): void {
    this.directOff = true; // the descriptor stays open until the file closes: other reads may be on it
  }

  /** The descriptors to close with the file. */
  fds(): number[] {
    const out = [this.randomFd, this.directFd].filter((fd) => fd >= 0);
    this.randomFd = this.directFd = -1;
    return out;
  }
}
