// Issue 18's metrics and status, against a real hub and agent: counters that never fall, every
// volume state as a 0/1 series with vm, process metrics and build_info on both, the agent's
// /metrics, sync_pass counting passes (not cursor wraps), the versioned /status with every field
// documented in docs/STATUS.md, log lines without duplicate keys, and the Grafana dashboard's
// metric names all present in a live /metrics.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { v1Hub, HubProcess } from './harness/hub-process';
import { v1Agent, AgentProcess } from './harness/agent-process';
import { tmpdir, makeImage, waitFor, MiB } from './harness/util';
import { VOLUME_STATE_NAMES } from '../src/hub/volume-states';

const ROOT = path.join(__dirname, '../..');

/** Metric samples: name -> lines (without HELP/TYPE). */
function samples(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)![0];
    out.set(name, [...(out.get(name) ?? []), line]);
  }
  return out;
}
const value = (line: string) => Number(line.slice(line.lastIndexOf(' ') + 1));

/** The top-level keys of one JSON object line, in order, duplicates kept (JSON.parse drops them). */
export function topLevelKeys(line: string): string[] {
  const keys: string[] = [];
  let depth = 0,
    i = 0;
  while (i < line.length) {
    const c = line[i];
    if (c === '"') {
      let j = i + 1;
      while (line[j] !== '"') j += line[j] === '\\' ? 2 : 1;
      if (depth === 1 && line[j + 1] === ':') keys.push(JSON.parse(line.slice(i, j + 1)));
      i = j + 1;
      continue;
    }
    if (c === '{' || c === '[') depth++;
    if (c === '}' || c === ']') depth--;
    i++;
  }
  return keys;
}

function duplicateKeys(log: string): string[] {
  const bad: string[] = [];
  for (const line of log.split('\n')) {
    if (!line.startsWith('{')) continue;
    const keys = topLevelKeys(line);
    if (new Set(keys).size !== keys.length) bad.push(line);
  }
  return bad;
}

/** docs/STATUS.md's documented field paths, per section ("Hub", "Agent"). */
function documented(section: 'Hub' | 'Agent'): string[] {
  const doc = fs.readFileSync(path.join(ROOT, 'docs/STATUS.md'), 'utf8');
  const part = doc.split(/^## /m).find((s) => s.startsWith(`${section}: \`GET /status\``));
  assert.ok(part, `docs/STATUS.md has a "## ${section}: \`GET /status\`" section`);
  return [...part.matchAll(/^\| `([^`]+)` \|/gm)].map((m) => m[1]);
}

/** Every field path of a JSON document: objects by key, arrays as `[]`. */
function fieldPaths(v: unknown, prefix = ''): string[] {
  if (Array.isArray(v)) return v.flatMap((x) => fieldPaths(x, `${prefix}[]`));
  if (v === null || typeof v !== 'object') return [];
  return Object.entries(v).flatMap(([k, x]) => {
    const p = prefix ? `${prefix}.${k}` : k;
    return [p, ...fieldPaths(x, p)];
  });
}

function undocumented(doc: unknown, section: 'Hub' | 'Agent'): string[] {
  const known = documented(section);
  const wild = known.filter((k) => k.endsWith('.*')).map((k) => k.slice(0, -1));
  return [...new Set(fieldPaths(doc))].filter((p) => !known.includes(p) && !wild.some((w) => p.startsWith(w)));
}

describe('operator metrics and status (e2e)', function () {
  this.timeout(120_000);
  let dir: string, hub: HubProcess, agent: AgentProcess, img: string;
  const hubMetrics = async () => (await fetch(`http://${hub.http}/metrics`)).text();
  const agentMetrics = async () => (await fetch(`http://127.0.0.1:${agent.httpPort}/metrics`)).text();

  before(async () => {
    dir = tmpdir();
    img = path.join(dir, 'v1.img');
    makeImage(img, 16 * MiB, 0.5);
    hub = v1Hub(dir, path.join(dir, 'v1r.img'));
    Object.assign(hub.opts, { logFile: path.join(dir, 'hub.log') });
    await hub.start();
    agent = v1Agent(dir, img, hub.port);
    await agent.start();
    await hub.converged('V1', img, path.join(dir, 'v1r.img'));
  });
  after(async () => {
    await agent?.stop();
    await hub?.stop();
  });

  it('counts one sync pass for an initial sync the guest left alone', async () => {
    assert.equal((await hub.volume('V1')).syncPass, 1);
    const m = samples(await hubMetrics());
    assert.deepEqual(m.get('rephub_volume_sync_pass')!.map(value), [1]);
  });

  it('exports every volume state as a 0/1 series with vm and volume, one of them 1', async () => {
    const lines = samples(await hubMetrics()).get('rephub_volume_state')!;
    assert.equal(lines.length, VOLUME_STATE_NAMES.length);
    for (const s of VOLUME_STATE_NAMES) {
      const l = lines.find((x) => x.includes(`state="${s}"`));
      assert.ok(l && l.includes('vm="vm1"') && l.includes('volume="V1"'), `series of state ${s}: ${l}`);
      assert.equal(value(l), s === 'protecting' ? 1 : 0, l);
    }
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const doc = fs.readFileSync(path.join(ROOT, 'docs/STATUS.md'), 'utf8');
    for (const s of VOLUME_STATE_NAMES) {
      assert.ok(readme.includes(`\`${s}\``), `README lists state ${s}`);
      assert.ok(doc.includes(`| \`${s}\` |`), `docs/STATUS.md lists state ${s}`);
    }
  });

  it('has process metrics and build_info with the package version on hub and agent', async () => {
    const version = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version;
    for (const text of [await hubMetrics(), await agentMetrics()]) {
      const m = samples(text);
      assert.ok(m.has('process_cpu_user_seconds_total') && m.has('process_resident_memory_bytes'));
      assert.ok(m.has('nodejs_eventloop_lag_seconds'));
      const info = m.get('rephub_build_info')!;
      assert.equal(info.length, 1);
      assert.ok(info[0].includes(`version="${version}"`) && info[0].includes(`node="${process.version}"`), info[0]);
      assert.equal(value(info[0]), 1);
    }
  });

  it('agent /metrics: mirrored writes and bytes, link, in flight, dirty bytes per volume', async () => {
    execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 1M', '-c', 'flush', agent.uri('V1')], {
      stdio: 'ignore',
    });
    await waitFor('agent clean', () => agent.clean(), 30_000, 50);
    const m = samples(await agentMetrics());
    assert.ok(value(m.get('rephub_agent_mirrored_bytes_total')![0]) >= MiB);
    assert.ok(value(m.get('rephub_agent_mirrored_writes_total')![0]) >= 1);
    assert.equal(value(m.get('rephub_agent_hub_connected')![0]), 1);
    assert.equal(value(m.get('rephub_agent_connects_total')![0]), 1);
    assert.equal(value(m.get('rephub_agent_pending_writes')![0]), 0);
    assert.ok(m.get('rephub_agent_volume_dirty_bytes')![0].includes('volume="V1"'));
  });

  it('status: schema, version, caps by name; every field documented in docs/STATUS.md', async () => {
    assert.equal((await hub.post('/verify', {})).status, 200);
    await waitFor('verify done', async () => (await hub.volume('V1')).verify?.state === 'done', 30_000, 50);
    const st = await hub.status();
    assert.equal(st.schema, 1);
    assert.match(st.version, /^\d+\.\d+\.\d+/);
    assert.ok(st.agents[0].caps.includes('write_ack') && typeof st.agents[0].capsMask === 'number');
    assert.deepEqual(undocumented(st, 'Hub'), []);
    const ast = await agent.status();
    assert.equal(ast.schema, 1);
    assert.equal(ast.volumes[0].state, 'protected');
    assert.deepEqual(undocumented(ast, 'Agent'), []);
  });

  it('every metric of contrib/grafana/rephub.json exists in a live /metrics', async () => {
    const live = new Set([...samples(await hubMetrics()).keys(), ...samples(await agentMetrics()).keys()]);
    const dash = fs.readFileSync(path.join(ROOT, 'contrib/grafana/rephub.json'), 'utf8');
    const exprs = [...dash.matchAll(/"expr": "((?:[^"\\]|\\.)*)"/g)].map((m) => JSON.parse(`"${m[1]}"`) as string);
    assert.ok(exprs.length >= 10);
    const used = new Set(
      exprs.flatMap((e) => [...e.matchAll(/\b(rephub_\w+|process_\w+|nodejs_\w+)/g)].map((m) => m[1])),
    );
    const missing = [...used].filter((n) => !live.has(n));
    assert.deepEqual(missing, []);
  });

  it('rephub_received_bytes_total does not fall when the agent leaves', async () => {
    const before = value(samples(await hubMetrics()).get('rephub_received_bytes_total')![0]);
    assert.ok(before >= MiB);
    await agent.kill9();
    await waitFor('session gone', async () => (await hub.status()).agents.length === 0, 30_000, 50);
    const after = value(samples(await hubMetrics()).get('rephub_received_bytes_total')![0]);
    assert.ok(after >= before, `${after} >= ${before}`);
  });

  it('logs no line with a duplicate key', async () => {
    await agent.start(); // a reconnect logs the session lines again
    await hub.converged('V1', img, path.join(dir, 'v1r.img'));
    await agent.stop();
    const hubLog = fs.readFileSync(path.join(dir, 'hub.log'), 'utf8');
    assert.ok(hubLog.includes('"session":'), 'the hub logged its sessions');
    assert.deepEqual(duplicateKeys(hubLog), []);
    assert.deepEqual(duplicateKeys(agent.stderr), []);
  });
});
