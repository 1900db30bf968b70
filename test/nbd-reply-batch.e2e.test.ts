// The NBD server gathers the simple replies of one event-loop turn into one socket write
// (src/nbd/connection.ts) and parses request headers in place with the handle as two 32-bit
// halves (protocol/nbd.ts). Over a real TCP socket, with a raw client that pipelines requests in
// one send: every request gets exactly one reply carrying its full 64-bit handle, a READ's reply
// keeps its data right after its header when simple replies of the same turn precede it, an
// offset at or past 2^53 is refused (not wrapped), and a client's DISC after pipelined writes
// still gets every reply before the server ends the connection.
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import { NbdServer } from '../src/nbd/server';
import { ExportRegistry, TargetExport } from '../src/nbd/exports';
import { MemoryVolume } from '../storage/volume';
import { REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, NbdCmd } from '../protocol/nbd';
import { makeLogger } from '../src/log';

const SIZE = 1 << 20;

function request(type: number, hi: number, lo: number, offHi: number, offLo: number, length: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(0, 4);
  b.writeUInt16BE(type, 6);
  b.writeUInt32BE(hi, 8);
  b.writeUInt32BE(lo, 12);
  b.writeUInt32BE(offHi, 16);
  b.writeUInt32BE(offLo, 20);
  b.writeUInt32BE(length, 24);
  return b;
}

interface Reply {
  error: number;
  handle: string;
  data?: Buffer;
}

/** A raw fixed-newstyle client: EXPORT_NAME with NO_ZEROES, then the caller's bytes. */
class RawClient {
  private readonly sock: net.Socket;
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  ended = false;

  constructor(port: number) {
    this.sock = net.connect(port, '127.0.0.1');
    this.sock.on('data', (c) => {
      this.buf = Buffer.concat([this.buf, c]);
      this.wake();
    });
    this.sock.on('end', () => {
      this.ended = true;
      this.wake();
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  async take(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`connection ended with ${this.buf.length} of ${n} bytes`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  async attach(name: string): Promise<void> {
    await this.take(18); // NBDMAGIC, IHAVEOPT, handshake flags
    const opt = Buffer.alloc(16 + name.length);
    opt.write('IHAVEOPT', 0, 'latin1');
    opt.writeUInt32BE(1, 8); // NBD_OPT_EXPORT_NAME
    opt.writeUInt32BE(name.length, 12);
    opt.write(name, 16, 'latin1');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3, 0); // FIXED_NEWSTYLE | NO_ZEROES
    this.sock.write(Buffer.concat([flags, opt]));
    await this.take(10); // size, transmission flags
  }

  send(b: Buffer): void {
    this.sock.write(b);
  }

  /** One simple reply; `dataFor` says how many data bytes follow a reply to that handle. */
  async reply(dataFor: (handle: string) => number): Promise<Reply> {
    const h = await this.take(16);
    assert.equal(h.readUInt32BE(0), SIMPLE_REPLY_MAGIC, 'a simple reply starts with its magic');
    const handle = h.subarray(8, 16).toString('hex');
    const error = h.readUInt32BE(4);
    const n = error ? 0 : dataFor(handle);
    return { error, handle, data: n ? Buffer.from(await this.take(n)) : undefined };
  }

  close(): void {
    this.sock.destroy();
  }
}

describe('NBD replies gathered per turn, headers parsed in place (real socket)', function () {
  this.timeout(30000);
  let server: NbdServer;
  let port: number;
  let volume: MemoryVolume;

  beforeEach(async () => {
    const registry = new ExportRegistry();
    volume = new MemoryVolume(SIZE);
    registry.add(new TargetExport('V1', volume));
    server = new NbdServer(registry, makeLogger('nbd-reply-batch', 'error'));
    port = (await server.listen('127.0.0.1', 0)).port;
  });
  afterEach(async () => {
    await server.close();
  });

  it('pipelined writes, a read among them and an offset past 2^53: one reply each, full handles, data intact', async () => {
    const c = new RawClient(port);
    await c.attach('V1');
    const expected = new Map<string, { error: boolean; read?: Buffer }>();
    const parts: Buffer[] = [];
    const handleOf = (i: number): [number, number] => [0x80000000 + i * 0x01010101, 0xfedcba98 - i];
    const hex = (hi: number, lo: number) => {
      const b = Buffer.alloc(8);
      b.writeUInt32BE(hi, 0);
      b.writeUInt32BE(lo, 4);
      return b.toString('hex');
    };
    for (let i = 0; i < 40; i++) {
      const [hi, lo] = handleOf(i);
      const data = Buffer.alloc(4096, i + 1);
      parts.push(request(NbdCmd.WRITE, hi, lo, 0, i * 4096, 4096), data);
      expected.set(hex(hi, lo), { error: false });
    }
    // a read of a block no write of this batch touches, after them in the same send
    await volume.write(Buffer.alloc(4096, 0x5a), 512 * 1024);
    parts.push(request(NbdCmd.READ, 7, 0xffffffff, 0, 512 * 1024, 4096));
    expected.set(hex(7, 0xffffffff), { error: false, read: Buffer.alloc(4096, 0x5a) });
    // offset 2^53 (hi 0x200000) and 2^64 - 4096: past the export either way, never wrapped onto it
    parts.push(request(NbdCmd.WRITE, 8, 1, 0x200000, 0, 4096), Buffer.alloc(4096, 0xee));
    expected.set(hex(8, 1), { error: true });
    parts.push(request(NbdCmd.WRITE, 8, 2, 0xffffffff, 0xfffff000, 4096), Buffer.alloc(4096, 0xee));
    expected.set(hex(8, 2), { error: true });
    c.send(Buffer.concat(parts));

    const seen = new Set<string>();
    for (let k = 0; k < expected.size; k++) {
      const r = await c.reply((h) => (expected.get(h)?.read ? 4096 : 0));
      const want = expected.get(r.handle);
      assert.ok(want, `a reply to handle ${r.handle}, which no request carried`);
      assert.ok(!seen.has(r.handle), `one reply per request (handle ${r.handle} twice)`);
      seen.add(r.handle);
      assert.equal(r.error !== 0, want.error, `handle ${r.handle}: error ${r.error}`);
      if (want.read) assert.ok(r.data && r.data.equals(want.read), 'the read reply carries its data');
    }
    for (let i = 0; i < 40; i++) {
      const got = Buffer.alloc(4096);
      await volume.read(got, i * 4096);
      assert.ok(got.equals(Buffer.alloc(4096, i + 1)), `write ${i} landed`);
    }
    c.close();
  });

  it('writes then DISC in one send: every reply arrives before the server ends the connection', async () => {
    const c = new RawClient(port);
    await c.attach('V1');
    const parts: Buffer[] = [];
    for (let i = 0; i < 20; i++) parts.push(request(NbdCmd.WRITE, 1, i, 0, i * 4096, 4096), Buffer.alloc(4096, 3));
    parts.push(request(NbdCmd.DISC, 0, 0, 0, 0, 0));
    c.send(Buffer.concat(parts));
    const handles = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const r = await c.reply(() => 0);
      assert.equal(r.error, 0);
      handles.add(r.handle);
    }
    assert.equal(handles.size, 20);
    await c.take(1).then(
      () => assert.fail('nothing after the last reply'),
      (e: Error) => assert.match(e.message, /ended/),
    );
    c.close();
  });
});

describe('an NBD client that closes with a write still running (real socket)', function () {
  this.timeout(30000);

  it('stays attached until the write has landed: whenIdle does not let a stop go on before it', async () => {
    // A failover-test stop or a failback waits for the export's clients (ExportRegistry.whenIdle)
    // and then removes it; a client counted gone at its socket's close, its last write still
    // running, let the action go on while that write landed (the view discarded under it, or a
    // promoted volume's changes collected without it).
    let release!: () => void;
    let started!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const writing = new Promise<void>((r) => (started = r));
    class GatedVolume extends MemoryVolume {
      override async write(buf: Buffer, offset: number): Promise<void> {
        started();
        await gate;
        await super.write(buf, offset);
      }
    }
    const registry = new ExportRegistry();
    const volume = new GatedVolume(SIZE);
    registry.add(new TargetExport('V1', volume));
    const server = new NbdServer(registry, makeLogger('nbd-close-inflight', 'error'));
    const { port } = await server.listen('127.0.0.1', 0);
    try {
      const c = new RawClient(port);
      await c.attach('V1');
      c.send(Buffer.concat([request(NbdCmd.WRITE, 1, 1, 0, 8192, 4096), Buffer.alloc(4096, 0x77)]));
      await writing;
      c.close();
      await new Promise((r) => setTimeout(r, 200)); // the server reads the close meanwhile
      assert.equal(registry.attachedClients('V1'), 1, 'the closed client still counts: its write runs');
      await registry.whenIdle(['V1'], 100); // the timeout, not idle
      assert.equal(registry.attachedClients('V1'), 1);
      const idle = registry.whenIdle(['V1'], 10_000);
      release();
      await idle;
      assert.equal(registry.attachedClients('V1'), 0, 'gone once its write has landed');
      assert.equal(volume.data.readUInt8(8192), 0x77, 'the write landed before the client was let go');
    } finally {
      release();
      await server.close();
    }
  });
});
