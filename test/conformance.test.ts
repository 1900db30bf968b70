// Conformance of the reference hub to protocol/SPEC.md's receiver rules, driven as an outside
// implementer's agent would: raw frames from the protocol/ encoders over a real TCP socket to an
// in-process hub (its listener and framer included). Each rule: the bad session gets the ERROR
// code the spec names and is closed, and a good session beside it keeps protecting (a write
// after the bad session ended reaches its replica and is acked). The SPEC §17 encodings are
// checked by test/protocol.test.ts ('protocol: SPEC.md test vectors'), which parses SPEC.md.
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import {
  Cap,
  Cmd,
  ErrorCode,
  FrameDecoder,
  FrameSealer,
  IO_OK,
  Limits,
  Message,
  SECTOR,
  decode,
  encodeAgentShutdown,
  encodeChecksumRes,
  encodeDirtyReport,
  encodeFlush,
  encodeHello,
  encodeProtectedWriteHead,
  encodeRemoteIoResHead,
  encodeReportVmVolumes,
  encodeIdentity,
  DIRTY_FINAL,
} from '../protocol';
import { Hub } from '../src/hub/hub';
import { MemoryStateStore } from '../storage/state';
import { MemoryVolume } from '../storage/volume';
import { silentLogger } from '../src/log';
import { waitFor } from './harness/util';

const SIZE = 1 << 20;
const PLAIN = Cap.WRITE_ACK | Cap.DIRTY_REPORT | Cap.FLUSH; // a v1 agent without FRAME_CRC, PING or CHECKSUM

/** A raw agent: frames out as given (sealed once `seal` is set), every hub frame decoded. */
class RawAgent {
  readonly got: Message[] = [];
  closed = false;
  sealer: FrameSealer | null = null;
  private readonly sock: net.Socket;
  private readonly dec = new FrameDecoder((cmd, p) => this.got.push(decode(cmd, Buffer.from(p))));

  private constructor(port: number) {
    this.sock = net.connect(port, '127.0.0.1');
    this.sock.on('data', (c) => this.dec.push(c));
    this.sock.on('error', () => undefined);
    this.sock.on('close', () => (this.closed = true));
  }

  static async open(port: number): Promise<RawAgent> {
    const a = new RawAgent(port);
    await new Promise<void>((r) => a.sock.once('connect', () => r()));
    return a;
  }

  send(...frames: Buffer[]): void {
    for (const f of frames) {
      const head = Buffer.from(f.subarray(0, 12));
      this.sock.write(Buffer.concat(this.sealer ? this.sealer.seal([head, f.subarray(12)]) : [f]));
    }
  }

  of<C extends Cmd>(cmd: C): Extract<Message, { cmd: C }>[] {
    return this.got.filter((m): m is Extract<Message, { cmd: C }> => m.cmd === cmd);
  }

  async volumeId(name: string): Promise<number> {
    const sp = await waitFor(`START_PROTECT ${name}`, () => this.of(Cmd.START_PROTECT).find((m) => m.name === name));
    return sp!.volumeId;
  }

  /** Answer the hub's sync reads with zeroes (the volumes here start zero). */
  serveReads(): () => void {
    let answered = 0;
    const t = setInterval(() => {
      const reqs = this.of(Cmd.REMOTE_IO_REQ);
      for (; answered < reqs.length; answered++) {
        const q = reqs[answered];
        const n = q.sizeSectors * SECTOR;
        this.send(Buffer.concat([encodeRemoteIoResHead(q.reqId, IO_OK, q.volumeId, n), Buffer.alloc(n)]));
      }
    }, 5);
    return () => clearInterval(t);
  }

  /** The session ended: the ERROR the hub sent before closing (asserted present). */
  async ended(): Promise<{ code: number; message: string }> {
    await waitFor('hub closes the session', () => this.closed, 15_000, 5);
    const errs = this.of(Cmd.ERROR);
    assert.ok(errs.length > 0, 'an ERROR frame precedes the close');
    return errs[errs.length - 1];
  }

  destroy(): void {
    this.sock.destroy();
  }
}

describe('conformance: the hub enforces SPEC.md receiver rules', function () {
  this.timeout(60_000);
  let hub: Hub;
  let port: number;
  let good: RawAgent;
  let goodId: number;
  let stopReads: () => void;
  const disks = new Map<string, MemoryVolume>();
  let pattern = 1;

  before(async () => {
    hub = new Hub({
      volumes: ['G', 'X'].map((name) => ({ name, path: `/mem/${name}R` })),
      store: new MemoryStateStore(),
      log: silentLogger(),
      session: { heartbeatMs: 100 },
      openTarget: (p: string) => {
        const d = new MemoryVolume(SIZE);
        disks.set(p, d);
        return d;
      },
    });
    ({ port } = await hub.listen('127.0.0.1', 0));
    good = await RawAgent.open(port);
    good.send(
      encodeHello(1, PLAIN, Limits.maxPayload, 'good-vm'),
      encodeReportVmVolumes([{ name: 'G', sizeBytes: SIZE }]),
    );
    goodId = await good.volumeId('G');
    stopReads = good.serveReads();
    const dirty = good.of(Cmd.START_PROTECT).length; // the hand-over report (SPEC §9)
    assert.equal(dirty, 1);
    good.send(encodeDirtyReport(goodId, 1, DIRTY_FINAL, []));
    await waitFor('G protecting', () => hub.replicas.get('G')!.state === 'protecting');
  });

  after(async () => {
    stopReads();
    good.destroy();
    await hub.close();
  });

  /** The good session still protects: a new write lands on G's replica and is acked. */
  async function goodUnaffected(): Promise<void> {
    assert.equal(good.closed, false, 'the good session is still open');
    const data = Buffer.alloc(4096, pattern++ & 0xff || 1);
    const seqBefore = good.of(Cmd.WRITE_ACK).length;
    good.send(Buffer.concat([encodeProtectedWriteHead(goodId, 8, 8, IO_OK), data]));
    await waitFor('good write acked', () => good.of(Cmd.WRITE_ACK).length > seqBefore);
    const disk = disks.get('/mem/GR')!;
    assert.ok(disk.data.subarray(4096, 8192).equals(data), 'the good write reached the replica');
    assert.equal(hub.replicas.get('G')!.state, 'protecting');
  }

  /** A v1 agent (caps given) that holds X; returns it and X's volume id. */
  async function holdX(caps: number): Promise<{ a: RawAgent; id: number }> {
    const a = await RawAgent.open(port);
    a.send(encodeHello(1, caps, Limits.maxPayload, 'bad-vm'));
    if (caps & Cap.FRAME_CRC) {
      await waitFor('hub HELLO', () => a.of(Cmd.HELLO).length > 0);
      a.sealer = new FrameSealer(); // SPEC §3.1: seal every frame after the hub's HELLO
    }
    a.send(encodeReportVmVolumes([{ name: 'X', sizeBytes: SIZE }]));
    return { a, id: await a.volumeId('X') };
  }

  async function expectClosed(a: RawAgent, code: number, text: RegExp): Promise<void> {
    const e = await a.ended();
    assert.equal(e.code, code, `ERROR code (${e.message})`);
    assert.match(e.message, text);
    await goodUnaffected();
  }

  describe('§3.1 FLAG_CRC only with FRAME_CRC, and then on every frame', () => {
    it('a checksummed frame from a legacy agent (no HELLO) is a protocol error', async () => {
      const a = await RawAgent.open(port);
      a.sealer = new FrameSealer();
      a.send(encodeReportVmVolumes([{ name: 'X', sizeBytes: SIZE }]));
      await expectClosed(a, ErrorCode.PROTOCOL, /FRAME_CRC was not agreed/);
    });

    it('a checksummed frame after a HELLO without FRAME_CRC is a protocol error', async () => {
      const a = await RawAgent.open(port);
      a.send(encodeHello(1, PLAIN, Limits.maxPayload, 'bad-vm'));
      await waitFor('hub HELLO', () => a.of(Cmd.HELLO).length > 0);
      a.sealer = new FrameSealer();
      a.send(encodeReportVmVolumes([{ name: 'X', sizeBytes: SIZE }]));
      await expectClosed(a, ErrorCode.PROTOCOL, /FRAME_CRC was not agreed/);
    });

    it('with FRAME_CRC agreed, sealed frames are accepted and a plain one is a protocol error', async () => {
      const { a, id } = await holdX(PLAIN | Cap.FRAME_CRC);
      assert.ok(id >= 0, 'sealed REPORT_VM_VOLUMES accepted');
      a.sealer = null;
      a.send(encodeFlush(0));
      await expectClosed(a, ErrorCode.PROTOCOL, /without checksum/);
    });
  });

  describe('§4 commands need their capability', () => {
    it('DIRTY_REPORT without DIRTY_REPORT is a protocol error', async () => {
      const { a, id } = await holdX(Cap.WRITE_ACK | Cap.FLUSH);
      a.send(encodeDirtyReport(id, 1, DIRTY_FINAL, [{ offsetSectors: 0, sizeSectors: 8 }]));
      await expectClosed(a, ErrorCode.PROTOCOL, /DIRTY_REPORT sent without its capability/);
    });

    it('FLUSH from a legacy agent is a protocol error', async () => {
      const a = await RawAgent.open(port);
      a.send(encodeReportVmVolumes([{ name: 'X', sizeBytes: SIZE }]));
      await a.volumeId('X');
      a.send(encodeFlush(0));
      await expectClosed(a, ErrorCode.PROTOCOL, /FLUSH sent without its capability/);
    });

    it('CHECKSUM_RES without CHECKSUM is a protocol error', async () => {
      const { a, id } = await holdX(PLAIN);
      a.send(encodeChecksumRes(1, IO_OK, id, Buffer.alloc(16)));
      await expectClosed(a, ErrorCode.PROTOCOL, /CHECKSUM_RES sent without its capability/);
    });

    it('CHECKSUM_RES with CHECKSUM but matching no outstanding CHECKSUM_REQ is a protocol error', async () => {
      const { a, id } = await holdX(PLAIN | Cap.CHECKSUM);
      a.send(encodeChecksumRes(0x7777, IO_OK, id, Buffer.alloc(16)));
      await expectClosed(a, ErrorCode.PROTOCOL, /req_id 30583 .*matches no outstanding CHECKSUM_REQ/);
    });
  });

  describe('§5.7 nothing but the heartbeat and ERROR after AGENT_SHUTDOWN', () => {
    it('a PROTECTED_WRITE after AGENT_SHUTDOWN is a protocol error and is not applied', async () => {
      const { a, id } = await holdX(PLAIN);
      a.send(
        encodeAgentShutdown(),
        Buffer.concat([encodeProtectedWriteHead(id, 0, 8, IO_OK), Buffer.alloc(4096, 0xab)]),
      );
      await expectClosed(a, ErrorCode.PROTOCOL, /PROTECTED_WRITE after AGENT_SHUTDOWN/);
      assert.ok(
        disks
          .get('/mem/XR')!
          .data.subarray(0, 4096)
          .every((b) => b !== 0xab),
        'the write after AGENT_SHUTDOWN did not reach the replica',
      );
    });
  });

  describe('§5.16 IDENTITY', () => {
    const inst = (b: number) => Buffer.alloc(16, b);
    const ids = (instance: Buffer) => encodeIdentity(instance, [{ name: 'X', lineage: [Buffer.alloc(16, 0x11)] }]);
    const hello = (a: RawAgent) => a.send(encodeHello(1, PLAIN | Cap.IDENTITY, Limits.maxPayload, 'bad-vm'));

    it('IDENTITY without IDENTITY is a protocol error', async () => {
      const a = await RawAgent.open(port);
      a.send(encodeHello(1, PLAIN, Limits.maxPayload, 'bad-vm'), ids(inst(1)));
      await expectClosed(a, ErrorCode.PROTOCOL, /IDENTITY sent without its capability/);
    });

    it('with IDENTITY agreed, REPORT_VM_VOLUMES before IDENTITY is a protocol error', async () => {
      const a = await RawAgent.open(port);
      hello(a);
      a.send(encodeReportVmVolumes([{ name: 'X', sizeBytes: SIZE }]));
      await expectClosed(a, ErrorCode.PROTOCOL, /REPORT_VM_VOLUMES before IDENTITY/);
    });

    it('a second IDENTITY is a protocol error', async () => {
      const a = await RawAgent.open(port);
      hello(a);
      a.send(ids(inst(1)), ids(inst(1)));
      await expectClosed(a, ErrorCode.PROTOCOL, /second IDENTITY/);
    });

    it('another live agent process is refused a held volume; a reconnect of the holder takes it over', async () => {
      const holder = await RawAgent.open(port);
      hello(holder);
      holder.send(ids(inst(0xa1)), encodeReportVmVolumes([{ name: 'X', sizeBytes: SIZE }]));
      await holder.volumeId('X');
      const twin = await RawAgent.open(port);
      hello(twin);
      twin.send(ids(inst(0xb2)), encodeReportVmVolumes([{ name: 'X', sizeBytes: SIZE }]));
      const e = await waitFor('VOLUME_REFUSED', () =>
        twin.of(Cmd.ERROR).find((m) => m.code === ErrorCode.VOLUME_REFUSED),
      );
      assert.match(
        e!.message,
        /volume X: held by another live agent a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1, connected from 127\.0\.0\.1:\d+/,
      );
      assert.equal(twin.closed, false, 'a refusal is not fatal');
      assert.equal(holder.closed, false, 'the holder keeps the volume');
      const again = await RawAgent.open(port); // the holder's process, reconnecting over a half-dead link
      hello(again);
      again.send(ids(inst(0xa1)), encodeReportVmVolumes([{ name: 'X', sizeBytes: SIZE }]));
      assert.ok((await again.volumeId('X')) >= 0, 'the same instance takes over at once');
      await waitFor('the old session is replaced', () => holder.closed, 15_000, 5);
      for (const a of [twin, again]) a.destroy();
      await goodUnaffected();
    });
  });

  describe('§5.3 REPORT_VM_VOLUMES', () => {
    it('a volume the hub has no recovery volume for is refused by name, and the session stays open', async () => {
      const a = await RawAgent.open(port);
      a.send(encodeHello(1, PLAIN, Limits.maxPayload, 'bad-vm'));
      a.send(encodeReportVmVolumes([{ name: 'NOPE', sizeBytes: SIZE }]));
      const e = await waitFor('VOLUME_REFUSED', () => a.of(Cmd.ERROR).find((m) => m.code === ErrorCode.VOLUME_REFUSED));
      assert.match(e!.message, /NOPE/);
      a.send(encodeReportVmVolumes([{ name: 'X', sizeBytes: SIZE }]));
      assert.ok((await a.volumeId('X')) >= 0, 'the same session goes on to protect a known volume');
      assert.equal(a.closed, false);
      a.destroy();
      await goodUnaffected();
    });
  });

  describe('§11 heartbeat timeout', () => {
    it('a silent agent with PING negotiated is closed with ERROR TIMEOUT, not IO', async () => {
      const a = await RawAgent.open(port);
      a.send(encodeHello(1, PLAIN | Cap.PING, Limits.maxPayload, 'silent-vm'));
      // it answers nothing (not even the hub's PINGs): 3 intervals of 100 ms later it is dead
      await expectClosed(a, ErrorCode.TIMEOUT, /silent for \d+ ms/);
    });
  });

  describe('§6 HELLO fields', () => {
    it('HELLO version 0 is a protocol error', async () => {
      const a = await RawAgent.open(port);
      a.send(encodeHello(0, PLAIN, Limits.maxPayload, 'v0-vm'));
      await expectClosed(a, ErrorCode.PROTOCOL, /version 0/);
      assert.equal(a.of(Cmd.HELLO).length, 0, 'no HELLO reply');
    });

    it('max_payload below 4096 is a protocol error; 4096 is accepted', async () => {
      const a = await RawAgent.open(port);
      a.send(encodeHello(1, PLAIN, 4095, 'small-vm'));
      await expectClosed(a, ErrorCode.PROTOCOL, /max_payload 4095 is below the minimum 4096/);
      const b = await RawAgent.open(port);
      b.send(encodeHello(1, PLAIN, 4096, 'small-vm'));
      await waitFor('HELLO reply', () => b.of(Cmd.HELLO).length > 0);
      assert.equal(b.closed, false);
      b.destroy();
      await goodUnaffected();
    });
  });
});
