// The file under a dirty log, as the few synchronous calls the log makes: positioned reads and
// writes, truncate and fdatasync. FdLogFile is the real file; the power-loss simulation
// (test/harness/power-loss.ts) puts a recorder here instead, to cut the power between any two calls.
import * as fs from 'node:fs';

export interface LogFile {
  /** Read into buf from pos; returns the bytes read (short at the end of the file). */
  read(buf: Buffer, pos: number): number;
  write(buf: Buffer, pos: number): void;
  truncate(length: number): void;
  /** fdatasync: every write before it is durable when it returns. */
  sync(): void;
  close(): void;
}

export class FdLogFile implements LogFile {
  constructor(private fd: number) {}

  /** Open `path` for update; null when it does not exist (create() then). */
  static open(path: string): FdLogFile | null {
    try {
      return new FdLogFile(fs.openSync(path, 'r+'));
    } catch (e: any) {
      if (e.code !== 'ENOENT') throw e;
      return null;
    }
  }

  static create(path: string): FdLogFile {
    return new FdLogFile(fs.openSync(path, 'w+'));
  }

  read(buf: Buffer, pos: number): number {
    return fs.readSync(this.fd, buf, 0, buf.length, pos);
  }
  write(buf: Buffer, pos: number): void {
    fs.writeSync(this.fd, buf, 0, buf.length, pos);
  }
  truncate(length: number): void {
    fs.ftruncateSync(this.fd, length);
  }
  sync(): void {
    fs.fdatasyncSync(this.fd);
  }
  close(): void {
    fs.closeSync(this.fd);
  }
}
