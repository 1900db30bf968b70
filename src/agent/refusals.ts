// Volumes the hub refused on this connection (VOLUME_REFUSED: held by another live agent, no
// recovery volume, a size mismatch): each cause logged once as an error, then the volumes not yet
// protected are reported again after a backoff (1 s doubling to 30 s), never in a tight loop.
// The retry lives as long as the connection; a reconnect starts over. The newest refusal (this
// one's, or an UNAUTHORIZED the hub answered) is kept for the agent's /status, where rephub-qemu
// looks for it in the first seconds.
import type { Logger } from '../log';

/** Why the hub would not have us, the newest time it said so. */
export interface HubRefusal {
  code?: number; // the hub's ERROR code; none for a refusal seen as a failed handshake
  cause: string;
  atMs: number;
}

const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 30_000;
const MAX_REMEMBERED = 256; // distinct refusal messages logged at error level, then at debug

export class Refusals {
  private delayMs = FIRST_RETRY_MS;
  private timer: NodeJS.Timeout | null = null;
  private readonly logged = new Set<string>();
  private newest: HubRefusal | null = null;
  /** The newest refusal of each volume (SPEC 5.3: the text names it), until the hub protects it. */
  private readonly byVolume = new Map<string, HubRefusal>();

  constructor(
    private readonly log: Logger,
    /** Report again the volumes not protected yet (REPORT_VM_VOLUMES); false when none are left. */
    private readonly reportAgain: () => boolean,
  ) {}

  /** The hub refused a volume with `message`. */
  refused(code: number, message: string): void {
    this.note(code, message);
    const volume = /^volume (\S+?)(?::|\s|$)/.exec(message)?.[1];
    if (volume !== undefined && (this.byVolume.has(volume) || this.byVolume.size < MAX_REMEMBERED))
      this.byVolume.set(volume, this.newest!);
    const first = !this.logged.has(message);
    if (first && this.logged.size < MAX_REMEMBERED) this.logged.add(message);
    const ctx = { code, cause: message, retryInMs: this.delayMs };
    if (first) this.log.error(ctx, 'hub refused a volume; it stays unprotected here, retrying with backoff');
    else this.log.debug(ctx, 'hub refused a volume again');
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.reportAgain()) this.delayMs = FIRST_RETRY_MS;
    }, this.delayMs);
    this.timer.unref();
    this.delayMs = Math.min(this.delayMs * 2, MAX_RETRY_MS);
  }

  /** Keep the newest refusal for status (no retry: the caller decides that). */
  note(code: number, message: string): void {
    this.newest = { code, cause: message, atMs: Date.now() };
  }

  get last(): HubRefusal | null {
    return this.newest;
  }

  /** Why the hub refused `volume` last, or null (none since it was last protected). */
  of(volume: string): HubRefusal | null {
    return this.byVolume.get(volume) ?? null;
  }

  /** The hub protects `volume` now: its refusal is over. */
  protectedNow(volume: string): void {
    this.byVolume.delete(volume);
  }

  /** The connection is gone (or the agent stops): no retry on it. */
  reset(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.delayMs = FIRST_RETRY_MS;
  }
}
