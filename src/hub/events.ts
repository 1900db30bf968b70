// The hub's event bus: what changed, as it changes (volume states, agent sessions, checkpoints,
// alarms, verify results, failover and failback steps), for `GET /events` and `rephub events`,
// as `drbdsetup events2` streams DRBD's. Bounded everywhere: at most MAX_SUBSCRIBERS streams,
// each with at most MAX_UNREAD_BYTES written but not yet taken by its client. A subscriber that
// falls behind is ended with a final `dropped` line; the hub never waits for one. Nothing is
// built or serialized while nobody listens (checkpoints can come at every guest flush).
import type * as http from 'node:http';
import { assert } from '../assert';

/** drbdsetup's verbs: `exists` (the state when the stream began), then create, change, destroy. */
export type EventAction = 'exists' | 'create' | 'change' | 'destroy' | 'call';
export type EventObject = 'volume' | 'session' | 'checkpoint' | 'alarm' | 'verify' | 'failover' | 'stream';

/** One line of the stream (JSON); `fields` are flat: strings, numbers, booleans, null. */
export interface HubEvent {
  seq: number;
  time: string;
  action: EventAction;
  object: EventObject;
  [field: string]: string | number | boolean | null;
}

export type EventFields = Record<string, string | number | boolean | null | undefined>;

export const MAX_SUBSCRIBERS = 16;
export const MAX_UNREAD_BYTES = 1 << 20;

/** Where the bus writes a subscriber's lines: an HTTP response in production. */
export interface EventSink {
  write(line: string): void;
  /** Bytes written but not yet taken by the client (http: writableLength). */
  readonly unreadBytes: number;
  end(line: string): void;
}

export class EventBus {
  private seq = 0;
  private readonly subs = new Set<EventSink>();

  constructor(
    private readonly maxUnreadBytes = MAX_UNREAD_BYTES,
    private readonly maxSubscribers = MAX_SUBSCRIBERS,
  ) {
    assert(maxUnreadBytes > 0 && maxSubscribers > 0, 'the bus has limits');
  }

  /** Nobody listens: callers may skip building an event. */
  get idle(): boolean {
    return this.subs.size === 0;
  }

  get subscribers(): number {
    return this.subs.size;
  }

  /** The next event's JSON line (its seq taken), whether or not anyone hears it. */
  private line(action: EventAction, object: EventObject, fields: EventFields): string {
    const ev: Record<string, unknown> = { seq: ++this.seq, time: new Date().toISOString(), action, object };
    for (const [k, v] of Object.entries(fields)) if (v !== undefined) ev[k] = v;
    return JSON.stringify(ev) + '\n';
  }

  publish(action: EventAction, object: EventObject, fields: EventFields): void {
    if (this.subs.size === 0) return;
    const line = this.line(action, object, fields);
    for (const s of this.subs) {
      if (s.unreadBytes + line.length <= this.maxUnreadBytes) s.write(line);
      else this.drop(s, `slow subscriber: over ${this.maxUnreadBytes} bytes unread`);
    }
  }

  /**
   * Add a subscriber; `exists` lines (the state now) go to it alone first, then an
   * `exists stream` line ends them. Returns the unsubscribe, or null when the bus is full.
   */
  subscribe(sink: EventSink, exists: [EventObject, EventFields][]): (() => void) | null {
    if (this.subs.size >= this.maxSubscribers) return null;
    for (const [object, fields] of exists) sink.write(this.line('exists', object, fields));
    sink.write(this.line('exists', 'stream', { subscribers: this.subs.size + 1 }));
    this.subs.add(sink);
    return () => void this.subs.delete(sink);
  }

  private drop(s: EventSink, reason: string): void {
    this.subs.delete(s);
    s.end(this.line('destroy', 'stream', { reason }));
  }

  /** The hub stops: every stream gets a last line. */
  close(): void {
    for (const s of [...this.subs]) this.drop(s, 'hub stopping');
  }
}

/** GET /events: newline-delimited JSON, chunked, until the client goes or is dropped. */
export function serveEvents(bus: EventBus, exists: () => [EventObject, EventFields][], res: http.ServerResponse): void {
  const sink: EventSink = {
    write: (line) => void res.write(line),
    get unreadBytes() {
      return res.writableLength;
    },
    end: (line) => res.end(line),
  };
  res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  const unsubscribe = bus.subscribe(sink, exists());
  if (!unsubscribe) {
    res.end(
      JSON.stringify({ action: 'destroy', object: 'stream', reason: `over ${MAX_SUBSCRIBERS} subscribers` }) + '\n',
    );
    return;
  }
  res.on('close', unsubscribe);
}
