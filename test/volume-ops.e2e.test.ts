// Volume operations end to end (issue 18): `rephub volume pause|resume|remove` on a real hub
// process with a real agent process serving two images, written by qemu-io over NBD; and the
// hub's addVolume (the config reload's) with a real agent connected. Each ends byte-equal.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { tmpdir, makeImage, sha, waitFor } from './harness/util';
import { CLI, HubProcess } from './harness/hub-process';
import { AgentProcess } from './harness/agent-process';
import { Hub } from '../src/hub/hub';
import { LmdbStateStore } from '../storage/state';
import { makeLogger } from '../src/log';

const MiB = 1 << 20;
const qemuIo = (uri: string, ...cmds: string[]) =>
  execFileSync('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { timeout: 60_000 });

describe('volume operations: pause, resume, remove, add', function () {
  this.timeout(300_000);
  let dir: string, hub: HubProcess, agent: AgentProcess;
  const img = (n: string) => path.join(dir, `${n}.img`);
  const rep = (n: string) => path.join(dir, `${n}R`);

  /** `rephub volume ...` as an operator runs it: exit status, stdout, stderr. */
  function cli(args: string[], token: string | null = hub.adminTokenFile) {
    const env = { ...process.env };
    if (token) env.REPHUB_ADMIN_TOKEN_FILE = token;
    else env.REPHUB_ADMIN_TOKEN_FILE = path.join(dir, 'no-such-token');
    const r = spawnSync(process.execPath, [CLI, 'volume', ...args, '--hub', `http://${hub.http}`], {
      encoding: 'utf8',
      env,
      timeout: 60_000,
    });
    return { code: r.status, out: r.stdout, err: r.stderr };
  }

  beforeEach(async () => {
    dir = tmpdir();
    for (const n of ['V1', 'V2']) makeImage(img(n), 16 * MiB, 0.5);
    hub = new HubProcess(['--vol', `V1=${rep('V1')}`, '--vol', `V2=${rep('V2')}`, '--data', path.join(dir, 'hub')]);
    await hub.start();
    agent = new AgentProcess([
      '--hub',
      `127.0.0.1:${hub.port}`,
      '--export',
      `V1=${img('V1')}`,
      '--export',
      `V2=${img('V2')}`,
      '--state',
      path.join(dir, 'agent'),
      '--vm',
      'vm1',
    ]);
    await agent.start();
    await hub.converged('V1', img('V1'), rep('V1'));
    await hub.converged('V2', img('V2'), rep('V2'));
  });
  afterEach(async () => {
    await agent.stop();
    await hub.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('pause: writes are held as dirty regions (recovery untouched, across a hub restart); resume converges', async () => {
    const r = cli(['pause', 'V1']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^V1\tpaused\t/);
    const before = sha(rep('V1'));
    qemuIo(agent.uri('V1'), 'write -P 0x5a 1M 2M', 'flush');
    qemuIo(agent.uri('V2'), 'write -P 0x6b 3M 1M', 'flush');
    await hub.converged('V2', img('V2'), rep('V2')); // the other volume goes on
    const v = await waitFor('V1 dirty while paused', async () => {
      const s = await hub.volume('V1');
      return s.dirtyBytes >= 2 * MiB && s;
    });
    assert.equal(v.state, 'paused');
    assert.equal(sha(rep('V1')), before, 'a paused volume is not written');
    assert.notEqual(sha(img('V1')), before);
    assert.equal(cli(['pause', 'V1']).code !== 0, true, 'pausing twice is refused');

    await hub.stop(); // the pause and the held regions survive a restart
    await hub.start();
    await waitFor('agent back', async () => (await hub.status()).agents.length === 1);
    qemuIo(agent.uri('V1'), 'write -P 0x77 9M 1M', 'flush');
    await waitFor('V1 dirty after restart', async () => (await hub.volume('V1')).dirtyBytes >= 3 * MiB);
    assert.equal((await hub.volume('V1')).state, 'paused');
    assert.equal(sha(rep('V1')), before, 'still not written after the restart');
    const synced0 = (await hub.volume('V1')).syncBytes;

    const res = cli(['resume', 'V1']);
    assert.equal(res.code, 0, res.err);
    await hub.converged('V1', img('V1'), rep('V1'));
    const moved = (await hub.volume('V1')).syncBytes - synced0;
    assert.ok(moved >= 3 * MiB && moved <= 4 * MiB, `resync moved ${moved} bytes for 3 MiB written while paused`);
    assert.notEqual(cli(['resume', 'V1']).code, 0, 'resuming a volume that is not paused is refused');
  });

  it('remove: the agent stops mirroring it, the other volume goes on, the recovery file is kept', async () => {
    const session = (await hub.status()).agents[0].session;
    const kept = sha(rep('V2'));
    const r = cli(['remove', 'V2']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /V2\tremoved; recovery volume kept at /);
    qemuIo(agent.uri('V2'), 'write -P 0x11 0 4M', 'flush');
    qemuIo(agent.uri('V1'), 'write -P 0x22 2M 2M', 'flush');
    await hub.converged('V1', img('V1'), rep('V1'));
    const st = await hub.status();
    assert.deepEqual(
      st.volumes.map((v: any) => v.name),
      ['V1'],
    );
    assert.equal(st.agents.length, 1);
    assert.equal(st.agents[0].session, session, 'the agent session was not disrupted');
    assert.deepEqual(st.agents[0].volumes, ['V1']);
    assert.equal(sha(rep('V2')), kept, 'the recovery file is untouched');
    const a = await agent.status();
    assert.equal(a.volumes.find((v: any) => v.name === 'V2').volumeId, -1, 'the agent no longer mirrors V2');
    assert.ok(a.volumes.find((v: any) => v.name === 'V2').dirtyBytes >= 4 * MiB, 'its dirty log keeps the writes');
    assert.match(hub.logTail(200), /volume removed from protection; its recovery volume is kept on disk untouched/);
    const again = cli(['remove', 'V2']);
    assert.notEqual(again.code, 0);
    assert.match(again.err, /no volume V2 on this hub/);
  });

  it('resize: the image grew underneath; the replica grows online, only the new space syncs; shrink refused', async () => {
    const synced0 = (await hub.volume('V1')).syncBytes;
    fs.truncateSync(img('V1'), 24 * MiB); // as `qemu-img resize` of a raw image does
    const r = cli(['resize', 'V1']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^V1\t\w+\tgrew from 16777216 to 25165824 bytes/);
    await hub.converged('V1', img('V1'), rep('V1'));
    const v = await hub.volume('V1');
    assert.equal(v.sizeBytes, 24 * MiB);
    assert.equal(v.syncBytes - synced0, 8 * MiB, 'only the new 8 MiB were synced');
    // New NBD connections see the new size; writes to the new space are mirrored.
    qemuIo(agent.uri('V1'), 'write -P 0x3c 20M 2M', 'write -P 0x3d 1M 64k', 'flush');
    await hub.converged('V1', img('V1'), rep('V1'));
    assert.equal((await hub.volume('V1')).syncBytes - synced0, 8 * MiB, 'mirrored, not resynced');
    assert.equal(fs.statSync(rep('V1')).size, 24 * MiB);
    const same = cli(['resize', 'V1']);
    assert.notEqual(same.code, 0);
    assert.match(same.err, /did not grow/);
    fs.truncateSync(img('V2'), 8 * MiB);
    const shrink = cli(['resize', 'V2']);
    assert.notEqual(shrink.code, 0);
    assert.match(
      shrink.err,
      /cannot shrink volume V2: its image is 8388608 bytes, the protected volume 16777216 bytes/,
    );
    assert.equal((await hub.volume('V2')).sizeBytes, 16 * MiB);
    assert.equal((await hub.volume('V1')).state, 'protecting');
  });

  it('every operation needs the admin token; unknown volumes and bad states are refused with a clear error', async () => {
    for (const op of ['pause', 'resume', 'remove', 'resize']) {
      const r = cli([op, 'V1'], null);
      assert.notEqual(r.code, 0, `${op} without a token`);
      assert.match(r.err, /admin token file/);
      // No body: the gate answers before reading one and closes the connection, which could cut a body in flight.
      const bad = await hub.postRaw(`/volume/${op}`, '', {
        authorization: 'Bearer wrong',
        'content-type': 'application/json',
      });
      assert.equal(bad.status, 401);
      const unknown = cli([op, 'V9']);
      assert.notEqual(unknown.code, 0);
      assert.match(unknown.err, /no volume V9 on this hub \(volumes: V1, V2\)/);
    }
    assert.equal((await hub.post('/volume/pause', {})).status, 400);
    assert.equal((await hub.volume('V1')).state, 'protecting', 'nothing changed');
    assert.match(hub.logTail(200), /"action":"\/volume\/pause".*no volume V9/);
  });
});

describe('volume operations: addVolume while an agent is connected', function () {
  this.timeout(120_000);

  it('an added volume is offered to the connected agent at once and converges', async () => {
    const dir = tmpdir();
    const imgs = ['V1', 'V2'].map((n) => path.join(dir, `${n}.img`));
    for (const f of imgs) makeImage(f, 8 * MiB, 0.5);
    const hub = new Hub({
      volumes: [{ name: 'V1', path: path.join(dir, 'V1R') }],
      store: new LmdbStateStore(path.join(dir, 'hub')),
      log: makeLogger('hub', 'silent'),
    });
    const { port } = await hub.listen('127.0.0.1', 0);
    const agent = new AgentProcess([
      '--hub',
      `127.0.0.1:${port}`,
      '--export',
      `V1=${imgs[0]}`,
      '--export',
      `V2=${imgs[1]}`,
      '--state',
      path.join(dir, 'agent'),
      '--vm',
      'vm1',
      '--log-level',
      'error',
    ]);
    try {
      await agent.start();
      await waitFor('V1 protecting', () => hub.replicas.get('V1')!.state === 'protecting');
      assert.equal(hub.replicas.has('V2'), false);
      const added = await hub.addVolume({ name: 'V2', path: path.join(dir, 'V2R') });
      assert.deepEqual(added, { name: 'V2', attached: true }); // no wait for the agent's retry backoff
      await waitFor('V2 protecting', () => hub.replicas.get('V2')!.state === 'protecting', 60_000);
      await waitFor('V2 byte-equal', () => sha(imgs[1]) === sha(path.join(dir, 'V2R')));
      await assert.rejects(hub.addVolume({ name: 'V2', path: path.join(dir, 'other') }), /already configured/);
      const removed = await hub.removeVolume('V2');
      assert.equal(removed.recovery, path.join(dir, 'V2R'));
      assert.equal(hub.replicas.has('V2'), false);
      assert.equal(hub.replicas.get('V1')!.state, 'protecting');
    } finally {
      await agent.stop();
      await hub.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
