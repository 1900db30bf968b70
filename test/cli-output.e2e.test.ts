// What the CLIs print: `rephub-agent status` names a refused volume's state and the hub's
// reason; and every printing subcommand piped into a reader that is already gone ends quietly
// (status 0, nothing on stderr) instead of crashing with EPIPE.
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { v1Hub, HubProcess, CLI } from './harness/hub-process';
import { AgentProcess, AGENT_CLI } from './harness/agent-process';
import { tmpdir, makeImage, waitFor, MiB } from './harness/util';

describe('CLI output (e2e)', function () {
  this.timeout(120_000);
  let hub: HubProcess, agent: AgentProcess;
  after(async () => {
    await agent?.stop();
    await hub?.stop();
  });

  before(async () => {
    const dir = tmpdir();
    for (const v of ['v1', 'v2']) makeImage(path.join(dir, `${v}.img`), 4 * MiB, 0.5);
    hub = v1Hub(dir, path.join(dir, 'v1r.img'));
    await hub.start();
    agent = new AgentProcess([
      ...['--hub', `127.0.0.1:${hub.port}`, '--vm', 'vm1', '--state', path.join(dir, 'agent')],
      ...['--export', `V1=${path.join(dir, 'v1.img')}`, '--export', `V2=${path.join(dir, 'v2.img')}`],
    ]);
    await agent.start();
    await waitFor('V2 refused', async () => (await agent.status()).volumes[1].state === 'refused', 30_000, 50);
  });

  it('rephub-agent status shows a refused volume as refused, with the reason', () => {
    const r = spawnSync(process.execPath, [AGENT_CLI, 'status', '--agent', `http://127.0.0.1:${agent.httpPort}`]);
    const out = r.stdout.toString();
    assert.equal(r.status, 0, r.stderr.toString());
    assert.match(out, /^V2\s+refused\s+-\s/m);
    assert.match(out, /^V2 refused at \S+: volume V2: the hub has no recovery volume of that name$/m);
    assert.doesNotMatch(out, /\s-1\s/);
  });

  it('every printing subcommand ends quietly when its reader is gone (EPIPE)', () => {
    const hubUrl = `http://${hub.http}`;
    const runs = [
      [CLI, 'status', '--hub', hubUrl],
      [CLI, 'status', '--hub', hubUrl, '--json'],
      [CLI, 'checkpoints', '--hub', hubUrl],
      [CLI, 'events', '--hub', hubUrl],
      [CLI, 'verify', '--hub', hubUrl, '--admin-token-file', hub.adminTokenFile],
      [AGENT_CLI, 'status', '--agent', `http://127.0.0.1:${agent.httpPort}`],
    ];
    for (const args of runs) {
      const cmd = [process.execPath, ...args].map((a) => `'${a}'`).join(' ');
      // `true` exits before node has started: every write of the CLI meets a closed pipe
      const r = spawnSync('bash', ['-o', 'pipefail', '-c', `${cmd} | true`], { timeout: 30_000 });
      assert.equal(r.status, 0, `${args[1]} ${args[2]}: ${r.stderr}`);
      assert.equal(r.stderr.toString(), '', `${args[1]}: nothing on stderr`);
    }
  });
});
