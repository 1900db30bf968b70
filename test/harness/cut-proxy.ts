// A TCP proxy on loopback that a test can cut (reset every connection) and restore.
import * as net from 'node:net';

export class CutProxy {
  private server: net.Server;
  private conns = new Set<net.Socket>();
  private up = true;
  port = 0;
  constructor(private readonly target: number) {
    this.server = net.createServer((c) => {
      if (!this.up) {
        c.destroy();
        return;
      }
      const u = net.connect(this.target, '127.0.0.1');
      c.setNoDelay(true);
      u.setNoDelay(true);
      this.conns.add(c);
      this.conns.add(u);
      c.pipe(u);
      u.pipe(c);
      const end = () => {
        c.destroy();
        u.destroy();
        this.conns.delete(c);
        this.conns.delete(u);
      };
      c.on('error', end);
      u.on('error', end);
      c.on('close', end);
      u.on('close', end);
    });
  }
  async listen(): Promise<number> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }
  cut(): void {
    this.up = false;
    for (const c of this.conns) c.destroy();
    this.conns.clear();
  }
  restore(): void {
    this.up = true;
  }
  close(): void {
    this.cut();
    this.server.close();
  }
}
