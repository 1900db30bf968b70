// One fuzz connection to the hub: writes bytes, decodes what the hub sends back, and waits for
// a condition on what came back (or the close) with a deadline.
import * as net from 'node:net';
import { Cmd, ErrorCode, FrameDecoder, decode, Message } from '../../../protocol';

export type ErrorMsg = Extract<Message, { cmd: Cmd.ERROR }>;

export class Peer {
  readonly sock: net.Socket;
  readonly msgs: Message[] = [];
  badFrame: string | null = null;
  closed = false;
  reset = false;
  ok: Promise<boolean>;
  private wake: (() => void)[] = [];

  constructor(
    host: string,
    port: number,
    private readonly onReply?: (m: Message) => void,
  ) {
    const sock = net.connect({ host, port });
    this.sock = sock;
    sock.setNoDelay(true);
    const dec = new FrameDecoder((cmd, p) => {
      let m: Message;
      try {
        m = decode(cmd, p);
      } catch (e) {
        this.badFrame ??= `${Cmd[cmd] ?? cmd}: ${(e as Error).message}`;
        return;
      }
      this.msgs.push(m);
      this.onReply?.(m);
    });
    sock.on('data', (c) => {
      if (this.badFrame) return;
      try {
        dec.push(c);
      } catch (e) {
        this.badFrame = (e as Error).message;
      }
      this.notify();
    });
    sock.on('error', () => {
      this.reset = true;
    });
    sock.on('close', () => {
      this.closed = true;
      this.notify();
    });
    this.ok = new Promise((r) => {
      sock.once('connect', () => r(true));
      sock.once('close', () => r(false));
    });
  }

  private notify(): void {
    for (const w of this.wake.splice(0)) w();
  }

  /** Wait until `pred` holds or `ms` passed; true if it holds. */
  async until(pred: () => boolean, ms: number): Promise<boolean> {
    const end = Date.now() + ms;
    while (!pred()) {
      const left = end - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 250));
        this.wake.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return true;
  }

  write(b: Buffer): Promise<void> {
    return new Promise((r) => {
      if (this.sock.destroyed || b.length === 0) return r();
      this.sock.write(b, () => r());
    });
  }

  errors(): ErrorMsg[] {
    return this.msgs.filter((m): m is ErrorMsg => m.cmd === Cmd.ERROR);
  }
  /** The error that ended the session: the last one that is not a (non-fatal) refusal. */
  terminal(): ErrorMsg | undefined {
    return this.errors()
      .filter((e) => e.code !== ErrorCode.VOLUME_REFUSED)
      .pop();
  }
  fin(): void {
    if (!this.sock.destroyed) this.sock.end();
  }
  destroy(): void {
    this.sock.destroy();
  }
}
