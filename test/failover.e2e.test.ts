// Failover test, failover and failback end to end: hub and agent as processes, real NBD
// clients on both the agent's and the hub's exports, a tiny VM launched on the test export,
// and hub kill -9 in the middle of a test and of a failover.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { sha, waitFor, readRegion } from './harness/util';
import { startProtectedPair } from './harness/pair';
import { HubProcess, CLI } from './harness/hub-process';
import { AgentProcess } from './harness/agent-process';

const MiB = 1 << 20;
const run = (cmd: string, args: string[], timeout = 120_000) =>
  execFileSync(cmd, args, { timeout, stdio: ['ignore', 'pipe', 'pipe'] }).toString();
const qio = (uri: string, ...cmds: string[]) => run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri]);
function copyOut(uri: string, file: string): string {
  run('nbdcopy', [uri, file]);
  return sha(file);
}
describe('failover test, failover and failback', function () {
  this.timeout(300_000);
  let dir: string, hub: HubProcess, agent: AgentProcess, img: string, rep: string;
  const size = 32 * MiB;
  const hubUri = (n: string) => `nbd://127.0.0.1:${hub.nbdPort}/${n}`;
  async function converged() {
    await hub.converged('V1', img, rep, 60_000);
  }

  beforeEach(async () => {
    ({ dir, img, rep, hub, agent } = await startProtectedPair(size));
  });
  afterEach(async () => {
    await agent.stop();
    await hub.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('failover test under a live writer: the view stays frozen, test writes stay in the view, replication converges, stop leaves no trace', async () => {
    qio(agent.uri('V1'), 'write -P 0xa1 4M 1M'); // pattern A at 4M before the freeze
    await converged();
    // a writer that keeps writing through the agent during the whole test (16M..32M)
    const writer = spawn(
      'fio',
      [
        '--name=w',
        '--ioengine=nbd',
        `--uri=${agent.uri('V1')}`,
        '--rw=randwrite',
        '--bs=64k',
        '--iodepth=4',
        '--offset=16m',
        '--size=16m',
        '--time_based',
        '--runtime=4',
        '--rate=4m',
      ],
      { stdio: 'ignore' },
    );
    const writerDone = new Promise((r) => writer.on('exit', r));
    await new Promise((r) => setTimeout(r, 300));

    const started = await hub.post('/failover-test/start');
    assert.equal(started.status, 200, JSON.stringify(started.body));
    assert.deepEqual(started.body.volumes, [{ name: 'V1', uri: hubUri('V1'), checkpoint: null }]); // the present
    const again = await hub.post('/failover-test/start');
    assert.equal(again.status, 409, 'a second test is refused');

    const t1 = copyOut(hubUri('V1'), path.join(dir, 'view1.raw'));
    qio(agent.uri('V1'), 'write -P 0xb2 4M 1M'); // pattern B at 4M after the freeze
    qio(hubUri('V1'), 'write -P 0xc3 8M 512k'); // the test VM writes to the view
    await writerDone;
    await converged(); // replication went on: recovery == protected during the test

    assert.ok(
      readRegion(rep, 4 * MiB, MiB).equals(Buffer.alloc(MiB, 0xb2)),
      'recovery volume has the post-freeze write',
    );
    assert.ok(
      !readRegion(rep, 8 * MiB, 512 * 1024).equals(Buffer.alloc(512 * 1024, 0xc3)),
      'test writes never reach the recovery volume',
    );
    assert.ok(
      !readRegion(img, 8 * MiB, 512 * 1024).equals(Buffer.alloc(512 * 1024, 0xc3)),
      'test writes never reach the protected volume',
    );
    const v2 = path.join(dir, 'view2.raw');
    copyOut(hubUri('V1'), v2);
    assert.ok(
      readRegion(v2, 4 * MiB, MiB).equals(Buffer.alloc(MiB, 0xa1)),
      'the view still shows the pre-freeze content',
    );
    assert.ok(
      readRegion(v2, 8 * MiB, 512 * 1024).equals(Buffer.alloc(512 * 1024, 0xc3)),
      'the view shows the test writes',
    );
    // everything else in the view is exactly the frozen content
    const a = fs.readFileSync(path.join(dir, 'view1.raw')),
      b = fs.readFileSync(v2);
    b.fill(0, 8 * MiB, 8 * MiB + 512 * 1024);
    a.fill(0, 8 * MiB, 8 * MiB + 512 * 1024);
    assert.ok(a.equals(b), 'view frozen outside the test-written range');
    assert.notEqual(t1, sha(img), 'the protected volume moved on meanwhile');

    // hub kill -9 in the middle of the test: the view and its layers survive
    await hub.kill9();
    await hub.start();
    const v3 = path.join(dir, 'view3.raw');
    copyOut(hubUri('V1'), v3);
    assert.equal(sha(v3), sha(v2), 'the same view after a hub restart');
    await converged();

    const stopped = await hub.post('/failover-test/stop');
    assert.equal(stopped.status, 200, JSON.stringify(stopped.body));
    assert.ok(stopped.body.volumes[0].keptBytes > 0);
    assert.throws(() => run('nbdinfo', [hubUri('V1')]), 'the export is gone');
    assert.deepEqual(fs.readdirSync(path.join(dir, 'hub', 'layers', 'test')), [], 'layers discarded');
    assert.equal((await hub.status()).failoverTest, null);
    await converged();
  });

  it('a tiny Linux VM launched with --launch on the test export writes through its kernel; the protected side is untouched', async () => {
    const before = sha(img);
    const out = run(
      process.execPath,
      [
        CLI,
        'failover-test',
        'start',
        '--hub',
        `http://127.0.0.1:${hub.httpPort}`,
        '--admin-token-file',
        hub.adminTokenFile,
        '--launch',
        `bash ${path.join(__dirname, '../../tools/tiny-vm.sh')} {V1} rephub-ft 4`,
      ],
      280_000,
    );
    assert.match(out, /PASS/);
    assert.equal(sha(img), before, 'protected volume untouched');
    assert.equal(sha(rep), before, 'recovery volume untouched');
    assert.equal((await hub.post('/failover-test/stop')).status, 200);
  });

  it('failover, writes on the recovery side, hub restart, failback moves only changed regions', async () => {
    assert.equal((await hub.post('/failover')).status, 409, 'refused while the protected site is connected');
    // nothing unacked, and the log file says so too (hot regions stay dirty there for up to two
    // log syncs): a kill -9 now leaves no false divergence
    await waitFor(
      'agent log clean',
      async () => (await agent.clean()) && (await agent.status()).volumes.every((v: any) => v.logDirtyBytes === 0),
    );
    await agent.kill9(); // the protected site dies
    await waitFor('hub saw the agent go', async () => (await hub.status()).agents.length === 0);
    const fo = await hub.post('/failover');
    assert.equal(fo.status, 200, JSON.stringify(fo.body));
    assert.equal((await hub.volume('V1')).state, 'failed-over');
    // the recovery VM runs; 8 MiB of WRITE_ZEROES goes through the bounded zero writer
    qio(hubUri('V1'), 'write -P 0xd4 2M 3M', 'write -P 0xd5 20M 64k', 'write -z 24M 8M', 'flush');
    await hub.kill9();
    await hub.start();
    assert.equal((await hub.volume('V1')).state, 'failed-over', 'still failed over after a restart');
    assert.equal((await hub.volume('V1')).failover.recoveryChangedBytes, 11 * MiB + 64 * 1024);

    await agent.start(); // the original site is back
    await waitFor('agent attached', async () => (await hub.status()).agents.some((a: any) => a.volumes.includes('V1')));
    const fb = await hub.post('/failback');
    assert.equal(fb.status, 200, JSON.stringify(fb.body));
    const moved = fb.body.volumes[0].movedBytes;
    process.stdout.write(
      `      failback: ${moved} bytes moved for ${11 * MiB + 64 * 1024} bytes changed on the recovery side\n`,
    );
    assert.equal(moved, 11 * MiB + 64 * 1024, 'only the changed regions move');
    await waitFor('byte-equal', () => sha(img) === sha(rep));
    assert.ok(readRegion(img, 2 * MiB, 3 * MiB).equals(Buffer.alloc(3 * MiB, 0xd4)));
    assert.ok(readRegion(img, 24 * MiB, 8 * MiB).equals(Buffer.alloc(8 * MiB)), 'the zeroed range came back as zeroes');
    await converged();
    qio(agent.uri('V1'), 'write -P 0xe6 0 1M'); // protection in the normal direction again
    await converged();
  });

  it('failback refuses when both sides diverged until the operator picks a winner', async () => {
    const fo = await hub.post('/failover', { force: true }); // split brain on purpose
    assert.equal(fo.status, 200);
    qio(hubUri('V1'), 'write -P 0x11 1M 1M');
    qio(agent.uri('V1'), 'write -P 0x22 10M 1M');
    await waitFor('protected change recorded', async () => (await hub.volume('V1')).failover.protectedChangedBytes > 0);
    const refused = await hub.post('/failback');
    assert.equal(refused.status, 409);
    assert.match(refused.body.error, /both sides changed/);
    const fb = await hub.post('/failback', { winner: 'recovery' });
    assert.equal(fb.status, 200, JSON.stringify(fb.body));
    await waitFor('byte-equal', () => sha(img) === sha(rep));
    assert.ok(readRegion(img, 1 * MiB, MiB).equals(Buffer.alloc(MiB, 0x11)), 'recovery side won');
    assert.ok(!readRegion(img, 10 * MiB, MiB).equals(Buffer.alloc(MiB, 0x22)), 'protected change was rolled back');
    await converged();
    void createHash;
  });
});
