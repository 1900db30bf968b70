// Loader of the optional RBD addon (build/Release/rephub_rbd.node, from native/rbd.c). The
// addon itself loads librbd with dlopen on first use, so it is built everywhere and only an
// rbd: volume needs Ceph's libraries.
import * as path from 'node:path';

/** An open image (opaque). */
export type RbdHandle = { readonly __rbd: unique symbol };

export const enum RbdJob {
  Lock = 0,
  Unlock = 1,
  Close = 2,
  IsOwner = 3,
}
export const enum RbdOp {
  Read = 0,
  Write = 1,
  Flush = 2,
}

/** What native/rbd.c exports. */
export interface RbdAddon {
  /** '' when librbd loads, else why not. */
  available(): string;
  /** Connect and open pool/image (creating it at createSize bytes when missing and createSize > 0). */
  open(conf: string | null, user: string | null, pool: string, image: string, createSize: number): Promise<RbdHandle>;
  job(h: RbdHandle, job: RbdJob): Promise<number>;
  /** Start an aio; cb gets the bytes done or -errno. Throws when it cannot be started. */
  aio(h: RbdHandle, op: RbdOp, buf: Buffer | null, offset: number, cb: (result: number) => void): void;
  size(h: RbdHandle): number;
  /** kind 0: image metadata `key` (null when unset); 1: set it to `value`; 2: the lock's owners ('' none). */
  meta(h: RbdHandle, kind: RbdMeta, key: string, value: string | null): Promise<string | null>;
}

export const enum RbdMeta {
  Get = 0,
  Set = 1,
  LockOwners = 2,
}

function load(): { addon: RbdAddon | null; error: string } {
  try {
    const file = path.join(__dirname, '..', '..', 'build', 'Release', 'rephub_rbd.node');
    return { addon: require(file) as RbdAddon, error: '' };
  } catch (e) {
    return { addon: null, error: (e as Error).message };
  }
}

const loaded = load();

/** The addon, or null when it is not built. */
export const rbdAddon: RbdAddon | null = loaded.addon;

/** Why rbd: volumes cannot be used here ('' when they can). */
export function rbdUnavailable(): string {
  if (!loaded.addon) return `the RBD addon is not built (${loaded.error}); run npm install`;
  return loaded.addon.available();
}
