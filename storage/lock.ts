// Exclusive locks a hub holds for its lifetime: one on its --data directory, one on each recovery
// volume, so that a second hub on the same state or the same replica refuses to start instead of
// writing beside the first. With the native addon it is flock(LOCK_EX|LOCK_NB) on a lock file:
// the kernel drops it when the process ends, kill -9 included, so no stale lock blocks a restart.
// The holder writes its pid into the file, only to name it in the error.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { nativeAddon } from '../native/addon';

/** Another process holds the lock: `path` is the lock file, `pid` its holder when known. */
export class LockHeldError extends Error {
  constructor(
    readonly lockPath: string,
    readonly what: string,
    readonly pid: number | undefined,
  ) {
    super(
      pid === process.pid
        ? `${what} is given twice to this hub (lock ${lockPath})`
        : `${what} is in use by another process${pid ? ` (pid ${pid})` : ''}: lock ${lockPath} is held; ` +
            'two hubs on the same state or recovery volume would overwrite each other',
    );
  }
}

export interface FileLock {
  readonly path: string;
  /** 'flock', or 'pidfile' when the addon is missing (weaker, see pidFileLock). */
  readonly kind: 'flock' | 'pidfile';
  release(): void;
}

function holderPid(file: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

export function flockLock(file: string, what: string): FileLock {
  const a = nativeAddon!;
  // A device (a recovery volume on a block device) is locked itself, opened read-only and never
  // written: the pid goes only into a lock file of our own.
  const ownFile = fs.statSync(file, { throwIfNoEntry: false })?.isFile() ?? true;
  const fd = ownFile ? fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644) : fs.openSync(file, 'r');
  const r = a.flock!(fd, a.LOCK_EX! | a.LOCK_NB!);
  if (r !== 0) {
    fs.closeSync(fd);
    if (r === -a.EWOULDBLOCK!) throw new LockHeldError(file, what, ownFile ? holderPid(file) : undefined);
    throw new Error(`cannot lock ${file} (${what}): errno ${-r}`);
  }
  // ours now: the pid is for the error message of a later contender, not part of the lock
  if (ownFile) {
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid}\n`, 0);
  }
  let open = true;
  return {
    path: file,
    kind: 'flock',
    release() {
      if (!open) return;
      open = false;
      fs.closeSync(fd); // closing the only fd of this open file drops the flock
    },
  };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // exists, someone else's
  }
}

/**
 * Without the addon: a pid file, created whole (written beside it, then link(2)ed into place,
 * which fails if the file exists: an O_EXCL create that is never seen half written), and taken
 * over when its pid is gone. Weaker than flock: a pid reused by an unrelated process after
 * kill -9 keeps the lock held (the operator must remove the file), two contenders clearing the
 * same stale file at once can both win, a pid names no process in another pid namespace or on
 * another host (shared storage), and a lock file left by a crash stays on disk. It still stops
 * the common mistake: a second hub started by hand.
 */
export function pidFileLock(file: string, what: string): FileLock {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${process.pid}\n`, { mode: 0o644 });
  try {
    for (let attempt = 0; ; attempt++) {
      // a bound: each turn cleared one stale file; a third means someone keeps recreating it
      if (attempt >= 3) throw new LockHeldError(file, what, holderPid(file));
      try {
        fs.linkSync(tmp, file);
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      const pid = holderPid(file);
      if (pid !== undefined && (pid === process.pid || alive(pid))) throw new LockHeldError(file, what, pid);
      fs.rmSync(file, { force: true }); // stale: its hub is gone (or the file is not ours at all)
    }
  } finally {
    fs.rmSync(tmp, { force: true });
  }
  let held = true;
  return {
    path: file,
    kind: 'pidfile',
    release() {
      if (!held) return;
      held = false;
      if (holderPid(file) === process.pid) fs.rmSync(file, { force: true });
    },
  };
}

/** Takes the exclusive lock on `file` (created if missing) or throws LockHeldError. */
export function lockExclusive(file: string, what: string): FileLock {
  return nativeAddon?.flock ? flockLock(file, what) : pidFileLock(file, what);
}

/** The lock file of a hub's --data directory. */
export const dataLockPath = (dataDir: string): string => path.join(dataDir, 'rephub.lock');

/**
 * What to lock for a recovery volume. A block device is locked itself (flock locks its inode, and
 * a device node always exists; nothing is created in /dev). A regular file is locked through
 * `<path>.lock` beside it: the file itself may not exist yet, and creating it early would lose the
 * "this hub created it sparse" knowledge. The path is resolved first, so a symlink and its
 * target share one lock. (Two hard links to one file still have two lock files.)
 */
export function volumeLockPath(volumePath: string): string {
  const real = resolveVolume(volumePath);
  if (nativeAddon?.flock && fs.statSync(real, { throwIfNoEntry: false })?.isBlockDevice()) return real;
  return `${real}.lock`;
}

/** realpath, also for a volume not created yet, through a symlink that dangles until then. */
function resolveVolume(volumePath: string): string {
  let p = path.resolve(volumePath);
  for (let hops = 0; hops < 40; hops++) {
    try {
      return fs.realpathSync(p);
    } catch {
      if (!fs.lstatSync(p, { throwIfNoEntry: false })?.isSymbolicLink()) break;
      p = path.resolve(path.dirname(p), fs.readlinkSync(p));
    }
  }
  return path.join(fs.realpathSync(path.dirname(p)), path.basename(p));
}

/**
 * A hub's locks, taken before it opens LMDB or any recovery volume: --data first, then each
 * recovery volume. All or nothing: on a refusal the ones already taken are released.
 */
export function lockHubState(dataDir: string, volumePaths: readonly string[]): FileLock[] {
  fs.mkdirSync(dataDir, { recursive: true });
  const taken: FileLock[] = [];
  try {
    taken.push(lockExclusive(dataLockPath(dataDir), `hub state directory ${dataDir}`));
    for (const p of volumePaths) taken.push(lockExclusive(volumeLockPath(p), `recovery volume ${p}`));
    return taken;
  } catch (e) {
    for (const l of taken) l.release();
    throw e;
  }
}
