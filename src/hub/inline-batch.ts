// A socket read's small protected writes, applied together once the read is parsed: each is
// announced to its recovery volume as it arrives (WriteApplier.prepare: the journal stages its
// before-image), and all are applied in arrival order at the read's end (or before any other
// frame of it), so the journal writes the read's records with one append ahead of the first
// overwrite instead of one append per write. Owns the writes received and not yet applied
// (bounded); the session decides which may wait here (only while its apply queue is idle and
// nothing else of the read came between) and lands them (its `land`).
import type { ProtectedWrite } from '../../protocol';
import { SYNC_WRITE_MAX } from '../../storage/volume';
import { assert } from '../assert';

const MAX_WRITES = 64; // a 64 KiB socket read holds at most 15 4 KiB writes
const MAX_BYTES = 256 * 1024; // the journal's stage (storage/journal-stage.ts)

export class InlineBatch {
  private readonly msgs: ProtectedWrite[] = [];
  private readonly payloads: Buffer[] = [];
  private bytes = 0;
  private landing = false;

  constructor(
    /** Announces a write to its volume; throws as applying it would (an unknown volume, a bad extent). */
    private readonly writes: { prepare(m: ProtectedWrite): void },
    /** Apply (or queue) a held write, as if it had just arrived. */
    private readonly land: (m: ProtectedWrite, payload: Buffer) => void,
  ) {}

  /** Writes held. */
  get size(): number {
    return this.msgs.length;
  }

  /** Hold `m` until flush(), announced now; false: too large or full, the held ones landed (land `m` next). */
  add(m: ProtectedWrite, payload: Buffer): boolean {
    const n = m.data.length;
    if (n > SYNC_WRITE_MAX || this.msgs.length >= MAX_WRITES || this.bytes + n > MAX_BYTES) {
      this.flush();
      return false;
    }
    this.writes.prepare(m);
    this.msgs.push(m);
    this.payloads.push(payload);
    this.bytes += n;
    return true;
  }

  /** Land every held write, in the order received. */
  flush(): void {
    const n = this.msgs.length;
    if (n === 0) return;
    assert(!this.landing, 'a held write lands once');
    this.landing = true;
    try {
      for (let i = 0; i < n; i++) this.land(this.msgs[i], this.payloads[i]);
    } finally {
      assert(this.msgs.length === n, 'nothing is held while the batch lands');
      this.msgs.length = 0;
      this.payloads.length = 0;
      this.bytes = 0;
      this.landing = false;
    }
  }
}
