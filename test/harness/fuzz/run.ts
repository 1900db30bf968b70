// The state one fuzz campaign's sessions share: the hub under attack, the model's context, the
// frame count and budgets, the findings; and the steps every session ends with (send, wait, judge).
import type { HubProcess } from '../hub-process';
import type { Rng } from '../prng';
import type { HubModel, Expected, FuzzCtx } from './hub-model';
import { Peer } from './peer';
import { CampaignOptions, CampaignResult, fail } from './result';
import { judge } from './judge';
import { Built, StreamBudget, send } from './stream';

export class FuzzRun {
  frames = 0; // frames sent so far, by every worker: the campaign ends at o.frames
  floodActive = 0; // one PING flood at a time
  owners = 0; // owner sessions started (their HELLO names)
  readonly budget: StreamBudget;
  readonly hangMs: number;

  constructor(
    readonly o: CampaignOptions,
    readonly res: CampaignResult,
    readonly hub: HubProcess,
    readonly ctx: FuzzCtx,
    readonly size: number, // of the good agent's volume
    readonly crashed: () => boolean,
  ) {
    this.hangMs = o.hangMs ?? 10_000;
    this.budget = {
      bigFrames: o.bigFrames ?? 4,
      bigActive: 0,
      bigDirty: { bigBytes: o.bigDirtyBytes ?? 24 * (1 << 20) },
      bigSent: 0,
    };
  }

  fail(what: string): void {
    fail(this.res, what);
  }

  /** A new connection to the hub, or null if it cannot connect (then the hub is checked for a crash). */
  async connect(): Promise<Peer | null> {
    const peer = new Peer(this.hub.host, this.hub.port);
    if (await peer.ok) return peer;
    this.crashed();
    return null;
  }

  /** Feed the model and send frames written one by one (handshakes). */
  async sendFrames(peer: Peer, m: HubModel, frames: Buffer[]): Promise<void> {
    for (const b of frames) {
      m.feed(b);
      this.frames++;
      this.res.bytes += b.length;
      await peer.write(b);
    }
  }

  judge(sc: string, peer: Peer, m: HubModel, expect: Expected | null, ended: boolean, endedBy: 'hub' | 'fin'): void {
    judge({ res: this.res, hangMs: this.hangMs, goodVolume: this.ctx.goodVolume }, sc, peer, m, expect, ended, endedBy);
  }

  /** Send a composed stream, wait for the hub's reaction, judge it. */
  async finishStream(sc: string, rng: Rng, peer: Peer, m: HubModel, built: Built, trickle: boolean): Promise<void> {
    this.frames += built.frames;
    try {
      if (built.parts.length > 0) this.res.bytes += await send(peer, built, rng, trickle);
    } finally {
      if (built.big) this.budget.bigActive--;
    }
    let ended: boolean;
    if (built.end === 'error') {
      ended = await peer.until(() => peer.closed, this.hangMs);
      this.judge(sc, peer, m, m.error, ended, 'hub');
    } else {
      // the hub holds the partial frame meanwhile
      if (rng.chance(0.3)) await new Promise((r) => setTimeout(r, rng.int(300)));
      peer.fin();
      ended = await peer.until(() => peer.closed, this.hangMs);
      this.judge(sc, peer, m, m.error, ended, 'fin');
    }
    peer.destroy();
  }
}
