// What the NBD server serves: the export interface (BlockTarget's shape and argument order,
// plus a name and zeroing), an export over any block target, and the registry that owns the
// name -> export map and the connections attached to each, so removing an export ends them.
import { BlockTarget, writeZeroes } from '../../storage/volume';

/** A block device served by name. Same argument order as storage/volume.ts's BlockTarget. */
export interface NbdExport {
  readonly name: string;
  readonly sizeBytes: number;
  read(buf: Buffer, offset: number): Promise<void>;
  write(buf: Buffer, offset: number): Promise<void>;
  /** Optional: a write done before returning (true), or not attempted (false: use write()). */
  writeNow?(buf: Buffer, offset: number): boolean;
  /** Optional: a write given as the pieces it arrived in (large writes; saves joining them). */
  writev?(parts: Buffer[], offset: number): Promise<void>;
  zero(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  /** Optional: a flush done before returning (true), or not attempted (false: use flush()). */
  flushNow?(): boolean;
}

/** The top of an export's filter stack: a block target (a view, a tracked volume) with a name. */
export class TargetExport implements NbdExport {
  private readonly writeTarget: (buf: Buffer, offset: number) => Promise<void>;

  constructor(
    readonly name: string,
    private readonly target: BlockTarget,
  ) {
    this.writeTarget = (buf, offset) => target.write(buf, offset); // zeroing's piece writer, made once
  }

  get sizeBytes(): number {
    return this.target.sizeBytes;
  }
  read(buf: Buffer, offset: number): Promise<void> {
    return this.target.read(buf, offset);
  }
  write(buf: Buffer, offset: number): Promise<void> {
    return this.target.write(buf, offset);
  }
  zero(offset: number, length: number): Promise<void> {
    return writeZeroes(this.writeTarget, offset, length);
  }
  flush(): Promise<void> {
    return this.target.flush();
  }
}

/** A connection using an export: told to end when the export goes away. */
export interface ExportUser {
  /** Close now; resolves once none of its requests is still running on the export. */
  detach(reason: string): Promise<void>;
}

interface Entry {
  readonly export: NbdExport;
  readonly users: Set<ExportUser>;
  /** Connections that have attached since the export was added (a client may come and go unseen). */
  attaches: number;
}

/** The one owner of the exports map: add, look up, attach a connection, remove. */
export class ExportRegistry {
  private readonly entries = new Map<string, Entry>();
  /** Callers waiting for exports' clients to go (see `whenIdle`); failover actions run one at a time. */
  private readonly idleWaiters = new Set<() => void>();

  get(name: string): NbdExport | undefined {
    return this.entries.get(name)?.export;
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  /** How many NBD connections are attached to `name` now (0 when it is not served). */
  attachedClients(name: string): number {
    return this.entries.get(name)?.users.size ?? 0;
  }

  /** How many NBD connections have attached to `name` since it was added, gone ones included. */
  attachesSince(name: string): number {
    return this.entries.get(name)?.attaches ?? 0;
  }

  /** Serve `exp` under its name. One already there is replaced: its connections are closed. */
  add(exp: NbdExport): void {
    const old = this.entries.get(exp.name);
    this.entries.set(exp.name, { export: exp, users: new Set(), attaches: 0 });
    if (old) void detachAll(old, 'export replaced');
  }

  /**
   * Stop serving `name` and close every connection attached to it (a client that kept writing
   * would diverge silently). Resolves once none of their requests still runs on the export.
   */
  async remove(name: string): Promise<void> {
    const entry = this.entries.get(name);
    if (!entry) return;
    this.entries.delete(name);
    await detachAll(entry, 'export removed');
  }

  /** `user` starts transmission on `name`: the export, or undefined when it is gone. */
  attach(name: string, user: ExportUser): NbdExport | undefined {
    const entry = this.entries.get(name);
    if (!entry) return undefined;
    entry.users.add(user);
    entry.attaches++;
    return entry.export;
  }

  /** `user` closed on its own. */
  detach(name: string, user: ExportUser): void {
    this.entries.get(name)?.users.delete(user);
    for (const check of this.idleWaiters) check();
  }

  /**
   * Resolves once no connection is attached to any of `names`, or after `ms`. A client that has
   * just disconnected (nbdcopy exited, then the operator stops the test) may still be counted
   * until the hub's loop reads its close: an action refused for attached clients waits this
   * long before it refuses.
   */
  whenIdle(names: string[], ms: number): Promise<void> {
    const busy = () => names.some((n) => this.attachedClients(n) > 0);
    if (!busy()) return Promise.resolve();
    if (this.idleWaiters.size >= MAX_IDLE_WAITERS) return Promise.resolve(); // the caller refuses at once
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.idleWaiters.delete(check);
        resolve();
      };
      const check = () => {
        if (!busy()) done();
      };
      const timer = setTimeout(done, ms);
      this.idleWaiters.add(check);
    });
  }
}

const MAX_IDLE_WAITERS = 16;

function detachAll(entry: Entry, reason: string): Promise<unknown> {
  const users = [...entry.users];
  entry.users.clear();
  return Promise.all(users.map((u) => u.detach(reason)));
}
