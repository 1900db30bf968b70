// src/net-read.ts over real loopback TCP: a slab chunk the parser disowns is reused, one it may
// still refer to is not, also when the parser failed partway (the socket can be resumed after:
// a hub session ends with sock.end(), and its flow control may resume reading meanwhile).
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import { readThrough } from '../src/net-read';
import { FrameDecoder, MAGIC, Cmd } from '../protocol';

function frame(len: number, pat: number): Buffer {
  const b = Buffer.alloc(12 + len);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt16LE(Cmd.PING, 4);
  b.writeUInt32LE(len, 8);
  for (let i = 0; i < len; i++) b[12 + i] = (pat + i * 13) & 0xff;
  return b;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A server reading through a FrameDecoder that keeps every payload view in `got`; a connected client. */
async function pair(got: Buffer[], onError: (e: Error, sock: net.Socket) => void) {
  const srv = net.createServer({ pauseOnConnect: true }, (raw) => {
    const dec = new FrameDecoder(
      (_c, p) => got.push(p),
      1 << 24,
      (n) => Buffer.alloc(n),
      1 << 20,
    );
    const sock: net.Socket = readThrough(raw, dec, (e) => onError(e, sock));
    sock.resume();
    srv.emit('reading', sock);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const reading = new Promise<net.Socket>((r) => srv.once('reading', r));
  const c = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1');
  c.setNoDelay(true);
  await new Promise((r) => c.once('connect', r));
  return { srv, c, server: await reading };
}

describe('net-read (loopback TCP)', () => {
  it('a payload view handed out before the parser threw keeps its bytes when reading resumes', async () => {
    const got: Buffer[] = [];
    const errors: string[] = [];
    const { srv, c, server } = await pair(got, (e, sock) => {
      errors.push(e.message);
      sock.pause();
      setTimeout(() => sock.resume(), 10); // as a session's flow control may, after the failure
    });
    c.write(Buffer.concat([frame(1000, 5), Buffer.alloc(12, 0x41)])); // a good frame, then a bad header
    await sleep(50);
    c.write(Buffer.alloc(5000, 0xee)); // read into the slab after the failure
    await sleep(100);
    c.destroy();
    server.destroy();
    srv.close();
    assert.equal(errors.length, 1, 'the bad header fails the parser once');
    assert.match(errors[0], /bad magic/);
    assert.equal(got.length, 1);
    assert.ok(got[0].equals(frame(1000, 5).subarray(12)), 'the view still holds its frame');
  });

  it('frames split anywhere, views kept to the end: none corrupted by slab reuse', async () => {
    const got: Buffer[] = [];
    const { srv, c } = await pair(got, (e) => assert.fail(e));
    let seed = 7;
    const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000;
    const sizes = Array.from({ length: 400 }, () => {
      const r = rnd();
      return r < 0.5 ? Math.floor(rnd() * 3000) : r < 0.9 ? Math.floor(rnd() * 70000) : Math.floor(rnd() * 1.2e6);
    });
    const all = Buffer.concat(sizes.map((n, i) => frame(n, i)));
    for (let at = 0; at < all.length;) {
      const k = Math.min(all.length - at, 1 + Math.floor(rnd() * (rnd() < 0.3 ? 50 : 150000)));
      if (!c.write(all.subarray(at, at + k))) await new Promise((r) => c.once('drain', r));
      at += k;
      if (rnd() < 0.1) await sleep(1); // separate reads
    }
    for (let i = 0; i < 500 && got.length < sizes.length; i++) await sleep(10);
    c.destroy();
    srv.close();
    assert.equal(got.length, sizes.length);
    got.forEach((p, i) =>
      assert.ok(p.equals(frame(sizes[i], i).subarray(12)), `frame ${i} (${sizes[i]} bytes) intact`),
    );
  });
});
