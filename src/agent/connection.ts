// The agent's connection to the hub: dials TCP or TLS, bounds the dial by a deadline, waits a
// bounded time for the hub's first frame (a silent seed hub then gets the seed protocol on the
// same connection, SPEC §6.1), reconnects with exponential backoff (moving round the hub list:
// a hub that is gone is replaced by the next, and the agent comes back the same way), and puts the shared Link
// (HELLO, capabilities, sealing, heartbeat) over the socket. Frames go to a HubChannel, which feeds the core.
import * as net from 'node:net';
import * as tls from 'node:tls';
import { Cap, FrameDecoder } from '../../protocol';
import { Link } from '../link/link';
import { socketIo } from '../link/socket-io';
import { MIRROR_GATHER } from '../link/gather';
import type { Logger } from '../log';
import type { AgentCore } from './core';
import type { AgentStats } from './ports';
import { HubChannel } from './hub-channel';
import type { HubRefusal } from './refusals';

const BACKOFF_MIN_MS = 100;
const END_WAIT_MS = 1000; // a clean close waits this long for the socket to drain

export interface HubAddress {
  host: string;
  port: number;
}

/** At most this many hubs in a list (--hub h1:7000,h2:7000,...). */
export const MAX_HUBS = 16;

export interface ConnectionOptions {
  hubHost: string;
  hubPort: number;
  /** Further hubs (interchangeable, in front of shared recovery volumes): each loss moves to the next. */
  moreHubs?: HubAddress[];
  vm: string; // the name in our HELLO
  caps: number; // offered
  heartbeatMs: number;
  reconnectMaxMs: number;
  tls?: tls.ConnectionOptions; // TLS (certificates or PSK) to the hub; plaintext when absent
}

/** OpenSSL's multi-line error as one line: the alert the hub sent, when it sent one. */
function tlsCause(message: string): string {
  const alert = /alert ([a-z ]+?)(?::|$)/im.exec(message)?.[1];
  if (alert) return `TLS alert "${alert}" from the hub (a PSK or certificate it does not accept?)`;
  return `TLS: ${message.split('\n')[0]}`;
}

export class HubConnection {
  private sock: net.Socket | null = null;
  private channel: HubChannel | null = null;
  private stopping = false;
  private backoffMs = BACKOFF_MIN_MS;
  private reconnectTimer: NodeJS.Timeout | null = null;
  /** The newest dial the hub accepted over TCP but not as a peer (TLS, PSK): for status. */
  private refusedDial: HubRefusal | null = null;
  private readonly hubs: HubAddress[];
  private at = 0; // the hub dialed now (index into hubs)

  constructor(
    private readonly opts: ConnectionOptions,
    private readonly core: AgentCore,
    private readonly log: Logger,
    private readonly stats: AgentStats,
  ) {
    this.hubs = [{ host: opts.hubHost, port: opts.hubPort }, ...(opts.moreHubs ?? [])];
    if (this.hubs.length > MAX_HUBS) throw new Error(`at most ${MAX_HUBS} hubs, got ${this.hubs.length}`);
  }

  /** HELLO answered (or a legacy hub assumed) on the current connection, and the hub has spoken. */
  get ready(): boolean {
    return (this.channel?.ready && this.channel.spoken) ?? false;
  }

  /** Agreed capabilities of the current connection (0 before the handshake). */
  get caps(): number {
    return this.channel?.link.caps ?? 0;
  }

  /** Bytes waiting to leave on the current connection. */
  queuedBytes(): number {
    return this.channel?.link.queuedBytes() ?? 0;
  }

  start(): void {
    this.dial();
  }

  get lastRefusal(): HubRefusal | null {
    return this.refusedDial;
  }

  private get hub(): string {
    const h = this.hubs[this.at];
    return `${h.host}:${h.port}`;
  }

  private dial(): void {
    if (this.stopping) return;
    const o = this.opts,
      secure = o.tls,
      { host, port } = this.hubs[this.at];
    const sock: net.Socket = secure ? tls.connect({ host, port, ...secure }) : net.connect({ host, port });
    sock.setNoDelay(true);
    sock.setKeepAlive(true, 10_000);
    // PROTECTED_WRITE frames gather up to 5 ms / 128 KiB (one hub wakeup for several guest
    // writes at low queue depth); any other frame releases them at the end of its turn.
    const link = new Link(socketIo(sock, undefined, MIRROR_GATHER), {
      caps: o.caps,
      heartbeatMs: o.heartbeatMs,
      name: o.vm,
      onDead: (silentMs) => {
        this.log.warn({ silentMs }, 'hub silent; dropping connection');
        sock.destroy();
      },
    });
    const channel = new HubChannel(link, this.core, this.log);
    this.sock = sock;
    this.channel = channel;
    this.armDeadline(sock, channel);
    let tcpUp = false; // the hub accepted the TCP connection: a close before HELLO is then its refusal
    let tlsRefused = false;
    sock.once('connect', () => (tcpUp = true));
    sock.on(secure ? 'secureConnect' : 'connect', () => {
      this.stats.connects++;
      this.log.info({ hub: this.hub }, 'connected to hub');
      channel.hello();
      this.awaitFirstFrame(sock, channel);
      if (o.caps & Cap.PING) link.startHeartbeat();
    });
    this.receiveFrom(sock, channel);
    sock.on('error', (e: NodeJS.ErrnoException) => {
      if (secure && /certificate|self.signed|verify|handshake|alert/i.test(e.message)) {
        this.log.error({ cause: e.message, code: e.code }, 'hub refused or not trusted: TLS verification failed');
        this.refusedDial = { cause: tlsCause(e.message), atMs: Date.now() };
        tlsRefused = true;
      } else this.log.warn({ cause: e.message }, 'hub connection error');
    });
    sock.on('close', () => {
      if (tcpUp && !tlsRefused && !channel.ready && !this.stopping)
        this.refusedDial = {
          cause: `the hub closed the connection before answering HELLO${secure ? '' : ' (does it want TLS or a PSK?)'}`,
          atMs: Date.now(),
        };
      this.onClose(sock, channel);
    });
  }

  /** TCP connect and TLS handshake must complete in time: a black-holed dial must not hang. */
  private armDeadline(sock: net.Socket, channel: HubChannel): void {
    const ms = 3 * this.opts.heartbeatMs;
    const deadline = setTimeout(() => {
      if (this.sock === sock && !channel.ready && !channel.helloSent) {
        this.log.warn({ hub: this.hub, ms }, 'hub connect timed out; dialing again');
        sock.destroy();
      }
    }, ms);
    deadline.unref();
    sock.once('close', () => clearTimeout(deadline));
  }

  /**
   * After our HELLO, the hub's first frame must come within the dead-peer timeout. A seed hub
   * drops the unknown HELLO and waits for REPORT_VM_VOLUMES, saying nothing: dialing again would
   * never get past it, so the connection goes on as a legacy one (caps = 0, SPEC §6.1); a hub
   * HELLO after that is a protocol error (HubChannel.receive).
   */
  private awaitFirstFrame(sock: net.Socket, channel: HubChannel): void {
    const ms = 3 * this.opts.heartbeatMs;
    const wait = setTimeout(() => {
      if (this.sock !== sock || channel.ready || sock.destroyed) return;
      this.log.warn({ hub: this.hub, ms }, 'hub sent nothing after our HELLO; assuming a seed hub (no extensions)');
      channel.startLegacy();
      // A seed hub answers our volume report (START_PROTECT); a black hole (a half-open link)
      // answers nothing, and must not hold us forever now that no heartbeat runs.
      const answer = setTimeout(() => {
        if (this.sock !== sock || channel.spoken || sock.destroyed) return;
        this.log.warn({ hub: this.hub, ms }, 'hub answered nothing to our volume report either; dialing again');
        sock.destroy();
      }, ms);
      answer.unref();
      sock.once('close', () => clearTimeout(answer));
    }, ms);
    wait.unref();
    sock.once('close', () => clearTimeout(wait));
  }

  private receiveFrom(sock: net.Socket, channel: HubChannel): void {
    const framer = new FrameDecoder((cmd, payload) => channel.receive(cmd, payload));
    sock.on('data', (chunk: Buffer) => {
      channel.link.heard();
      try {
        framer.push(chunk);
      } catch (e) {
        this.log.error({ cause: (e as Error).message }, 'bad frame from hub; reconnecting');
        sock.destroy();
      }
    });
  }

  private onClose(sock: net.Socket, channel: HubChannel): void {
    if (this.sock !== sock) return;
    const wasReady = channel.ready;
    channel.close(); // every unacked write stays in the dirty log
    this.sock = null;
    this.channel = null;
    if (this.stopping) return;
    if (wasReady) this.backoffMs = BACKOFF_MIN_MS;
    const lost = this.hub;
    // The hub is gone (or never answered): the next one in the list gets the next dial.
    this.at = (this.at + 1) % this.hubs.length;
    this.log.warn(
      { hub: lost, next: this.hub, retryMs: this.backoffMs },
      'hub connection lost; VM keeps running, writes are logged as dirty',
    );
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.dial();
    }, this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, this.opts.reconnectMaxMs);
  }

  /** No more dialing. */
  stopDialing(): void {
    this.stopping = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  /** Close the current connection after `goodbye` (sent only once the handshake is done). */
  async close(goodbye: () => void): Promise<void> {
    this.stopDialing();
    const sock = this.sock,
      channel = this.channel;
    if (sock && !sock.destroyed) {
      if (channel?.ready) goodbye();
      channel?.link.stop(); // no heartbeat on a closing connection
      await new Promise<void>((res) => {
        sock.end(() => res());
        setTimeout(res, END_WAIT_MS).unref();
      });
      sock.destroy();
    }
    channel?.close();
  }
}
