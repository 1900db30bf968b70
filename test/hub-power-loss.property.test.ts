// Power-loss safety of the hub's own state ("marks before data, acks only after both"), against
// the real hub (sessions, apply queue, sync engine, group commit, Replica) over an in-memory
// link. The recovery volume sits on the power-loss recorder (test/harness/power-loss.ts). The
// state store is the in-memory one, every commit of it landing at once: LMDB commits are atomic,
// and a lazy commit (cleared bits) reaching the disk early is the worst case for the ordering
// under test, so it is modelled as always landing. A scripted agent (frames from protocol/)
// keeps its image and dirty regions by the SPEC's rules (a region is clean once the WRITE_ACK of
// its newest write or the DIRTY_REPORT_ACK of its report came back). It writes, sometimes a
// write that failed locally (io_status < 0: the hub marks it dirty, a durable commit), answers
// sync reads; the hub checkpoints now and then; then the hub's power is cut: the recovery volume
// is rebuilt as every synced write plus a subset of the later ones (page granularity), a new hub
// starts on it and the surviving state, the agent reconnects and reports. After resync the
// recovery volume must equal the agent's image.
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import {
  Cap,
  Cmd,
  DIRTY_FINAL,
  FrameDecoder,
  IO_OK,
  decode,
  encodeDirtyReport,
  encodeHello,
  encodeProtectedWriteHead,
  encodeRemoteIoResHead,
  encodeReportVmVolumes,
} from '../protocol';
import { Hub } from '../src/hub/hub';
import type { AgentSession } from '../src/hub/session';
import { MemoryStateStore, StateStore } from '../storage/state';
import { silentLogger } from '../src/log';
import { RecordedFile, RecordedImage, Survival } from './harness/power-loss';
import { Rng } from './harness/prng';

const RS = 4096;
const SIZE = 32 * RS;
const CAPS = Cap.WRITE_ACK | Cap.DIRTY_REPORT;

/** The scripted agent: its image (never cut: only the hub loses power) and dirty regions. */
class ScriptedAgent {
  readonly img: Buffer;
  private newest = new Map<number, number>(); // region -> seq of its newest write on this connection
  dirty = new Set<number>(); // regions the hub may not hold: unacked writes, unacked reports
  private reported = new Set<number>();
  seq = 0;
  volumeId = 0;

  constructor(rng: Rng) {
    this.img = Buffer.alloc(SIZE);
    for (let i = 0; i < SIZE; i += 4) this.img.writeUInt32LE(rng.int(2 ** 32), i);
  }

  /** A new connection: sequence numbers and ids start over. */
  hello(): Buffer[] {
    this.seq = 0;
    this.newest.clear();
    return [encodeHello(1, CAPS, 1 << 25, 'vm'), encodeReportVmVolumes([{ sizeBytes: SIZE, name: 'V0' }])];
  }

  /** The hub's frame; returns the answers. */
  receive(cmd: number, p: Buffer): Buffer[] {
    const m: any = decode(cmd, Buffer.from(p));
    if (cmd === Cmd.START_PROTECT) {
      this.volumeId = m.volumeId;
      this.reported = new Set(this.dirty);
      const ext = [...this.reported].map((r) => ({ offsetSectors: (r * RS) / 512, sizeSectors: RS / 512 }));
      return [encodeDirtyReport(m.volumeId, 1, DIRTY_FINAL, ext)];
    }
    if (cmd === Cmd.DIRTY_REPORT_ACK) {
      for (const r of this.reported) if (!this.newest.has(r)) this.dirty.delete(r);
      this.reported.clear();
    } else if (cmd === Cmd.WRITE_ACK) {
      for (const [r, s] of this.newest)
        if (s <= m.seq) {
          this.newest.delete(r);
          if (!this.reported.has(r)) this.dirty.delete(r);
        }
    } else if (cmd === Cmd.REMOTE_IO_REQ) {
      const off = m.offsetSectors * 512,
        len = m.sizeSectors * 512;
      const data = Buffer.from(this.img.subarray(off, off + len));
      return [Buffer.concat([encodeRemoteIoResHead(m.reqId, IO_OK, m.volumeId, len), data])];
    }
    return [];
  }

  /** A guest write (failed locally: io_status -5, what the image holds there is unknown). */
  write(off: number, len: number, fill: number, failed: boolean): Buffer | null {
    const data = Buffer.alloc(len, fill);
    data.copy(this.img, off);
    const first = Math.floor(off / RS),
      last = Math.floor((off + len - 1) / RS);
    for (let r = first; r <= last; r++) this.dirty.add(r);
    if (!this.volumeId) return null; // not protected on this connection (yet): only logged dirty
    const s = ++this.seq;
    for (let r = first; r <= last; r++) this.newest.set(r, s);
    const head = encodeProtectedWriteHead(this.volumeId, off / 512, len / 512, failed ? -5 : IO_OK);
    return failed ? head : Buffer.concat([head, data]);
  }
}

/** One hub incarnation's view of the store: after its power cut, its late commits go nowhere. */
function incarnation(store: StateStore): { store: StateStore; kill: () => void } {
  let dead = false;
  const live: StateStore = {
    volume: (n) => store.volume(n),
    volumes: () => store.volumes(),
    putVolume: async (rec, durable) => {
      if (!dead) await store.putVolume(structuredClone(rec), durable);
    },
    allocateVolumeId: () => store.allocateVolumeId(),
    meta: (k) => store.meta(k),
    putMeta: (k, v) => {
      if (!dead) store.putMeta(k, v);
    },
    loadBitmap: (n, bm) => store.loadBitmap(n, bm),
    saveBitmap: async (n, bm, durable) => {
      if (!dead) await store.saveBitmap(n, bm, durable);
    },
    close: async () => {},
  };
  return { store: live, kill: () => (dead = true) };
}

class HubWorld {
  readonly store = new MemoryStateStore();
  private kill = () => {};
  recovery: RecordedImage;
  hub!: Hub;
  session: AgentSession | null = null;
  private h2a: Buffer[] = [];
  private a2h: Buffer[] = [];
  private hubIn!: FrameDecoder;
  private agentIn!: FrameDecoder;
  history: string[] = [];
  private readonly incarnations: Hub[] = [];

  constructor(readonly agent: ScriptedAgent) {
    this.recovery = new RecordedImage(new RecordedFile(Buffer.alloc(SIZE)));
    this.boot();
  }

  boot(): void {
    const recovery = this.recovery;
    const inc = incarnation(this.store);
    this.kill = inc.kill;
    this.hub = new Hub({
      volumes: [{ name: 'V0', path: 'V0R' }],
      store: inc.store,
      log: silentLogger(),
      regionSize: RS,
      session: { maxInflightReads: 2, maxReadBytes: 2 * RS, checkpointMs: 1e9, commitIntervalMs: 0 },
      openTarget: () => recovery,
    });
    this.incarnations.push(this.hub);
  }

  /** The case is over: every hub started closes (a cut one is killed: its store takes nothing). */
  async close(): Promise<void> {
    for (const h of this.incarnations) await h.close();
  }

  connect(): void {
    if (this.session) return;
    const alive = { v: true };
    this.h2a = [];
    this.a2h = [];
    const s = this.hub.newSession({
      send: (bufs) => {
        if (alive.v && this.session === s) this.h2a.push(Buffer.concat(bufs));
      },
      close: () => {
        alive.v = false;
        if (this.session === s) {
          this.session = null;
          this.agent.volumeId = 0;
          this.history.push('session closed by the hub');
        }
      },
      pause: () => {},
      endsReads: true,
    });
    this.session = s;
    this.hubIn = new FrameDecoder((cmd, p) => s.receive(cmd, p));
    this.agentIn = new FrameDecoder((cmd, p) => this.a2h.push(...this.agent.receive(cmd, p)));
    this.a2h.push(...this.agent.hello());
  }

  send(b: Buffer | null): void {
    if (b) this.a2h.push(b);
  }

  async step(n: number): Promise<void> {
    for (let i = 0; i < n && this.session; i++) {
      const a = this.a2h.shift();
      if (a) {
        try {
          this.hubIn.push(a);
        } finally {
          this.session?.endOfRead(); // as the listener: a read's small writes are applied together
        }
      }
      await new Promise((r) => setImmediate(r));
      const h = this.h2a.splice(0);
      for (const f of h) this.agentIn.push(f);
    }
  }

  async quiesce(): Promise<void> {
    for (let round = 0; round < 20000; round++) {
      if (!this.session) this.connect();
      await this.step(1);
      const rep = this.hub.replicas.get('V0')!;
      if (this.a2h.length === 0 && this.h2a.length === 0 && rep.state === 'protecting') {
        await new Promise((r) => setTimeout(r, 1));
        if (this.a2h.length === 0 && this.h2a.length === 0 && this.agent.dirty.size === 0) return;
      }
    }
    throw new Error(`no convergence; history: ${this.history.join(', ')}`);
  }

  /** The hub's power goes: the recovery volume as it may survive; a new hub on it and the store. */
  async cut(how: Survival, rng: Rng): Promise<void> {
    this.kill();
    const survived = this.recovery.f.survive(how, rng);
    const s = this.session;
    this.session = null;
    if (s) void this.hub.endSession(s).catch(() => undefined); // the old hub's leftovers go nowhere
    this.recovery = new RecordedImage(new RecordedFile(survived));
    this.history.push(`cut ${how}`);
    this.boot();
    this.agent.volumeId = 0;
  }
}

const op = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      t: fc.constant('write' as const),
      off: fc.nat(SIZE / 512 - 1),
      len: fc.integer({ min: 1, max: 24 }),
      fill: fc.nat(255),
      failed: fc.boolean(),
    }),
  },
  { weight: 6, arbitrary: fc.record({ t: fc.constant('step' as const), n: fc.integer({ min: 1, max: 6 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('checkpoint' as const) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('converge' as const) }) },
  {
    weight: 1,
    arbitrary: fc.record({
      t: fc.constant('cut' as const),
      how: fc.constantFrom<Survival>('none', 'all', 'random'),
      seed: fc.nat(),
    }),
  },
);

const tally = { cases: 0, cuts: 0, none: 0, all: 0, random: 0, pagesPending: 0, pagesLanded: 0, equal: 0 };

async function runCase(ops: any[], how: Survival, seed: number): Promise<void> {
  const agent = new ScriptedAgent(new Rng(seed));
  const w = new HubWorld(agent);
  try {
    await playCase(w, agent, ops, how, seed);
  } finally {
    await w.close();
  }
}

async function playCase(w: HubWorld, agent: ScriptedAgent, ops: any[], how: Survival, seed: number): Promise<void> {
  w.connect();
  const cut = async (h: Survival, s: number) => {
    const f = w.recovery.f;
    await w.cut(h, new Rng(s));
    tally.cuts++;
    tally[h]++;
    tally.pagesPending += f.stats.cutPending;
    tally.pagesLanded += f.stats.cutLanded;
    w.connect();
  };
  for (const o of ops) {
    if (o.t === 'write') {
      const off = Math.min(o.off * 512, SIZE - 512);
      const len = Math.min(o.len * 512, SIZE - off);
      w.history.push(`write ${off}+${len}${o.failed ? ' failed' : ''}`);
      w.send(agent.write(off, len, o.fill, o.failed && o.fill % 3 === 0));
    } else if (o.t === 'step') await w.step(o.n);
    else if (o.t === 'checkpoint') {
      w.history.push('checkpoint');
      await w.hub.replicas.get('V0')!.checkpoint();
    } else if (o.t === 'converge') {
      w.history.push('converge');
      await w.quiesce();
    } else await cut(o.how, o.seed);
  }
  await cut(how, seed);
  await w.quiesce();
  const rec = w.recovery.f.data;
  if (!rec.equals(agent.img)) {
    let r = 0;
    while (rec.subarray(r * RS, (r + 1) * RS).equals(agent.img.subarray(r * RS, (r + 1) * RS))) r++;
    assert.fail(`after a hub power cut (${how}) the replica differs in region ${r}; history: ${w.history.join(', ')}`);
  }
  tally.equal++;
  tally.cases++;
}

describe('power loss on the hub: recovery volume and its bitmap (property-based, recorded file, real hub)', function () {
  this.timeout(120_000);
  const runs = Number(process.env.PROP_RUNS_HUB ?? 600);
  it(`${runs} cases, each ending in a hub power cut (some cutting midway too): after restart and resync the replica equals the image`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(op, { maxLength: 50 }),
        fc.constantFrom<Survival>('none', 'all', 'random'),
        fc.nat(),
        (ops, how, seed) => runCase(ops, how, seed),
      ),
      { numRuns: runs, timeout: 10_000 },
    );
    console.log(`      hub power-loss cuts: ${JSON.stringify(tally)}`);
  });
});
