// Feeds the hub's event bus (events.ts) from the owners of what changes: each replica's state
// and alarm, the journals' checkpoints, the verify scheduler's runs, the failover controller's
// steps and the sessions; and describes the state now (`exists` lines) for a new subscriber.
// Every hook returns at once while nobody listens.
import type { EventBus, EventFields, EventObject } from './events';
import type { Replica } from './replica';
import type { HubJournals } from './journal';
import type { VerifyScheduler } from './verify-scheduler';
import { capNames } from '../status-schema';

/** What the feed reads of a session: its id, VM, peer and caps. */
export interface SessionFacts {
  readonly id: number;
  readonly vm: string;
  readonly caps: number;
}

const vmOf = (r: Replica): string | null => r.owner?.vm || r.record?.vm || null;

/** Hooks the bus onto the hub's parts (once, at the hub's start). */
export function feedEvents(
  bus: EventBus,
  parts: { replicas: Iterable<Replica>; journals?: HubJournals; verifier: VerifyScheduler },
): void {
  for (const r of parts.replicas) {
    r.onState = (from, to) => bus.publish('change', 'volume', { vm: vmOf(r), name: r.name, from, to });
    const journal = r.onAlarm;
    r.onAlarm = (active, start) => {
      journal?.(active, start);
      bus.publish(active ? 'create' : 'destroy', 'alarm', {
        vm: vmOf(r),
        name: r.name,
        since: new Date(start).toISOString(),
      });
    };
  }
  if (parts.journals)
    parts.journals.onCheckpoint = (vm, cp) => {
      if (bus.idle) return; // at every guest flush: not even the fields while nobody listens
      bus.publish('create', 'checkpoint', { vm, id: cp.id, kind: cp.kind, label: cp.label });
    };
  parts.verifier.onResult = (volume, rep) =>
    bus.publish(rep.state === 'running' ? 'create' : 'destroy', 'verify', {
      name: volume,
      id: rep.id,
      state: rep.state,
      checkedBytes: rep.checkedBytes,
      mismatchedRegions: rep.mismatchedRegions,
      error: rep.error,
    });
}

export function sessionEvent(bus: EventBus, action: 'create' | 'destroy', s: SessionFacts): void {
  bus.publish(action, 'session', { session: s.id, vm: s.vm, caps: capNames(s.caps).join(',') });
}

export function failoverStep(bus: EventBus, step: string, volumes: string): void {
  bus.publish('call', 'failover', { step, volumes });
}

/** The `exists` lines: every volume's state, every session. */
export function existing(replicas: Iterable<Replica>, sessions: Iterable<SessionFacts>): [EventObject, EventFields][] {
  const out: [EventObject, EventFields][] = [];
  for (const r of replicas) out.push(['volume', { vm: vmOf(r), name: r.name, state: r.state }]);
  for (const s of sessions) out.push(['session', { session: s.id, vm: s.vm, caps: capNames(s.caps).join(',') }]);
  return out;
}
