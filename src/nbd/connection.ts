// One NBD client connection (nbdkit's connections.c): the socket (plain with in-place receive
// through src/net-read.ts, or upgraded by STARTTLS), the receive queue, sending, pausing and
// closing. It feeds the handshake functions until an export is attached, then hands the queue
// to a Transmission, and leaves the export's registry when it closes.
import * as net from 'node:net';
import * as tls from 'node:tls';
import { serverGreeting, simpleReply, writeSimpleReply, SIMPLE_REPLY } from '../../protocol/nbd';
import { ByteQueue } from './byte-queue';
import { writeBatched, writeBatchedThen } from '../net-batch';
import { readThrough } from '../net-read';
import {
  HandshakeState,
  HandshakeConfig,
  initialState,
  clientFlags,
  optionHeader,
  handleOption,
  OPTION_HEADER,
} from './handshake';
import { Transmission, TransmissionIo, TransmissionOptions } from './transmission';
import type { ExportRegistry, ExportUser } from './exports';
import type { Logger } from '../log';

export type NbdTlsOptions = tls.SecureContextOptions & { requestCert?: boolean };

export interface ConnectionContext extends Omit<TransmissionOptions, 'direct' | 'log'> {
  readonly registry: ExportRegistry;
  readonly tls?: NbdTlsOptions;
}

type Phase = 'flags' | 'options' | 'optdata' | 'transmission' | 'closing';

// Simple replies of one event-loop turn gathered here and written once, at the end of the turn
// (or when this fills): one socket write per turn instead of a Buffer and a write per reply.
const REPLY_BATCH = 64 * SIMPLE_REPLY;

export class NbdConnection implements TransmissionIo, ExportUser {
  private sock: net.Socket;
  private readonly queue = new ByteQueue();
  private phase: Phase = 'flags';
  private handshake: HandshakeState;
  private readonly config: HandshakeConfig;
  private option: { opt: number; length: number } | null = null; // header read, data awaited
  private transmission: Transmission | null = null;
  private parsing = false;
  private readonly replies = Buffer.allocUnsafe(REPLY_BATCH); // this turn's simple replies, assembled
  private replyBytes = 0;
  private replyFlushQueued = false;
  private readonly endOfTurn = () => {
    this.replyFlushQueued = false;
    this.flushReplies();
  };
  /** False when nothing refers to `c` afterwards (parsed, or copied into a write's buffer): net-read reuses it. */
  private readonly onChunk = (c: Buffer): boolean => {
    this.queue.lent = false;
    this.queue.push(c);
    this.parse();
    return this.queue.lent || this.queue.length > 0;
  };
  /** The accepted socket object (the server destroys it on close); STARTTLS does not change it. */
  readonly socket: net.Socket;

  /** `raw` is a freshly accepted socket, paused when there is no TLS. */
  constructor(
    raw: net.Socket,
    private readonly ctx: ConnectionContext,
    private readonly log: Logger,
  ) {
    const tlsRequired = ctx.tls !== undefined;
    this.handshake = initialState(tlsRequired);
    this.config = { tls: tlsRequired, catalog: ctx.registry };
    // Without TLS, reads land where the bytes go: the rest of a large write's payload straight
    // into its buffer (src/net-read.ts). STARTTLS needs the plain 'data' path to hand over.
    if (!tlsRequired) {
      this.sock = readThrough(
        raw,
        {
          target: () => (this.phase === 'transmission' ? this.transmission!.readTarget() : null),
          direct: (n) => {
            this.transmission!.readDirect(n);
            this.parse();
          },
          chunk: this.onChunk,
        },
        (e) => this.fatal(e.message),
      );
    } else {
      this.sock = raw;
      raw.on('data', this.onChunk);
    }
    this.socket = this.sock;
    this.sock.setNoDelay(true);
    this.sock.on('error', (e) => log.debug({ cause: e.message }, 'NBD socket error'));
    this.sock.on('close', () => this.closed_());
  }

  /** Greet the client and start reading. */
  start(): void {
    this.send(serverGreeting());
    if (!this.config.tls) this.sock.resume();
  }

  get closed(): boolean {
    return this.sock.destroyed;
  }

  private send(b: Buffer): void {
    if (!this.sock.destroyed) writeBatched(this.sock, b);
  }

  // ---- TransmissionIo ----

  reply(error: number, handleHi: number, handleLo: number): void {
    if (this.sock.destroyed) return;
    writeSimpleReply(this.replies, this.replyBytes, error, handleHi, handleLo);
    this.replyBytes += SIMPLE_REPLY;
    if (this.replyBytes === REPLY_BATCH) this.flushReplies();
    else if (!this.replyFlushQueued) {
      this.replyFlushQueued = true;
      setImmediate(this.endOfTurn); // the check phase: after this turn's IO callbacks, as net-batch
    }
  }
  replyData(handleHi: number, handleLo: number, data: Buffer, sent?: () => void): void {
    this.flushReplies(); // the replies gathered before it leave first
    writeBatchedThen(this.sock, [simpleReply(0, handleHi, handleLo), data], sent);
  }

  /** The gathered replies out in one write (a copy: the socket may keep it while it sends). */
  private flushReplies(): void {
    const n = this.replyBytes;
    if (n === 0) return;
    this.replyBytes = 0;
    if (this.sock.destroyed) return;
    const out = Buffer.allocUnsafe(n);
    this.replies.copy(out, 0, 0, n);
    this.sock.write(out);
  }
  pause(): void {
    this.sock.pause();
  }
  resume(): void {
    this.sock.resume();
    this.parse();
  }
  end(): void {
    this.flushReplies();
    this.sock.end();
  }
  fatal(why: string): void {
    this.log.warn({ cause: why }, 'closing NBD connection');
    this.phase = 'closing';
    this.sock.destroy();
  }

  // ---- ExportUser ----

  detach(reason: string): Promise<void> {
    const t = this.transmission;
    if (!this.sock.destroyed) this.fatal(reason);
    return t ? t.idle() : Promise.resolve();
  }

  private closed_(): void {
    // Detached once its last request has finished: a stop or failback waiting for the export
    // to go idle (ExportRegistry.whenIdle) must not go on while a write still lands on it.
    const t = this.transmission;
    if (t) void t.idle().then(() => this.ctx.registry.detach(t.exp.name, this));
    this.log.debug('NBD connection closed');
  }

  // ---- receiving ----

  private parse(): void {
    if (this.parsing) return; // a reply sent inside the running loop: that loop goes on
    this.parsing = true;
    try {
      this.parseAll();
    } finally {
      this.parsing = false;
    }
  }

  private parseAll(): void {
    const q = this.queue;
    for (;;) {
      if (this.phase === 'transmission') return this.transmission!.parse();
      if (this.phase === 'flags') {
        if (q.length < 4) return;
        const next = clientFlags(this.handshake, q.take(4).readUInt32BE(0));
        if (typeof next === 'string') return this.fatal(next);
        this.handshake = next;
        this.phase = 'options';
      } else if (this.phase === 'options') {
        if (q.length < OPTION_HEADER) return;
        const header = optionHeader(q.take(OPTION_HEADER));
        if (typeof header === 'string') return this.fatal(header);
        this.option = header;
        this.phase = 'optdata';
      } else if (this.phase === 'optdata') {
        if (q.length < this.option!.length) return;
        const { opt, length } = this.option!;
        this.option = null;
        this.phase = 'options';
        this.onOption(opt, q.take(length));
      } else return;
    }
  }

  private onOption(opt: number, data: Buffer): void {
    const result = handleOption(this.handshake, opt, data, this.config);
    this.handshake = result.next;
    for (const r of result.replies) this.send(r);
    switch (result.action) {
      case 'fatal':
        return this.fatal(result.reason!);
      case 'abort':
        this.phase = 'closing';
        this.sock.end();
        return;
      case 'starttls':
        return this.startTls();
      case 'attach':
        return this.attach(result.export!.name, opt);
    }
  }

  private attach(name: string, opt: number): void {
    const exp = this.ctx.registry.attach(name, this);
    if (!exp) return this.fatal(`export "${name}" went away`); // cannot happen: nothing ran since the lookup
    const { pool, readPool, stats } = this.ctx;
    const direct = !this.config.tls;
    this.transmission = new Transmission(exp, this.queue, this, { direct, pool, readPool, stats, log: this.log });
    this.phase = 'transmission';
    this.log.info({ export: exp.name, opt }, 'NBD client attached');
  }

  private startTls(): void {
    const raw = this.sock,
      opts = this.ctx.tls!;
    raw.removeListener('data', this.onChunk);
    const ts = new tls.TLSSocket(raw, {
      isServer: true,
      secureContext: tls.createSecureContext(opts),
      requestCert: !!opts.requestCert,
      rejectUnauthorized: !!opts.requestCert,
    });
    ts.on('secure', () => this.log.info('NBD connection upgraded to TLS'));
    ts.on('error', (e) => {
      this.log.warn({ cause: e.message }, 'NBD TLS handshake failed');
      raw.destroy();
    });
    ts.on('data', this.onChunk);
    this.sock = ts;
  }
}
