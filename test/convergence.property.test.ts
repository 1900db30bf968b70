// The convergence invariant, checked against the real hub session and sync engine and the real
// agent core (write path, mirror, dirty-report hand-over, remote IO, HELLO on the shared Link):
// a scheduler interleaves guest writes, deliveries in either direction (each direction FIFO, as
// TCP allows), completions of the agent's remote reads, hub progress, checkpoints, disconnects,
// clean shutdowns and hub crashes (kill -9: in-memory state gone, persisted store and volume data
// kept). At quiescence every recovery volume must equal its protected volume byte for byte, so a
// wrong rule for clearing the agent's dirty bits fails here.
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import {
  Cmd,
  Cap,
  ALL_CAPS,
  HEADER_SIZE,
  SECTOR,
  IO_OK,
  IO_ZEROES,
  IO_SPARSE,
  SPARSE_CHUNK,
  SPARSE_MAP_BYTES,
  encodeSparseMap,
  encodeRemoteIoResHead,
  FrameDecoder,
  decode,
} from '../protocol';
import { Hub } from '../src/hub/hub';
import { AgentSession } from '../src/hub/session';
import { AgentCore } from '../src/agent/core';
import { HubChannel } from '../src/agent/hub-channel';
import { newStats } from '../src/agent/ports';
import { Link } from '../src/link/link';
import { BufferPool } from '../src/buffer-pool';
import { MemoryStateStore, StateStore } from '../storage/state';
import { BlockTarget, MemoryVolume } from '../storage/volume';
import { DirtyLog } from '../storage/dirty-log';
import { silentLogger, makeLogger } from '../src/log';

const RS = 4096;

/** A hub incarnation's view of a disk: dead after a crash, like a killed process's fds. */
class Fenced implements BlockTarget {
  constructor(
    private readonly v: MemoryVolume,
    private readonly life: { dead: boolean },
    readonly createdEmpty = false, // this open created it: the hub's known-zero map (HOLES clears on it)
  ) {}
  get sizeBytes() {
    return this.v.sizeBytes;
  }
  async read(b: Buffer, o: number) {
    if (!this.life.dead) await this.v.read(b, o);
  }
  async write(b: Buffer, o: number) {
    if (!this.life.dead) await this.v.write(b, o);
  }
  async flush() {}
  async close() {}
}
function fencedStore(s: MemoryStateStore, life: { dead: boolean }): StateStore {
  return {
    volume: (n) => s.volume(n),
    volumes: () => s.volumes(),
    allocateVolumeId: () => s.allocateVolumeId(),
    loadBitmap: (n, bm) => s.loadBitmap(n, bm),
    meta: (k) => s.meta(k),
    putMeta: (k, v) => {
      if (!life.dead) s.putMeta(k, v);
    },
    putVolume: async (r, d) => {
      if (!life.dead) await s.putVolume(r);
      void d;
    },
    saveBitmap: async (n, bm, d) => {
      if (!life.dead) await s.saveBitmap(n, bm);
      void d;
    },
    close: async () => {},
  };
}

/**
 * A protected volume's image on the agent: writes land at once (writeSync, as a file's pwrite);
 * a read takes its data at once but completes only when the scheduler says (readDone), so guest
 * writes can land and be mirrored between a remote read and its answer (concurrent IO).
 */
class AgentDisk implements BlockTarget {
  readonly data: Buffer;
  constructor(
    readonly sizeBytes: number,
    private readonly reads: (() => void)[],
  ) {
    this.data = Buffer.alloc(sizeBytes);
  }
  async read(b: Buffer, o: number) {
    this.data.copy(b, 0, o, o + b.length);
    await new Promise<void>((done) => this.reads.push(done));
  }
  writeSync(b: Buffer, o: number) {
    b.copy(this.data, o);
  }
  async write(b: Buffer, o: number) {
    this.writeSync(b, o);
  }
  /** SEEK_DATA as a file system with 512-byte blocks that keeps zero blocks as holes would answer. */
  dataExtents(start: number, end: number): [number, number][] {
    const out: [number, number][] = [];
    for (let a = start; a < end; a += SECTOR) {
      const b = Math.min(end, a + SECTOR);
      if (this.data.subarray(a, b).every((x) => x === 0)) continue;
      const last = out[out.length - 1];
      if (last && last[1] === a) last[1] = b;
      else out.push([a, b]);
    }
    return out;
  }
  async flush() {}
  async close() {}
}

/**
 * The agent's Link, re-encoding the answers to odd-numbered remote reads as IO_SPARSE answers of
 * the same data (zero chunks left out): the hub must write a sparse answer's zero chunks too. The
 * real agent answers sparse only for reads of more than one 64 KiB chunk, larger than these volumes.
 */
class SparseLink extends Link {
  readBytes = new Map<number, number>(); // reqId -> bytes the hub asked for
  override send(bufs: Buffer[], done?: () => void): void {
    super.send(this.has(Cap.SPARSE) ? this.asSparse(bufs) : bufs, done);
  }
  private asSparse(bufs: Buffer[]): Buffer[] {
    const head = bufs[0];
    if (head.readUInt16LE(4) !== Cmd.REMOTE_IO_RES) return bufs;
    const status = head.readInt32LE(HEADER_SIZE + 4);
    if (status !== IO_OK && status !== IO_ZEROES) return bufs;
    const reqId = head.readUInt32LE(HEADER_SIZE),
      volumeId = Number(head.readBigUInt64LE(HEADER_SIZE + 8));
    const len = this.readBytes.get(reqId) ?? 0;
    if (reqId % 2 === 0 || len === 0) return bufs;
    const data = status === IO_OK ? Buffer.concat(bufs.slice(1)) : Buffer.alloc(len);
    const present: boolean[] = [],
      parts: Buffer[] = [];
    for (let a = 0; a < data.length; a += SPARSE_CHUNK) {
      const c = data.subarray(a, Math.min(a + SPARSE_CHUNK, data.length));
      present.push(!c.every((x) => x === 0));
      if (present[present.length - 1]) parts.push(c);
    }
    const dataBytes = parts.reduce((n, c) => n + c.length, 0);
    const sparseHead = encodeRemoteIoResHead(reqId, IO_SPARSE, volumeId, SPARSE_MAP_BYTES + dataBytes);
    return [sparseHead, encodeSparseMap(present), ...parts];
  }
}

interface Conn {
  session: AgentSession;
  a2h: Buffer[];
  h2a: Buffer[];
  alive: boolean;
  hubIn: FrameDecoder;
  agentIn: FrameDecoder;
  channel: HubChannel;
}

class World {
  readonly store = new MemoryStateStore();
  readonly disks = new Map<string, MemoryVolume>(); // recovery volumes, by path
  readonly prot: AgentDisk[]; // protected volumes
  readonly agent: AgentCore;
  life = { dead: false };
  hub!: Hub;
  readonly incarnations: Hub[] = []; // every hub started, crashed ones too: closed at the end
  conn: Conn | null = null;
  legacyClean = true; // legacy agent: last session ended with AGENT_SHUTDOWN
  agentReads: (() => void)[] = []; // remote reads on the agent that have read their data, not yet completed
  log: string[] = [];
  clockMs = 0; // virtual milliseconds of the agent's resync governor
  timers: { at: number; fn: () => void }[] = [];

  constructor(
    readonly sizes: number[],
    readonly caps: number,
    readonly cfg: { inflight: number; readBytes: number; queue?: number },
  ) {
    this.prot = sizes.map((n) => new AgentDisk(n * RS, this.agentReads));
    const volumes = this.prot.map((target, i) => ({
      name: `V${i}`,
      target,
      log: DirtyLog.memory(target.sizeBytes, RS),
    }));
    // The resync governor holds answers on timers (agent/resync-governor.ts): virtual ones here,
    // fired by 'tick' actions and by quiesce(), so held answers are overtaken by later writes at
    // random points, as they are on a real link.
    const clock = {
      now: () => this.clockMs,
      setTimer: (fn: () => void, ms: number) => {
        const t = { at: this.clockMs + ms, fn };
        this.timers.push(t);
        return t;
      },
      clearTimer: (t: unknown) => {
        this.timers = this.timers.filter((x) => x !== t);
      },
    };
    const limits = {
      maxQueueBytes: this.cfg.queue ?? 64 << 20,
      maxPendingWrites: 65536,
      maxRemoteIo: 16,
      seekData: true,
      clock,
    };
    this.agent = new AgentCore(volumes, limits, new BufferPool(1 << 20, 16), silentLogger(), newStats());
    this.startHub();
  }
  get legacy() {
    return this.caps === 0;
  }

  startHub() {
    this.life = { dead: false };
    const life = this.life;
    this.hub = new Hub({
      volumes: this.sizes.map((_, i) => ({ name: `V${i}`, path: `V${i}R` })),
      store: fencedStore(this.store, life),
      log: process.env.SIM_DEBUG ? makeLogger('sim', 'debug') : silentLogger(),
      regionSize: RS,
      session: { maxInflightReads: this.cfg.inflight, maxReadBytes: this.cfg.readBytes, checkpointMs: 1e9 },
      openTarget: (path, size) => {
        let d = this.disks.get(path);
        const created = !d;
        if (!d) this.disks.set(path, (d = new MemoryVolume(size)));
        return new Fenced(d, life, created);
      },
    });
    this.incarnations.push(this.hub);
  }

  /** The case is over: the agent's timers stop and every hub closes (a crashed one is fenced). */
  async close() {
    this.drop('case over');
    this.agent.stop();
    for (const h of this.incarnations) await h.close();
  }

  connect() {
    if (this.conn) return;
    const c = {} as Conn;
    c.a2h = [];
    c.h2a = [];
    c.alive = true;
    c.session = this.hub.newSession({
      send: (bufs) => {
        if (c.alive) c.h2a.push(Buffer.concat(bufs));
      },
      close: () => this.drop('hub closed'),
      pause: () => {},
      endsReads: true,
    });
    const io = {
      write: (bufs: Buffer[], done?: () => void) => {
        if (c.alive) c.a2h.push(Buffer.concat(bufs));
        done?.();
      },
      queuedBytes: () => c.a2h.reduce((n, b) => n + b.length, 0), // the agent's link queue: overflow past it
      close: () => {
        if (this.conn === c) this.drop('agent closed'); // e.g. an overflow on a legacy link
      },
    };
    const link = new SparseLink(io, { caps: this.caps, heartbeatMs: 1e9, name: 'vm', onDead: () => {} });
    c.channel = new HubChannel(link, this.agent, silentLogger());
    c.hubIn = new FrameDecoder((cmd, p) => c.session.receive(cmd, p));
    c.agentIn = new FrameDecoder((cmd, p) => {
      const m = decode(cmd, Buffer.from(p));
      if (m.cmd === Cmd.REMOTE_IO_REQ && m.isRead) link.readBytes.set(m.reqId, m.sizeSectors * SECTOR);
      c.channel.receive(cmd, Buffer.from(p));
    });
    this.conn = c;
    if (this.legacy)
      c.channel.startLegacy(); // a seed agent: no HELLO, its volumes at once
    else c.channel.hello();
    this.log.push('connect');
  }

  /** The agent's side of a connection's end: its remote reads finish into the closed link. */
  private agentLost(c: Conn) {
    c.alive = false;
    c.channel.close();
    for (const done of this.agentReads.splice(0)) done();
  }

  drop(why: string) {
    const c = this.conn;
    if (!c) return;
    this.conn = null;
    this.agentLost(c);
    void this.hub.endSession(c.session);
    this.log.push(`drop ${why}`);
  }

  crashHub() {
    this.life.dead = true; // the old incarnation can no longer touch disk or store
    if (this.conn) {
      this.agentLost(this.conn);
      this.conn = null;
    }
    this.legacyClean = false;
    this.startHub();
    this.log.push('hub crash');
  }

  protectedNow(v: number) {
    return this.conn !== null && this.agent.volumes.hubId(this.agent.volumes.list[v]) >= 0;
  }

  canWrite(v: number) {
    return !this.legacy || this.protectedNow(v);
  }

  write(v: number, offSec: number, lenSec: number, fill: number) {
    const size = this.prot[v].sizeBytes;
    const off = Math.min(offSec * SECTOR, size - SECTOR);
    const len = Math.min(lenSec * SECTOR, size - off);
    const data = Buffer.alloc(len, fill);
    if (fill !== 0) data.writeUInt32LE(this.log.length, 0); // fill 0: a real zero write (regions can return to zero)
    assert.ok(this.agent.writes.writeNow(`V${v}`, off, data), 'a small write with nothing overlapping lands at once');
    this.log.push(`write V${v} ${off}+${len}`);
  }

  async deliverA2H(n: number) {
    const c = this.conn;
    if (!c) return;
    for (let i = 0; i < n && c.a2h.length && c.alive; i++) {
      try {
        try {
          c.hubIn.push(c.a2h.shift()!); // one read: the agent's writev of a turn
        } finally {
          c.session.endOfRead(); // as the listener: a read's small writes are applied together
        }
      } catch (e) {
        c.session.fail(e as Error);
      }
    }
  }

  deliverH2A(n: number) {
    const c = this.conn;
    if (!c) return;
    for (let i = 0; i < n && c.h2a.length && c.alive; i++) c.agentIn.push(c.h2a.shift()!);
  }

  readDone(pick: number) {
    if (!this.conn || this.agentReads.length === 0) return;
    const [done] = this.agentReads.splice(pick % this.agentReads.length, 1);
    done();
  }

  /** Every remote read completes and its answer is on the link. */
  async finishReads() {
    while (this.agentReads.length) {
      this.readDone(0);
      await this.settle();
    }
  }

  async shutdown() {
    if (!this.conn) return;
    await this.finishReads();
    this.agent.sayGoodbye();
    this.log.push('shutdown');
  }

  async settle() {
    await new Promise((r) => setImmediate(r));
  }

  /** Virtual time passes: the governor's due timers fire, in order. */
  tick(ms: number) {
    this.clockMs += ms;
    for (;;) {
      const due = this.timers.filter((t) => t.at <= this.clockMs).sort((a, b) => a.at - b.at)[0];
      if (!due) return;
      this.timers = this.timers.filter((t) => t !== due);
      due.fn();
    }
  }

  async quiesce() {
    for (let round = 0; round < 5000; round++) {
      if (!this.conn) this.connect();
      const c = this.conn!;
      this.tick(10);
      await this.finishReads();
      await this.deliverA2H(1000);
      await this.settle();
      this.deliverH2A(1000);
      await this.settle();
      const states = [...this.hub.replicas.values()].map((r) => r.state);
      if (
        c.a2h.length === 0 &&
        c.h2a.length === 0 &&
        this.agentReads.length === 0 &&
        states.every((s) => s === 'protecting')
      ) {
        // the hand-over reports owed regions on a real 10 ms timer (REPORT_DELAY_MS): let it run
        if ((this.cfg.queue ?? 64 << 20) < 64 << 20) await new Promise((r) => setTimeout(r, 15));
        await this.settle();
        if (c.a2h.length === 0 && c.h2a.length === 0 && this.agentReads.length === 0) return;
      }
    }
    const syncs = [...this.hub.sessions].flatMap((s) =>
      s.volumes.map((v) => `${v.replica.name}@${s.id}:report=${v.awaitingReport}:inflight=${v.inflight.size}`),
    );
    throw new Error(
      `no convergence: ${[...this.hub.replicas.values()].map((r) => `${r.name}:${r.state}:${r.bitmap?.dirtyRegions}`).join(' ')} ${syncs.join(' ')} a2h=${this.conn?.a2h.length} h2a=${this.conn?.h2a.length}; history: ${this.log.join(', ')}`,
    );
  }
}

const action = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      t: fc.constant('write' as const),
      v: fc.nat(3),
      off: fc.nat(200),
      len: fc.integer({ min: 1, max: 24 }),
      fill: fc.oneof(fc.nat(255), fc.constant(0)),
    }),
  },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('a2h' as const), n: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('h2a' as const), n: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('run' as const) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('tick' as const), ms: fc.integer({ min: 1, max: 20 }) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('readDone' as const), pick: fc.nat(7) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('checkpoint' as const) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('converge' as const) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('drop' as const) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('connect' as const) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('crash' as const) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('shutdown' as const) }) },
);

async function runCase(
  sizes: number[],
  caps: number,
  cfg: { inflight: number; readBytes: number; queue?: number },
  actions: any[],
) {
  const w = new World(sizes, caps, cfg);
  try {
    await playCase(w, sizes, actions);
  } finally {
    await w.close();
  }
}

async function playCase(w: World, sizes: number[], actions: any[]) {
  w.connect();
  for (const a of actions) {
    switch (a.t) {
      case 'write': {
        const v = a.v % sizes.length;
        if (w.canWrite(v)) w.write(v, a.off, a.len, a.fill);
        break;
      }
      case 'a2h':
        await w.deliverA2H(a.n);
        break;
      case 'h2a':
        w.deliverH2A(a.n);
        break;
      case 'run':
        await w.settle();
        break;
      case 'tick':
        w.tick(a.ms);
        break;
      case 'readDone':
        w.readDone(a.pick);
        break;
      case 'converge':
        await w.quiesce();
        break; // faults after a converged state matter most
      case 'checkpoint':
        for (const r of w.hub.replicas.values()) await r.checkpoint();
        break;
      case 'drop':
        w.drop('link');
        break;
      case 'connect':
        w.connect();
        break;
      case 'crash':
        w.crashHub();
        break;
      case 'shutdown':
        if (w.conn) {
          await w.shutdown();
          await w.deliverA2H(100000); // everything before it, then the shutdown itself
          await w.settle();
          await w.settle();
          if (w.legacy) w.legacyClean = true;
          w.drop('clean shutdown');
        }
        break;
    }
  }
  await w.quiesce();
  for (let i = 0; i < sizes.length; i++) {
    const rec = w.disks.get(`V${i}R`)!;
    if (!rec.data.equals(w.prot[i].data)) {
      let r = 0;
      while (rec.data.subarray(r * RS, (r + 1) * RS).equals(w.prot[i].data.subarray(r * RS, (r + 1) * RS))) r++;
      assert.fail(`V${i} differs in region ${r}; history: ${w.log.slice(-60).join(', ')}`);
    }
  }
}

describe('convergence invariant (property-based, real sync engine, real agent core)', function () {
  this.timeout(600_000);
  const runs = Number(process.env.PROP_RUNS ?? 1500);
  const arb = fc.tuple(
    fc.array(fc.integer({ min: 1, max: 12 }), { minLength: 1, maxLength: 3 }),
    fc.constantFrom(ALL_CAPS, Cap.WRITE_ACK | Cap.DIRTY_REPORT),
    fc.record({
      inflight: fc.integer({ min: 1, max: 4 }),
      readBytes: fc.constantFrom(RS, 2 * RS, 3 * RS, 8 * RS),
      // the agent's --max-queue: writes past it overflow into owed regions (DIRTY_REPORT)
      queue: fc.constantFrom(64 << 20, 3 * RS, 8 * RS),
    }),
    fc.array(action, { maxLength: 120 }),
  );
  if (process.env.SIM_CASE) {
    it('replays SIM_CASE', async () => {
      const [sizes, caps, cfg, acts] = JSON.parse(process.env.SIM_CASE!);
      await runCase(sizes, caps, cfg, acts);
    });
    return;
  }
  it(`agent with extensions: ${runs} random interleavings converge byte-equal`, async () => {
    // Always run: a region that held data is zeroed while apart and resynced by a sparse answer
    // (the hub must write the zero chunk, not skip it).
    const zeroedWhileApart: any = [
      [1],
      ALL_CAPS,
      { inflight: 1, readBytes: RS },
      [
        { t: 'write', v: 0, off: 0, len: 1, fill: 1 },
        { t: 'converge' },
        { t: 'drop' },
        { t: 'write', v: 0, off: 0, len: 1, fill: 0 },
      ],
    ];
    // Always run: the ack of a write arrives while a later write to its region is still on the
    // way, and the link drops before that one lands: the region must stay dirty on the agent.
    const laterWritePends: any = [
      [1],
      ALL_CAPS,
      { inflight: 1, readBytes: RS },
      [
        { t: 'converge' },
        { t: 'write', v: 0, off: 0, len: 1, fill: 5 },
        { t: 'a2h', n: 1 },
        { t: 'run' },
        { t: 'run' },
        { t: 'write', v: 0, off: 0, len: 1, fill: 6 },
        { t: 'h2a', n: 4 },
        { t: 'drop' },
      ],
    ];
    await fc.assert(
      fc.asyncProperty(arb, ([sizes, caps, cfg, acts]) => runCase(sizes, caps, cfg, acts)),
      { numRuns: runs, examples: [[zeroedWhileApart], [laterWritePends]] },
    );
  });
  it(`legacy seed agent (no HELLO): ${Math.ceil(runs / 3)} random interleavings converge byte-equal`, async () => {
    // Always run: a write overflows a short queue on a link without DIRTY_REPORT; the hub never
    // heard of it, so the agent must end the session (its next one resyncs), not owe it silently.
    const overflowNoReport: any = [
      [2],
      0,
      { inflight: 1, readBytes: 4096, queue: 12288 },
      [
        { t: 'converge' },
        { t: 'write', v: 0, off: 0, len: 8, fill: 0 },
        { t: 'write', v: 0, off: 0, len: 16, fill: 1 },
      ],
    ];
    await fc.assert(
      fc.asyncProperty(arb, ([sizes, , cfg, acts]) => runCase(sizes, 0, cfg, acts)),
      { numRuns: Math.ceil(runs / 3), examples: [[overflowNoReport]] },
    );
  });
});
