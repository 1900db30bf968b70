// src/net-read.ts over real loopback TCP: a slab chunk the parser disowns is reused, one it may
// still refer to is not, also when the parser failed partway (the socket can be resumed after:
// a hub session ends with sock.end(), and its flow control may resume reading meanwhile).
// The same over TLS (readThroughTls): records decrypted straight into the parser's buffers, and
// what was decrypted before the switch delivered first.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { readThrough, readThroughTls, type ReadSink } from '../src/net-read';
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

/** Random frame sizes (most small, some past a 1 MiB pool buffer) sent in random pieces. */
async function sendSplit(c: net.Socket, count: number): Promise<number[]> {
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000;
  const sizes = Array.from({ length: count }, () => {
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
  return sizes;
}

async function arrived(got: Buffer[], sizes: number[], first = 0): Promise<void> {
  for (let i = 0; i < 500 && got.length < first + sizes.length; i++) await sleep(10);
  assert.equal(got.length, first + sizes.length);
  sizes.forEach((n, i) => assert.ok(got[first + i].equals(frame(n, i).subarray(12)), `frame ${i} (${n} bytes) intact`));
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
    const sizes = await sendSplit(c, 400);
    await arrived(got, sizes);
    c.destroy();
    srv.close();
  });
});

describe('net-read over TLS (loopback)', () => {
  let dir: string;
  let creds: { key: Buffer; cert: Buffer; ca: Buffer };
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'net-read-tls-'));
    execFileSync('bash', [path.join(__dirname, '../../tools/make-certs.sh'), dir, '127.0.0.1']);
    const r = (f: string) => fs.readFileSync(path.join(dir, f));
    creds = { key: r('hub.key'), cert: r('hub.pem'), ca: r('ca.pem') };
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** A TLS server that switches each socket's reads over `delayMs` after the handshake. */
  async function tlsPair(got: Buffer[], delayMs: number) {
    const counts = { direct: 0, chunk: 0, switched: false, waiting: 0 };
    const srv = tls.createServer({ key: creds.key, cert: creds.cert }, (sock) => {
      const dec = new FrameDecoder(
        (_c, p) => got.push(p),
        1 << 24,
        (n) => Buffer.alloc(n),
        1 << 20,
      );
      const sink: ReadSink = {
        target: () => dec.target(),
        direct: (n) => (counts.direct++, dec.direct(n)),
        chunk: (b) => (counts.chunk++, dec.chunk(b)),
      };
      setTimeout(() => {
        counts.waiting = sock.readableLength;
        counts.switched = readThroughTls(sock, sink, (e) => assert.fail(e));
        sock.resume();
      }, delayMs);
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const c = tls.connect({ port: (srv.address() as net.AddressInfo).port, host: '127.0.0.1', ca: creds.ca });
    await new Promise((r) => c.once('secureConnect', r));
    return { srv, c, counts };
  }

  it('frames split anywhere arrive intact, large payloads decrypted straight into their buffers', async () => {
    const got: Buffer[] = [];
    const { srv, c, counts } = await tlsPair(got, 0);
    await sleep(20);
    const sizes = await sendSplit(c, 200);
    await arrived(got, sizes);
    c.destroy();
    srv.close();
    assert.ok(counts.switched, 'this Node keeps onread where readThroughTls looks');
    assert.ok(counts.direct > 0, 'reads landed in frame buffers (the stream path never calls direct)');
  });

  it('what was decrypted before the switch comes first, then the rest in order', async () => {
    const got: Buffer[] = [];
    const { srv, c, counts } = await tlsPair(got, 150);
    c.write(Buffer.concat([frame(100, 0), frame(70000, 1), frame(5, 2).subarray(0, 9)])); // waits in the stream
    await sleep(50);
    assert.equal(got.length, 0, 'nothing read before the switch');
    await sleep(150);
    c.write(frame(5, 2).subarray(9));
    c.write(Buffer.concat([frame(3000, 3), frame(1 << 20, 4)]));
    await arrived(got, [100, 70000, 5, 3000, 1 << 20]);
    c.destroy();
    srv.close();
    assert.ok(counts.switched && counts.direct > 0);
    assert.ok(counts.waiting > 0, 'bytes were decrypted and waiting in the stream at the switch');
  });
});
