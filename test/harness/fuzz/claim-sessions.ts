// Fuzz sessions that claim volumes: an owner takes a fuzz volume (FZ<n>) and attacks with the
// volume id in hand; a claimant from another VM asks for the good agent's volume and must be refused.
import {
  Cmd,
  Cap,
  ALL_CAPS,
  ErrorCode,
  Limits,
  SECTOR,
  IO_OK,
  DIRTY_FINAL,
  Message,
  encodeHello,
  encodeReportVmVolumes,
  encodeProtectedWriteHead,
  encodeDirtyReport,
} from '../../../protocol';
import type { Rng } from '../prng';
import { HubModel, OwnedVolume } from './hub-model';
import { FrameGen } from './frame-gen';
import type { Peer } from './peer';
import { compose } from './stream';
import type { FuzzRun } from './run';

type StartProtect = Extract<Message, { cmd: Cmd.START_PROTECT }>;

/** Claim a fuzz volume, get START_PROTECT, then attack with the volume id in hand. */
export async function ownerSession(run: FuzzRun, rng: Rng, worker: number): Promise<void> {
  const { ctx, res, hangMs } = run;
  const name = ctx.fuzzVolumes[worker % ctx.fuzzVolumes.length];
  const peer = await run.connect();
  if (!peer) return;
  res.owners++;
  const g = new FrameGen(rng, ctx),
    m = new HubModel(ctx);
  m.claiming = name;
  const first: Buffer[] = [];
  if (rng.chance(0.6)) {
    // unsealed frames follow: no FRAME_CRC
    const caps = rng.pick([
      ALL_CAPS & ~Cap.FRAME_CRC & ~Cap.IDENTITY,
      Cap.WRITE_ACK | Cap.DIRTY_REPORT,
      0,
      rng.int(32),
    ]);
    // A name of its own: a second session of the same VM would legitimately take the volume over.
    first.push(encodeHello(1, caps, Limits.maxPayload, `fz-owner-${worker}-${++run.owners}`));
  }
  const unknown = rng.chance(0.2) ? [{ name: g.name(20, 'unk-'), sizeBytes: 4096 }] : [];
  first.push(encodeReportVmVolumes([{ name, sizeBytes: ctx.fuzzVolumeBytes }, ...unknown]));
  await run.sendFrames(peer, m, first);
  const got = await peer.until(
    () =>
      peer.closed ||
      peer.msgs.some(
        (x) =>
          (x.cmd === Cmd.START_PROTECT && x.name === name) ||
          (x.cmd === Cmd.ERROR && x.code === ErrorCode.VOLUME_REFUSED),
      ),
    hangMs,
  );
  const sp = peer.msgs.find((x): x is StartProtect => x.cmd === Cmd.START_PROTECT && x.name === name);
  if (!got) {
    run.judge('owner', peer, m, null, false, 'hub');
    peer.destroy();
    return;
  }
  if (sp) {
    m.owned.set(sp.volumeId, { id: sp.volumeId, name, sizeBytes: ctx.fuzzVolumeBytes } as OwnedVolume);
    await peer.until(() => peer.msgs.some((x) => x.cmd === Cmd.REMOTE_IO_REQ), 30);
  } else res.ownerRefused++;
  noteReads(peer, m);
  const parts: Buffer[] = [];
  if (sp && m.caps & Cap.DIRTY_REPORT && rng.chance(0.7)) {
    const d = encodeDirtyReport(sp.volumeId, 1, DIRTY_FINAL, []);
    m.feed(d);
    parts.push(d);
    run.frames++;
  }
  const opts = { maxFrames: Math.max(2, run.o.frames - run.frames), allowBig: false, maxPad: 256 * 1024, junk: true };
  const built = compose(rng, g, m, opts, run.budget);
  built.parts.unshift(...parts);
  if (built.cut !== undefined) built.cut += parts.reduce((a, b) => a + b.length, 0);
  await run.finishStream('owner', rng, peer, m, built, false);
}

/** The hub's remote reads seen so far: the model then knows which answers are legal. */
function noteReads(peer: Peer, m: HubModel): void {
  for (const x of peer.msgs) {
    if (x.cmd === Cmd.REMOTE_IO_REQ && x.isRead) {
      m.reads.set(x.reqId, { volumeId: x.volumeId, bytes: x.sizeSectors * SECTOR });
      m.maxReqSeen = Math.max(m.maxReqSeen, x.reqId);
    }
  }
}

/** A valid-looking session from another VM that claims the good agent's volume. */
export async function claimantSession(run: FuzzRun, rng: Rng): Promise<void> {
  const { ctx, res, hangMs, size } = run;
  const goodVolume = ctx.goodVolume;
  const peer = await run.connect();
  if (!peer) return;
  res.claimants++;
  const g = new FrameGen(rng, ctx),
    m = new HubModel(ctx);
  const out: Buffer[] = [];
  if (rng.chance(0.7)) {
    // unsealed frames follow, and no IDENTITY
    const caps = rng.pick([ALL_CAPS & ~Cap.FRAME_CRC & ~Cap.IDENTITY, 0, Cap.WRITE_ACK | Cap.DIRTY_REPORT]);
    out.push(encodeHello(1, caps, Limits.maxPayload, rng.chance(0.2) ? '' : g.name(30, 'claimant-')));
  }
  const vols = [{ name: goodVolume, sizeBytes: rng.chance(0.8) ? size : size + SECTOR * rng.between(1, 64) }];
  if (rng.chance(0.3)) vols.push({ name: g.name(20, 'unk-'), sizeBytes: 4096 });
  out.push(encodeReportVmVolumes(rng.chance(0.5) ? vols : vols.reverse()));
  await run.sendFrames(peer, m, out);
  const refusal = () =>
    peer.errors().some((e) => e.code === ErrorCode.VOLUME_REFUSED && e.message.includes(goodVolume));
  const refused = await peer.until(() => peer.closed || refusal(), hangMs);
  if (!refused) {
    run.judge('claimant', peer, m, null, false, 'hub');
    peer.destroy();
    return;
  }
  if (refusal()) res.claimantsRefused++;
  else run.fail(`claimant: closed without refusing ${goodVolume}`);
  // Then use the good agent's volume id: unknown on this connection.
  const next = rng.int(3);
  if (next === 0) {
    const head = encodeProtectedWriteHead(ctx.goodVolumeId, rng.int(size / SECTOR - 8), 8, IO_OK);
    const b = Buffer.concat([head, g.data(8 * SECTOR)]);
    m.feed(b);
    await run.finishStream('claimant', rng, peer, m, { parts: [b], frames: 1, end: 'error', big: false }, false);
  } else if (next === 1) {
    const b = encodeDirtyReport(ctx.goodVolumeId, 1, DIRTY_FINAL, [{ offsetSectors: 0, sizeSectors: 8 }]);
    m.feed(b);
    await run.finishStream('claimant', rng, peer, m, { parts: [b], frames: 1, end: 'error', big: false }, false);
  } else {
    await run.finishStream('claimant', rng, peer, m, { parts: [], frames: 0, end: 'fin', big: false }, false);
  }
}
