// Which point a failover or failover test takes, per VM (src/hub/failover-at.ts): the one asked
// for with --at; the newest checkpoint when a volume of the VM is torn by a resync; a refusal
// naming the torn volumes when there is no checkpoint (or no journal), unless forced; the
// present for a converged VM.
import { strict as assert } from 'node:assert';
import { choosePoints, FailoverError, tornReason } from '../src/hub/failover-at';
import type { Replica } from '../src/hub/replica';
import type { HubJournals } from '../src/hub/journal';
import { makeLogger } from '../src/log';

const log = makeLogger('test', 'silent');

function rep(name: string, vm: string, state: string, dirtyBytes: number): Replica {
  return {
    name,
    state,
    checksumResync: null,
    bitmap: { dirtyBytes },
    record: { vm, sizeBytes: 1 << 20 },
  } as unknown as Replica;
}

/** A journal per VM with points of the given ids (time = id seconds). */
function journals(byVm: Record<string, number[]>): HubJournals {
  const pts = (vm: string) => (byVm[vm] ?? []).map((id) => ({ id, time: id * 1000, kind: 'flush', pos: 0 }));
  return {
    vms: () => Object.keys(byVm),
    journal: (vm: string) => ({ points: () => pts(vm) }),
    resolve: (vm: string, at: string) => {
      const p = at === 'latest' ? pts(vm).at(-1) : pts(vm).find((x) => x.id === Number(at));
      if (!p) throw new Error(`VM ${vm}: no checkpoint at ${at}`);
      return p;
    },
  } as unknown as HubJournals;
}

describe('failover at a point: which point per VM', () => {
  it('a converged VM without --at is taken at the present', () => {
    const c = choosePoints(
      [rep('V1', 'a', 'protecting', 0), rep('V2', 'a', 'stopped', 0)],
      {},
      journals({ a: [1, 2] }),
      'failover',
      log,
    );
    assert.deepEqual(
      c.map((x) => [x.vm, x.point]),
      [['a', null]],
    );
  });

  it('--at picks that checkpoint for every volume of the VM', () => {
    const c = choosePoints(
      [rep('V1', 'a', 'protecting', 0), rep('V2', 'a', 'protecting', 0)],
      { at: '1' },
      journals({ a: [1, 2] }),
      'failover',
      log,
    );
    assert.equal(c[0].point!.id, 1);
    assert.deepEqual(
      c[0].volumes.map((r) => r.name),
      ['V1', 'V2'],
    );
  });

  it('a torn volume takes the whole VM to its newest checkpoint; other VMs stay at the present', () => {
    const reps = [rep('V1', 'a', 'protecting', 0), rep('V2', 'a', 'syncing', 4096), rep('W1', 'b', 'protecting', 0)];
    const c = choosePoints(reps, {}, journals({ a: [3, 7], b: [1] }), 'failover', log);
    assert.deepEqual(
      c.map((x) => [x.vm, x.point?.id ?? null]),
      [
        ['a', 7],
        ['b', null],
      ],
    );
  });

  it('torn with no checkpoint, or no journal: refused naming the volume, unless forced', () => {
    const reps = [rep('V1', 'a', 'degraded', 65536)];
    for (const j of [undefined, journals({ a: [] })]) {
      assert.throws(
        () => choosePoints(reps, {}, j, 'failover', log),
        (e: Error) => {
          assert.ok(e instanceof FailoverError);
          assert.match(e.message, /V1 is degraded with 65536 bytes not yet resynced/);
          assert.match(e.message, /torn/);
          return true;
        },
      );
      assert.equal(choosePoints(reps, { force: true }, j, 'failover', log)[0].point, null);
    }
  });

  it('--at without a journal, or ambiguous between VMs, is refused', () => {
    const reps = [rep('V1', 'a', 'protecting', 0), rep('W1', 'b', 'protecting', 0)];
    assert.throws(() => choosePoints(reps, { at: '1', vm: 'a' }, undefined, 'failover', log), /no journal/);
    assert.throws(() => choosePoints(reps, { at: '1' }, journals({ a: [1], b: [1] }), 'failover', log), /name one/);
    const c = choosePoints(reps, { at: '1', vm: 'b' }, journals({ a: [1], b: [1] }), 'failover', log);
    assert.deepEqual(
      c.map((x) => [x.vm, x.point?.id ?? null]),
      [
        ['a', null],
        ['b', 1],
      ],
    );
  });

  it('tornReason: dirty regions or a checksum resync; never a failed-over volume', () => {
    assert.equal(tornReason(rep('V1', 'a', 'protecting', 0)), null);
    assert.match(tornReason(rep('V1', 'a', 'syncing', 1))!, /V1 is syncing/);
    assert.equal(tornReason(rep('V1', 'a', 'failed-over', 1)), null);
  });
});
