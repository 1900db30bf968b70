// One failover operation at a time (test, failover, failback, their stops and rollbacks), and
// the hub's stop waiting for the one under way. Owns the busy and stopping flags; what an
// operation waits for before it starts (the controller's restore, sessions still applying what
// they received) is the controller's, passed in as `before`.
import type { Logger } from '../log';
import { FailoverError } from './failover-at';

// The hub's stop waits this long for a failover operation under way (see close()).
const CLOSE_WAIT_MS = 10_000;

export class OperationGate {
  private busy = false;
  private closing = false;
  private running: Promise<void> | null = null; // the operation under way, settled either way

  constructor(
    private readonly before: () => Promise<void>,
    private readonly log: Logger,
  ) {}

  /** `fn` alone, after `before`; refused while another runs or once the hub stops. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closing) throw new FailoverError('the hub is stopping');
    if (this.busy) throw new FailoverError('another failover operation is in progress');
    this.busy = true;
    const run = this.before()
      .then(() => {
        if (this.closing) throw new FailoverError('the hub is stopping'); // it may have begun meanwhile
      })
      .then(fn);
    this.running = run.then(
      () => undefined,
      () => undefined,
    );
    try {
      return await run;
    } finally {
      this.busy = false;
      this.running = null;
    }
  }

  /**
   * The hub stops: no operation starts from now on, and the one under way (a stop or failback
   * waiting for NBD clients to go, say) finishes before the hub closes what it works on, the
   * exports, sessions and store; at most `ms`, after which the hub closes anyway (said in the log).
   */
  async close(ms = CLOSE_WAIT_MS): Promise<void> {
    this.closing = true;
    if (!this.running) return;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<boolean>((r) => (timer = setTimeout(() => r(true), ms)));
    const timedOut = await Promise.race([this.running.then(() => false), late]);
    clearTimeout(timer);
    if (timedOut)
      this.log.warn({ waitedMs: ms }, 'stop: the failover operation under way did not finish; closing anyway');
  }
}
