// The agent's watch on the process that started it (rephub-qemu), through --parent-fd: a pipe
// whose other end only the parent holds. The parent writes `qemu PID` once QEMU runs; EOF means
// the parent is gone, whether it exited or was SIGKILLed. QEMU is not in the parent's fate (a
// kill of rephub-qemu alone leaves it running, writing through our NBD socket), so cutting the
// agent then would cut a running VM's disks. Instead the agent keeps serving while any NBD
// client is connected or the named QEMU lives, and only then stops through the clean path
// (drain, AGENT_SHUTDOWN): every write QEMU made has arrived by the time its connections closed.
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Logger } from '../log';
import { assert } from '../assert';

const POLL_MS = 500;
/** The most the parent may write: one `qemu PID` line, with room to spare. */
const MAX_MESSAGE_BYTES = 256;

export interface ParentWatchDeps {
  /** NBD clients connected now. */
  openConnections(): number;
  /** The clean stop (as on SIGTERM). */
  stop(reason: string): void;
  log: Logger;
}

export function parseParentFd(v: string): number {
  const fd = Number(v);
  if (!Number.isInteger(fd) || fd < 3 || fd > 1023) throw new Error(`--parent-fd ${v}: a descriptor number, 3 to 1023`);
  return fd;
}

/** A process is alive: exists, not a zombie, and (on Linux) the same one that was named, by start time. */
function procStart(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[0] === 'Z' || fields[0] === 'X' ? undefined : fields[19];
  } catch {
    if (fs.existsSync('/proc/self/stat')) return undefined; // gone
  }
  try {
    process.kill(pid, 0); // no /proc: existence is all we can tell
    return '?';
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM' ? '?' : undefined;
  }
}

export class ParentWatch {
  private qemuPid = 0;
  private qemuStart?: string;
  private text = '';
  private timer?: NodeJS.Timeout;
  private orphaned = false;
  private readonly pipe: net.Socket;

  constructor(
    fd: number,
    private readonly deps: ParentWatchDeps,
  ) {
    const pipe = (this.pipe = new net.Socket({ fd, readable: true, writable: false }));
    pipe.on('data', (d: Buffer) => this.heard(d));
    pipe.on('end', () => this.parentGone());
    pipe.on('error', () => this.parentGone());
    pipe.on('close', () => this.parentGone());
  }

  /** The agent stops for another reason: no more watching. */
  close(): void {
    this.orphaned = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.pipe.destroy();
  }

  /** `qemu PID` lines from the parent; anything else is logged and ignored. */
  private heard(d: Buffer): void {
    this.text = (this.text + d.toString('latin1')).slice(-MAX_MESSAGE_BYTES);
    let nl: number;
    while ((nl = this.text.indexOf('\n')) >= 0) {
      const line = this.text.slice(0, nl);
      this.text = this.text.slice(nl + 1);
      const m = /^qemu (\d+)$/.exec(line);
      if (!m) {
        this.deps.log.warn({ line }, 'unexpected line from the parent process: ignored');
        continue;
      }
      this.qemuPid = Number(m[1]);
      this.qemuStart = procStart(this.qemuPid);
    }
  }

  private qemuAlive(): boolean {
    if (this.qemuPid === 0 || this.qemuStart === undefined) return false;
    const now = procStart(this.qemuPid);
    return now !== undefined && (now === this.qemuStart || now === '?');
  }

  private parentGone(): void {
    if (this.orphaned) return;
    this.orphaned = true;
    const ctx = { qemuPid: this.qemuPid || undefined, nbdClients: this.deps.openConnections() };
    this.deps.log.warn(ctx, 'parent process (rephub-qemu) gone: serving until QEMU and its NBD connections are gone');
    if (!this.check()) this.timer = setInterval(() => this.check(), POLL_MS);
  }

  /** Stops the agent once nothing of QEMU is left; true when it did. */
  private check(): boolean {
    assert(this.orphaned, 'parent watch polls only once orphaned');
    if (this.deps.openConnections() > 0 || this.qemuAlive()) return false;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.deps.stop('parent gone, QEMU gone');
    return true;
  }
}
