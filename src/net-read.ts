// Socket reads that land where the bytes are going. Node's default read path allocates a fresh
// 64 KiB buffer per read (malloc, page faults, GC) and a large payload spanning reads is then
// copied once more into its own buffer. Here a parser says where its next bytes belong: the
// rest of a large payload is read straight into that payload's buffer (no copy, one syscall for
// up to the whole payload), anything else into the unused tail of a shared slab. A chunk the
// parser only parsed or copied out (the head and first bytes of a large frame) leaves its slab
// bytes free for the next read: a new slab per few 1 MiB frames was the hub's largest
// allocation (~90 MB/s at 1.4 GB/s of ingest), and its churn drove V8's mark-compacts.
import * as net from 'node:net';
import type * as tls from 'node:tls';
import { assert } from './assert';

export interface ReadSink {
  /** Where the next read should land, or null for "anywhere" (a slab chunk). */
  target(): Buffer | null;
  /** n bytes were read into the last target(). */
  direct(n: number): void;
  /**
   * Bytes read into a slab chunk. Views of it may be kept (those slab bytes are never rewritten)
   * unless this returns false: then nothing refers to `b` after the call and its bytes are reused.
   */
  chunk(b: Buffer): boolean | void;
}

const SLAB_BYTES = 256 * 1024;
const READ_BYTES = 64 * 1024;

/** Slab chunks: retained views keep their slab alive through the GC; kept bytes are never reused. */
class Slab {
  private buf = Buffer.allocUnsafeSlow(SLAB_BYTES);
  private used = 0;
  next(): Buffer {
    if (SLAB_BYTES - this.used < READ_BYTES / 4) {
      this.buf = Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.used = 0;
    }
    return this.buf.subarray(this.used, Math.min(SLAB_BYTES, this.used + READ_BYTES));
  }
  /** The n bytes the last next() received. */
  view(n: number): Buffer {
    assert(n >= 0 && this.used + n <= SLAB_BYTES, 'a read lands within its slab');
    return this.buf.subarray(this.used, this.used + n);
  }
  /** ... are kept by the parser: the next read goes after them. */
  keep(n: number): void {
    this.used += n;
  }
}

/** The read callbacks of Node's `onread` option over `sink`, with a slab for "anywhere" reads. */
function readsInto(sink: ReadSink, onError: (e: Error) => void) {
  const slab = new Slab();
  let direct = false,
    failed = false;
  const fail = (e: Error): void => {
    failed = true;
    onError(e);
  };
  return {
    fail,
    buffer: (): Buffer => {
      const t = failed ? null : sink.target();
      direct = t !== null;
      return t ?? slab.next();
    },
    callback: (n: number): boolean => {
      if (failed) return false;
      try {
        if (direct) sink.direct(n);
        else if (sink.chunk(slab.view(n)) !== false) slab.keep(n);
      } catch (e) {
        if (!direct) slab.keep(n); // it may have passed views on before it threw
        fail(e as Error);
        return false;
      }
      return true;
    },
  };
}

/**
 * Re-wrap an accepted plain TCP socket (the server must use pauseOnConnect) so its reads go
 * through `sink`. Returns the socket to use from now on; the old object must be dropped.
 * `onError` gets what the sink throws (a protocol error, say); reading then stops.
 */
export function readThrough(accepted: net.Socket, sink: ReadSink, onError: (e: Error) => void): net.Socket {
  const handle = (accepted as unknown as { _handle: unknown })._handle;
  if (!handle) throw new Error('socket already closed');
  (accepted as unknown as { _handle: unknown })._handle = null;
  const { buffer, callback } = readsInto(sink, onError);
  const sock = new net.Socket({
    handle,
    readable: true,
    writable: true,
    onread: { buffer, callback },
  } as net.SocketConstructorOpts);
  // The server counts the accepted object as its connection (server.close() waits for it):
  // close that object, now without a handle, when the connection really closes.
  sock.once('close', () => accepted.destroy());
  return sock;
}

/** The fields a net.Socket keeps its `onread` option in (Node's kBuffer, kBufferGen, kBufferCb). */
interface OnreadFields {
  buffer: symbol;
  gen: symbol;
  cb: symbol;
}
let onreadFields: OnreadFields | null | undefined;

/**
 * The Node majors whose TLS read path was checked against this switch (test/net-read.test.ts):
 * the fields are private, so a later Node might keep their names and change their meaning.
 * Another major reads 'data' events until it is checked and added here.
 */
const CHECKED_MAJORS = new Set([20]);

/** Found once on a probe socket made with `onread`; null when this Node keeps them otherwise. */
function findOnreadFields(): OnreadFields | null {
  if (onreadFields !== undefined) return onreadFields;
  if (!CHECKED_MAJORS.has(Number(process.versions.node.split('.')[0]))) return (onreadFields = null);
  const gen = (): Buffer => Buffer.alloc(1),
    cb = (): boolean => true;
  const probe = new net.Socket({ onread: { buffer: gen, callback: cb } } as net.SocketConstructorOpts);
  const fields = probe as unknown as Record<symbol, unknown>;
  const named = (d: string) => Object.getOwnPropertySymbols(probe).find((s) => s.description === d);
  const b = named('kBuffer'),
    g = named('kBufferGen'),
    c = named('kBufferCb');
  onreadFields =
    b && g && c && fields[b] === true && fields[g] === gen && fields[c] === cb ? { buffer: b, gen: g, cb: c } : null;
  probe.destroy();
  return onreadFields;
}

/**
 * The same for an established TLS socket, which cannot be re-wrapped (its TLSWrap is its own)
 * and takes no `onread` on the server side: its reads are switched over in place, so TLS
 * decrypts each record straight into the frame's buffer. Without it every 16 KiB record came
 * as a new Buffer through the Readable stream, copied again by the parser: at 1 MiB writes the
 * hub spent a fifth of its time in V8's GC (issue 17, BENCHMARKS). What was decrypted before
 * the switch (with the handshake's last read) is handed to `sink` first. False when this Node
 * keeps `onread` otherwise: nothing was read, and the caller reads 'data' events instead.
 */
export function readThroughTls(sock: tls.TLSSocket, sink: ReadSink, onError: (e: Error) => void): boolean {
  const f = findOnreadFields();
  const handle = (sock as unknown as { _handle: { useUserBuffer?: (b: Buffer) => void } | null })._handle;
  if (!f || !handle || typeof handle.useUserBuffer !== 'function') return false;
  const reads = readsInto(sink, onError);
  try {
    for (let c: Buffer | null = sock.read(); c !== null; c = sock.read()) sink.chunk(c);
  } catch (e) {
    reads.fail(e as Error);
  }
  const first = reads.buffer();
  const fields = sock as unknown as Record<symbol, unknown>;
  fields[f.buffer] = first;
  fields[f.gen] = reads.buffer;
  fields[f.cb] = reads.callback;
  handle.useUserBuffer(first);
  return true;
}
