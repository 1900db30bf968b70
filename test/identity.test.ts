// Identities, unit level: the dirty log's header (lineage, image fingerprint, clean flag) across
// opens and closes, the agent's decision at open, and the hub's comparisons of a record with the
// agent's lineage and with the recovery file (storage/volume-identity.ts, src/hub/replica-identity.ts).
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DirtyLog } from '../storage/dirty-log';
import {
  Fingerprint,
  MAX_LINEAGE,
  UUID_BYTES,
  fileChange,
  fingerprintOf,
  readLogIdentity,
  storeFingerprint,
} from '../storage/volume-identity';
import { MAX_LINEAGE as WIRE_MAX_LINEAGE, UUID_BYTES as WIRE_UUID_BYTES } from '../protocol';
import { peerChange, recoveryFileChange, recoveryFileNow } from '../src/hub/replica-identity';
import type { VolumeRecord } from '../storage/state';
import { tmpdir } from './harness/util';

const SIZE = 1 << 20,
  REGION = 65536;
const fp = (o: Partial<Fingerprint> = {}): Fingerprint => ({
  dev: 10n,
  ino: 1234n,
  size: BigInt(SIZE),
  mtimeNs: 1_700_000_000_000_000_000n,
  ctimeNs: 1_700_000_000_000_000_001n,
  ...o,
});

describe('identity: the dirty log header', () => {
  let dir: string, file: string;
  beforeEach(() => {
    dir = tmpdir();
    file = path.join(dir, 'V1.dirty');
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const open = () => DirtyLog.open(file, SIZE, REGION);

  it('the wire and the log agree on UUID size and lineage length', () => {
    assert.equal(UUID_BYTES, WIRE_UUID_BYTES);
    assert.equal(MAX_LINEAGE, WIRE_MAX_LINEAGE);
  });

  it('a fresh log starts a lineage of one; a clean close keeps it and the exact fingerprint', () => {
    const a = open();
    assert.equal(a.previous, null);
    const r = a.beginRun(fp());
    assert.equal(r.change, null);
    assert.equal(r.lineage.length, 1);
    for (let r = 0; r < a.bitmap.regions; r++) a.clear(r); // handed over
    a.close(() => fp());
    const b = open();
    assert.equal(b.fresh, false, 'the identity fields do not break the log header');
    assert.equal(b.bitmap.dirtyBytes, 0);
    assert.deepEqual(b.previous, { clean: true, lineage: r.lineage, image: fp() });
    const r2 = b.beginRun(fp());
    assert.equal(r2.change, null, 'the same image: its history continues');
    assert.equal(r2.lineage.length, 2);
    assert.ok(r2.lineage[1].equals(r.lineage[0]), 'the previous run is the first ancestor');
    assert.ok(!r2.lineage[0].equals(r.lineage[0]), 'each run gets a new current UUID');
  });

  it('the header is unclean while the agent runs: a crash leaves only the inode comparable', () => {
    const a = open();
    const r = a.beginRun(fp());
    // no close: a kill -9
    const b = open();
    assert.equal(b.previous!.clean, false);
    const moved = b.beginRun(fp({ mtimeNs: 5n, ctimeNs: 6n, size: 7n }));
    assert.equal(moved.change, null, 'after a crash our own writes moved mtime/ctime: not a change');
    assert.ok(moved.lineage[1].equals(r.lineage[0]));
    const c = open();
    const other = c.beginRun(fp({ ino: 99n }));
    assert.match(other.change!, /a different file .*inode 1234 -> .*inode 99/);
    assert.equal(other.lineage.length, 1, 'a different image starts a new lineage');
  });

  for (const [what, change, re] of [
    ['ctime (truncated and re-extended)', { ctimeNs: 9n }, /ctime/],
    ['mtime', { mtimeNs: 9n }, /mtime/],
    ['size', { size: 512n }, /size 1048576 -> 512/],
  ] as const) {
    it(`after a clean close, a different ${what} is a change: new lineage`, () => {
      const a = open();
      a.beginRun(fp());
      a.close(() => fp());
      const r = open().beginRun(fp(change));
      assert.match(r.change!, re);
      assert.equal(r.lineage.length, 1);
    });
  }

  it('the lineage keeps at most MAX_LINEAGE UUIDs', () => {
    let last: Buffer[] = [];
    for (let i = 0; i < MAX_LINEAGE + 3; i++) {
      const l = open();
      last = l.beginRun(fp()).lineage;
      l.close(() => fp());
    }
    assert.equal(last.length, MAX_LINEAGE);
  });

  it('a log written before identities (zeroed fields) opens with no identity: a new lineage', () => {
    const a = open();
    a.beginRun(fp());
    a.close(() => fp());
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, Buffer.alloc(200), 0, 200, 20); // what an older agent wrote past byte 20
    fs.closeSync(fd);
    const b = open();
    assert.equal(b.fresh, false);
    assert.equal(b.previous, null);
    assert.equal(readLogIdentity(Buffer.alloc(4096)), null);
    const r = b.beginRun(fp());
    assert.equal(r.change, null);
    assert.equal(r.lineage.length, 1);
  });
});

describe('identity: comparisons', () => {
  it('fileChange: inode always, size/mtime/ctime only after a clean close', () => {
    assert.equal(fileChange(fp(), fp(), true), null);
    assert.match(fileChange(fp(), fp({ dev: 11n }), false)!, /a different file/);
    assert.equal(fileChange(fp(), fp({ ctimeNs: 1n }), false), null);
    assert.match(fileChange(fp(), fp({ ctimeNs: 1n }), true)!, /changed while nothing watched it \(ctime/);
  });

  const rec = (o: Partial<VolumeRecord> = {}): VolumeRecord => ({
    name: 'V1',
    id: 1,
    sizeBytes: SIZE,
    regionSize: REGION,
    generation: 3,
    state: 'stopped',
    cleanShutdown: true,
    syncPass: 0,
    syncCursor: 0,
    ...o,
  });
  const u = (b: number) => Buffer.alloc(16, b);

  it('peerChange: the UUID the record follows must be in the agent lineage', () => {
    const r = rec({ peerUuid: u(1).toString('hex') });
    assert.equal(peerChange(r, [u(1)]), null, 'the same run (reconnect)');
    assert.equal(peerChange(r, [u(2), u(1)]), null, 'a later run of the same image');
    assert.match(
      peerChange(r, [u(3), u(2)])!,
      /identity changed: the replica follows 0101.*, the agent's volume is 0303/,
    );
    assert.equal(peerChange(r, null), null, 'an agent without the capability: nothing to compare');
    assert.equal(peerChange(rec(), [u(3)]), null, 'a record from before identities adopts the agent');
  });

  it('recoveryFileChange: missing, replaced, or changed after a clean stop', () => {
    const dir = tmpdir();
    try {
      const a = path.join(dir, 'V1R'),
        b = path.join(dir, 'V2R');
      fs.writeFileSync(a, Buffer.alloc(4096, 1));
      fs.writeFileSync(b, Buffer.alloc(4096, 2));
      const clean = rec({ recoveryFile: recoveryFileNow(a, true) });
      assert.equal(recoveryFileChange(clean, a), null);
      assert.match(
        recoveryFileChange(clean, b)!,
        /V2R \(the record knew .*V1R\) is not the one the record knew: a different file/,
      );
      assert.match(recoveryFileChange(clean, path.join(dir, 'new'))!, /does not exist, but the record says .*V1R held/);
      assert.equal(recoveryFileChange(rec(), path.join(dir, 'new')), null, 'no fingerprint: nothing to compare');
      const later = { ...fingerprintOf(a)!, mtimeNs: 1n };
      const touched = rec({ recoveryFile: { path: a, fp: storeFingerprint(later), clean: true } });
      assert.match(recoveryFileChange(touched, a)!, /changed while nothing watched it \(mtime/);
      const running = rec({ recoveryFile: { path: a, fp: storeFingerprint(later), clean: false } });
      assert.equal(recoveryFileChange(running, a), null, 'after a hub crash only the inode tells');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
