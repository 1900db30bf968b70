// The agent shim end to end with real NBD clients (qemu-io, qemu-img, nbdcopy, fio, nbdinfo,
// a tiny Linux VM), the agent and hub as real processes on loopback, and faults: hub stopped
// under load, hub kill -9, agent kill -9, link cut. Each ends with the replica byte-equal.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { tmpdir, makeImage, sha, waitFor } from './harness/util';
import { HubProcess, v1Hub } from './harness/hub-process';
import { AgentProcess, v1Agent } from './harness/agent-process';
import { CutProxy } from './harness/cut-proxy';

const MiB = 1 << 20;
const run = (cmd: string, args: string[], timeout = 120_000) =>
  execFileSync(cmd, args, { timeout, stdio: ['ignore', 'pipe', 'pipe'] }).toString();

describe('agent shim with real NBD clients', function () {
  this.timeout(300_000);
  let dir: string, hub: HubProcess, agent: AgentProcess, img: string, rep: string;
  const size = 64 * MiB;

  async function converged(): Promise<void> {
    await hub.converged('V1', img, rep, 120_000);
  }

  beforeEach(async () => {
    dir = tmpdir();
    img = path.join(dir, 'V1.img');
    rep = path.join(dir, 'V1R');
    makeImage(img, size, 0.3);
    hub = v1Hub(dir, rep, '--cache', 'none'); // the other end-to-end tests run the default, writeback
    await hub.start();
    agent = v1Agent(dir, img, hub.port);
    await agent.start();
  });
  afterEach(async () => {
    await agent.stop();
    await hub.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('nbdinfo sees the export; qemu-io, qemu-img, nbdcopy and fio write through it; replica byte-equal', async () => {
    const info = JSON.parse(run('nbdinfo', ['--json', agent.uri('V1')]));
    assert.equal(info.exports[0]['export-size'], size);
    assert.equal(info.exports[0]['can_flush'], true);
    assert.equal(info.exports[0]['can_multi_conn'], true);
    assert.deepEqual(run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${agent.nbdPort}`]).includes('"V1"'), true);

    run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 3M', '-c', 'write -z 8M 1M', '-c', 'flush', agent.uri('V1')]);
    const r = run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 1M 3M', '-c', 'read -P 0 8M 1M', agent.uri('V1')]);
    assert.ok(!/Pattern verification failed/.test(r), r);

    const src = path.join(dir, 'src.raw');
    makeImage(src, 16 * MiB, 0.7);
    run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, agent.uri('V1')]);
    const head = Buffer.alloc(16 * MiB);
    fs.readSync(fs.openSync(img, 'r'), head, 0, head.length, 0);
    assert.ok(head.equals(fs.readFileSync(src)), 'qemu-img convert landed on the protected image');

    const src2 = path.join(dir, 'src2.raw');
    makeImage(src2, size, 0.5);
    run('nbdcopy', ['--flush', src2, agent.uri('V1')]);
    assert.equal(sha(img), sha(src2), 'nbdcopy (4 connections) landed on the protected image');
    await converged();

    run('fio', [
      '--name=v',
      '--ioengine=nbd',
      `--uri=${agent.uri('V1')}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      '--size=32m',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_state_save=0',
      '--number_ios=4096',
      '--output-format=terse',
    ]);
    const before = await hub.volume('V1');
    run('fio', [
      '--name=s',
      '--ioengine=nbd',
      `--uri=${agent.uri('V1')}`,
      '--rw=write',
      '--bs=1m',
      '--iodepth=4',
      '--size=32m',
      '--offset=32m',
      '--verify=md5',
      '--do_verify=1',
      '--verify_state_save=0',
      '--output-format=terse',
    ]);
    await converged();
    // 1 MiB guest writes arrive aligned in the hub's buffers and bypass its page cache (--cache none).
    // Those the agent's link could not take at once became owed regions (src/agent/mirror.ts) and
    // came by resync instead: together they are the 32 MiB written.
    const after = await hub.volume('V1');
    const mirrored = after.bytesApplied - before.bytesApplied;
    assert.ok(mirrored > 0, 'some 1 MiB writes were mirrored');
    assert.equal(
      after.bytesDirect - before.bytesDirect >= mirrored,
      true,
      'every mirrored 1 MiB write went with O_DIRECT',
    );
    assert.ok(mirrored + (after.syncBytes - before.syncBytes) >= 32 * MiB, 'what was not mirrored was resynced');
  });

  it('hub stalled (SIGSTOP): writes overflow the bounded queue into dirty regions, the VM never blocks', async () => {
    await agent.stop();
    agent = v1Agent(dir, img, hub.port, '--max-queue', '1M');
    await agent.start();
    await converged();
    hub.proc!.kill('SIGSTOP');
    try {
      // 48 MiB through a 1 MiB send queue to a hub that reads nothing: must complete regardless.
      run(
        'fio',
        [
          '--name=o',
          '--ioengine=nbd',
          `--uri=${agent.uri('V1')}`,
          '--rw=write',
          '--bs=1m',
          '--iodepth=4',
          '--size=48m',
        ],
        60_000,
      );
      const rss = Number(fs.readFileSync(`/proc/${agent.proc!.pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)![1]) * 1024;
      process.stdout.write(
        `      agent RSS with the hub stalled after 48 MiB written: ${(rss / MiB).toFixed(0)} MiB\n`,
      );
      assert.ok(rss < 200 * MiB, `agent RSS ${rss} bytes`);
    } finally {
      hub.proc!.kill('SIGCONT');
    }
    await converged();
    // Writes queued to the stalled hub still referred to the guest's write buffers: had one
    // gone back to the pool before it was sent, the hub would have seen its checksum fail.
    assert.doesNotMatch(hub.stderr, /checksum mismatch/);
  });

  it('a tiny Linux VM writes through the guest kernel onto the export; replica byte-equal', async function () {
    const out = run(
      'bash',
      [path.join(__dirname, '../../tools/tiny-vm.sh'), agent.uri('V1'), 'rephub-e2e', '4'],
      280_000,
    );
    assert.match(out, /PASS/);
    await converged();
  });

  it('faults: hub stopped under load, hub kill -9, agent kill -9, link cut: each converges, resync is a delta', async () => {
    await converged();
    const fio = (seconds: number, offset: string) =>
      new Promise<void>((res, rej) => {
        const p = spawn(
          'fio',
          [
            '--name=l',
            '--ioengine=nbd',
            `--uri=${agent.uri('V1')}`,
            '--rw=randwrite',
            '--bs=64k',
            '--iodepth=8',
            '--size=16m',
            `--offset=${offset}`,
            '--time_based',
            `--runtime=${seconds}`,
            '--rate=8m',
          ],
          { stdio: 'ignore' },
        );
        p.on('exit', (c) => (c === 0 ? res() : rej(new Error(`fio exited ${c}`))));
      });
    const syncBytes = async () => (await hub.volume('V1')).syncBytes as number;

    // 1. hub stopped (SIGTERM) while fio writes; the VM's writes keep completing.
    let load = fio(3, '0');
    await new Promise((r) => setTimeout(r, 500));
    await hub.stop();
    await load; // fio finished: the local disk never stalled on the missing hub
    await hub.start();
    await converged();
    const s1 = await syncBytes();
    assert.ok(s1 <= 16 * MiB, `resync after hub stop: ${s1} bytes, at most the 16 MiB fio touched`);
    process.stdout.write(`      hub stopped: resynced ${s1} bytes (fio range 16 MiB)\n`);

    // 2. hub kill -9 under load
    load = fio(2, '16m');
    await new Promise((r) => setTimeout(r, 500));
    await hub.kill9();
    await load;
    await hub.start();
    await converged();
    const s2 = await syncBytes();
    assert.ok(s2 <= 16 * MiB, `resync after hub kill -9: ${s2} bytes`);
    process.stdout.write(`      hub kill -9: resynced ${s2} bytes (fio range 16 MiB)\n`);

    // 3. agent kill -9 right after writes, restart from its persisted dirty log
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 40M 2M', agent.uri('V1')]);
    await agent.kill9();
    await agent.start();
    await converged();
    const s3 = (await syncBytes()) - s2;
    process.stdout.write(`      agent kill -9: resynced ${s3} bytes after restart\n`);

    // 4. link cut with writes while apart, via a proxy
    await agent.stop();
    const proxy = new CutProxy(hub.port);
    const pport = await proxy.listen();
    agent = v1Agent(dir, img, pport);
    await agent.start();
    await converged();
    const before = await syncBytes();
    proxy.cut();
    await waitFor('degraded', async () => (await hub.volume('V1')).state === 'degraded');
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 48M 4M', '-c', 'write -P 0x34 60M 1M', agent.uri('V1')]);
    proxy.restore();
    await converged();
    const moved = (await syncBytes()) - before;
    process.stdout.write(`      link cut: 5 MiB written while apart, ${moved} bytes resynced\n`);
    assert.ok(
      moved >= 5 * MiB && moved <= 5 * MiB + 2 * 64 * 1024,
      `resynced ${moved} bytes for 5 MiB written while apart`,
    );
    await agent.stop();
    proxy.close();
  });
});
