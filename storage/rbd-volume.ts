// A recovery volume in a Ceph RBD image, through librbd in user space (native/rbd.c): reads,
// writes and flushes are librbd aio, so the event loop never waits on the cluster. Flush maps
// to rbd_aio_flush. Writes go through a window (write-window.ts): several in flight, landed
// before any flush completes; librbd copies each at submit (native/rbd.c forces it), so the
// caller may reuse its buffer once write() returns.
// `rbd:POOL/IMAGE[:conf=PATH][:id=USER]` names one, as QEMU's rbd: driver does.
import { BlockTarget, VolumeError } from './volume';
import { WriteWindow } from './write-window';
import { rbdAddon, rbdUnavailable, RbdHandle, RbdJob, RbdMeta, RbdOp } from '../native/rbd';

export interface RbdSpec {
  pool: string;
  image: string;
  conf: string | null;
  user: string | null; // cephx id without "client." (QEMU's id=)
}

/** `name` is an RBD image's (`rbd:…`), not a file's: never stat or open it as a path. */
export function isRbdName(name: string): boolean {
  return name.startsWith('rbd:');
}

/** Parse `rbd:POOL/IMAGE[:conf=PATH][:id=USER]`; null when `s` is not an rbd: name. */
export function parseRbdSpec(s: string): RbdSpec | null {
  if (!isRbdName(s)) return null;
  const [head, ...opts] = s.slice(4).split(':');
  const m = /^([^/\s]+)\/([^/\s@]+)$/.exec(head);
  if (!m) throw new Error(`${s}: expected rbd:POOL/IMAGE[:conf=PATH][:id=USER]`);
  const spec: RbdSpec = { pool: m[1], image: m[2], conf: null, user: null };
  for (const o of opts) {
    const eq = o.indexOf('=');
    const k = o.slice(0, eq),
      v = o.slice(eq + 1);
    if (eq <= 0 || !v) throw new Error(`${s}: option "${o}": expected key=value`);
    if (k === 'conf') spec.conf = v;
    else if (k === 'id') spec.user = v;
    else throw new Error(`${s}: unknown option "${k}" (conf=, id=)`);
  }
  return spec;
}

export function rbdName(spec: RbdSpec): string {
  return `rbd:${spec.pool}/${spec.image}`;
}

export class RbdVolume implements BlockTarget {
  private closed = false;
  private readonly window = new WriteWindow();
  private constructor(
    readonly spec: RbdSpec,
    private readonly h: RbdHandle,
    readonly sizeBytes: number,
    /** This open created the image (it held nothing before). */
    readonly created: boolean,
  ) {}

  /** Open (creating at createSize when missing and createSize > 0); takes no lock. */
  static async open(spec: RbdSpec, createSize = 0): Promise<RbdVolume> {
    const why = rbdUnavailable();
    if (why) throw new VolumeError(`${rbdName(spec)}: ${why}`, rbdName(spec));
    const user = spec.user === null ? null : `client.${spec.user}`;
    const open = (size: number) => rbdAddon!.open(spec.conf, user, spec.pool, spec.image, size);
    let created = false;
    let h: RbdHandle;
    try {
      h = await open(0);
    } catch (e) {
      // Missing: create it. Another creator racing us is fenced by the exclusive lock the hub
      // takes next; `created` then only means a full sync instead of a checksum resync.
      if ((e as { errno?: number }).errno !== -ENOENT || createSize <= 0) throw e;
      h = await open(createSize);
      created = true;
    }
    return new RbdVolume(spec, h, rbdAddon!.size(h), created);
  }

  /** The image's metadata `key` (null when unset). */
  metaGet(key: string): Promise<string | null> {
    return rbdAddon!.meta(this.h, RbdMeta.Get, key, null);
  }

  async metaSet(key: string, value: string): Promise<void> {
    await rbdAddon!.meta(this.h, RbdMeta.Set, key, value);
  }

  /** Who holds the image's exclusive lock ('' when nobody), for error messages. */
  async lockOwners(): Promise<string> {
    return (await rbdAddon!.meta(this.h, RbdMeta.LockOwners, '', null)) ?? '';
  }

  get path(): string {
    return rbdName(this.spec);
  }

  /** Take the image's exclusive lock: no other client (another hub) may write while we hold it. */
  async lock(): Promise<void> {
    await rbdAddon!.job(this.h, RbdJob.Lock);
  }

  async unlock(): Promise<void> {
    await rbdAddon!.job(this.h, RbdJob.Unlock);
  }

  async ownsLock(): Promise<boolean> {
    return (await rbdAddon!.job(this.h, RbdJob.IsOwner)) === 1;
  }

  /** A write failed in flight since the last flush (which throws it). */
  writesFailed(): boolean {
    return this.window.failed;
  }

  /** After the writes asked for before it that it overlaps; before those asked for after it. */
  read(buf: Buffer, offset: number): Promise<void> {
    return this.window.read(offset, offset + buf.length, () => this.io(RbdOp.Read, buf, offset));
  }

  /** read(), but returns at once: `then` runs once read, before any later overlapping write is submitted. */
  readThen(buf: Buffer, offset: number, then: (e: Error | null) => void): void {
    void this.window.read(offset, offset + buf.length, () =>
      this.io(RbdOp.Read, buf, offset).then(
        () => then(null),
        (e: Error) => then(e),
      ),
    );
  }

  /** Resolves once the write is on its way; a failure to land surfaces at the next flush. */
  write(buf: Buffer, offset: number): Promise<void> {
    const outside = this.outside(buf.length, offset);
    if (outside) return Promise.reject(outside);
    return this.window.add(
      offset,
      buf.length,
      () => this.io(RbdOp.Write, buf, offset),
      () => {
        // chained behind a read or write it overlaps: the caller's buffer is reused once we return
        const own = Buffer.from(buf);
        return () => this.io(RbdOp.Write, own, offset);
      },
    );
  }

  async flush(): Promise<void> {
    await this.window.drain();
    return this.io(RbdOp.Flush, null, 0);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.window.drain().finally(() => rbdAddon!.job(this.h, RbdJob.Close));
  }

  private outside(len: number, offset: number): VolumeError | null {
    if (offset >= 0 && offset + len <= this.sizeBytes) return null;
    return new VolumeError(
      `${this.path}: ${len} bytes at ${offset} outside the image (${this.sizeBytes})`,
      this.path,
      offset,
    );
  }

  private io(op: RbdOp, buf: Buffer | null, offset: number): Promise<void> {
    const len = buf ? buf.length : 0;
    const outside = buf && this.outside(len, offset);
    if (outside) return Promise.reject(outside);
    return new Promise((resolve, reject) => {
      const done = (r: number) => {
        if (r < 0 || (buf && op === RbdOp.Read && r !== len))
          reject(
            new VolumeError(
              `${this.path}: ${OP_NAMES[op]} of ${len} bytes at ${offset}: ${errnoText(r)}`,
              this.path,
              offset,
            ),
          );
        else resolve();
      };
      try {
        rbdAddon!.aio(this.h, op, buf, offset, done);
      } catch (e) {
        reject(new VolumeError(`${this.path}: ${(e as Error).message} at ${offset}`, this.path, offset));
      }
    });
  }
}

const OP_NAMES = ['read', 'write', 'flush'];
const ENOENT = 2;

function errnoText(r: number): string {
  return r < 0 ? `errno ${-r}` : `short read (${r} bytes)`;
}
