// Network faults between a real agent and a real hub (both processes), through the fault proxy
// (tools/faultproxy.ts): delay, stall shorter and longer than the heartbeat timeout, connection
// resets, dropped bytes (a corrupting middlebox: framing breaks), and a half-open link. A real
// NBD client (fio's nbd engine) writes through the agent during each fault. For each: the VM's
// IO keeps completing while the fault lasts, the hub notices a dead peer within seconds, and
// afterwards the replica converges byte-equal.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tmpdir, makeImage } from './helpers/util';
import { HubProcess, AgentProcess } from './helpers/hub-process';
import { FaultProxy } from '../tools/faultproxy';
import { MiB, sleep, waitHubConverged, waitByteEqual, waitAgentClean, fmtRegions, fioOnce, FioRun } from './helpers/fault-harness';

const HEARTBEAT_DEAD_MS = 3 * 2000; // hub and agent: PING every 2 s, dead after 3 silent intervals

describe('network faults between agent and hub (fault proxy, fio through the agent)', function () {
  this.timeout(600_000);
  const size = 64 * MiB;
  let dir: string, hub: HubProcess, agent: AgentProcess, proxy: FaultProxy, img: string, rep: string;
  const log: string[] = [];
  const say = (s: string) => { log.push(s); process.stdout.write(`      ${s}\n`); };

  before(async () => {
    dir = tmpdir('rephub-netfault-');
    img = path.join(dir, 'V1.img'); rep = path.join(dir, 'V1R');
    makeImage(img, size, 0.3);
    hub = new HubProcess(['--vol', `V1=${rep}`, '--data', path.join(dir, 'hub')]);
    await hub.start();
    proxy = new FaultProxy({ target: { host: '127.0.0.1', port: hub.port }, maxBufferBytes: 2 * MiB, seed: 4242 });
    const pport = await proxy.listen();
    agent = new AgentProcess(['--hub', `127.0.0.1:${pport}`, '--export', `V1=${img}`, '--state', path.join(dir, 'agent'), '--vm', 'vm1']);
    await agent.start();
    await waitHubConverged(hub, agent, 120_000);
    assert.ok((await waitByteEqual(img, rep, size)).equal, 'initial sync byte-equal');
    assert.ok((await waitAgentClean(agent)).clean, 'agent clean after the initial sync');
  });

  after(async () => {
    await agent?.stop();
    await proxy?.close();
    await hub?.stop();
    process.stdout.write(`      faults injected: ${proxy?.stats.injected} ${JSON.stringify(proxy?.stats.byKind)}; ` +
      `proxy forwarded ${((proxy?.stats.bytesUp ?? 0) / MiB).toFixed(1)} MiB up, ${((proxy?.stats.bytesDown ?? 0) / MiB).toFixed(1)} MiB down, ` +
      `dropped ${proxy?.stats.bytesDropped} bytes, ${proxy?.stats.resets} sockets reset\n`);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  /** fio randwrite through the agent, rate-limited, for `seconds`. */
  function writer(seconds: number, seed: number) {
    return fioOnce(agent.uri('V1'), [
      '--rw=randwrite', '--bsrange=4k-128k', '--blockalign=4k', '--iodepth=8', `--size=${size}`, '--time_based', `--runtime=${seconds}`,
      '--rate=6m', `--randseed=${seed}`,
    ], (seconds + 30) * 1000).done;
  }

  /** The VM never blocks: fio ran clean, did IO, no write waited on the link. */
  function assertWriterUnblocked(r: FioRun, what: string, faultEnd?: number): void {
    assert.equal(r.code, 0, `${what}: fio exited ${r.code}/${r.signal}: ${r.stderr}`);
    assert.ok(r.ios > 0, `${what}: fio did no IO`);
    assert.ok(r.maxClatMs < 1000, `${what}: a write took ${r.maxClatMs.toFixed(0)} ms`);
    if (faultEnd !== undefined) assert.ok(r.endedAt <= faultEnd, `${what}: fio finished ${r.endedAt - faultEnd} ms after the fault ended`);
  }

  async function hubSessions(): Promise<number[]> {
    return (await hub.status()).agents.map((a: any) => a.session);
  }

  /** Time until the hub has no live session for the agent or the volume is degraded, from t0. */
  async function hubNoticesDead(t0: number, limitMs: number): Promise<number> {
    for (;;) {
      const st = await hub.status();
      const v = st.volumes.find((x: any) => x.name === 'V1');
      if (st.agents.length === 0 || v.state === 'degraded') return Date.now() - t0;
      if (Date.now() - t0 > limitMs) throw new Error(`hub still holds the dead session after ${limitMs} ms: ${JSON.stringify(st.agents)} V1 ${v.state}`);
      await sleep(100);
    }
  }

  /**
   * After a fault: the hub converges (protecting, nothing dirty), the replica is byte-equal to
   * the image, and the agent's side is settled too (every mirrored write acked, dirty log empty).
   */
  async function assertConverged(what: string): Promise<void> {
    const ms = await waitHubConverged(hub, agent, 90_000);
    const d = await waitByteEqual(img, rep, size, 10_000);
    if (!d.equal) {
      assert.fail(`${what}: the hub reports V1 protecting with nothing dirty but the replica differs from the image: ` +
        `${d.differingBytes} bytes in ${fmtRegions(d)}. Hub: ${JSON.stringify(await hub.volume('V1'))} Agent: ${JSON.stringify(await agent.status())}`);
    }
    const a = await waitAgentClean(agent, 15_000);
    const s = a.status;
    assert.ok(a.clean, `${what}: replica byte-equal, but 15 s later the agent still holds ${s.pendingWrites} unacked mirrored writes and ` +
      `${s.volumes[0].dirtyBytes} dirty bytes (connected ${s.connected}, connects ${s.connects}): WRITE_ACKs of this connection do not clear them`);
    say(`${what}: converged ${ms} ms after the fault, replica byte-equal, agent clean`);
  }

  it('delay 200 ms both ways: no reconnect, writes never wait, converges', async () => {
    const sessions = await hubSessions(), connects = (await agent.status()).connects;
    proxy.setMode({ kind: 'delay', ms: 200 });
    const t0 = Date.now();
    const r = await writer(4, 1);
    const end = t0 + 5000;
    await sleep(Math.max(0, end - Date.now()));
    proxy.setMode({ kind: 'pass' });
    assertWriterUnblocked(r, 'delay', end);
    assert.deepEqual(await hubSessions(), sessions, 'a 200 ms delay must not cost the session');
    assert.equal((await agent.status()).connects, connects, 'a 200 ms delay must not make the agent reconnect');
    say(`delay 200 ms: ${r.ios} writes, max latency ${r.maxClatMs.toFixed(1)} ms, same session`);
    await assertConverged('delay');
  });

  it('stall shorter than the heartbeat timeout (3 s): the session survives, writes never wait, converges', async () => {
    const sessions = await hubSessions(), connects = (await agent.status()).connects;
    const w = writer(2, 2);
    await sleep(300);
    proxy.setMode({ kind: 'stall' });
    const t0 = Date.now();
    const r = await w;
    const end = t0 + 3000;
    await sleep(Math.max(0, end - Date.now()));
    proxy.setMode({ kind: 'pass' });
    assertWriterUnblocked(r, 'short stall', end);
    await sleep(500);
    assert.deepEqual(await hubSessions(), sessions, 'a 3 s stall (< 6 s) must not cost the session');
    assert.equal((await agent.status()).connects, connects, 'a 3 s stall must not make the agent reconnect');
    say(`stall 3 s: ${r.ios} writes, max latency ${r.maxClatMs.toFixed(1)} ms, same session`);
    await assertConverged('short stall');
  });

  it('stall longer than the heartbeat timeout (12 s): hub drops the silent peer within 10 s, writes never wait, converges', async () => {
    const w = writer(10, 3);
    await sleep(300);
    proxy.setMode({ kind: 'stall' });
    const t0 = Date.now();
    const noticed = await hubNoticesDead(t0, 10_000);
    const r = await w;
    const end = t0 + 12_000;
    assert.ok(Date.now() < end, 'the writer outlasted the stall');
    await sleep(end - Date.now());
    proxy.setMode({ kind: 'pass' });
    assertWriterUnblocked(r, 'long stall', end);
    assert.ok(noticed >= HEARTBEAT_DEAD_MS - 2500, `hub dropped the session after ${noticed} ms, before its heartbeat timeout`);
    say(`stall 12 s: hub noticed after ${noticed} ms; ${r.ios} writes, max latency ${r.maxClatMs.toFixed(1)} ms`);
    await assertConverged('long stall');
  });

  it('connection resets (RST) under load: hub notices at once, agent reconnects, converges', async () => {
    const connects = (await agent.status()).connects;
    const w = writer(5, 4);
    for (let i = 0; i < 3; i++) {
      await sleep(1200);
      const t0 = Date.now();
      proxy.reset();
      const noticed = await hubNoticesDead(t0, 3000);
      say(`reset ${i + 1}: hub noticed after ${noticed} ms`);
    }
    const r = await w;
    assertWriterUnblocked(r, 'resets');
    await waitHubConverged(hub, agent, 60_000);
    assert.ok((await agent.status()).connects >= connects + 3, 'the agent reconnected after each reset');
    say(`resets: ${r.ios} writes, max latency ${r.maxClatMs.toFixed(1)} ms`);
    await assertConverged('resets');
  });

  for (const align of ['bytes', 'chunks'] as const) {
    it(`dropped bytes (drop ${align}, 1.5 s, both ways) under load: treated as a broken link, resynced, converges`, async () => {
      const sessions = await hubSessions(), connects = (await agent.status()).connects;
      const w = writer(5, align === 'bytes' ? 5 : 6);
      await sleep(1000);
      proxy.setMode({ kind: 'drop', align });
      const t0 = Date.now();
      await sleep(1500);
      proxy.setMode({ kind: 'pass' });
      const r = await w;
      assertWriterUnblocked(r, `drop ${align}`);
      // The stream is corrupt from here: a framing error or the heartbeat must end the session.
      let noticed = -1;
      try { noticed = await hubNoticesDead(t0, 12_000); } catch { /* reported below */ }
      const now = await hubSessions();
      const replaced = noticed >= 0 || !sessions.every((s) => now.includes(s));
      say(`drop ${align}: ${r.ios} writes, max latency ${r.maxClatMs.toFixed(1)} ms; hub ${replaced ? `dropped the session after ${noticed} ms` : 'kept the session'}; ` +
        `agent reconnects ${(await agent.status()).connects - connects}`);
      await assertConverged(`drop ${align}`);
      assert.ok(replaced, `drop ${align}: bytes vanished from the stream but the hub kept the session ${JSON.stringify(now)}`);
    });
  }

  it('half-open link (15 s): hub drops the dead peer within 10 s, writes never wait, agent reconnects after, converges', async () => {
    const connects = (await agent.status()).connects;
    const w = writer(12, 7);
    await sleep(300);
    proxy.setMode({ kind: 'halfopen' });
    const t0 = Date.now();
    const noticed = await hubNoticesDead(t0, 10_000);
    const r = await w;
    const end = t0 + 15_000;
    assert.ok(Date.now() < end, 'the writer outlasted the fault');
    await sleep(end - Date.now());
    const st = await agent.status();
    assert.equal(st.connected, false, 'the agent must have given up on the half-open link');
    proxy.setMode({ kind: 'pass' }); // new connections pass; the old ones stay black holes
    assertWriterUnblocked(r, 'half-open', end);
    say(`half-open 15 s: hub noticed after ${noticed} ms; ${r.ios} writes, max latency ${r.maxClatMs.toFixed(1)} ms; ${proxy.stats.blackholed} black-holed connection(s)`);
    await assertConverged('half-open');
    assert.ok((await agent.status()).connects > connects);
  });

  it('a script of every fault back to back under load converges', async () => {
    const w = writer(14, 8);
    await proxy.runScript('pass 1s, delay 50ms 1s, stall 2s, reset, drop 300ms, pass 2s, delay 300ms 2s, reset, stall 1s, pass');
    const r = await w;
    assertWriterUnblocked(r, 'script');
    await assertConverged('script');
    assert.ok(proxy.stats.injected >= 14, `faults injected ${proxy.stats.injected}`);
  });
});
