// What a long-lived process (or a test making thousands of hubs and agents) must not keep:
// prom-client's default metrics start samplers nothing stops (an event-loop delay monitor, a GC
// observer), so they are made once per process, not once per hub or agent registry; and an
// agent core left disconnected holds no timer, so nothing keeps it (and all it points to) alive.
// Both leaks once made every later test in the suite several times slower (CI timeouts).
import { strict as assert } from 'node:assert';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import promClient = require('prom-client');
import { Hub } from '../src/hub/hub';
import { AgentCore } from '../src/agent/core';
import { newStats } from '../src/agent/ports';
import { BufferPool } from '../src/buffer-pool';
import { MemoryStateStore } from '../storage/state';
import { MemoryVolume } from '../storage/volume';
import { DirtyLog } from '../storage/dirty-log';
import { silentLogger } from '../src/log';
import { scrapeWithProcess } from '../src/process-metrics';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

describe('nothing outlives its owner (process metrics, agent timers)', () => {
  it('default process metrics are started once per process, and every hub scrape has them', async () => {
    // the module object itself: process-metrics.ts reads the function through it at each call
    const mod = promClient as unknown as Record<'collectDefaultMetrics', (cfg?: object) => void>;
    const real = mod.collectDefaultMetrics;
    let started = 0;
    mod.collectDefaultMetrics = (cfg) => (started++, real(cfg));
    const hubs: Hub[] = [];
    try {
      for (let i = 0; i < 5; i++) {
        const hub = new Hub({
          volumes: [{ name: 'V0', path: `leak-${i}` }],
          store: new MemoryStateStore(),
          log: silentLogger(),
          openTarget: () => new MemoryVolume(1 << 20),
        });
        hubs.push(hub);
        const text = await hub.monitor.metrics();
        assert.match(text, /^nodejs_eventloop_lag_seconds /m, `hub ${i}: the process's event-loop lag`);
        assert.match(text, /^rephub_build_info\{/m, `hub ${i}: build info`);
        assert.match(text, /^rephub_volume_state\{/m, `hub ${i}: its own metrics too`);
      }
      const agentRegistry = new promClient.Registry();
      assert.match(await scrapeWithProcess(agentRegistry, 'test'), /^process_cpu_seconds_total /m, 'an agent scrape');
      assert.ok(started <= 1, `default metrics started ${started} times for 5 hubs and an agent`);
    } finally {
      mod.collectDefaultMetrics = real;
      for (const h of hubs) await h.close();
    }
  });

  it('an agent core that was connected and is now disconnected can be collected: no timer holds it', async () => {
    const refs: WeakRef<AgentCore>[] = [];
    for (let i = 0; i < 20; i++) refs.push(connectedOnce());
    for (let round = 0; round < 5 && refs.some((r) => r.deref()); round++) {
      await new Promise((r) => setImmediate(r)); // let the turn that made them end first
      gc();
    }
    const alive = refs.filter((r) => r.deref() !== undefined).length;
    assert.equal(alive, 0, `${alive} of 20 disconnected agent cores are still held`);
  });
});

/** A core that connected once and disconnected; only a weak reference leaves this function. */
function connectedOnce(): WeakRef<AgentCore> {
  const size = 1 << 20;
  const core = new AgentCore(
    [{ name: 'V0', target: new MemoryVolume(size), log: DirtyLog.memory(size, 64 << 10) }],
    { maxQueueBytes: 1 << 20, maxPendingWrites: 64, maxRemoteIo: 4, seekData: false },
    new BufferPool(1 << 20, 2),
    silentLogger(),
    newStats(),
  );
  core.connected({ send: () => undefined, queuedBytes: () => 0, has: () => true });
  core.disconnected();
  return new WeakRef(core);
}
