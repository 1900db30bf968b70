// When a journal's records become durable: sync() on demand (the group commit's, coalesced:
// one fdatasync in flight, one more queued behind it at most), and an early sync of its own
// once EARLY_SYNC_BYTES are unsynced. Owns the counters of what is durable and what is not;
// the journal (journal.ts) reports its appends and says where its end is.
import * as fs from 'node:fs';

// Appends start a sync of their own only once this much is unsynced: a bulk stream's group
// commit then finds its before-images mostly durable, while small writes (a guest flushing after
// each 4 KiB write) leave theirs to the group commit's one journal sync per round instead of
// adding an fdatasync per event-loop turn on the disk the guest is flushing to.
export const EARLY_SYNC_BYTES = 1 << 20;

/** The open segment to sync and the journal's end position; null once the journal is closed. */
export type JournalTail = () => { fd: number; end: number } | null;

export class JournalSync {
  private run: Promise<void> | null = null;
  private again = false;
  private syncedTo = 0; // journal position up to which every record is durable
  private unsyncedBytes = 0; // appended since the last sync began: an early sync past EARLY_SYNC_BYTES
  private scheduled = false;
  private failed: Error | null = null;

  constructor(
    private readonly dir: string,
    private readonly tail: JournalTail,
    /** Staged records are written before a sync begins: they must be covered by it. */
    private readonly flushStaged: () => void,
  ) {}

  /** `n` bytes were written at the journal's end. */
  appended(n: number): void {
    this.unsyncedBytes += n;
  }

  /**
   * Every record appended so far is durable once this resolves (fdatasync, coalesced). Appends
   * start one on their own at the end of their event-loop turn once EARLY_SYNC_BYTES are
   * unsynced (group commit for the journal): in a bulk stream, by the time the volume's group
   * commit asks, the before-images are mostly durable already, so the group commit no longer
   * waits behind a whole journal fdatasync.
   */
  sync(): Promise<void> {
    this.flushStaged();
    if (this.failed) {
      const e = this.failed; // an early sync failed: its error is the next caller's
      this.failed = null;
      return Promise.reject(e);
    }
    const t = this.tail();
    if (!t) return Promise.reject(new Error(`journal ${this.dir}: closed`));
    if (this.syncedTo >= t.end) return Promise.resolve();
    if (this.run) {
      this.again = true;
      return this.run;
    }
    this.unsyncedBytes = 0;
    const done = new Promise<void>((res, rej) => fs.fdatasync(t.fd, (e) => (e ? rej(e) : res())));
    this.run = done
      .then(() => {
        this.syncedTo = Math.max(this.syncedTo, t.end);
      })
      .finally(() => {
        this.run = null;
        if (this.again) {
          this.again = false;
          return this.sync();
        }
      });
    return this.run;
  }

  /**
   * An early sync after this turn's appends, once EARLY_SYNC_BYTES are unsynced (one per turn; its
   * failure goes to the next sync()). Below that the group commit's sync() covers them.
   */
  soon(): void {
    if (this.scheduled || this.unsyncedBytes < EARLY_SYNC_BYTES) return;
    this.scheduled = true;
    setImmediate(this.early);
  }

  private readonly early = (): void => {
    this.scheduled = false;
    if (!this.tail()) return; // closed
    this.sync().catch((e: Error) => (this.failed = e));
  };
}
