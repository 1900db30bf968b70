// The installable package, as an operator gets it: `npm pack` of a clean checkout (no dist/, so
// the prepack build must make it), `npm install -g` of the tarball into a temporary prefix (a
// production install: no devDependencies), then the installed commands: --version, --help, and a
// hub and an agent from the installed bins on loopback until the volume is protecting. Also the
// systemd units the tarball ships, checked by `systemd-analyze verify` against the installed bins.
import { strict as assert } from 'node:assert';
import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { freePort } from './harness/ports';
import { endProcess } from './harness/child';
import { MiB, makeImage, sha, tmpdir, waitFor } from './harness/util';
import { HEAP_FLAGS } from '../src/cli/heap-flags';

const ROOT = path.join(__dirname, '..', '..');
const VERSION = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version as string;
// What a clean checkout does not have: build output, installs, local state.
const NOT_IN_CHECKOUT = new Set(['node_modules', 'dist', 'build', '.git', 'demo', 'rephub-data', 'rephub-agent-state']);

/** The environment without npm's own npm_* variables (set when the suite runs under `npm test`). */
function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)));
}

function npm(args: string[], cwd: string): string {
  const r = spawnSync('npm', args, { cwd, env: cleanEnv(), encoding: 'utf8', timeout: 240_000 });
  assert.equal(r.status, 0, `npm ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** Run an installed command; its stdout (asserting exit 0). */
function run(bin: string, args: string[]): string {
  const r = spawnSync(bin, args, { env: cleanEnv(), encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, `${path.basename(bin)} ${args.join(' ')} exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

describe('the npm package (npm pack, npm install -g, installed commands)', function () {
  this.timeout(300_000);
  let tmp: string;
  let tarball: string;
  let prefix: string;
  let pkgDir: string;
  const procs: ChildProcess[] = [];

  before(function () {
    tmp = tmpdir('rephub-pkg-');
    const src = path.join(tmp, 'checkout');
    fs.cpSync(ROOT, src, {
      recursive: true,
      filter: (f) => !NOT_IN_CHECKOUT.has(path.relative(ROOT, f).split(path.sep)[0]),
    });
    // The build tools of the checkout (typescript), as after `npm ci`; dist/ is not there.
    fs.symlinkSync(fs.realpathSync(path.join(ROOT, 'node_modules')), path.join(src, 'node_modules'));
    assert.equal(fs.existsSync(path.join(src, 'dist')), false);
    const name = npm(['pack', '--pack-destination', tmp, '--loglevel', 'warn'], src).trim().split('\n').pop()!;
    tarball = path.join(tmp, name);
    prefix = path.join(tmp, 'prefix');
    // --allow-scripts=rephub: npm 11 runs no package's install script unless approved; rephub's
    // builds the optional addon and must never fail the install.
    const installArgs = ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund'];
    npm([...installArgs, '--allow-scripts=rephub', '--loglevel', 'warn', tarball], tmp);
    pkgDir = path.join(prefix, 'lib', 'node_modules', 'rephub');
  });

  after(async () => {
    for (const p of procs) await endProcess(p, 'SIGTERM', 15_000);
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('ships the build and the product, not tests, CI or images', () => {
    const files = execFileSync('tar', ['tzf', tarball], { encoding: 'utf8' })
      .split('\n')
      .filter(Boolean)
      .map((f) => f.replace(/^package\//, ''));
    for (const f of [
      'dist/src/cli/rephub.js',
      'dist/src/cli/rephub-agent.js',
      'dist/src/cli/rephub-qemu.js',
      'dist/protocol/crc.js',
      'dist/storage/state.js',
      'dist/native/addon.js',
      'native/fileio.c',
      'binding.gyp',
      'LICENSE',
      'README.md',
      'docs/ARCHITECTURE.md',
      'contrib/systemd/rephub.service',
      'contrib/systemd/rephub-agent@.service',
    ])
      assert.ok(files.includes(f), `${f} is not in the tarball`);
    const stray = files.filter((f) => /^(dist\/)?(test|tools)\/|^\.ci\/|\.png$|\.ts$|\.map$|^src\//.test(f));
    assert.deepEqual(stray, [], 'tests, tools, CI, images, sources or maps in the tarball');
    assert.match(fs.readFileSync(path.join(pkgDir, 'LICENSE'), 'utf8'), /Apache License\s+Version 2\.0/);
  });

  it('installs the runtime dependencies only, pino-pretty among them', () => {
    const mods = path.join(pkgDir, 'node_modules');
    for (const dep of Object.keys(JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8')).dependencies))
      assert.ok(fs.existsSync(path.join(mods, dep, 'package.json')), `runtime dependency ${dep} not installed`);
    assert.ok(fs.existsSync(path.join(mods, 'pino-pretty')), 'pino-pretty (for --log-pretty) not installed');
    // The install script built the optional addon from the shipped sources, as it did for the
    // checkout (a machine without a compiler builds neither, and the install still succeeds).
    if (fs.existsSync(path.join(ROOT, 'build', 'Release', 'rephub_native.node')))
      assert.ok(fs.existsSync(path.join(pkgDir, 'build', 'Release', 'rephub_native.node')), 'addon not built');
    for (const dev of ['typescript', 'mocha', 'eslint'])
      assert.equal(fs.existsSync(path.join(mods, dev)), false, `devDependency ${dev} installed`);
  });

  it('gives rephub, rephub-agent and rephub-qemu with --version and --help', () => {
    const bin = (b: string) => path.join(prefix, 'bin', b);
    assert.equal(run(bin('rephub'), ['--version']).trim(), VERSION);
    assert.equal(run(bin('rephub-agent'), ['--version']).trim(), VERSION);
    assert.equal(run(bin('rephub-qemu'), ['--version']).trim(), VERSION);
    assert.match(run(bin('rephub-qemu'), ['--help']), /usage: rephub-qemu QEMU-BINARY/);
    assert.match(run(bin('rephub'), ['--help']), /Usage: rephub/);
  });

  it('runs a hub and an agent from the installed bins until the volume is protecting', async () => {
    const dir = path.join(tmp, 'run');
    fs.mkdirSync(dir);
    const img = path.join(dir, 'V1.img');
    makeImage(img, 8 * MiB, 0.5);
    const [port, http, hubNbd, nbd, agentHttp] = [
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    let hubErr = '';
    // --log-pretty: pino-pretty must load in a production install.
    const hub = spawn(
      path.join(prefix, 'bin', 'rephub'),
      [
        ...['--listen', `127.0.0.1:${port}`, '--http', `127.0.0.1:${http}`, '--nbd', `127.0.0.1:${hubNbd}`],
        ...['--vol', `V1=${path.join(dir, 'V1R')}`, '--data', path.join(dir, 'hub'), '--log-pretty'],
      ],
      { env: cleanEnv(), stdio: ['ignore', 'ignore', 'pipe'] },
    );
    hub.stderr!.on('data', (d) => (hubErr += d));
    procs.push(hub);
    const agent = spawn(
      path.join(prefix, 'bin', 'rephub-agent'),
      [
        ...['--hub', `127.0.0.1:${port}`, '--export', `V1=${img}`, '--nbd', `127.0.0.1:${nbd}`],
        ...['--http', `127.0.0.1:${agentHttp}`, '--state', path.join(dir, 'agent'), '--vm', 'pkg'],
      ],
      { env: cleanEnv(), stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let agentErr = '';
    agent.stderr!.on('data', (d) => (agentErr += d));
    procs.push(agent);
    const logs = () => `hub:\n${hubErr.slice(-3000)}\nagent:\n${agentErr.slice(-3000)}`;
    await waitFor(
      'V1 protecting and clean on the installed hub',
      async () => {
        if (hub.exitCode !== null || agent.exitCode !== null) throw new Error(`a process exited\n${logs()}`);
        const st: any = await (await fetch(`http://127.0.0.1:${http}/status`)).json();
        const v = st.volumes.find((x: any) => x.name === 'V1');
        return v?.state === 'protecting' && v.dirtyBytes === 0;
      },
      60_000,
      100,
    ).catch((e) => {
      throw new Error(`${(e as Error).message}\n${logs()}`);
    });
    await waitFor('replica byte-equal', () => sha(img) === sha(path.join(dir, 'V1R')), 30_000, 100);
    // The bins start Node with the heap flags (their `env -S` line): the processes' own command lines.
    for (const p of [hub, agent]) {
      const argv = fs.readFileSync(`/proc/${p.pid}/cmdline`, 'utf8').split('\0');
      for (const f of HEAP_FLAGS) assert.ok(argv.includes(f), `${argv.join(' ')} lacks ${f}`);
    }
    // Pretty logs, not JSON lines: pino-pretty was found.
    // (pino-pretty runs in a worker thread: its lines may trail the status a little.)
    await waitFor('pretty log lines from the hub', () => /INFO/.test(hubErr), 15_000, 100);
    assert.doesNotMatch(hubErr.split('\n')[0], /^\{/);
  });

  it('ships systemd units that systemd-analyze verify accepts with the installed bins', () => {
    const which = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
    assert.equal(which.status, 0, 'systemd-analyze is missing: .ci/run installs systemd for it');
    const units = path.join(tmp, 'units');
    fs.mkdirSync(units);
    const bin = path.join(prefix, 'bin') + '/';
    const copy = (from: string, to: string) => {
      const text = fs.readFileSync(path.join(pkgDir, 'contrib', 'systemd', from), 'utf8');
      assert.match(text, /\/usr\/local\/bin\/rephub/);
      fs.writeFileSync(path.join(units, to), text.replaceAll('/usr/local/bin/', bin));
    };
    copy('rephub.service', 'rephub.service');
    copy('rephub-agent@.service', 'rephub-agent@web1.service');
    const files = ['rephub.service', 'rephub-agent@web1.service'].map((f) => path.join(units, f));
    const r = spawnSync('systemd-analyze', ['verify', ...files], { encoding: 'utf8' });
    // verify exits 0 on unknown keys too, with a warning: any output is a finding.
    assert.equal(r.status, 0, r.stderr);
    assert.equal((r.stdout + r.stderr).trim(), '', 'systemd-analyze verify warnings');
  });
});
