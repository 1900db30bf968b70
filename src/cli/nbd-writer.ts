// `rephub restore --to nbd://host:port/export`: a minimal NBD client that writes a stream to an
// export (fixed newstyle handshake, NBD_OPT_GO, simple replies, WRITE with a few requests in
// flight, FLUSH, DISC). Only what restore needs; the NBD server side is src/nbd/.
import * as net from 'node:net';

const OPTS_MAGIC = Buffer.from('IHAVEOPT');
const REPLY_MAGIC = 0x3e889045565a9;
const OPT_GO = 7;
const REP_ACK = 1;
const REP_INFO = 3;
const REQ_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const CMD_WRITE = 1;
const CMD_DISC = 2;
const CMD_FLUSH = 3;
const MAX_INFLIGHT = 8;
const MAX_WRITE = 1 << 20;

/** Exactly-n reads over a socket. */
class Reader {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiter: (() => void) | null = null;
  private error: Error | null = null;

  constructor(sock: net.Socket) {
    sock.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.have += c.length;
      this.waiter?.();
    });
    const end = (e?: Error) => {
      this.error ??= e ?? new Error('the NBD server closed the connection');
      this.waiter?.();
    };
    sock.on('error', end);
    sock.on('close', () => end());
  }

  async read(n: number): Promise<Buffer> {
    while (this.have < n) {
      if (this.error) throw this.error;
      await new Promise<void>((r) => (this.waiter = r));
      this.waiter = null;
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = [all.subarray(n)];
    this.have -= n;
    return all.subarray(0, n);
  }
}

function parseUri(uri: string): { host: string; port: number; name: string } {
  const u = new URL(uri);
  if (u.protocol !== 'nbd:') throw new Error(`${uri}: not an nbd:// URI`);
  return {
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port: Number(u.port || 10809),
    name: decodeURIComponent(u.pathname.slice(1)),
  };
}

async function handshake(sock: net.Socket, rd: Reader, name: string): Promise<number> {
  const hello = await rd.read(18);
  if (hello.toString('latin1', 0, 8) !== 'NBDMAGIC' || !hello.subarray(8, 16).equals(OPTS_MAGIC))
    throw new Error('not a newstyle NBD server');
  const flags = hello.readUInt16BE(16);
  const noZeroes = (flags & 2) !== 0;
  const cflags = Buffer.alloc(4);
  cflags.writeUInt32BE(1 | (noZeroes ? 2 : 0));
  const nameBuf = Buffer.from(name, 'utf8');
  const opt = Buffer.alloc(16 + 4 + nameBuf.length + 2);
  OPTS_MAGIC.copy(opt, 0);
  opt.writeUInt32BE(OPT_GO, 8);
  opt.writeUInt32BE(4 + nameBuf.length + 2, 12);
  opt.writeUInt32BE(nameBuf.length, 16);
  nameBuf.copy(opt, 20);
  sock.write(Buffer.concat([cflags, opt]));
  let size = -1;
  for (;;) {
    const h = await rd.read(20);
    if (h.readBigUInt64BE(0) !== BigInt(REPLY_MAGIC)) throw new Error('bad NBD option reply');
    const type = h.readUInt32BE(12),
      data = await rd.read(h.readUInt32BE(16));
    if (type & 0x80000000)
      throw new Error(`NBD export "${name}" refused: ${data.toString('utf8', 4) || 'error ' + type}`);
    if (type === REP_INFO && data.readUInt16BE(0) === 0) size = Number(data.readBigUInt64BE(2));
    if (type === REP_ACK) break;
  }
  if (size < 0) throw new Error('the NBD server sent no export size');
  return size;
}

function request(type: number, handle: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(REQ_MAGIC, 0);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(BigInt(handle), 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

/** Write the stream to the export from offset 0, flush, disconnect; the bytes written. */
export async function writeToNbd(
  body: AsyncIterable<Uint8Array> | ReadableStream<Uint8Array>,
  uri: string,
  size: number,
): Promise<number> {
  const { host, port, name } = parseUri(uri);
  const sock = net.connect(port, host);
  await new Promise<void>((res, rej) => sock.once('connect', res).once('error', rej));
  const rd = new Reader(sock);
  try {
    const exportSize = await handshake(sock, rd, name);
    if (exportSize < size) throw new Error(`NBD export ${uri} holds ${exportSize} bytes; the volume has ${size}`);
    let pos = 0,
      handle = 1,
      inflight = 0;
    const reply = async () => {
      const r = await rd.read(16);
      if (r.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error('bad NBD reply');
      const err = r.readUInt32BE(4);
      if (err) throw new Error(`NBD write failed: error ${err} (handle ${r.readBigUInt64BE(8)})`);
      inflight--;
    };
    for await (const c of body as AsyncIterable<Uint8Array>) {
      for (let i = 0; i < c.length; i += MAX_WRITE) {
        const piece = Buffer.from(c.buffer, c.byteOffset + i, Math.min(MAX_WRITE, c.length - i));
        if (inflight >= MAX_INFLIGHT) await reply();
        sock.write(Buffer.concat([request(CMD_WRITE, handle++, pos, piece.length), piece]));
        inflight++;
        pos += piece.length;
      }
    }
    while (inflight > 0) await reply();
    sock.write(request(CMD_FLUSH, handle++, 0, 0));
    inflight++;
    await reply();
    sock.write(request(CMD_DISC, handle++, 0, 0));
    return pos;
  } finally {
    sock.end();
  }
}
