// A volume as of a checkpoint, read-only: the present volume overlaid, block by block, with the
// oldest before-image recorded after the point (an undo log read backwards). The index of those
// blocks is built by one scan of the journal from the point and kept current by listening to
// later appends, so the view stays at its point while replication goes on underneath. It pins
// the journal from the point until closed. Memory: 8 bytes per journaled 4 KiB block, in lazily
// allocated pages, bounded by the volume's size.
import type { BlockTarget } from './volume';
import type { Checkpoint, Journal } from './journal';
import { ZERO_POS } from './journal';
import { JOURNAL_BLOCK, RecordType } from './journal-format';

const PAGE_BLOCKS = 1024; // index entries per page (4 MiB of volume, 8 KiB of memory)
const ZERO_AT = -1; // index entry of a block that was zero at the point (a ZERO record)

export class JournalView implements BlockTarget {
  private readonly pages = new Map<number, Float64Array>(); // block -> journal position + 1 (0: none, -1: zero)
  private readonly unpin: () => void;
  private readonly unlisten: () => void;
  journaledBlocks = 0;

  constructor(
    private readonly base: BlockTarget,
    private readonly journal: Journal,
    private readonly vol: number,
    readonly point: Checkpoint,
  ) {
    this.unpin = journal.pin(point.pos);
    this.unlisten = journal.onBefore((v, offset, length, dataPos) => {
      if (v === this.vol) this.note(offset, length, dataPos);
    });
    journal.scan(point.pos, (h, dataPos, zeroBytes) => {
      if (h.sub !== vol) return;
      if (h.type === RecordType.BEFORE) this.note(h.arg, h.payloadBytes, dataPos);
      else if (h.type === RecordType.ZERO) this.note(h.arg, zeroBytes, ZERO_POS);
    });
  }

  get sizeBytes(): number {
    return this.base.sizeBytes;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.sizeBytes)
      throw new RangeError(`read [${offset}, ${offset + buf.length}) outside the volume`);
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done,
        block = Math.floor(pos / JOURNAL_BLOCK);
      let n = Math.min(buf.length - done, (block + 1) * JOURNAL_BLOCK - pos);
      const at = this.lookup(block);
      if (at === ZERO_AT) buf.fill(0, done, done + n);
      else if (at) {
        await this.journal.read(buf.subarray(done, done + n), at - 1 + (pos - block * JOURNAL_BLOCK));
      } else {
        // a run of blocks the journal has nothing for comes from the present volume in one read
        while (done + n < buf.length && !this.lookup(block + Math.ceil(n / JOURNAL_BLOCK)))
          n = Math.min(buf.length - done, n + JOURNAL_BLOCK);
        await this.base.read(buf.subarray(done, done + n), pos);
        // an overwrite may have raced the read: it was recorded first, so the journal has it now
        await this.recheck(buf.subarray(done, done + n), pos);
      }
      done += n;
    }
  }

  write(): Promise<void> {
    return Promise.reject(new Error('a checkpoint view is read-only'));
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  async close(): Promise<void> {
    this.unlisten();
    this.unpin();
  }

  /**
   * Runs [first, end) of journal blocks changed since the point (those the journal holds older
   * content for), in order: what a rollback to the point writes back.
   */
  *changedRuns(): Generator<[number, number]> {
    let start = -1,
      prev = -2;
    for (const page of [...this.pages.keys()].sort((a, b) => a - b)) {
      const p = this.pages.get(page)!;
      for (let i = 0; i < PAGE_BLOCKS; i++) {
        if (!p[i]) continue;
        const b = page * PAGE_BLOCKS + i;
        if (b !== prev + 1) {
          if (start >= 0) yield [start, prev + 1];
          start = b;
        }
        prev = b;
      }
    }
    if (start >= 0) yield [start, prev + 1];
  }

  /** The first record after the point for each block wins; later ones are newer content. */
  private note(offset: number, length: number, dataPos: number): void {
    const first = Math.floor(offset / JOURNAL_BLOCK),
      last = Math.floor((offset + length - 1) / JOURNAL_BLOCK);
    for (let b = first; b <= last; b++) {
      const page = Math.floor(b / PAGE_BLOCKS);
      let p = this.pages.get(page);
      if (!p) this.pages.set(page, (p = new Float64Array(PAGE_BLOCKS)));
      const i = b % PAGE_BLOCKS;
      if (p[i]) continue;
      p[i] = dataPos === ZERO_POS ? ZERO_AT : dataPos + (b * JOURNAL_BLOCK - offset) + 1;
      this.journaledBlocks++;
    }
  }

  private lookup(block: number): number {
    const p = this.pages.get(Math.floor(block / PAGE_BLOCKS));
    return p ? p[block % PAGE_BLOCKS] : 0;
  }

  private async recheck(piece: Buffer, pos: number): Promise<void> {
    const first = Math.floor(pos / JOURNAL_BLOCK),
      last = Math.floor((pos + piece.length - 1) / JOURNAL_BLOCK);
    for (let b = first; b <= last; b++) {
      const at = this.lookup(b);
      if (!at) continue;
      const a = Math.max(pos, b * JOURNAL_BLOCK),
        e = Math.min(pos + piece.length, (b + 1) * JOURNAL_BLOCK);
      if (at === ZERO_AT) piece.fill(0, a - pos, e - pos);
      else await this.journal.read(piece.subarray(a - pos, e - pos), at - 1 + (a - b * JOURNAL_BLOCK));
    }
  }
}
