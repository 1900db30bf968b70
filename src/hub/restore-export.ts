// Restore over NBD (issue 14): a volume as of a checkpoint served read-only on the hub's NBD
// server under a name of its own (restore-VOLUME-RANDOM, never a volume's name, so a failover
// test's exports are untouched), for `rephub restore` to copy with nbdcopy: several connections
// and many requests in flight, where the HTTP stream was one ordered stream through the event
// loop. Owns the open restore exports: each holds a journal view (which pins the journal's
// segments from its point) until the restore ends, its clients go away, or none comes.
import * as crypto from 'node:crypto';
import type { ExportRegistry } from '../nbd/exports';
import { TargetExport } from '../nbd/exports';
import type { JournalView } from '../../storage/journal-view';
import type { Logger } from '../log';
import { HubJournals, JournalRefused, iso } from './journal';

/** What the hub's restore exports need besides the journals. */
export interface RestoreExportDeps {
  exports: ExportRegistry;
  /** The NBD URI of an export name, or null when the hub serves NBD with TLS only. */
  nbdUri: (name: string) => string | null;
  log: Logger;
}

interface Open {
  view: JournalView;
  vm: string;
  volume: string;
  opened: number;
  /** A client has attached (counted at attach, so one that came and went between checks counts). */
  seen: boolean;
  /** When the export was last seen with no client attached after one was (0: not since). */
  idleSince: number;
}

const MAX_OPEN = 16; // restore exports at once, hub-wide
const FIRST_CLIENT_MS = 60_000; // an export no client opens within this goes
const GONE_MS = 2_000; // an export whose clients all left goes after this (nbdcopy reconnects fast)
const CHECK_MS = 250;

export class RestoreExports {
  private readonly open = new Map<string, Open>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly journals: HubJournals,
    private readonly deps: RestoreExportDeps,
  ) {}

  /** Serve `volume` of `vm` at point `at` under a new name; the answer names it for nbdcopy. */
  start(vm: string, volume: string, at: string): object {
    if (this.open.size >= MAX_OPEN) throw new JournalRefused(`${MAX_OPEN} restores are running; retry later`);
    const cp = this.journals.resolve(vm, at);
    const name = `restore-${volume}-${crypto.randomBytes(8).toString('hex')}`;
    const uri = this.deps.nbdUri(name);
    if (uri === null) throw new JournalRefused('the hub serves NBD with TLS only: restore over HTTP');
    const view = this.journals.view(vm, volume, cp);
    this.open.set(name, { view, vm, volume, opened: Date.now(), seen: false, idleSince: 0 });
    this.deps.exports.add(new TargetExport(name, view));
    this.timer ??= setInterval(() => this.check(), CHECK_MS);
    this.timer.unref();
    this.deps.log.info({ vm, volume, export: name, checkpoint: cp.id }, 'restore export open');
    return {
      name,
      uri,
      size: view.sizeBytes,
      checkpoint: { id: cp.id, time: iso(cp.time), kind: cp.kind, label: cp.label },
    };
  }

  /** The restore is over: the export goes (its connections are closed) and the journal is unpinned. */
  async end(name: string, why = 'restore ended'): Promise<{ ended: boolean }> {
    const o = this.open.get(name);
    if (!o) return { ended: false };
    this.open.delete(name);
    if (this.open.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
    }
    await this.deps.exports.remove(name);
    await o.view.close();
    this.deps.log.info({ vm: o.vm, volume: o.volume, export: name, ms: Date.now() - o.opened }, why);
    return { ended: true };
  }

  /** Every restore export ends (the hub stops). */
  async close(): Promise<void> {
    await Promise.all([...this.open.keys()].map((n) => this.end(n, 'restore export closed: the hub stops')));
  }

  /** An export whose clients went away, or that none opened in time, ends by itself. */
  private check(): void {
    const now = Date.now();
    for (const [name, o] of this.open) {
      const clients = this.deps.exports.attachedClients(name);
      o.seen ||= this.deps.exports.attachesSince(name) > 0;
      if (clients > 0) {
        o.idleSince = 0;
      } else if (o.seen) {
        o.idleSince ||= now;
        if (now - o.idleSince >= GONE_MS) void this.end(name, 'restore export closed: its clients went away');
      } else if (now - o.opened >= FIRST_CLIENT_MS) void this.end(name, 'restore export closed: no client opened it');
    }
  }
}
