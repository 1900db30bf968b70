// A fuzzing campaign against a live hub process. A good agent (the real ReplicationAgent over a
// file image) protects V1 and keeps writing, while `conns` workers open connection after
// connection and send random bytes, mutated and hostile frames, truncated handshakes, trickled
// streams, claims of V1, and floods of PINGs from a peer that does not read. Every stream is run
// through HubModel first, so the fuzzer knows what the hub must answer (which ERROR code, or
// nothing) and checks it: ERROR frame and close where the spec says so, PONG for every PING before
// the error, HELLO only in reply to HELLO, no START_PROTECT for a held volume, no hang. Hub
// crashes, hangs and RSS are tracked; at the end the good agent's volume must be byte-equal.
// Used by tools/fuzz-hub.ts (CLI) and test/fuzz-hub.e2e.test.ts (CI slice).
import * as net from 'node:net';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  Cmd, Cap, ALL_CAPS, ErrorCode, Limits, SECTOR, PROTOCOL_VERSION, FrameDecoder, decode, Message,
  encodeHello, encodeReportVmVolumes, encodeProtectedWriteHead, encodeAgentShutdown, encodeDirtyReport, IO_OK, DIRTY_FINAL,
} from '../protocol';
import { ReplicationAgent } from '../src/agent/agent';
import { FileVolume } from '../storage/volume';
import { DirtyLog } from '../storage/dirty-log';
import { silentLogger } from '../src/log';
import { Rng, HubModel, FrameGen, FuzzCtx, Expected, KILL_HEADER, OwnedVolume } from './fuzz-model';

const MiB = 1 << 20;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
type ErrorMsg = Extract<Message, { cmd: Cmd.ERROR }>;
/** A composed stream: its bytes, frame count, and how it must end (hub ERROR+close, or our FIN). */
type Built = { parts: Buffer[]; frames: number; end: 'error' | 'fin'; big: boolean; cut?: number; junk?: Buffer };

export interface CampaignOptions {
  frames: number;
  conns: number;
  seed: number;
  /** A hub already running (else one is spawned from dist/src/cli/rephub.js). */
  hub?: { host: string; port: number; http: string; pid?: number };
  goodVolume?: string; // default V1
  imageMiB?: number; // size of the good agent's image (spawned hub, or a foreign hub without a replica yet)
  fuzzVolumes?: number; // FZ1.. recovery volumes fuzz sessions may own (spawned hub)
  hangMs?: number; // a session that should have ended and did not within this is a hang
  silentPeers?: number; // HELLO+PING-cap peers that then go silent: the hub must drop them (~8 s each)
  bigFrames?: number; // frames of up to 32 MiB reassembled by the hub
  bigDirtyBytes?: number; // budget of ~1 MiB DIRTY_REPORTs (65536 and 65537 extents)
  floodBytes?: number; // PINGs sent by a non-reading peer, per flood session
  maxRssMiB?: number; // failure bound on the hub's peak RSS (0: report only)
  convergeMs?: number;
  keep?: boolean; // keep the temporary directory
  log?: (line: string) => void;
}

export interface CampaignResult {
  frames: number; bytes: number; sessions: number; closedWithError: number; closedAfterFin: number;
  crashes: number; hangs: number; maxRssMiB: number; rssSamples: number;
  expectedErrors: number; missingError: number; mismatches: number; pongMissing: number;
  protocolViolations: number; hubBadFrames: number; lingering: number;
  claimants: number; claimantsRefused: number; claimantStartProtect: number;
  owners: number; ownerRefused: number; silentDropped: number; floods: number; floodPongs: number; bigFrames: number;
  scenarios: Record<string, number>; errorCodes: Record<string, number>; observations: Record<string, number>;
  predicted: Record<string, number>; // sessions by the error the model predicted (what each stream tested)
  good: { converged: boolean; detail: string; writes: number; connects: number };
  failures: string[]; durationMs: number; dir: string; hubLog: string;
}

export function tally(r: CampaignResult): string {
  return `fuzz: frames=${r.frames} sessions=${r.sessions} closedWithError=${r.closedWithError} crashes=${r.crashes} hangs=${r.hangs} ` +
    `maxRssMiB=${r.maxRssMiB.toFixed(1)} good session: ${r.good.converged ? 'converged byte-equal' : `NOT converged (${r.good.detail})`}`;
}

export function details(r: CampaignResult): string[] {
  const kv = (o: Record<string, number>) => Object.entries(o).sort().map(([k, v]) => `${k}=${v}`).join(' ');
  return [
    `  scenarios: ${kv(r.scenarios)}`,
    `  hub ERROR codes: ${kv(r.errorCodes)}  (1 PROTOCOL, 2 UNKNOWN_VOLUME, 3 OUT_OF_RANGE, 4 VOLUME_REFUSED, 5 IO)`,
    `  predicted endings: ${Object.entries(r.predicted).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}: ${v}`).join(', ')}`,
    `  expected errors ${r.expectedErrors}, closed after our FIN ${r.closedAfterFin}, missing ERROR ${r.missingError}, wrong ERROR ${r.mismatches}, ` +
      `PONG missing ${r.pongMissing}, hub protocol violations ${r.protocolViolations}, malformed hub frames ${r.hubBadFrames}, ` +
      `sessions left on the hub ${r.lingering}`,
    `  claimants ${r.claimants} (refused ${r.claimantsRefused}, got START_PROTECT ${r.claimantStartProtect}), owner sessions ${r.owners} (refused ${r.ownerRefused}), ` +
      `silent peers dropped ${r.silentDropped}, PING floods ${r.floods} (${r.floodPongs} PONGs), big frames ${r.bigFrames}, bytes sent ${(r.bytes / MiB).toFixed(1)} MiB`,
    `  good agent: ${r.good.writes} writes, ${r.good.connects} connect(s); ${r.good.detail}`,
    ...(Object.keys(r.observations).length ? [`  observations (spec deviations, not failures): ${kv(r.observations)}`] : []),
    `  rss samples ${r.rssSamples}, duration ${(r.durationMs / 1000).toFixed(1)} s, hub log ${r.hubLog}`,
  ];
}

// ---------------------------------------------------------------------------------------------
// The hub under test.

export const HUB_CLI = path.join(__dirname, '../src/cli/rephub.js');

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const p = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return p;
}

class HubUnderTest {
  proc?: ChildProcess;
  exit: { code: number | null; signal: string | null } | null = null;
  private stopping = false;
  constructor(readonly host: string, readonly port: number, readonly http: string, public pid: number | undefined, readonly logFile: string) {}

  static async spawn(dir: string, vols: { name: string; path: string }[]): Promise<HubUnderTest> {
    const [port, http, nbd] = [await freePort(), await freePort(), await freePort()];
    const logFile = path.join(dir, 'hub.log');
    const fd = fs.openSync(logFile, 'w');
    const args = [HUB_CLI, '--listen', `127.0.0.1:${port}`, '--http', `127.0.0.1:${http}`, '--nbd', `127.0.0.1:${nbd}`,
      ...vols.flatMap((v) => ['--vol', `${v.name}=${v.path}`]), '--data', path.join(dir, 'state')];
    const proc = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', fd] });
    fs.closeSync(fd);
    const h = new HubUnderTest('127.0.0.1', port, `127.0.0.1:${http}`, proc.pid, logFile);
    h.proc = proc;
    proc.on('exit', (code, signal) => { if (!h.stopping) h.exit = { code, signal }; });
    const until = Date.now() + 20_000;
    for (;;) {
      if (h.exit) throw new Error(`hub exited at start (${JSON.stringify(h.exit)}): ${h.logTail()}`);
      if (await h.status().then(() => true, () => false)) return h;
      if (Date.now() > until) throw new Error('hub did not start listening');
      await sleep(50);
    }
  }

  async status(): Promise<any> {
    const r = await fetch(`http://${this.http}/status`, { signal: AbortSignal.timeout(5000) });
    return r.json();
  }

  /** VmRSS / VmHWM of the hub in MiB (null when unknown). */
  mem(): { rss: number; hwm: number } | null {
    if (!this.pid) return null;
    try {
      const s = fs.readFileSync(`/proc/${this.pid}/status`, 'utf8');
      const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1] ?? 0);
      return { rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024 };
    } catch { return null; }
  }

  logTail(n = 30): string {
    try { return fs.readFileSync(this.logFile, 'utf8').trim().split('\n').slice(-n).join('\n'); } catch { return ''; }
  }

  async stop(): Promise<void> {
    const p = this.proc;
    this.stopping = true;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    await new Promise<void>((r) => {
      const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
      p.once('exit', () => { clearTimeout(t); r(); });
      p.kill('SIGTERM');
    });
  }
}

// ---------------------------------------------------------------------------------------------
// One fuzz connection: writes bytes, decodes what the hub sends back.

class Peer {
  readonly sock: net.Socket;
  readonly msgs: Message[] = [];
  badFrame: string | null = null;
  closed = false;
  reset = false;
  ok: Promise<boolean>;
  private wake: (() => void)[] = [];

  constructor(host: string, port: number, private readonly onReply?: (m: Message) => void) {
    const sock = net.connect({ host, port });
    this.sock = sock;
    sock.setNoDelay(true);
    const dec = new FrameDecoder((cmd, p) => {
      let m: Message;
      try { m = decode(cmd, p); } catch (e) { this.badFrame ??= `${Cmd[cmd] ?? cmd}: ${(e as Error).message}`; return; }
      this.msgs.push(m);
      this.onReply?.(m);
    });
    sock.on('data', (c) => {
      if (this.badFrame) return;
      try { dec.push(c); } catch (e) { this.badFrame = (e as Error).message; }
      this.notify();
    });
    sock.on('error', () => { this.reset = true; });
    sock.on('close', () => { this.closed = true; this.notify(); });
    this.ok = new Promise((r) => { sock.once('connect', () => r(true)); sock.once('close', () => r(false)); });
  }

  private notify(): void { for (const w of this.wake.splice(0)) w(); }

  /** Wait until `pred` holds or `ms` passed; true if it holds. */
  async until(pred: () => boolean, ms: number): Promise<boolean> {
    const end = Date.now() + ms;
    while (!pred()) {
      const left = end - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 250));
        this.wake.push(() => { clearTimeout(t); r(); });
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

  errors(): ErrorMsg[] { return this.msgs.filter((m): m is ErrorMsg => m.cmd === Cmd.ERROR); }
  /** The error that ended the session: the last one that is not a (non-fatal) refusal. */
  terminal(): ErrorMsg | undefined { return this.errors().filter((e) => e.code !== ErrorCode.VOLUME_REFUSED).pop(); }
  fin(): void { if (!this.sock.destroyed) this.sock.end(); }
  destroy(): void { this.sock.destroy(); }
}

// ---------------------------------------------------------------------------------------------
// The campaign.

export async function runCampaign(o: CampaignOptions): Promise<CampaignResult> {
  const t0 = Date.now();
  const log = o.log ?? (() => undefined);
  const hangMs = o.hangMs ?? 10_000;
  const root = new Rng(o.seed);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rephub-fuzz-'));
  const goodVolume = o.goodVolume ?? 'V1';
  const goodVm = `fuzz-good-vm-${o.seed}`;
  const fzBytes = 4 * MiB;
  const res: CampaignResult = {
    frames: 0, bytes: 0, sessions: 0, closedWithError: 0, closedAfterFin: 0, crashes: 0, hangs: 0, maxRssMiB: 0, rssSamples: 0,
    expectedErrors: 0, missingError: 0, mismatches: 0, pongMissing: 0, protocolViolations: 0, hubBadFrames: 0, lingering: 0,
    claimants: 0, claimantsRefused: 0, claimantStartProtect: 0, owners: 0, ownerRefused: 0, silentDropped: 0, floods: 0, floodPongs: 0, bigFrames: 0,
    scenarios: {}, errorCodes: {}, observations: {}, predicted: {},
    good: { converged: false, detail: 'not checked', writes: 0, connects: 0 },
    failures: [], durationMs: 0, dir, hubLog: '',
  };
  const fail = (what: string) => { if (res.failures.length < 40) res.failures.push(what); };
  const observe = (what: string) => { res.observations[what] = (res.observations[what] ?? 0) + 1; };
  const bump = (o: Record<string, number>, k: string) => { o[k] = (o[k] ?? 0) + 1; };

  // --- hub ---
  let hub: HubUnderTest;
  let fuzzVolumes: string[] = [];
  if (o.hub) {
    hub = new HubUnderTest(o.hub.host, o.hub.port, o.hub.http, o.hub.pid, '(foreign hub)');
    const st = await hub.status();
    fuzzVolumes = st.volumes.map((v: any) => v.name).filter((n: string) => /^FZ\d+$/.test(n));
  } else {
    fuzzVolumes = Array.from({ length: o.fuzzVolumes ?? Math.min(4, o.conns) }, (_, i) => `FZ${i + 1}`);
    hub = await HubUnderTest.spawn(dir, [
      { name: goodVolume, path: path.join(dir, `${goodVolume}R`) },
      ...fuzzVolumes.map((n) => ({ name: n, path: path.join(dir, `${n}R`) })),
    ]);
  }
  res.hubLog = hub.logFile;
  log(`fuzz: hub ${hub.host}:${hub.port} (pid ${hub.pid ?? '?'}), http ${hub.http}, dir ${dir}`);

  let dead = false;
  const crashed = () => {
    if (hub.exit && !dead) {
      dead = true;
      res.crashes = 1;
      fail(`hub process exited during the campaign: ${JSON.stringify(hub.exit)}\n${hub.logTail()}`);
    }
    return dead;
  };
  const sampler = setInterval(() => {
    const m = hub.mem();
    if (m) { res.rssSamples++; res.maxRssMiB = Math.max(res.maxRssMiB, m.rss); }
    crashed();
  }, 100);

  // --- the good agent ---
  const st0 = await hub.status();
  const known = st0.volumes.find((v: any) => v.name === goodVolume);
  if (!known) throw new Error(`the hub has no recovery volume ${goodVolume}`);
  const size = known.sizeBytes || (o.imageMiB ?? 64) * MiB;
  const img = path.join(dir, `${goodVolume}.img`);
  {
    const rng = root.fork(1000);
    const fd = fs.openSync(img, 'w');
    fs.ftruncateSync(fd, size);
    for (let off = 0; off < size; off += 64 * 1024) if (rng.chance(0.5)) fs.writeSync(fd, rng.bytes(Math.min(64 * 1024, size - off)), 0, Math.min(64 * 1024, size - off), off);
    fs.closeSync(fd);
  }
  const target = FileVolume.open(img);
  const agent = new ReplicationAgent({
    hubHost: hub.host, hubPort: hub.port, vm: goodVm, log: silentLogger(), reconnectMaxMs: 200,
    volumes: [{ name: goodVolume, target, log: DirtyLog.memory(size, 64 * 1024) }],
  });
  agent.start();
  const vstat = async () => (await hub.status()).volumes.find((v: any) => v.name === goodVolume);
  {
    const until = Date.now() + 60_000;
    for (;;) {
      const v = await vstat().catch(() => null);
      if (v && v.vm === goodVm && v.state === 'protecting' && agent.status().volumes[0].volumeId >= 0) break;
      if (Date.now() > until || crashed()) { clearInterval(sampler); await agent.stop(500); await hub.stop(); throw new Error(`good agent did not get ${goodVolume} protected: ${JSON.stringify(v)}`); }
      await sleep(50);
    }
  }
  const goodVolumeId = agent.status().volumes[0].volumeId;
  const recovery: string = (await vstat()).recovery;
  log(`fuzz: good agent protects ${goodVolume} (${size / MiB} MiB, volume id ${goodVolumeId}); ${o.conns} fuzz connections, ${o.frames} frames, seed ${o.seed}`);

  let writing = true;
  const writer = (async () => {
    const rng = root.fork(2000);
    const blocks = size / 4096;
    while (writing) {
      const n = rng.between(1, 16);
      const off = rng.int(blocks - n + 1) * 4096;
      await agent.write(goodVolume, off, rng.bytes(n * 4096));
      res.good.writes++;
      if (res.good.writes % 64 === 0) await agent.flush(goodVolume);
      await sleep(rng.int(4));
    }
  })();

  // --- workers ---
  const ctx: FuzzCtx = { goodVolume, goodVolumeId, goodVm, fuzzVolumes, fuzzVolumeBytes: fzBytes, pool: root.fork(3000).bytes(2 * MiB) };
  const budget = { bigFrames: o.bigFrames ?? 4, silent: o.silentPeers ?? 2 };
  const bigDirty = { bigBytes: o.bigDirtyBytes ?? 24 * MiB };
  let bigActive = 0, floodActive = 0, owners = 0;
  let frames = 0;

  /** Check a finished session against the model's prediction. */
  function judge(sc: string, peer: Peer, m: HubModel, expect: Expected | null, ended: boolean, endedBy: 'hub' | 'fin') {
    res.sessions++;
    bump(res.scenarios, sc);
    if (peer.badFrame) { res.hubBadFrames++; fail(`${sc}: hub sent a malformed frame: ${peer.badFrame}`); }
    for (const e of peer.errors()) bump(res.errorCodes, String(e.code));
    const term = peer.terminal();
    if (!ended) {
      res.hangs++;
      fail(`${sc}: hang: ${endedBy === 'fin' ? 'not closed within' : 'neither closed nor answered within'} ${hangMs} ms (expected ${expect ? `ERROR ${expect.code} ${expect.message ?? expect.prefix ?? ''} (${expect.why})` : 'close after FIN'})`);
    }
    if (ended && term) res.closedWithError++;
    if (ended && !term && endedBy === 'fin') res.closedAfterFin++;
    // HELLO: only as the reply to a valid first HELLO, once, with min(version) and a subset of our caps.
    const hellos = peer.msgs.filter((x): x is Extract<Message, { cmd: Cmd.HELLO }> => x.cmd === Cmd.HELLO);
    if (m.hello) {
      if (hellos.length !== 1 || peer.msgs[0]?.cmd !== Cmd.HELLO) { res.protocolViolations++; fail(`${sc}: hub reply to HELLO: ${peer.msgs.slice(0, 3).map((x) => Cmd[x.cmd]).join(',') || 'none'}`); }
      else {
        const h = hellos[0];
        if (h.version !== Math.max(1, Math.min(PROTOCOL_VERSION, m.hello.version))) { res.protocolViolations++; fail(`${sc}: hub HELLO version ${h.version} for agent version ${m.hello.version}`); }
        if (h.version < 1) observe('hubHelloVersion0'); // §6.1 "Peers send version >= 1"; the hub echoes min(1, 0)
        if ((h.caps & ~m.hello.caps) !== 0) { res.protocolViolations++; fail(`${sc}: hub caps 0x${h.caps.toString(16)} not a subset of 0x${m.hello.caps.toString(16)}`); }
      }
    } else if (hellos.length > 0) { res.protocolViolations++; fail(`${sc}: hub sent HELLO to a peer whose first frame was not a valid HELLO`); }
    const caps = hellos[0]?.caps ?? 0;
    for (const x of peer.msgs) {
      if (x.cmd === Cmd.WRITE_ACK && !(caps & Cap.WRITE_ACK)) { res.protocolViolations++; fail(`${sc}: WRITE_ACK without the cap`); }
      if (x.cmd === Cmd.PING && !(caps & Cap.PING)) { res.protocolViolations++; fail(`${sc}: hub PING without the cap`); }
      if (x.cmd === Cmd.CHECKSUM_REQ && !(caps & Cap.CHECKSUM)) { res.protocolViolations++; fail(`${sc}: CHECKSUM_REQ without the cap`); }
      if (x.cmd === Cmd.DIRTY_REPORT_ACK && !(caps & Cap.DIRTY_REPORT)) observe('dirtyReportAckWithoutCap'); // §6.1: never to a legacy agent
      if (x.cmd === Cmd.START_PROTECT) {
        if (x.name === goodVolume) { res.claimantStartProtect++; fail(`${sc}: START_PROTECT for ${goodVolume}, held by the good agent`); }
        else if (!m.taint && ![...m.owned.values()].some((v) => v.name === x.name) && x.name !== m.claiming) { res.protocolViolations++; fail(`${sc}: START_PROTECT for ${x.name}, never claimed`); }
      }
      if (x.cmd === Cmd.REMOTE_IO_REQ && !m.taint && !m.owned.has(x.volumeId) && m.claiming === null) { res.protocolViolations++; fail(`${sc}: REMOTE_IO_REQ for volume ${x.volumeId} not on this connection`); }
    }
    if (!ended) return;
    // The error the hub ended with, against the prediction.
    if (expect) {
      res.expectedErrors++;
      bump(res.predicted, expect.why);
      if (!term) {
        res.missingError++;
        fail(`${sc}: closed without an ERROR frame; expected ${expect.code} ${expect.message ?? expect.prefix ?? ''} (${expect.why})${peer.reset ? ' [connection reset]' : ''}`);
      } else if (!m.taint) {
        const textOk = expect.message !== undefined ? term.message === expect.message : expect.prefix !== undefined ? term.message.startsWith(expect.prefix) : true;
        if (term.code !== expect.code || !textOk) {
          res.mismatches++;
          fail(`${sc}: hub ERROR ${term.code} "${term.message}", model expected ${expect.code} "${expect.message ?? expect.prefix}" (${expect.why})`);
        }
      }
    } else if (term && !m.taint) {
      res.mismatches++;
      fail(`${sc}: hub ERROR ${term.code} "${term.message}" where the model predicted no error${m.taint ? ` (tainted: ${m.taint})` : ''}`);
    }
    // Every PING the hub decoded before the error is answered, in order, before the ERROR frame;
    // none behind the fatal frame is.
    if (!m.taint) {
      const cut = term ? peer.msgs.indexOf(term) : peer.msgs.length;
      const pongs = peer.msgs.slice(0, cut).filter((x) => x.cmd === Cmd.PONG).map((x) => (x as { nonce: number }).nonce);
      const want = m.pings;
      let ok = pongs.length === want.length;
      for (let i = 0; ok && i < want.length; i++) ok = pongs[i] === want[i];
      if (!ok) { res.pongMissing++; fail(`${sc}: ${want.length} PINGs before the error, ${pongs.length} PONGs before it (first difference at ${pongs.findIndex((p, i) => p !== want[i])})`); }
    }
  }

  /** Build a stream ending in a predictable way: fatal error, or a frame left incomplete (then FIN). */
  function compose(rng: Rng, g: FrameGen, m: HubModel, opts: { maxFrames: number; allowBig: boolean; maxPad: number; junk: boolean }): Built {
    const parts: Buffer[] = [];
    const base = m.pos; // cut offsets are relative to this stream
    let n = 0;
    const add = (b: Buffer, counts = true) => { if (!b.length) return; parts.push(b); if (counts) n++; m.feed(b); };
    const prefix = rng.chance(0.35) ? rng.int(4) : rng.chance(0.7) ? rng.between(4, 120) : rng.between(120, 1500);
    const limit = Math.max(1, Math.min(prefix, opts.maxFrames - 1));
    for (let i = 0; i < limit && !m.done; i++) add(g.valid(m));
    for (let t = 0; t < 4 && !m.done && !m.waiting; t++) add(g.bad(m, bigDirty));
    if (m.error && !m.error.sync) return { parts, frames: n, end: 'error', big: false, cut: m.errorAt - base };
    let big = false;
    if (!m.error) {
      const w = m.waiting;
      if (w && 'payload' in w) {
        if (w.payload <= opts.maxPad) add(rng.bytes(w.payload), false);
        else if (opts.allowBig && budget.bigFrames > 0 && bigActive === 0 && !m.taint) {
          // One at a time: the hub reassembles up to 32 MiB + 64 of payload.
          budget.bigFrames--; res.bigFrames++; bigActive++; big = true;
          add(Buffer.alloc(w.payload, 0x33), false);
        } else return { parts, frames: n, end: 'fin', big };
      }
      if (!m.error) add(KILL_HEADER); // completes a partial header into a fatal one, or follows accepted frames
    }
    // Bytes after a fatal frame are never looked at. (Not when trickling: a write that starts after the
    // hub's RST makes Node drop the socket before reading the ERROR frame already received.)
    const junk = opts.junk && m.error?.sync && rng.chance(0.3) ? rng.bytes(rng.between(1, 2048)) : undefined;
    // Sync errors: the bytes of the fatal item after the fatal byte go too, unless trickling.
    return { parts, frames: n, end: 'error', big, cut: opts.junk && m.error?.sync ? undefined : m.errorAt - base, junk };
  }

  async function send(peer: Peer, built: Built, rng: Rng, trickle: boolean): Promise<void> {
    let all = Buffer.concat(built.parts);
    // Streams are cut just past the byte the model says ends the session (see Built).
    if (built.cut !== undefined && built.cut >= 0) all = all.subarray(0, built.cut);
    if (built.junk) all = Buffer.concat([all, built.junk]);
    res.bytes += all.length;
    if (!trickle) return peer.write(all);
    // Small pieces with pauses: the hub's framer sees frames split at every possible place.
    let off = 0;
    while (off < all.length && !peer.closed) {
      const n = Math.min(all.length - off, rng.chance(0.5) ? rng.between(1, 13) : rng.between(14, 300));
      await peer.write(all.subarray(off, off + n));
      off += n;
      if (rng.chance(0.3)) await sleep(rng.int(3));
    }
  }

  /** Send a composed stream, wait for the hub's reaction, judge it. */
  async function finishStream(sc: string, rng: Rng, peer: Peer, m: HubModel, built: Built, trickle: boolean) {
    frames += built.frames;
    try {
      if (built.parts.length > 0) await send(peer, built, rng, trickle);
    } finally {
      if (built.big) bigActive--;
    }
    let ended: boolean;
    if (built.end === 'error') {
      ended = await peer.until(() => peer.closed, hangMs);
      judge(sc, peer, m, m.error, ended, 'hub');
    } else {
      if (rng.chance(0.3)) await sleep(rng.int(300)); // the hub holds the partial frame meanwhile
      peer.fin();
      ended = await peer.until(() => peer.closed, hangMs);
      judge(sc, peer, m, m.error, ended, 'fin');
    }
    peer.destroy();
  }

  async function streamSession(rng: Rng, sc: string, trickle: boolean) {
    const peer = new Peer(hub.host, hub.port);
    if (!(await peer.ok)) return void crashed();
    const g = new FrameGen(rng, ctx), m = new HubModel(ctx);
    if (rng.chance(0.6)) { const h = g.hello(); m.feed(h); await peer.write(h); frames++; res.bytes += h.length; }
    const maxFrames = trickle ? 60 : Math.max(2, o.frames - frames);
    const built = compose(rng, g, m, { maxFrames, allowBig: !trickle && o.frames >= 100_000, maxPad: 256 * 1024, junk: !trickle });
    await finishStream(sc, rng, peer, m, built, trickle);
  }

  /** Claim a fuzz volume, get START_PROTECT, then attack with the volume id in hand. */
  async function ownerSession(rng: Rng, worker: number) {
    const name = fuzzVolumes[worker % fuzzVolumes.length];
    const peer = new Peer(hub.host, hub.port);
    if (!(await peer.ok)) return void crashed();
    res.owners++;
    const g = new FrameGen(rng, ctx), m = new HubModel(ctx);
    m.claiming = name;
    const first: Buffer[] = [];
    if (rng.chance(0.6)) {
      const caps = rng.pick([ALL_CAPS, Cap.WRITE_ACK | Cap.DIRTY_REPORT, 0, rng.int(32)]);
      // A name of its own: a second session of the same VM would legitimately take the volume over.
      first.push(encodeHello(1, caps, Limits.maxPayload, `fz-owner-${worker}-${++owners}`));
    }
    first.push(encodeReportVmVolumes([{ name, sizeBytes: fzBytes }, ...(rng.chance(0.2) ? [{ name: g.name(20, 'unk-'), sizeBytes: 4096 }] : [])]));
    for (const b of first) { m.feed(b); frames++; res.bytes += b.length; await peer.write(b); }
    const got = await peer.until(() => peer.closed || peer.msgs.some((x) => (x.cmd === Cmd.START_PROTECT && x.name === name) || (x.cmd === Cmd.ERROR && x.code === ErrorCode.VOLUME_REFUSED)), hangMs);
    const sp = peer.msgs.find((x): x is Extract<Message, { cmd: Cmd.START_PROTECT }> => x.cmd === Cmd.START_PROTECT && x.name === name);
    if (!got) { judge('owner', peer, m, null, false, 'hub'); peer.destroy(); return; }
    if (sp) {
      m.owned.set(sp.volumeId, { id: sp.volumeId, name, sizeBytes: fzBytes } as OwnedVolume);
      await peer.until(() => peer.msgs.some((x) => x.cmd === Cmd.REMOTE_IO_REQ), 30);
    } else res.ownerRefused++;
    for (const x of peer.msgs) {
      if (x.cmd === Cmd.REMOTE_IO_REQ && x.isRead) { m.reads.set(x.reqId, { volumeId: x.volumeId, bytes: x.sizeSectors * SECTOR }); m.maxReqSeen = Math.max(m.maxReqSeen, x.reqId); }
    }
    const parts: Buffer[] = [];
    if (sp && m.caps & Cap.DIRTY_REPORT && rng.chance(0.7)) { const d = encodeDirtyReport(sp.volumeId, 1, DIRTY_FINAL, []); m.feed(d); parts.push(d); frames++; }
    const built = compose(rng, g, m, { maxFrames: Math.max(2, o.frames - frames), allowBig: false, maxPad: 256 * 1024, junk: true });
    built.parts.unshift(...parts);
    if (built.cut !== undefined) built.cut += parts.reduce((a, b) => a + b.length, 0);
    await finishStream('owner', rng, peer, m, built, false);
  }

  /** A valid-looking session from another VM that claims the good agent's volume. */
  async function claimantSession(rng: Rng) {
    const peer = new Peer(hub.host, hub.port);
    if (!(await peer.ok)) return void crashed();
    res.claimants++;
    const g = new FrameGen(rng, ctx), m = new HubModel(ctx);
    const out: Buffer[] = [];
    if (rng.chance(0.7)) out.push(encodeHello(1, rng.pick([ALL_CAPS, 0, Cap.WRITE_ACK | Cap.DIRTY_REPORT]), Limits.maxPayload, rng.chance(0.2) ? '' : g.name(30, 'claimant-')));
    const vols = [{ name: goodVolume, sizeBytes: rng.chance(0.8) ? size : size + SECTOR * rng.between(1, 64) }];
    if (rng.chance(0.3)) vols.push({ name: g.name(20, 'unk-'), sizeBytes: 4096 });
    out.push(encodeReportVmVolumes(rng.chance(0.5) ? vols : vols.reverse()));
    for (const b of out) { m.feed(b); frames++; res.bytes += b.length; await peer.write(b); }
    const refused = await peer.until(() => peer.closed || peer.errors().some((e) => e.code === ErrorCode.VOLUME_REFUSED && e.message.includes(goodVolume)), hangMs);
    if (!refused) { judge('claimant', peer, m, null, false, 'hub'); peer.destroy(); return; }
    if (peer.errors().some((e) => e.code === ErrorCode.VOLUME_REFUSED && e.message.includes(goodVolume))) res.claimantsRefused++;
    else fail(`claimant: closed without refusing ${goodVolume}`);
    // Then use the good agent's volume id: unknown on this connection.
    const next = rng.int(3);
    if (next === 0) {
      const b = Buffer.concat([encodeProtectedWriteHead(goodVolumeId, rng.int(size / SECTOR - 8), 8, IO_OK), g.data(8 * SECTOR)]);
      m.feed(b);
      await finishStream('claimant', rng, peer, m, { parts: [b], frames: 1, end: 'error', big: false }, false);
    } else if (next === 1) {
      const b = encodeDirtyReport(goodVolumeId, 1, DIRTY_FINAL, [{ offsetSectors: 0, sizeSectors: 8 }]);
      m.feed(b);
      await finishStream('claimant', rng, peer, m, { parts: [b], frames: 1, end: 'error', big: false }, false);
    } else {
      await finishStream('claimant', rng, peer, m, { parts: [], frames: 0, end: 'fin', big: false }, false);
    }
  }

  /** Connect, send part of a handshake, then hang a while, FIN, or reset. */
  async function truncatedSession(rng: Rng) {
    const peer = new Peer(hub.host, hub.port);
    if (!(await peer.ok)) return void crashed();
    const g = new FrameGen(rng, ctx), m = new HubModel(ctx);
    const f = rng.chance(0.7) ? g.hello() : g.anyFrame(m);
    const cut = rng.chance(0.6) ? rng.int(Math.min(12, f.length)) : rng.between(12, Math.max(12, f.length - 1));
    const part = f.subarray(0, cut);
    m.feed(part);
    frames++;
    res.bytes += part.length;
    await peer.write(part);
    const how = rng.weighted({ reset: 2, fin: 4, hang: 3 });
    if (how === 'reset') { await sleep(rng.int(50)); peer.destroy(); bump(res.scenarios, 'truncated-reset'); res.sessions++; return; }
    if (how === 'hang') await sleep(rng.between(200, 2000));
    await finishStream(`truncated-${how}`, rng, peer, m, { parts: [], frames: 0, end: m.error ? 'error' : 'fin', big: false }, false);
  }

  /** HELLO with the PING cap, then silence: the hub must drop the session (3 heartbeats). */
  async function silentSession(rng: Rng) {
    const peer = new Peer(hub.host, hub.port);
    if (!(await peer.ok)) return void crashed();
    const g = new FrameGen(rng, ctx), m = new HubModel(ctx);
    const h = encodeHello(1, ALL_CAPS, Limits.maxPayload, g.name(20, 'silent-'));
    m.feed(h); frames++; res.bytes += h.length;
    await peer.write(h);
    const ended = await peer.until(() => peer.closed, Math.max(hangMs, 15_000));
    const t = peer.terminal();
    if (ended && t && t.code === ErrorCode.IO) res.silentDropped++;
    judge('silent', peer, m, { code: ErrorCode.IO, prefix: 'agent silent for ', sync: false, why: 'heartbeat: 3 silent intervals' }, ended, 'hub');
    peer.destroy();
  }

  /** A peer that does not read while it sends PINGs: the hub answers every one once it reads again. */
  async function floodSession(rng: Rng) {
    const peer = new Peer(hub.host, hub.port);
    if (!(await peer.ok)) return void crashed();
    res.floods++;
    peer.sock.pause();
    const g = new FrameGen(rng, ctx), m = new HubModel(ctx);
    const n = Math.max(1, Math.min(Math.floor((o.floodBytes ?? 512 * 1024) / 20), o.frames - frames));
    const pings = Buffer.concat(Array.from({ length: n }, () => g.ping()));
    m.feed(pings); frames += n;
    res.bytes += pings.length;
    void peer.write(pings);
    await sleep(rng.between(50, 500));
    peer.sock.resume();
    const all = await peer.until(() => peer.closed || peer.msgs.length >= n, hangMs);
    res.floodPongs += peer.msgs.filter((x) => x.cmd === Cmd.PONG).length;
    if (!all) { judge('flood', peer, m, null, false, 'hub'); peer.destroy(); return; }
    m.feed(KILL_HEADER); frames++;
    await finishStream('flood', rng, peer, m, { parts: [KILL_HEADER], frames: 0, end: 'error', big: false }, false);
  }

  // Every worker starts with one fixed scenario, so even a small budget covers each kind.
  const FIRST = ['claimant', 'owner', 'flood', 'truncated', 'trickle', 'claimant', 'owner', 'stream'] as const;
  async function worker(i: number) {
    const rng = root.fork(i);
    let first = true;
    while (frames < o.frames && !crashed()) {
      let sc = first ? FIRST[i % FIRST.length] : rng.weighted({
        stream: 64, trickle: 6, owner: fuzzVolumes.length ? 10 : 0, claimant: 5, truncated: 7, flood: floodActive === 0 ? 0.4 : 0,
      });
      first = false;
      if (sc === 'owner' && !fuzzVolumes.length) sc = 'stream';
      if (sc === 'flood' && floodActive > 0) sc = 'stream';
      try {
        switch (sc) {
          case 'stream': await streamSession(rng, 'stream', false); break;
          case 'trickle': await streamSession(rng, 'trickle', true); break;
          case 'owner': await ownerSession(rng, i); break;
          case 'claimant': await claimantSession(rng); break;
          case 'truncated': await truncatedSession(rng); break;
          case 'flood': floodActive++; try { await floodSession(rng); } finally { floodActive--; } break;
        }
      } catch (e) {
        fail(`${sc}: fuzzer error: ${(e as Error).stack}`);
      }
    }
  }

  const progress = setInterval(() => log(`fuzz: ${frames} frames, ${res.sessions} sessions, ${res.closedWithError} closed with ERROR, rss ${hub.mem()?.rss.toFixed(0) ?? '?'} MiB, good writes ${res.good.writes}`), 5000);
  // Silent peers take ~3 heartbeat intervals each: they run beside the workers from the start.
  const silent = Array.from({ length: budget.silent }, (_, i) => silentSession(root.fork(500 + i)).catch((e) => fail(`silent: fuzzer error: ${(e as Error).stack}`)));
  await Promise.all(Array.from({ length: o.conns }, (_, i) => worker(i)));
  await Promise.all(silent);
  clearInterval(progress);
  res.frames = frames;

  // --- the end: no fuzz session left on the hub, fuzz volumes claimable, good volume converged ---
  writing = false;
  await writer.catch((e) => fail(`good agent write failed: ${(e as Error).message}`));
  if (!crashed()) {
    const until = Date.now() + 10_000;
    let agents: any[] = [];
    for (;;) {
      agents = (await hub.status().catch(() => ({ agents: [] }))).agents;
      if (agents.length === 1 && agents[0].vm === goodVm) break;
      if (Date.now() > until) { res.lingering = agents.filter((a) => a.vm !== goodVm).length; fail(`hub still holds ${res.lingering} fuzz session(s) after the campaign: ${JSON.stringify(agents.map((a) => a.vm))}`); break; }
      await sleep(100);
    }
    for (const name of fuzzVolumes) {
      const peer = new Peer(hub.host, hub.port);
      if (!(await peer.ok)) { crashed(); break; }
      await peer.write(encodeReportVmVolumes([{ name, sizeBytes: fzBytes }]));
      const ok = await peer.until(() => peer.msgs.some((x) => x.cmd === Cmd.START_PROTECT && x.name === name), hangMs);
      if (!ok) fail(`${name} cannot be claimed after the campaign (owner leaked?): ${peer.msgs.map((x) => Cmd[x.cmd]).join(',')}`);
      await peer.write(encodeAgentShutdown());
      peer.fin();
      await peer.until(() => peer.closed, hangMs);
      peer.destroy();
    }
  }
  res.good.connects = agent.stats.connects;
  if (!crashed()) {
    const until = Date.now() + (o.convergeMs ?? 60_000);
    let last = '';
    for (;;) {
      const a = agent.status(), v = await vstat().catch(() => null);
      last = `agent connected=${a.connected} pending=${a.pendingWrites} dirty=${a.volumes[0].dirtyBytes}; hub ${goodVolume} state=${v?.state} vm=${v?.vm} dirtyBytes=${v?.dirtyBytes}`;
      if (a.connected && a.pendingWrites === 0 && a.volumes[0].dirtyBytes === 0 && v && v.state === 'protecting' && v.dirtyBytes === 0 && v.vm === goodVm) {
        const [x, y] = [sha(img), sha(recovery)];
        if (x === y) { res.good = { ...res.good, converged: true, detail: `${goodVolume} protecting, dirtyBytes 0, sha256 ${x.slice(0, 16)}… on both sides` }; break; }
        last += `; sha ${x.slice(0, 12)} != ${y.slice(0, 12)}`;
      }
      if (Date.now() > until || crashed()) { res.good.detail = last; fail(`good session did not converge: ${last}`); break; }
      await sleep(200);
    }
  }
  await agent.stop(2000);
  clearInterval(sampler);
  const m = hub.mem();
  if (m) res.maxRssMiB = Math.max(res.maxRssMiB, m.hwm, m.rss);
  if (o.maxRssMiB && res.maxRssMiB > o.maxRssMiB) fail(`hub peak RSS ${res.maxRssMiB.toFixed(1)} MiB over the bound of ${o.maxRssMiB} MiB`);
  crashed();
  if (!o.hub) await hub.stop();
  res.durationMs = Date.now() - t0;
  if (!o.keep && res.failures.length === 0) {
    fs.rmSync(dir, { recursive: true, force: true });
    if (!o.hub) res.hubLog += ' (removed; --keep keeps it)';
  }
  return res;
}

function sha(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(MiB);
  for (;;) {
    const n = fs.readSync(fd, buf, 0, buf.length, null);
    if (n <= 0) break;
    h.update(buf.subarray(0, n));
  }
  fs.closeSync(fd);
  return h.digest('hex');
}
