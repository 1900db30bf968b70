// One connection to the hub, without its socket: settles HELLO (or assumes a legacy hub that
// answers without one) on the shared Link, answers PING, and feeds every other message to the
// core. The connection module puts a socket under it; the property test a queue.
import { Cmd, decode, ProtocolError } from '../../protocol';
import type { Link } from '../link/link';
import type { Logger } from '../log';
import type { AgentCore } from './core';

export class HubChannel {
  private closed = false;
  private sentHello = false;
  private heardFrame = false;

  constructor(
    readonly link: Link,
    private readonly core: AgentCore,
    private readonly log: Logger,
  ) {}

  /** HELLO answered, or a legacy hub assumed: the core has the link. */
  get ready(): boolean {
    return this.link.isAgreed && !this.closed;
  }

  /** Our HELLO, the first frame on a new connection. */
  hello(): void {
    this.sentHello = true;
    this.link.sendHello();
  }

  /** The hub sent a frame on this connection (a seed hub speaks first with START_PROTECT). */
  get spoken(): boolean {
    return this.heardFrame;
  }

  /** Our HELLO went out: the dial itself is done. */
  get helloSent(): boolean {
    return this.sentHello;
  }

  /** The agent speaks first without HELLO (a seed agent): no extensions, the core starts now. */
  startLegacy(): void {
    this.link.legacy();
    this.core.connected(this.link);
  }

  /** One frame from the hub; throws ProtocolError on a message out of place. */
  receive(cmd: number, payload: Buffer): void {
    this.heardFrame = true;
    const m = decode(cmd, payload);
    if (m.cmd === Cmd.HELLO) {
      if (this.link.isAgreed) throw new ProtocolError('second HELLO from hub');
      const caps = this.link.agree(m.caps);
      this.log.info({ hub: m.name, caps }, 'hub hello');
      return this.core.connected(this.link);
    }
    if (!this.link.isAgreed) this.startLegacy(); // a hub that answers without HELLO speaks the seed protocol
    if (m.cmd === Cmd.PING) return this.link.pong(m.nonce);
    if (m.cmd === Cmd.PONG) return this.core.pong(m.nonce);
    this.core.receive(m);
  }

  /** The connection ended: per-connection state goes, once. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.link.stop();
    if (this.link.isAgreed) this.core.disconnected();
  }
}
