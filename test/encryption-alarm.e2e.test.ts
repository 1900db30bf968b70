// The encryption alarm end to end: a real hub and agent, fio through the agent's NBD export.
// Ordinary workloads (the initial sync of a text-filled volume, compressible overwrites, random
// writes to fresh space) leave it quiet; random data over the text at 20 MiB/s raises it.
import { strict as assert } from 'node:assert';
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tmpdir, waitFor, MiB } from './harness/util';
import { v1Hub, HubProcess } from './harness/hub-process';
import { v1Agent, AgentProcess } from './harness/agent-process';

const SIZE = 128 * MiB;
const TEXT_END = 96 * MiB; // text up to here, zeroes after

function textImage(file: string): void {
  const line = Buffer.from('2026-11-30 12:00:01 INFO order 1842 shipped to warehouse B, customer note: none\n');
  const chunk = Buffer.alloc(MiB);
  for (let o = 0; o < MiB; o += line.length) line.copy(chunk, o);
  const fd = fs.openSync(file, 'w');
  for (let o = 0; o < TEXT_END; o += MiB) fs.writeSync(fd, chunk, 0, MiB, o);
  fs.ftruncateSync(fd, SIZE);
  fs.closeSync(fd);
}

function fio(uri: string, ...args: string[]): void {
  execFileSync('fio', ['--name=w', '--ioengine=nbd', `--uri=${uri}`, '--output=/dev/null', ...args], {
    timeout: 120_000,
  });
}

describe('encryption alarm, end to end', function () {
  this.timeout(180_000);
  let hub: HubProcess, agent: AgentProcess;
  afterEach(async () => {
    await agent?.stop();
    await hub?.stop();
  });

  it('quiet through ordinary workloads; random data over text at 20 MiB/s alarms within 10 s', async () => {
    const dir = tmpdir();
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R');
    textImage(img);
    hub = v1Hub(dir, rep);
    await hub.start();
    agent = v1Agent(dir, img, hub.port);
    await agent.start();
    await hub.converged('V1', img, rep, 60_000);
    const uri = agent.uri('V1');
    // Compressible overwrites of the text, and random writes to the fresh space after it.
    fio(uri, '--rw=randwrite', '--bs=64k', '--size=96m', '--io_size=64m', '--buffer_compress_percentage=50');
    fio(uri, '--rw=write', '--bs=64k', `--offset=${TEXT_END}`, '--size=32m', '--refill_buffers');
    await waitFor('writes applied', async () => (await hub.volume('V1')).bytesApplied >= 96 * MiB, 30_000, 100);
    await new Promise((r) => setTimeout(r, 4000)); // let the alarm's seconds close
    let v = await hub.volume('V1');
    assert.equal(v.alarm.raised, 0, `ordinary workloads tripped the alarm: ${JSON.stringify(v.alarm)}`);
    // Ransomware: random data over the text, 20 MiB/s.
    const t0 = Date.now();
    const attack = spawn(
      'fio',
      [
        '--name=x',
        '--ioengine=nbd',
        `--uri=${uri}`,
        '--rw=write',
        '--bs=64k',
        '--size=80m',
        '--rate=20m',
        '--refill_buffers',
        '--output=/dev/null',
      ],
      { stdio: 'ignore' },
    );
    try {
      v = await waitFor('alarm', async () => ((v = await hub.volume('V1')).alarm.active ? v : null), 10_000, 200);
    } finally {
      attack.kill('SIGKILL');
    }
    const secs = (Date.now() - t0) / 1000;
    console.log(`      alarm raised ${secs.toFixed(1)} s after the attack began`);
    assert.ok(Date.parse(v.alarm.since) <= Date.now() && Date.parse(v.alarm.since) >= t0 - 2000, 'dated at the spike');
    // logged before /status shows it, but the hub's stderr pipe and its HTTP answer reach this
    // process in either order
    await waitFor('the alarm logged', () => /encryption alarm/.test(hub.logTail(200)), 5_000, 50);
    // The journal's last point before the suspicious run is tagged last-clean.
    const list = await (await fetch(`http://127.0.0.1:${hub.httpPort}/checkpoints?vm=vm1`)).json();
    const points: { kind: string; time: string }[] = (list as any[]).flatMap((j: any) => j.checkpoints);
    const clean = points.find((p) => p.kind === 'last-clean');
    assert.ok(clean, `a last-clean point: ${JSON.stringify(list).slice(0, 400)}`);
    assert.ok(Date.parse(clean.time) < Date.parse(v.alarm.since), 'from before the suspicious writes');
    const metrics = await (await fetch(`http://127.0.0.1:${hub.httpPort}/metrics`)).text();
    assert.match(metrics, /rephub_volume_encryption_alarm\{[^}]*volume="V1"[^}]*\} 1/);
  });
});
