// The agent listener: accepts agents over TCP or TLS, refuses a connection when every session
// slot is taken or TLS proves no identity, and turns each socket into a session: frames in
// (received in place, also over TLS), frames out batched, with flow control both ways. It knows
// a session only as an AgentEndpoint; the hub makes and ends sessions through ListenerHost.
import * as net from 'node:net';
import * as tls from 'node:tls';
import { FrameDecoder, ProtocolError, Limits, dataOffset } from '../../protocol';
import { assert } from '../assert';
import type { BufferPool } from '../buffer-pool';
import { socketIo } from '../link/socket-io';
import type { Logger } from '../log';
import { readThrough, readThroughTls, type ReadSink } from '../net-read';
import { TlsFiles, enabled as tlsEnabled, serverOptions } from '../security';

const POOLED_FRAME_MIN = 64 * 1024; // smaller joins are cheap heap allocations

/** How a session sends on, closes and stops reading its socket. */
export interface SessionTransport {
  send(bufs: Buffer[]): void;
  close(reason?: Error): void;
  pause(paused: boolean): void;
  /** FRAME_CRC was agreed: from the next frame on, every frame must carry FLAG_CRC. */
  requireChecksums(): void;
  /** The peer's address (host:port). */
  readonly peer: string;
  /** endOfRead() follows every read of this socket (readsEnding below). */
  readonly endsReads: true;
}

/** What the listener needs of a session: somewhere to put frames and failures. */
export interface AgentEndpoint {
  readonly id: number;
  receive(cmd: number, payload: Buffer): void;
  /** Every frame of a read was passed to receive() (SessionTransport.endsReads). */
  endOfRead(): void;
  fail(e: Error): void;
}

export interface ListenerHost<S extends AgentEndpoint> {
  /** A new session over `transport`; `identity` is who TLS authenticated (null on plain TCP). */
  open(transport: SessionTransport, identity: string | null): S;
  /** The socket closed: the session is over. */
  end(session: S): void;
  /** Sessions alive now, this listener's and any other transport's: they share the slots. */
  sessionCount(): number;
}

export interface ListenerOptions {
  maxSessions: number;
  /** TLS (mutual certificates) or TLS-PSK; plaintext when absent. */
  tls?: TlsFiles;
  /** Where frames of POOLED_FRAME_MIN bytes or more are received. */
  pool: BufferPool;
  log: Logger;
}

/**
 * The framer as a read sink whose every read ends with `end()`, also when a frame in it was bad:
 * the session applies a read's small writes together then (src/hub/inline-batch.ts).
 */
function readsEnding(framer: FrameDecoder, end: () => void): ReadSink {
  return {
    target: () => framer.target(),
    direct: (n) => {
      try {
        framer.direct(n);
      } finally {
        end();
      }
    },
    chunk: (b) => {
      try {
        return framer.chunk(b);
      } finally {
        end();
      }
    },
  };
}

export class AgentListener<S extends AgentEndpoint> {
  private server?: net.Server;
  private readonly sockets = new Set<net.Socket>();

  constructor(
    private readonly host: ListenerHost<S>,
    private readonly opts: ListenerOptions,
  ) {
    assert(opts.maxSessions > 0, 'the listener has at least one session slot');
  }

  listen(host: string, port: number): Promise<net.AddressInfo> {
    const server = this.opts.tls && tlsEnabled(this.opts.tls) ? this.tlsServer(this.opts.tls) : this.plainServer();
    this.server = server;
    return new Promise((res, rej) => {
      server.once('error', rej);
      server.listen(port, host, () => res(server.address() as net.AddressInfo));
    });
  }

  /** No new agents; the connected ones stay until dropAll(). */
  stopAccepting(): void {
    this.server?.close();
  }

  /** Drop every connected agent; each session ends through ListenerHost.end as its socket closes. */
  dropAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  private plainServer(): net.Server {
    // paused until readThrough has taken the socket's reads over
    return net.createServer({ pauseOnConnect: true }, (sock) => this.accept(sock, null));
  }

  private tlsServer(files: TlsFiles): tls.Server {
    const log = this.opts.log;
    const { options, identityOf } = serverOptions(files);
    const srv = tls.createServer(options, (sock) => {
      const id = identityOf(sock);
      if (!id) {
        log.warn({ peer: `${sock.remoteAddress}:${sock.remotePort}` }, 'agent refused: no authenticated identity');
        sock.destroy();
        return;
      }
      this.accept(sock, id);
    });
    srv.on('tlsClientError', (e, sock) =>
      log.warn(
        { peer: `${sock.remoteAddress}:${sock.remotePort}`, cause: e.message },
        'agent refused: TLS handshake failed (plaintext, unknown certificate or wrong key)',
      ),
    );
    return srv;
  }

  private accept(sock: net.Socket, identity: string | null): void {
    const { log, pool, maxSessions } = this.opts;
    const peer = `${sock.remoteAddress}:${sock.remotePort}`;
    if (this.host.sessionCount() >= maxSessions) {
      log.warn({ peer, max: maxSessions }, 'too many agent sessions; connection refused');
      sock.destroy();
      return;
    }
    // Frames up to a pool buffer are received in place; larger ones (rare) are joined.
    let session: S | undefined; // eslint-disable-line prefer-const -- the framer's callback needs it declared first
    const framer = new FrameDecoder(
      (cmd, payload) => session!.receive(cmd, payload),
      Limits.maxPayload,
      (n, cmd) => (n >= POOLED_FRAME_MIN ? pool.take(n, dataOffset(cmd)) : Buffer.allocUnsafe(n)),
      pool.bufferBytes,
    );
    framer.refuseChecksums(); // until the session agrees FRAME_CRC (SPEC.md 3.1)
    const failed = (e: unknown) =>
      session!.fail(e instanceof ProtocolError ? e : new ProtocolError(String((e as Error).message)));
    const plain = !(sock instanceof tls.TLSSocket);
    const sink = readsEnding(framer, () => session!.endOfRead());
    if (plain) sock = readThrough(sock, sink, failed);
    sock.setNoDelay(true);
    sock.setKeepAlive(true, 10_000);
    this.sockets.add(sock);
    // Flow control both ways: stop reading when the session's apply queue is full, and when
    // the peer does not read what we send (so a peer that never reads cannot grow our memory).
    let inPaused = false,
      outPaused = false;
    const flow = () => (inPaused || outPaused ? sock.pause() : sock.resume());
    const io = socketIo(sock, (blocked) => {
      outPaused = blocked;
      flow();
    });
    session = this.host.open(
      {
        send: (bufs) => io.write(bufs),
        close: () => io.close(),
        pause: (p) => {
          inPaused = p;
          flow();
        },
        requireChecksums: () => framer.requireChecksums(),
        peer,
        endsReads: true,
      },
      identity,
    );
    assert(this.host.sessionCount() <= maxSessions, 'agent sessions within maxSessions');
    const cipher = sock instanceof tls.TLSSocket ? `${sock.getProtocol()} ${sock.getCipher().name}` : 'plaintext';
    log.info({ session: session.id, peer, identity, cipher }, 'agent connected');
    const s = session;
    // TLS reads are switched over once the session can take frames (the drain delivers some).
    if (!plain && !readThroughTls(sock as tls.TLSSocket, sink, failed)) {
      sock.on('data', (chunk) => {
        try {
          sink.chunk(chunk);
        } catch (e) {
          failed(e);
        }
      });
    }
    sock.on('error', (e) => log.warn({ session: s.id, peer, cause: e.message }, 'agent socket error'));
    sock.on('close', () => {
      this.sockets.delete(sock);
      this.host.end(s);
    });
    flow(); // reading starts now, unless the session paused it already
  }
}
