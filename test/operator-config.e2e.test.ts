// The daemons' config file and start-up checks, end to end with real hub and agent processes:
// bad --vol paths, region size, --data and key files fail before anything listens, exit 2 with
// one line naming the flag (or the key and the file); a TOML file drives a hub and an agent to
// `protecting`; flags win over the file; `config check` says OK or lists every problem;
// --log-level wins over LOG_LEVEL, which wins over the default.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { tmpdir, makeImage } from './harness/util';
import { HubProcess, CLI } from './harness/hub-process';
import { AgentProcess, AGENT_CLI } from './harness/agent-process';
import { freePort } from './harness/ports';

const MiB = 1 << 20;
const NOBODY = 65534;

/** A CLI run to its exit (killed after 15 s: a daemon that started when it should not have). */
function run(
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; uid?: number } = {},
): Promise<{ status: number | null; out: string; err: string }> {
  const asNobody = opts.uid !== undefined && process.getuid?.() === 0;
  const p = spawn(process.execPath, args, {
    env: opts.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(asNobody ? { uid: opts.uid, gid: opts.uid } : {}),
  });
  let out = '',
    err = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (err += d));
  const timer = setTimeout(() => p.kill('SIGKILL'), 15_000);
  return new Promise((resolve) =>
    p.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, out, err });
    }),
  );
}

/** True if something accepts TCP connections on `port`. */
function listening(port: number): Promise<boolean> {
  return new Promise((r) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.destroy();
      r(true);
    });
    s.on('error', () => r(false));
  });
}

describe('config file and start-up checks (real processes)', function () {
  this.timeout(180_000);
  let dir: string;
  const ports: { listen: number; http: number; nbd: number } = { listen: 0, http: 0, nbd: 0 };

  beforeEach(async () => {
    dir = tmpdir();
    fs.chmodSync(dir, 0o755); // the runs as nobody must reach into it
    ports.listen = await freePort();
    ports.http = await freePort();
    ports.nbd = await freePort();
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const addr = () => [
    '--listen',
    `127.0.0.1:${ports.listen}`,
    '--http',
    `127.0.0.1:${ports.http}`,
    '--nbd',
    `127.0.0.1:${ports.nbd}`,
  ];

  /** A hub that must refuse to start: exit 2, the lines on stderr, nothing listening. */
  async function refused(args: string[], uid?: number): Promise<string> {
    const r = await run([CLI, ...addr(), ...args], { uid });
    assert.equal(r.status, 2, r.err);
    assert.doesNotMatch(r.err, /rephub listening/);
    assert.equal(await listening(ports.listen), false, 'nothing listens on --listen');
    assert.equal(await listening(ports.http), false, 'nothing listens on --http');
    return r.err;
  }

  it('a --vol in a missing directory, a --vol that is a directory, a bad --region-size: exit 2 naming each', async () => {
    fs.mkdirSync(path.join(dir, 'adir'));
    const data = ['--data', path.join(dir, 'hub')];
    let err = await refused(['--vol', `V1=${path.join(dir, 'nodir', 'V1R')}`, ...data]);
    assert.match(err, new RegExp(`--vol V1=.*nodir/V1R: cannot create .*: directory ${dir}/nodir does not exist`));
    err = await refused(['--vol', `V1=${path.join(dir, 'adir')}`, ...data]);
    assert.match(err, new RegExp(`--vol V1=${dir}/adir: ${dir}/adir is a directory`));
    err = await refused(['--vol', `V1=${path.join(dir, 'V1R')}`, '--region-size', '3K', ...data]);
    assert.match(err, /--region-size 3K: a power of two/);
    // several problems at once: one line each
    err = await refused(['--vol', `V1=${path.join(dir, 'adir')}`, '--region-size', 'huge', ...data]);
    assert.equal(err.trim().split('\n').length, 2, err);
    assert.ok(!fs.existsSync(path.join(dir, 'hub', 'data.mdb')), 'no state store was created');
  });

  it('a read-only --vol, a --data the hub cannot create: exit 2 naming the flag and the path', async () => {
    // root passes every permission check: run the hub as nobody then, else as ourselves
    const as = process.getuid?.() === 0 ? NOBODY : undefined;
    const ro = path.join(dir, 'ro-V1R');
    fs.writeFileSync(ro, Buffer.alloc(MiB));
    fs.chmodSync(ro, 0o444);
    const hubDir = path.join(dir, 'hubdir');
    fs.mkdirSync(hubDir, { mode: 0o777 });
    fs.chmodSync(hubDir, 0o777);
    let err = await refused(['--vol', `V1=${ro}`, '--data', path.join(hubDir, 'd')], as);
    assert.match(err, new RegExp(`--vol V1=${ro}: ${ro} cannot be opened read-write: EACCES`));
    const locked = path.join(dir, 'locked');
    fs.mkdirSync(locked);
    fs.chmodSync(locked, 0o555); // nobody may create in it, its owner neither
    err = await refused(['--vol', `V1=${path.join(hubDir, 'V1R')}`, '--data', path.join(locked, 'data')], as);
    assert.match(err, new RegExp(`--data: state directory ${locked}/data is not usable: EACCES`));
  });

  it('a bad TLS key or certificate: exit 2 naming the flag and the file, not only OpenSSL', async () => {
    const bad = path.join(dir, 'bad.pem');
    fs.writeFileSync(bad, 'not a key\n');
    const err = await refused([
      '--vol',
      `V1=${path.join(dir, 'V1R')}`,
      '--data',
      path.join(dir, 'hub'),
      '--tls-key',
      bad,
      '--tls-cert',
      bad,
      '--tls-ca',
      bad,
    ]);
    assert.match(err, new RegExp(`--tls-key ${bad}: not a PEM private key`));
    assert.match(err, new RegExp(`--tls-cert ${bad}: not a PEM certificate`));
    const missing = await refused([
      '--vol',
      'V1R',
      '--data',
      path.join(dir, 'hub'),
      '--psk-file',
      path.join(dir, 'none'),
    ]);
    assert.match(missing, new RegExp(`--psk-file ${dir}/none: ENOENT`));
  });

  it('the agent: a missing --export image or a bad region size exits 2 before listening', async () => {
    const nbd = await freePort();
    const r = await run([
      AGENT_CLI,
      '--nbd',
      `127.0.0.1:${nbd}`,
      '--http',
      'off',
      '--export',
      `V1=${path.join(dir, 'nope.img')}`,
      '--region-size',
      '5K',
      '--state',
      path.join(dir, 'st'),
    ]);
    assert.equal(r.status, 2, r.err);
    assert.match(r.err, /--export V1=.*nope\.img: .*nope\.img does not exist/);
    assert.match(r.err, /--region-size 5K: a power of two/);
    assert.equal(await listening(nbd), false);
  });

  it('an address in use: the hub and the agent exit 3 naming the flag and the address', async () => {
    const busy = net.createServer().listen(ports.listen, '127.0.0.1');
    await new Promise((r) => busy.once('listening', r));
    try {
      const r = await run([CLI, ...addr(), '--vol', `V1=${path.join(dir, 'V1R')}`, '--data', path.join(dir, 'hub')]);
      assert.equal(r.status, 3, r.err);
      assert.match(r.err, new RegExp(`^rephub: --listen 127.0.0.1:${ports.listen}: .*EADDRINUSE`, 'm'));
      const img = path.join(dir, 'A.img');
      makeImage(img, MiB, 0);
      const a = await run([
        AGENT_CLI,
        '--nbd',
        `127.0.0.1:${ports.listen}`,
        '--http',
        'off',
        '--export',
        `V1=${img}`,
        '--state',
        path.join(dir, 'ast'),
      ]);
      assert.equal(a.status, 3, a.err);
      assert.match(a.err, new RegExp(`^rephub-agent: --nbd 127.0.0.1:${ports.listen}: .*EADDRINUSE`, 'm'));
    } finally {
      busy.close();
    }
  });

  it('a TOML config drives a hub and an agent to protecting; flags win over the file', async () => {
    const img = path.join(dir, 'V1.img');
    const rep = path.join(dir, 'V1R');
    makeImage(img, 8 * MiB, 0.5);
    const hubToml = path.join(dir, 'hub.toml');
    // listen/http/nbd in the file are overridden by HubProcess's flags; region-size by ours
    fs.writeFileSync(
      hubToml,
      [
        'listen = "127.0.0.1:1"',
        'http = "127.0.0.1:1"',
        `vol = ["V1=${rep}"]`,
        `data = "${path.join(dir, 'hubdata')}"`,
        'region-size = "3K" # invalid: the flag must win',
        'commit-interval = 2',
        'journal = false',
        'log-level = "info"',
      ].join('\n') + '\n',
    );
    const hub = new HubProcess(['--config', hubToml, '--region-size', '128K']);
    await hub.start();
    const agentToml = path.join(dir, 'agent.toml');
    fs.writeFileSync(
      agentToml,
      [
        `hub = "127.0.0.1:${hub.port}"`,
        `export = ["V1=${img}"]`,
        `state = "${path.join(dir, 'agent')}"`,
        'vm = "vm1"',
        'max-queue = "16M"',
      ].join('\n') + '\n',
    );
    const agent = new AgentProcess(['--config', agentToml]);
    try {
      await agent.start();
      await hub.converged('V1', img, rep);
      const v = await hub.volume('V1');
      assert.equal(v.regionSize, 128 * 1024, 'the --region-size flag won over the file');
      assert.ok(fs.existsSync(path.join(dir, 'hubdata', 'rephub.lock')), 'data from the file');
      assert.ok(fs.existsSync(path.join(dir, 'agent')), 'state from the file');
      assert.equal((await hub.status()).journals, undefined, 'journal = false from the file');
      assert.match(hub.stderr, new RegExp(`"config":"${hubToml}"`));
      assert.match(hub.stderr, new RegExp(`"data":"${path.join(dir, 'hubdata')}"`), 'the absolute data path is logged');
    } finally {
      await agent.stop();
      await hub.stop();
    }
  });

  it('config check: OK for a good file; every problem, one line each naming key and file, for a bad one', async () => {
    const good = path.join(dir, 'good.toml');
    fs.writeFileSync(good, `vol = ["V1=${path.join(dir, 'V1R')}"]\ndata = "${path.join(dir, 'd')}"\n`);
    let r = await run([CLI, 'config', 'check', good]);
    assert.equal(r.status, 0, r.out + r.err);
    assert.match(r.out, /good\.toml: OK \(1 volumes\)/);
    assert.ok(!fs.existsSync(path.join(dir, 'd')), 'check creates nothing');
    const bad = path.join(dir, 'bad.toml');
    fs.writeFileSync(
      bad,
      `vol = ["V1=${path.join(dir, 'nodir', 'V1R')}"]\nregion-size = "5K"\nregion_size = "4K"\nlisten = 7000\ncache = true\n`,
    );
    r = await run([CLI, 'config', 'check', bad]);
    assert.equal(r.status, 2, r.out);
    const lines = r.out.trim().split('\n');
    assert.equal(lines.length, 5, r.out);
    for (const l of lines) assert.match(l, new RegExp(`in ${bad}`), l);
    assert.match(r.out, new RegExp(`^region_size in ${bad}: unknown key \\(did you mean region-size\\?\\)$`, 'm'));
    assert.match(r.out, new RegExp(`^cache in ${bad}: expected a string or a number$`, 'm'));
    assert.match(r.out, new RegExp(`^vol in ${bad} V1=.*: directory .*nodir does not exist$`, 'm'));
    assert.match(r.out, new RegExp(`^region-size in ${bad} 5K: a power of two`, 'm'));
    assert.match(r.out, new RegExp(`^listen in ${bad}: expected HOST:PORT`, 'm'));
    fs.writeFileSync(bad, 'vol = [\n');
    r = await run([CLI, 'config', 'check', bad]);
    assert.equal(r.status, 2);
    assert.match(r.out, new RegExp(`--config ${bad}:\\d+: not valid TOML`));
    // the agent's, both ways
    const img = path.join(dir, 'A.img');
    makeImage(img, MiB, 0);
    const agood = path.join(dir, 'agent.toml');
    fs.writeFileSync(agood, `export = ["V1=${img}"]\nstate = "${path.join(dir, 'ast')}"\n`);
    r = await run([AGENT_CLI, 'config', 'check', agood]);
    assert.equal(r.status, 0, r.out);
    r = await run([AGENT_CLI, '--config', agood, '--check', '--region-size', '7K']);
    assert.equal(r.status, 2, r.out);
    assert.match(r.out, /^--region-size 7K: a power of two/m);
    fs.writeFileSync(agood, `export = ["V1=${path.join(dir, 'none.img')}"]\nhub = "nohost"\n`);
    r = await run([AGENT_CLI, 'config', 'check', agood]);
    assert.equal(r.status, 2, r.out);
    assert.match(r.out, new RegExp(`^export in ${agood} V1=.*none\\.img does not exist`, 'm'));
    assert.match(r.out, new RegExp(`^hub in ${agood}: expected HOST:PORT`, 'm'));
  });

  it('without --data the hub keeps its state in $STATE_DIRECTORY (systemd) and logs the absolute path', async () => {
    const state = path.join(dir, 'state');
    fs.mkdirSync(state);
    const hub = new HubProcess(['--vol', `V1=${path.join(dir, 'V1R')}`]);
    process.env.STATE_DIRECTORY = state;
    try {
      await hub.start();
    } finally {
      delete process.env.STATE_DIRECTORY;
    }
    await hub.stop();
    assert.ok(fs.existsSync(path.join(state, 'rephub.lock')), 'the lock is under $STATE_DIRECTORY');
    assert.ok(fs.existsSync(path.join(state, 'admin-token')));
    assert.match(hub.stderr, new RegExp(`"data":"${state}".*"msg":"rephub listening"`));
  });

  it('--log-level wins over LOG_LEVEL, LOG_LEVEL over the default', async () => {
    const vol = ['--vol', `V1=${path.join(dir, 'V1R')}`, '--data', path.join(dir, 'hub')];
    const started = async (env: NodeJS.ProcessEnv, extra: string[]) => {
      const hub = new HubProcess([...vol, ...extra]);
      const old = { ...process.env };
      Object.assign(process.env, env);
      try {
        await hub.start();
      } finally {
        for (const k of Object.keys(env)) if (old[k] === undefined) delete process.env[k];
      }
      await hub.stop();
      return hub.stderr;
    };
    assert.match(await started({ LOG_LEVEL: 'warn' }, ['--log-level', 'info']), /rephub listening/);
    assert.doesNotMatch(await started({ LOG_LEVEL: 'warn' }, []), /rephub listening/);
    assert.match(await started({ LOG_LEVEL: 'info' }, ['--log-level', 'debug']), /"level":20/);
  });
});
