// The hub's apply queue against the socket reader's slabs: a frame that waits in the queue must
// own its bytes (a view would pin a whole 256 KiB slab that maxQueueBytes does not count).
import { strict as assert } from 'node:assert';
import {
  Cmd, Cap, ALL_CAPS, IO_OK, FrameDecoder, decode, encodeHello, encodeReportVmVolumes, encodeProtectedWriteHead,
} from '../protocol';
import { Hub } from '../src/hub/hub';
import { MemoryStateStore } from '../storage/state';
import { MemoryVolume } from '../storage/volume';
import { silentLogger } from '../src/log';
import { waitFor } from './harness/util';

describe('hub apply queue', () => {
  it('a queued write owns its payload: later changes to the socket buffer it arrived in do not reach the replica', async () => {
    const disk = new MemoryVolume(1 << 20); // no writeSync: every write takes the queue
    const hub = new Hub({
      volumes: [{ name: 'V1', path: '/mem/V1R' }], store: new MemoryStateStore(), log: silentLogger(),
      openTarget: () => disk,
    });
    const out: Buffer[] = [];
    const session = hub.newSession({ send: (bufs) => out.push(Buffer.concat(bufs)), close: () => {}, pause: () => {} });
    const replies: { cmd: number; msg: any }[] = [];
    const fromHub = new FrameDecoder((cmd, p) => replies.push({ cmd, msg: decode(cmd, Buffer.from(p)) }));
    const toHub = new FrameDecoder((cmd, p) => session.receive(cmd, p));
    const drain = () => { for (const b of out.splice(0)) fromHub.push(b); };
    try {
      toHub.push(Buffer.concat([encodeHello(1, ALL_CAPS & ~Cap.FRAME_CRC, 0, 'vm'), encodeReportVmVolumes([{ name: 'V1', sizeBytes: 1 << 20 }])]));
      await waitFor('START_PROTECT', () => (drain(), replies.some((r) => r.cmd === Cmd.START_PROTECT)), 5000, 5);
      const id = replies.find((r) => r.cmd === Cmd.START_PROTECT)!.msg.volumeId;
      // Two writes in one read: the first starts applying at once, the second waits in the queue.
      const a = Buffer.alloc(4096, 0x5a), b = Buffer.alloc(4096, 0x6b);
      const frames = Buffer.concat([encodeProtectedWriteHead(id, 0, 8, IO_OK), a, encodeProtectedWriteHead(id, 8, 8, IO_OK), b]);
      const slab = Buffer.alloc(256 * 1024); // as src/net-read.ts reads: many frames share one slab
      frames.copy(slab, 100);
      toHub.push(slab.subarray(100, 100 + frames.length));
      slab.fill(0xee); // the slab's bytes change under a view (as they would if it were reused)
      const got = Buffer.alloc(8192);
      await waitFor('both writes applied', async () => {
        await disk.read(got, 0);
        return !got.every((x) => x === 0) && got[8191] !== 0;
      }, 5000, 5);
      assert.ok(got.equals(Buffer.concat([a, b])), 'the replica holds the bytes as received, the queued write too');
    } finally {
      await hub.endSession(session);
    }
  });
});
