// NBD server (fixed newstyle, simple replies) in front of the protected volumes, so QEMU and
// any NBD client use them as nbd://HOST:PORT/NAME. Requests on a connection run concurrently
// and each reply goes out as soon as its request is done (TCP_NODELAY, nothing held back).
import * as net from 'node:net';
import * as tls from 'node:tls';
import {
  serverGreeting, optReply, infoExport, infoBlockSize, infoName, exportNameReply, simpleReply, parseRequest, parseGo,
  IHAVEOPT, CF_FIXED_NEWSTYLE, CF_NO_ZEROES, Opt, Rep, Info, REP_ERR_UNSUP, REP_ERR_UNKNOWN, REP_ERR_INVALID, REP_ERR_TLS_REQD,
  NbdCmd, NbdErr, TF, CMD_FLAG_FUA, MAX_OPTION_LEN, MAX_REQUEST, REQUEST_HEADER, NbdRequest,
} from '../../protocol/nbd';
import { ByteQueue } from './byte-queue';
import { writeBatched } from '../net-batch';
import { readThrough } from '../net-read';
import type { BufferPool } from '../buffer-pool';
import type { Logger } from '../log';

export interface NbdExport {
  name: string;
  size: number;
  read(buf: Buffer, offset: number): Promise<void>;
  write(offset: number, data: Buffer): Promise<void>;
  /** Optional: a write done before returning (true), or not attempted (false: use write()). */
  writeNow?(offset: number, data: Buffer): boolean;
  /** Optional: a write given as the pieces it arrived in (large writes; saves joining them). */
  writev?(offset: number, parts: Buffer[]): Promise<void>;
  zero(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
}

const GATHER_MIN = 64 * 1024; // writes this large reach a writev export unjoined, or are read in place
const IN_PLACE_MAX = 1 << 20; // larger writes (rare) arrive in chunks and reach writev as such
const IN_PLACE_AFTER = 32 * 1024; // payload bytes that must have arrived before its buffer is taken
const MAX_INFLIGHT = 64; // requests per connection; beyond it the socket is paused
const MAX_OPTIONS = 64; // options per handshake

function errnoOf(e: any, fallback: number): number {
  switch (e?.errno ?? e?.code) {
    case 'ENOSPC': return NbdErr.ENOSPC;
    case 'EIO': return NbdErr.EIO;
    case 'EROFS': case 'EPERM': case 'EACCES': return NbdErr.EPERM;
    case 'ENOMEM': return NbdErr.ENOMEM;
    default: return fallback;
  }
}

export class NbdServer {
  private server?: net.Server;
  private readonly conns = new Set<net.Socket>();
  private nextConn = 1;
  stats = { connections: 0, requests: 0, errors: 0 };

  /**
   * With `tls`, clients must upgrade with NBD_OPT_STARTTLS before anything else. Without it,
   * large write payloads are received straight into a buffer of their own, from `pool` when
   * given (the export may hold() it past its promise, a mirror still sending it, say).
   */
  constructor(private readonly exports: Map<string, NbdExport>, private readonly log: Logger,
    private readonly tls?: tls.SecureContextOptions & { requestCert?: boolean }, private readonly pool?: BufferPool) {}

  listen(host: string, port: number): Promise<net.AddressInfo> {
    this.server = net.createServer({ pauseOnConnect: !this.tls }, (s) => this.accept(s));
    return new Promise((res, rej) => {
      this.server!.once('error', rej);
      this.server!.listen(port, host, () => res(this.server!.address() as net.AddressInfo));
    });
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private accept(raw: net.Socket): void {
    let sock: net.Socket = raw;
    const id = this.nextConn++;
    const log = this.log.child({ nbdConn: id, peer: `${raw.remoteAddress}:${raw.remotePort}` });
    this.stats.connections++;
    const q = new ByteQueue();
    let phase: 'flags' | 'options' | 'optdata' | 'transmission' | 'closing' = 'flags';
    let pendingOpt: { opt: number; len: number } | null = null;
    let noZeroes = false;
    let options = 0;
    let exp: NbdExport | null = null;
    let inflight = 0;
    let paused = false;
    let pendingWrite: NbdRequest | null = null;
    let inPlace: Buffer | null = null; // the pending write's own buffer, being filled
    let filled = 0;

    const send = (b: Buffer) => { if (!sock.destroyed) writeBatched(sock, b); };
    const fatal = (why: string) => {
      log.warn({ cause: why }, 'closing NBD connection');
      phase = 'closing';
      sock.destroy();
    };

    const flags = () => (TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_TRIM | TF.SEND_WRITE_ZEROES | TF.CAN_MULTI_CONN);

    let secured = !this.tls;
    const option = (opt: number, data: Buffer) => {
      if (++options > MAX_OPTIONS) return fatal('too many options');
      if (opt === Opt.STARTTLS) {
        if (!this.tls || secured) return send(optReply(opt, this.tls ? REP_ERR_INVALID : REP_ERR_UNSUP));
        send(optReply(opt, Rep.ACK));
        raw.removeAllListeners('data');
        const ts = new tls.TLSSocket(raw, {
          isServer: true, secureContext: tls.createSecureContext(this.tls),
          requestCert: !!this.tls.requestCert, rejectUnauthorized: !!this.tls.requestCert,
        });
        ts.on('secure', () => { secured = true; log.info('NBD connection upgraded to TLS'); });
        ts.on('error', (e) => { log.warn({ cause: e.message }, 'NBD TLS handshake failed'); raw.destroy(); });
        ts.on('data', (c) => { q.push(c); parse(); });
        sock = ts;
        return;
      }
      if (!secured && opt !== Opt.ABORT) {
        if (opt === Opt.EXPORT_NAME) return fatal('TLS required: EXPORT_NAME before STARTTLS');
        return send(optReply(opt, REP_ERR_TLS_REQD));
      }
      switch (opt) {
        case Opt.EXPORT_NAME: {
          const e = this.exports.get(data.toString('utf8'));
          if (!e) return fatal(`unknown export "${data.toString('utf8')}"`);
          exp = e;
          send(exportNameReply(e.size, flags(), noZeroes));
          phase = 'transmission';
          log.info({ export: e.name }, 'NBD client attached (EXPORT_NAME)');
          return;
        }
        case Opt.ABORT:
          send(optReply(opt, Rep.ACK));
          phase = 'closing';
          sock.end();
          return;
        case Opt.LIST: {
          if (data.length) return send(optReply(opt, REP_ERR_INVALID));
          for (const name of this.exports.keys()) {
            const n = Buffer.from(name, 'utf8');
            const d = Buffer.alloc(4 + n.length);
            d.writeUInt32BE(n.length, 0);
            n.copy(d, 4);
            send(optReply(opt, Rep.SERVER, d));
          }
          return send(optReply(opt, Rep.ACK));
        }
        case Opt.INFO:
        case Opt.GO: {
          const g = parseGo(data);
          if (!g) return send(optReply(opt, REP_ERR_INVALID));
          const e = this.exports.get(g.name);
          if (!e) return send(optReply(opt, REP_ERR_UNKNOWN, Buffer.from(`no export named "${g.name}"`)));
          send(optReply(opt, Rep.INFO, infoExport(e.size, flags())));
          send(optReply(opt, Rep.INFO, infoBlockSize(1, 4096, MAX_REQUEST)));
          if (g.infos.includes(Info.NAME)) send(optReply(opt, Rep.INFO, infoName(e.name)));
          send(optReply(opt, Rep.ACK));
          if (opt === Opt.GO) {
            exp = e;
            phase = 'transmission';
            log.info({ export: e.name }, 'NBD client attached');
          }
          return;
        }
        default:
          return send(optReply(opt, REP_ERR_UNSUP));
      }
    };

    const done = (r: NbdRequest, err: number, data?: Buffer) => {
      inflight--;
      if (err) this.stats.errors++;
      if (sock.destroyed) return;
      if (data && !err) writeBatched(sock, simpleReply(0, r.handle), data);
      else send(simpleReply(err, r.handle));
      if (paused && inflight < MAX_INFLIGHT / 2) { paused = false; sock.resume(); parse(); }
      if (phase === 'closing' && inflight === 0) sock.end();
    };

    const exec = (r: NbdRequest, data?: Buffer | Buffer[]) => {
      const e = exp!;
      this.stats.requests++;
      inflight++;
      const inRange = r.offset + r.length <= e.size;
      const ctx = () => ({ export: e.name, offset: r.offset, length: r.length });
      switch (r.type) {
        case NbdCmd.READ: {
          if (!inRange || r.length > MAX_REQUEST) return done(r, NbdErr.EINVAL);
          const buf = Buffer.allocUnsafe(r.length);
          e.read(buf, r.offset).then(() => done(r, 0, buf), (err) => { log.error({ ...ctx(), cause: err.message }, 'NBD read failed'); done(r, errnoOf(err, NbdErr.EIO)); });
          return;
        }
        case NbdCmd.WRITE:
        case NbdCmd.WRITE_ZEROES: {
          const release = () => { if (r.type === NbdCmd.WRITE && !Array.isArray(data)) this.pool?.give(data!); };
          if (!inRange) { release(); return done(r, NbdErr.ENOSPC); }
          if (r.type === NbdCmd.WRITE && e.writeNow && !Array.isArray(data) && !(r.flags & CMD_FLAG_FUA)) {
            // A small write done at once: no promise round trip before its reply.
            let now: boolean;
            try {
              now = e.writeNow(r.offset, data!);
            } catch (err) {
              release();
              log.error({ ...ctx(), cause: (err as Error).message }, 'NBD write failed');
              return done(r, errnoOf(err, NbdErr.EIO));
            }
            if (now) { release(); return done(r, 0); }
          }
          const p = r.type === NbdCmd.WRITE ? (Array.isArray(data) ? e.writev!(r.offset, data) : e.write(r.offset, data!)) : e.zero(r.offset, r.length);
          p.then(() => (r.flags & CMD_FLAG_FUA ? e.flush() : undefined))
            .then(() => { release(); done(r, 0); }, (err) => { release(); log.error({ ...ctx(), cause: err.message }, 'NBD write failed'); done(r, errnoOf(err, NbdErr.EIO)); });
          return;
        }
        case NbdCmd.FLUSH:
          e.flush().then(() => done(r, 0), (err) => { log.error({ export: e.name, cause: err.message }, 'NBD flush failed'); done(r, errnoOf(err, NbdErr.EIO)); });
          return;
        case NbdCmd.TRIM:
          // Advisory: the data may stay as it is, so nothing changes and nothing is mirrored.
          return done(r, inRange ? 0 : NbdErr.EINVAL);
        case NbdCmd.DISC:
          inflight--;
          phase = 'closing';
          if (inflight === 0) sock.end();
          return;
        default:
          return done(r, NbdErr.EINVAL);
      }
    };

    let parsing = false;
    const parse = () => {
      if (parsing) return; // done() of a write completed inside parse: the running loop goes on
      parsing = true;
      try {
        parseAll();
      } finally {
        parsing = false;
      }
    };
    const parseAll = () => {
      for (;;) {
        if (phase === 'flags') {
          if (q.length < 4) return;
          const f = q.take(4).readUInt32BE(0);
          if (!(f & CF_FIXED_NEWSTYLE)) return fatal('client does not speak fixed newstyle');
          noZeroes = (f & CF_NO_ZEROES) !== 0;
          phase = 'options';
        } else if (phase === 'options') {
          if (q.length < 16) return;
          const h = Buffer.from(q.take(16));
          if (h.readBigUInt64BE(0) !== IHAVEOPT) return fatal('bad option magic');
          const opt = h.readUInt32BE(8), len = h.readUInt32BE(12);
          if (len > MAX_OPTION_LEN) return fatal(`option ${opt} of ${len} bytes is too long`);
          pendingOpt = { opt, len };
          phase = 'optdata';
        } else if (phase === 'optdata') {
          if (q.length < pendingOpt!.len) return;
          const { opt, len } = pendingOpt!;
          pendingOpt = null;
          phase = 'options';
          option(opt, q.take(len));
        } else if (phase === 'transmission') {
          if (pendingWrite && !inPlace && direct && pendingWrite.length >= GATHER_MIN && pendingWrite.length <= IN_PLACE_MAX
            && q.length >= IN_PLACE_AFTER && q.length < pendingWrite.length) {
            // Its buffer only once some of its bytes are here: memory follows bytes received.
            inPlace = this.pool ? this.pool.take(pendingWrite.length) : Buffer.allocUnsafeSlow(pendingWrite.length);
            filled = 0;
          }
          if (inPlace) {
            const r = pendingWrite!, k = Math.min(q.length, r.length - filled);
            if (k > 0) q.takeInto(inPlace, filled, k);
            filled += k;
            if (filled < r.length) return;
            const d = inPlace;
            inPlace = null;
            pendingWrite = null;
            exec(r, d);
            continue;
          }
          if (pendingWrite) {
            if (q.length < pendingWrite.length) return;
            const r = pendingWrite;
            pendingWrite = null;
            exec(r, exp?.writev && r.length >= GATHER_MIN ? q.takeParts(r.length) : q.take(r.length));
            continue;
          }
          if (inflight >= MAX_INFLIGHT) { if (!paused) { paused = true; sock.pause(); } return; }
          if (q.length < REQUEST_HEADER) return;
          let r: NbdRequest;
          try { r = parseRequest(q.take(REQUEST_HEADER), 0); } catch (e) { return fatal((e as Error).message); }
          if (r.type === NbdCmd.WRITE) {
            if (r.length > MAX_REQUEST) return fatal(`write of ${r.length} bytes exceeds ${MAX_REQUEST}`);
            pendingWrite = r;
            continue;
          }
          exec(r);
        } else return;
      }
    };
    // Without TLS, reads land where the bytes go: the rest of a large write's payload straight
    // into its buffer (src/net-read.ts). STARTTLS needs the plain 'data' path to hand over.
    const direct = !this.tls;
    if (direct) {
      sock = raw = readThrough(raw, {
        target: () => (phase === 'transmission' && inPlace && q.length === 0 && pendingWrite!.length - filled >= 16 * 1024
          ? inPlace.subarray(filled, pendingWrite!.length) : null),
        direct: (n) => { filled += n; parse(); },
        chunk: (c) => { q.push(c); parse(); },
      }, (e) => fatal(e.message));
    } else raw.on('data', (c) => { q.push(c); parse(); });
    const conn = raw;
    this.conns.add(conn);
    sock.setNoDelay(true);
    send(serverGreeting());
    conn.on('error', (e) => log.debug({ cause: e.message }, 'NBD socket error'));
    conn.on('close', () => { this.conns.delete(conn); log.debug('NBD connection closed'); });
    if (direct) conn.resume();
  }
}
