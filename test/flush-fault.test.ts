// A recovery volume whose flush fails affects that volume only, as a write fault does: the real
// hub session keeps going (no ERROR to the agent), the other volume keeps protecting and its
// writes are acked, the failed volume goes to error with every region dirty (durably, before the
// ack), and once its flushes work again a new write brings it back through a resync. The agent is
// scripted (frames from protocol/); the recovery volumes are memory volumes under a test-only
// wrapper that fails flushes on demand.
import { strict as assert } from 'node:assert';
import {
  Cap,
  Cmd,
  DIRTY_FINAL,
  FrameDecoder,
  IO_OK,
  decode,
  encodeDirtyReport,
  encodeHello,
  encodeProtectedWriteHead,
  encodeRemoteIoResHead,
  encodeReportVmVolumes,
} from '../protocol';
import { Hub } from '../src/hub/hub';
import { MemoryStateStore } from '../storage/state';
import { MemoryVolume } from '../storage/volume';
import type { BlockTarget } from '../storage/volume';
import { silentLogger } from '../src/log';

const RS = 4096;
const SIZE = 16 * RS;

/** A memory volume whose flush fails while `failing` is set. */
class FlakyFlush implements BlockTarget {
  failing = false;
  readonly mem = new MemoryVolume(SIZE);
  get sizeBytes(): number {
    return SIZE;
  }
  read(buf: Buffer, off: number): Promise<void> {
    return this.mem.read(buf, off);
  }
  write(buf: Buffer, off: number): Promise<void> {
    return this.mem.write(buf, off);
  }
  async flush(): Promise<void> {
    if (this.failing) throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
  }
  async close(): Promise<void> {}
}

describe('a recovery volume flush failure (real hub session, scripted agent)', () => {
  it("is its own volume's: no ERROR, the other volume protects and is acked, the failed one resyncs whole", async () => {
    const store = new MemoryStateStore();
    const targets = new Map([
      ['V0R', new FlakyFlush()],
      ['V1R', new FlakyFlush()],
    ]);
    const hub = new Hub({
      volumes: [
        { name: 'V0', path: 'V0R' },
        { name: 'V1', path: 'V1R' },
      ],
      store,
      log: silentLogger(),
      regionSize: RS,
      session: { commitIntervalMs: 0, checkpointMs: 1e9 },
      openTarget: (p) => targets.get(p)!,
    });
    const img = { V0: Buffer.alloc(SIZE, 0x30), V1: Buffer.alloc(SIZE, 0x31) } as Record<string, Buffer>;
    const ids = new Map<number, string>();
    const got: { cmd: number; m: any }[] = [];
    const a2h: Buffer[] = [];
    let closed = false;
    const session = hub.newSession({
      send: (bufs) => agentIn.push(Buffer.concat(bufs)),
      close: () => (closed = true),
      pause: () => {},
    });
    const hubIn = new FrameDecoder((cmd, p) => session.receive(cmd, p));
    const agentIn = new FrameDecoder((cmd, p) => {
      const m: any = decode(cmd, Buffer.from(p));
      got.push({ cmd, m });
      if (cmd === Cmd.START_PROTECT) {
        ids.set(m.volumeId, m.name);
        a2h.push(encodeDirtyReport(m.volumeId, 1, DIRTY_FINAL, []));
      } else if (cmd === Cmd.REMOTE_IO_REQ) {
        const off = m.offsetSectors * 512,
          len = m.sizeSectors * 512;
        const data = img[ids.get(m.volumeId)!].subarray(off, off + len);
        a2h.push(Buffer.concat([encodeRemoteIoResHead(m.reqId, IO_OK, m.volumeId, len), data]));
      }
    });
    const pump = async () => {
      for (let i = 0; i < 2000; i++) {
        const f = a2h.shift();
        if (f) hubIn.push(f);
        await new Promise((r) => setImmediate(r));
        if (!f && i > 20) return;
      }
    };
    const idOf = (name: string) => [...ids].find(([, n]) => n === name)![0];
    let seq = 0;
    const write = (name: string, off: number, fill: number) => {
      const data = Buffer.alloc(RS, fill);
      data.copy(img[name], off);
      a2h.push(Buffer.concat([encodeProtectedWriteHead(idOf(name), off / 512, RS / 512, IO_OK), data]));
      return ++seq;
    };
    a2h.push(
      encodeHello(1, Cap.WRITE_ACK | Cap.DIRTY_REPORT, 1 << 25, 'vm'),
      encodeReportVmVolumes([
        { sizeBytes: SIZE, name: 'V0' },
        { sizeBytes: SIZE, name: 'V1' },
      ]),
    );
    await pump();
    const r0 = hub.replicas.get('V0')!,
      r1 = hub.replicas.get('V1')!;
    assert.equal(r0.state, 'protecting');
    assert.equal(r1.state, 'protecting');

    targets.get('V0R')!.failing = true;
    const before = got.length;
    write('V0', 0, 0x40);
    const last = write('V1', RS, 0x41);
    await pump();
    assert.equal(closed, false, 'the session stays open');
    assert.ok(!got.some((g) => g.cmd === Cmd.ERROR), 'no ERROR to the agent');
    const acks = got.filter((g) => g.cmd === Cmd.WRITE_ACK).map((g) => g.m.seq);
    assert.ok(acks.includes(last), `both writes acked (the failed volume's once it is all dirty): ${acks}`);
    assert.equal(r0.state, 'error');
    const reread = got
      .slice(before)
      .filter((g) => g.cmd === Cmd.REMOTE_IO_REQ && g.m.volumeId === idOf('V0'))
      .reduce((n, g) => n + g.m.sizeSectors * 512, 0);
    assert.equal(reread, SIZE, 'the failed volume is read again whole');
    const persisted = new (r0.bitmap!.constructor as any)(SIZE, RS);
    store.loadBitmap('V0', persisted);
    assert.equal(
      persisted.dirtyRegions,
      SIZE / RS,
      'durably (and its resync clears stay unpersisted while its flushes fail)',
    );
    assert.equal(r1.state, 'protecting', 'the other volume is untouched');
    assert.ok(targets.get('V1R')!.mem.data.equals(img.V1));

    assert.equal(r0.state, 'error', 'no way out of error while its flushes fail');
    targets.get('V0R')!.failing = false;
    write('V0', 2 * RS, 0x42); // its group commit's flush now succeeds
    await pump();
    write('V0', 3 * RS, 0x43); // and the volume leaves error: resync
    await pump();
    assert.equal(r0.state, 'protecting', 'resynced once it took writes again');
    assert.ok(targets.get('V0R')!.mem.data.equals(img.V0));
    await hub.endSession(session);
  });
});
