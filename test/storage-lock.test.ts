// storage/lock.ts in one process: flock is per open file, so a second lockExclusive on the same
// file is refused here as in another hub; release lets the next one in; the pid-file fallback
// refuses a live holder and takes over a dead one's file; a symlinked recovery volume shares its
// target's lock file.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { nativeAddon } from '../native/addon';
import { LockHeldError, flockLock, lockExclusive, lockHubState, pidFileLock, volumeLockPath } from '../storage/lock';
import { tmpdir } from './harness/util';

describe('hub locks (storage/lock.ts)', () => {
  let dir: string;
  beforeEach(() => (dir = tmpdir()));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('flock: a second lock on the file is refused naming the holder pid; after release it is taken', () => {
    const file = path.join(dir, 'rephub.lock');
    if (!nativeAddon?.flock) {
      // an addon without flock: the hub falls back to the pid file, tested below
      lockExclusive(file, 'state').release();
      return assert.equal(lockExclusive(file, 'state').kind, 'pidfile');
    }
    const first = flockLock(file, 'state');
    assert.equal(first.kind, 'flock');
    assert.throws(
      () => flockLock(file, 'state'),
      (e) => e instanceof LockHeldError && e.pid === process.pid && e.lockPath === file,
    );
    first.release();
    flockLock(file, 'state').release();
  });

  it('pid file: refuses a live holder, takes over a dead one, removes its own file on release', () => {
    const file = path.join(dir, 'V1R.lock');
    const first = pidFileLock(file, 'recovery volume V1R');
    assert.equal(first.kind, 'pidfile');
    assert.throws(() => pidFileLock(file, 'recovery volume V1R'), /recovery volume V1R is given twice to this hub/);
    first.release();
    assert.ok(!fs.existsSync(file));
    const gone = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    fs.writeFileSync(file, `${gone.stdout}\n`); // a hub killed with -9: its pid no longer runs
    const next = pidFileLock(file, 'recovery volume V1R');
    assert.equal(fs.readFileSync(file, 'utf8').trim(), String(process.pid));
    next.release();
  });

  it('lockHubState is all or nothing, and a symlink shares its target lock', () => {
    const rep = path.join(dir, 'V1R');
    const link = path.join(dir, 'V1R-link');
    fs.symlinkSync(rep, link); // dangling: the recovery volume is created later
    assert.equal(volumeLockPath(link), `${fs.realpathSync(dir)}/V1R.lock`);
    assert.equal(volumeLockPath(rep), `${fs.realpathSync(dir)}/V1R.lock`);
    const held = lockHubState(path.join(dir, 'a'), [rep]);
    assert.throws(() => lockHubState(path.join(dir, 'b'), [link]), LockHeldError);
    // the refused call released the --data lock it had taken: b is free
    lockHubState(path.join(dir, 'b'), []).forEach((l) => l.release());
    held.forEach((l) => l.release());
  });
});
