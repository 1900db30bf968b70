// Hub protection state in LMDB: one record per recovery volume (id, size, generation, state,
// clean-shutdown flag, sync cursor) and its dirty bitmap pages. Bits that turn dirty are
// committed before the hub relies on them (putSync); bits that turn clean are written lazily,
// so the persisted bitmap is always a superset of what is really dirty.
import { open, RootDatabase } from 'lmdb';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { DirtyBitmap } from './bitmap';
import type { StoredFingerprint } from './volume-identity';

export interface VolumeRecord {
  name: string; // protected volume name as the agent reports it
  id: number; // volume_id assigned by the hub
  sizeBytes: number;
  regionSize: number;
  generation: number; // bumped each time a new protection session starts on this replica
  state: string;
  cleanShutdown: boolean; // last session ended with AGENT_SHUTDOWN and everything applied
  // The last session's agent could not report its dirty extents (legacy): if it ended any other
  // way than cleanly, no later agent's report can name what it wrote (SPEC 13).
  untrustedSession?: boolean;
  syncPass: number;
  syncCursor: number; // region index the sync sweep had reached
  vm?: string;
  // Set (durably, with every bit dirty) when the hub cannot vouch for the recovery volume's
  // data: dirty regions are compared by checksum before any data moves (hub/checksum-sync.ts).
  // Kept, with finishedAt, as the last one's summary once the bitmap is clean.
  checksumResync?: ChecksumResyncRecord;
  // Identity (SPEC.md 5.16): the protected volume's UUID this record's data follows, and the
  // recovery file's fingerprint (exact when `clean`: saved at a clean hub stop, after the last write).
  peerUuid?: string;
  recoveryFile?: { path: string; fp: StoredFingerprint; clean: boolean };
  // A recovery volume on RBD: the claim token this hub last wrote into the image's metadata
  // (src/hub/rbd-target.ts); another token there means another hub wrote the image since.
  rbdClaim?: string;
  // The operator paused the volume (writes only mark the bitmap) or removed it from protection
  // (src/hub/volume-ops.ts); a removed record is ignored when the volume is configured again.
  paused?: boolean;
  removed?: boolean;
}

export interface ChecksumResyncRecord {
  reason: string;
  startedAt: string; // ISO time
  finishedAt: string | null; // null while the volume syncs by checksum
  comparedBytes: number; // bytes of regions compared by digest
  matchedBytes: number; // of those, found equal: cleared with no data moved
  movedBytes: number; // bytes read from the protected volume meanwhile
}

/** How saveBitmap persists: see there. */
export type Durability = boolean | 'flushed';

export interface StateStore {
  volume(name: string): VolumeRecord | undefined;
  volumes(): VolumeRecord[];
  putVolume(rec: VolumeRecord, durable: boolean): Promise<void>;
  allocateVolumeId(): number;
  /** Small hub-wide records (failover test, failover mode); committed durably. */
  meta<T = unknown>(key: string): T | undefined;
  putMeta(key: string, value: unknown): void;
  loadBitmap(name: string, bm: DirtyBitmap): void;
  /**
   * Persist the changed pages of a bitmap. durable=true: committed and on disk before it returns
   * (the event loop waits for the disk); 'flushed': on disk when the promise resolves, the event
   * loop free meanwhile (saves in one turn share a commit); false: committed in the background.
   */
  saveBitmap(name: string, bm: DirtyBitmap, durable: Durability): Promise<void>;
  close(): Promise<void>;
}

export class LmdbStateStore implements StateStore {
  private db: RootDatabase;
  constructor(dir: string) {
    fs.mkdirSync(dir, { recursive: true });
    this.db = open({ path: path.join(dir, 'state.lmdb'), encoding: 'msgpack', compression: false });
  }
  volume(name: string): VolumeRecord | undefined {
    return this.db.get(['vol', name]);
  }
  volumes(): VolumeRecord[] {
    return [...this.db.getRange({ start: ['vol', ''], end: ['vol\u0000'] })].map((e) => e.value as VolumeRecord);
  }
  async putVolume(rec: VolumeRecord, durable: boolean): Promise<void> {
    if (durable) this.db.putSync(['vol', rec.name], rec);
    else await this.db.put(['vol', rec.name], rec);
  }
  allocateVolumeId(): number {
    return this.db.transactionSync(() => {
      const next = (this.db.get(['meta', 'nextVolumeId']) as number | undefined) ?? 1;
      this.db.putSync(['meta', 'nextVolumeId'], next + 1);
      return next;
    });
  }
  meta<T>(key: string): T | undefined {
    return this.db.get(['meta', key]) as T | undefined;
  }
  putMeta(key: string, value: unknown): void {
    if (value === undefined) this.db.removeSync(['meta', key]);
    else this.db.putSync(['meta', key], value);
  }
  loadBitmap(name: string, bm: DirtyBitmap): void {
    for (const { key, value } of this.db.getRange({
      start: ['bm', name, 0],
      end: ['bm', name, Number.MAX_SAFE_INTEGER],
    })) {
      const p = (key as any[])[2] as number;
      if (p < bm.pageCount) bm.loadPage(p, Buffer.from(value as Uint8Array));
    }
  }
  async saveBitmap(name: string, bm: DirtyBitmap, durable: Durability): Promise<void> {
    const pages = bm.takeChangedPages();
    const write = () => {
      for (const p of pages) {
        const img = bm.pageImage(p);
        if (img.length === 0) this.db.removeSync(['bm', name, p]);
        else this.db.putSync(['bm', name, p], img);
      }
    };
    // Async: committed and fdatasync'd by lmdb's writer thread, each page's image taken when the
    // transaction runs (the bitmap then, held clears included).
    try {
      if (pages.length > 0) {
        if (durable === true) this.db.transactionSync(write);
        else await this.db.transaction(write);
      }
      // Durable covers the pages an earlier save took and may still be writing (a lazy one, or
      // another 'flushed' one): bits set in memory before this call may be in those alone.
      if (durable !== false) await this.db.flushed;
    } catch (e) {
      // Not persisted: a later save must write these pages, though nothing changes in them
      // again (setting a bit already set marks no page).
      bm.returnChangedPages(pages);
      throw e;
    }
  }
  async close(): Promise<void> {
    await this.db.close();
  }
}

/** In-memory store with the same contract, for simulations: survives a simulated hub crash. */
export class MemoryStateStore implements StateStore {
  private recs = new Map<string, VolumeRecord>();
  private pages = new Map<string, Map<number, Buffer>>();
  private nextId = 1;
  private metas = new Map<string, unknown>();
  private landing = Promise.resolve(); // the 'flushed' saves not landed yet, in order
  meta<T>(key: string): T | undefined {
    return this.metas.get(key) as T | undefined;
  }
  putMeta(key: string, value: unknown) {
    if (value === undefined) this.metas.delete(key);
    else this.metas.set(key, JSON.parse(JSON.stringify(value)));
  }
  volume(name: string) {
    const r = this.recs.get(name);
    return r && { ...r };
  }
  volumes() {
    return [...this.recs.values()].map((r) => ({ ...r }));
  }
  async putVolume(rec: VolumeRecord) {
    this.recs.set(rec.name, { ...rec });
  }
  allocateVolumeId() {
    return this.nextId++;
  }
  loadBitmap(name: string, bm: DirtyBitmap) {
    for (const [p, img] of this.pages.get(name) ?? []) bm.loadPage(p, img);
  }
  async saveBitmap(name: string, bm: DirtyBitmap, durable: Durability = true) {
    const pages = bm.takeChangedPages();
    const write = () => {
      let m = this.pages.get(name);
      if (!m) this.pages.set(name, (m = new Map()));
      for (const p of pages) m.set(p, Buffer.from(bm.pageImage(p)));
    };
    // As lmdb's writer thread: 'flushed' saves land in order, in a later turn, with the images
    // of then (simulations interleave there); a durable save waits for those before it.
    if (durable === 'flushed')
      this.landing = this.landing.then(() => new Promise<void>((r) => setImmediate(r))).then(write);
    else write();
    if (durable !== false) await this.landing;
  }
  async close() {}
}
