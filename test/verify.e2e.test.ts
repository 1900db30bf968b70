// `rephub verify` end to end: a real hub and agent, a live fio writer through the agent's NBD
// export, the recovery file corrupted behind the hub's back in 3 separate 64 KiB ranges. Verify
// finds exactly those ranges (the writer's regions are never reported), exits 1 and repairs
// them; a second run exits 0; cmp agrees. --report-only leaves the corruption in place. A
// converged volume's verify moves no volume data across the link.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { execFile, spawnSync } from 'node:child_process';
import { waitFor, MiB } from './harness/util';
import { fioWriter, killWriters } from './harness/fio';
import { startProtectedPair } from './harness/pair';
import { HubProcess, CLI, v1Hub } from './harness/hub-process';
import { AgentProcess, v1Agent } from './harness/agent-process';

const KiB = 1024;
const CORRUPT = [1 * MiB, 5 * MiB + 128 * KiB, 11 * MiB + 64 * KiB]; // 64 KiB each, all below the writer's range

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function verifyCli(hub: HubProcess, ...args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, 'verify', '--hub', `http://${hub.http}`, '--admin-token-file', hub.adminTokenFile, ...args],
      { timeout: 120_000 },
      (err, stdout, stderr) => resolve({ code: err ? ((err as any).code ?? null) : 0, stdout, stderr }),
    );
  });
}

function corrupt(file: string, offsets: number[]): void {
  const fd = fs.openSync(file, 'r+');
  try {
    for (const [i, off] of offsets.entries()) {
      const junk = Buffer.alloc(64 * KiB, 0x5a + i);
      junk.writeUInt32LE(0xdeadbeef + i, 100);
      fs.writeSync(fd, junk, 0, junk.length, off);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** cmp exit status: 0 equal, 1 different. */
function cmp(a: string, b: string): number {
  const r = spawnSync('cmp', ['-s', a, b]);
  return r.status ?? -1;
}

function listed(out: string): { offset: number; length: number }[] {
  return [...out.matchAll(/V1\tmismatch\toffset (\d+)\tlength (\d+)/g)].map((m) => ({
    offset: Number(m[1]),
    length: Number(m[2]),
  }));
}

function fio(uri: string, seconds: number) {
  return fioWriter(uri, seconds, ['--bs=64k', '--offset=16m', '--size=16m']);
}

describe('rephub verify (online, real hub and agent)', function () {
  this.timeout(300_000);
  let dir: string, hub: HubProcess, agent: AgentProcess, img: string, rep: string;
  const size = 32 * MiB;

  beforeEach(async () => {
    ({ dir, img, rep, hub, agent } = await startProtectedPair(size));
  });
  afterEach(async () => {
    killWriters();
    await agent.stop();
    await hub.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('finds 3 corrupted 64 KiB ranges under a live writer, exits 1 and repairs them; a second run exits 0', async () => {
    const writer = fio(agent.uri('V1'), 5);
    await new Promise((r) => setTimeout(r, 500)); // the writer is running
    corrupt(rep, CORRUPT);
    const first = await verifyCli(hub);
    assert.equal(first.code, 1, `${first.stdout}\n${first.stderr}`);
    assert.deepEqual(
      listed(first.stdout),
      CORRUPT.map((offset) => ({ offset, length: 64 * KiB })),
      first.stdout,
    );
    assert.equal(await writer, 0, 'fio succeeded');
    await hub.converged('V1', img, rep, 60_000);
    assert.equal(cmp(img, rep), 0, 'repaired: image and replica equal');
    const v = await hub.volume('V1');
    assert.equal(v.verify.state, 'done');
    assert.equal(v.verify.mismatchedRegions, 3);
    assert.equal(v.verify.checkedBytes, size);

    const second = await verifyCli(hub, '--json');
    assert.equal(second.code, 0, `${second.stdout}\n${second.stderr}`);
    const report = JSON.parse(second.stdout).volumes[0];
    assert.equal(report.mismatchedRegions, 0);
    assert.equal(report.checkedBytes, size);
    assert.equal(cmp(img, rep), 0, 'still equal after the second verify');
  });

  it('--report-only lists the ranges, exits 1 and leaves the corruption in place', async () => {
    corrupt(rep, CORRUPT);
    const r = await verifyCli(hub, '--vm', 'vm1', '--volume', 'V1', '--report-only');
    assert.equal(r.code, 1, `${r.stdout}\n${r.stderr}`);
    assert.deepEqual(
      listed(r.stdout),
      CORRUPT.map((offset) => ({ offset, length: 64 * KiB })),
    );
    await new Promise((res) => setTimeout(res, 500));
    const v = await hub.volume('V1');
    assert.equal(v.dirtyBytes, 0, 'nothing marked for resync');
    assert.equal(v.state, 'protecting');
    assert.equal(cmp(img, rep), 1, 'the corruption is still there');
    const metrics = await (await fetch(`http://${hub.http}/metrics`)).text();
    assert.match(metrics, /rephub_volume_verify_mismatched_regions\{volume="V1",vm="vm1"\} 3/);
  });

  it('a whole-volume verify of a converged volume moves checksums only, no volume data', async () => {
    const before = await agent.status();
    const hubBefore = (await hub.status()).agents[0].bytesReceived;
    const syncBefore = (await hub.volume('V1')).syncBytes;
    const r = await verifyCli(hub);
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    const after = await agent.status();
    const hubAfter = (await hub.status()).agents[0].bytesReceived;
    assert.equal(after.remoteReadBytes, before.remoteReadBytes, 'no remote read data');
    assert.equal((await hub.volume('V1')).syncBytes, syncBefore);
    // 16-byte digests per 64 KiB region plus frame heads (heartbeats too): far below 1 % of the volume
    assert.ok(hubAfter - hubBefore < size / 100, `received ${hubAfter - hubBefore} bytes`);
    assert.ok(hubAfter - hubBefore >= (size / (64 * KiB)) * 16, 'the digests did arrive');
    assert.equal(cmp(img, rep), 0);
  });

  it('--verify-every scrubs periodically: the corruption is found and repaired with no operator', async () => {
    await agent.stop();
    await hub.stop();
    hub = v1Hub(dir, rep, '--verify-every', '1s', '--verify-rate', '64M');
    await hub.start();
    agent = v1Agent(dir, img, hub.port);
    await agent.start();
    await hub.converged('V1', img, rep, 60_000);
    corrupt(rep, CORRUPT);
    // A scrub already past a range when it was corrupted finds it on its next run, after the
    // others were repaired: so the ranges found are gathered over runs (on a loaded machine a
    // scan overlaps the corruption more often). The next scrub replaces `verify` within a second
    // of a run's end, so the finding is read where it stays: `verifyFound`. A bound, not a timing.
    const found = new Set<number>();
    await waitFor(
      'scrubs found the 3 ranges',
      async () => {
        const v = await hub.volume('V1');
        for (const m of [...(v.verify?.mismatches ?? []), ...(v.verifyFound.last?.mismatches ?? [])])
          for (let o = m.offset; o < m.offset + m.length; o += 64 * KiB) found.add(o);
        return CORRUPT.every((o) => found.has(o));
      },
      90_000,
    );
    await hub.converged('V1', img, rep, 60_000);
    assert.equal(cmp(img, rep), 0, 'repaired');
    // Runs go one at a time: once a clean one is done, every run that found something finished.
    const clean = (after: number) =>
      waitFor('a clean scrub', async () => {
        const v = await hub.volume('V1');
        return v.verify?.state === 'done' && v.verify.mismatchedRegions === 0 && v.verify.id > after && v;
      });
    const first = await clean(0);
    const total = first.verifyFound.mismatchedRegions;
    assert.ok(total >= CORRUPT.length, `the count since the start holds every finding: ${total}`);
    const second = await clean(first.verify.id);
    assert.equal(second.verifyFound.mismatchedRegions, total, 'a clean scrub adds nothing');
    assert.ok(second.verifyFound.last.mismatchedRegions > 0, 'the last finding stays past clean scrubs');
    const metrics = await (await fetch(`http://${hub.http}/metrics`)).text();
    assert.match(
      metrics,
      new RegExp(`rephub_volume_verify_mismatched_regions_total\\{volume="V1",vm="vm1"\\} ${total}\n`),
    );
  });

  it('POST /verify validates its body and names what is not there', async () => {
    const bad = await hub.post('/verify', { reportOnly: 'yes' });
    assert.equal(bad.status, 400);
    const none = await hub.post('/verify', { volume: 'V9' });
    assert.equal(none.status, 409);
    assert.match(none.body.error, /V9/);
    const ok = await hub.post('/verify', { volume: 'V1' });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    const id = ok.body.volumes[0].id;
    await waitFor('verify of V1 ends', async () => (await hub.volume('V1')).verify.state === 'done');
    const again = await hub.post('/verify', { volume: 'V1' });
    assert.ok(again.body.volumes[0].id > id, 'a new run');
  });
});
