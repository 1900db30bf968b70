// The operator's view against a live hub and agent: /metrics in Prometheus format, the status
// CLI, and the dashboard in a real headless Chromium (playwright-core) watching a volume go
// from syncing to protecting, with its dirty-bitmap heat map filling in; then the VM's guest
// flushes make checkpoints, drawn on its timeline, with the RPO lag, throughput and dirty-bytes
// history (GET /history) plotted in the volume's card; volumes grouped by VM; the operator actions
// on the page behind the admin token (a wrong token shows the hub's 401 and changes nothing, the
// right one pauses and resumes the volume, tags a checkpoint; remove asks first).
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import { Hub } from '../src/hub/hub';
import { LmdbStateStore } from '../storage/state';
import { silentLogger } from '../src/log';
import { tmpdir, makeImage } from './harness/util';
import { startTestAgent } from './harness/test-agent';
import { CLI } from './harness/hub-process';
import type { Page } from 'playwright-core';

const TOKEN = 'dashboard-test-admin-token';

async function getJson(port: number, p: string): Promise<any> {
  return (await fetch(`http://127.0.0.1:${port}${p}`)).json();
}

async function stateOf(port: number, name: string): Promise<string> {
  const st = await getJson(port, '/status');
  return st.volumes.find((v: any) => v.name === name)?.state;
}

async function waitState(port: number, name: string, want: string): Promise<void> {
  for (let i = 0; i < 600 && (await stateOf(port, name)) !== want; i++) await new Promise((r) => setTimeout(r, 100));
  assert.equal(await stateOf(port, name), want, `${name} ${want}`);
}

/** The page's last action message once it is final (not "…" in progress). */
async function message(page: Page): Promise<{ code: string; text: string }> {
  await page.waitForFunction('document.getElementById("msg").className !== "busy"');
  return page.$eval('#msg', (m) => ({ code: m.getAttribute('data-code') ?? '', text: m.textContent ?? '' }));
}

/** The history plots of V1 after writes, and the /history document they come from. */
async function checkHistory(page: Page, port: number): Promise<void> {
  const plot = (series: string) => `.card[data-volume="V1"] .plot[data-series="${series}"] svg`;
  await page.waitForFunction(
    `Number(document.querySelector('${plot('tput')}')?.dataset.points) > 5 && ` +
      `Number(document.querySelector('${plot('tput')}').dataset.max) > 0`,
    undefined,
    { timeout: 30_000 },
  );
  for (const series of ['rpo', 'dirty']) {
    const n = Number(await page.getAttribute(plot(series), 'data-points'));
    assert.ok(n > 5, `${series} plotted with ${n} points`);
  }
  const pts = (await page.getAttribute(`${plot('tput')} polyline`, 'points'))!.split(' ');
  assert.equal(pts.length, Number(await page.getAttribute(plot('tput'), 'data-points')));
  assert.ok(
    pts.every((p) => {
      const [x, y] = p.split(',').map(Number);
      return x >= 0 && x <= 1000 && y >= 0 && y <= 40;
    }),
    `points inside the plot: ${pts.slice(0, 5)}`,
  );
  const lbl = await page.textContent('.card[data-volume="V1"] .plots');
  assert.match(lbl ?? '', /RPO lag .*throughput .*, max [1-9][\d.]* (B|KiB|MiB)\/s.*dirty /s, 'the writes show');

  const h = await getJson(port, '/history?span=5m&points=100');
  assert.equal(h.spanMs, 300_000);
  assert.equal(h.volumes.V1.vm, 'web1');
  const v1 = h.volumes.V1;
  assert.ok(v1.throughputBps.length > 5 && v1.throughputBps.length <= 100, `${v1.throughputBps.length} points`);
  assert.equal(v1.dirtyBytes.length, v1.throughputBps.length);
  assert.equal(v1.rpoLagMs.length, v1.throughputBps.length);
  assert.ok(
    v1.throughputBps.some((b: number) => b >= 64 << 10),
    'the 256 KiB writes are in the history',
  );
  assert.ok(
    v1.dirtyBytes.some((b: number | null) => b !== null && b > 0),
    'the initial sync was dirty',
  );
  for (const [q, why] of [
    ['span=2h', /span 2h: from 1s to 3600s \(the history kept\)/],
    ['span=soon', /span "soon": expected a duration like 90s, 15m or 1h/],
    ['points=0', /points 0: a whole number, 1 to 3600/],
    ['volume=nope', /volume nope: no history/],
  ] as const) {
    const bad = await fetch(`http://127.0.0.1:${port}/history?${q}`);
    assert.equal(bad.status, 400, q);
    assert.match(((await bad.json()) as any).error, why);
  }
}

/** The operator actions: read-only without a token, 401 with a wrong one, pause/resume/tag with the right one. */
async function checkActions(page: Page, port: number): Promise<void> {
  const pause = '.card[data-volume="V1"] button[data-act="pause"]';
  assert.equal(await page.isVisible(pause), false, 'read-only without a token');

  await page.fill('#token', 'not-the-token');
  await page.click('#tokform button');
  await page.click(pause);
  const m401 = await message(page);
  assert.equal(m401.code, '401');
  assert.match(m401.text, /pause V1 refused \(401\): operator actions need "Authorization: Bearer <token>"/);
  assert.equal(await stateOf(port, 'V1'), 'protecting', 'a wrong token changes nothing');
  assert.equal(await page.isVisible(pause), false, 'a refused token is forgotten: read-only again');
  assert.equal(await page.evaluate('sessionStorage.getItem("rephub-admin-token")'), null);

  await page.fill('#token', TOKEN);
  await page.click('#tokform button');
  assert.ok(!page.url().includes(TOKEN), 'the token is never in the URL');
  page.once('dialog', (d) => void d.accept('before upgrade'));
  await page.click('section.vm[data-vm="web1"] button[data-act="tag"]');
  const mTag = await message(page);
  assert.match(mTag.text, /checkpoint tag "before upgrade" of web1: done, checkpoint #\d+/);
  const cps = await getJson(port, '/checkpoints?vm=web1');
  assert.ok(JSON.stringify(cps).includes('before upgrade'), 'the tag is in the journal');
  await page.waitForSelector('.timeline[data-vm="web1"] line.cp-tag', { state: 'attached' });

  await page.click(pause);
  const mPause = await message(page);
  assert.equal(mPause.code, '200', mPause.text);
  assert.match(mPause.text, /pause V1: done, now paused/);
  assert.equal(await stateOf(port, 'V1'), 'paused');
  await page.waitForSelector('.card[data-volume="V1"] .badge.paused');
  await page.click('.card[data-volume="V1"] button[data-act="resume"]');
  assert.match((await message(page)).text, /resume V1: done/);
  await waitState(port, 'V1', 'protecting');

  page.once('dialog', (d) => {
    assert.match(d.message(), /Stop protecting volume V2\?/);
    void d.dismiss();
  });
  await page.click('.card[data-volume="V2"] button[data-act="remove"]');
  assert.match((await message(page)).text, /remove V2: cancelled/);
  assert.ok(
    (await getJson(port, '/status')).volumes.some((v: any) => v.name === 'V2'),
    'not removed',
  );
}

describe('operator view: metrics, status CLI, live dashboard in Chromium', function () {
  this.timeout(120_000);

  it('shows a volume go from syncing to protecting; metrics and status agree', async () => {
    const dir = tmpdir();
    const img = path.join(dir, 'V1.img');
    makeImage(img, 128 << 20, 0.8);
    const img2 = path.join(dir, 'V2.img');
    makeImage(img2, 4 << 20, 0.5);
    const hub = new Hub({
      volumes: [
        { name: 'V1', path: path.join(dir, 'V1R') },
        { name: 'V2', path: path.join(dir, 'V2R') },
      ],
      adminToken: TOKEN,
      store: new LmdbStateStore(path.join(dir, 'hub')),
      log: silentLogger(),
      regionSize: 4096, // 4 KiB reads, one at a time: a sync slow enough to watch (and to see in /metrics)
      session: { maxInflightReads: 1, maxReadBytes: 4 << 10 },
      journal: { dir: path.join(dir, 'journal'), retentionMs: 3600_000, maxBytes: 64 << 20, intervalMs: 1000 },
    });
    const { port } = await hub.listen('127.0.0.1', 0);
    const web = await hub.listenHttp('127.0.0.1', 0);
    const browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    try {
      const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
      await page.goto(`http://127.0.0.1:${web.port}/`);
      await page.waitForSelector('#conn:text("live")');
      const agent = startTestAgent({ port, vm: 'web1', images: { V1: img } });
      await page.waitForSelector('[data-volume="V1"] .badge.syncing', { timeout: 30_000 });
      // heat map present and some of it dirty while syncing
      const pct = await page.textContent('[data-volume="V1"] .pct');
      assert.ok(pct && parseFloat(pct) < 100, `in-sync ${pct} while syncing`);
      const metrics = await (await fetch(`http://127.0.0.1:${web.port}/metrics`)).text();
      assert.match(metrics, /rephub_volume_state\{volume="V1",vm="web1",state="syncing"\} 1/);
      assert.match(metrics, /rephub_volume_dirty_bytes\{volume="V1",vm="web1"\} [1-9]/);
      assert.match(metrics, /rephub_agents_connected 1/);
      if (process.env.SCREENSHOT_OUT) {
        await page.waitForFunction('parseFloat(document.querySelector(\'[data-volume="V1"] .pct\').textContent) > 30');
        await page.screenshot({ path: process.env.SCREENSHOT_OUT.replace(/\.png$/, '-syncing.png') });
      }

      await page.waitForSelector('[data-volume="V1"] .badge.protecting', { timeout: 60_000 });
      assert.equal(await page.textContent('[data-volume="V1"] .pct'), '100.0%');

      // grouped by VM: V2, attached by no agent yet, is under "(no VM)" until db1's agent takes it
      await page.waitForSelector('section.vm[data-vm="web1"] .card[data-volume="V1"]');
      await page.waitForSelector('section.vm[data-vm=""] .card[data-volume="V2"]');
      const agent2 = startTestAgent({ port, vm: 'db1', images: { V2: img2 } });
      await page.waitForSelector('section.vm[data-vm="db1"] .card[data-volume="V2"] .badge.protecting', {
        timeout: 60_000,
      });
      const groups = await page.$$eval('section.vm', (ss) =>
        ss.map((x) => [
          x.getAttribute('data-vm'),
          [...x.querySelectorAll('.card')].map((c) => c.getAttribute('data-volume')).join(','),
        ]),
      );
      assert.deepEqual(groups, [
        ['db1', 'V2'],
        ['web1', 'V1'],
      ]);

      const m2 = await (await fetch(`http://127.0.0.1:${web.port}/metrics`)).text();
      assert.match(m2, /rephub_volume_state\{volume="V1",vm="web1",state="protecting"\} 1/);
      assert.match(m2, /rephub_volume_dirty_bytes\{volume="V1",vm="web1"\} 0/);
      assert.match(m2, /rephub_volume_sync_bytes_total\{volume="V1",vm="web1"\} [1-9]/);

      // the timeline: three guest flushes, three checkpoints drawn; the history plotted under it
      for (let i = 0; i < 3; i++) {
        await agent.write('V1', i * (1 << 20), Buffer.alloc(256 << 10, 0x40 + i));
        await agent.flush('V1');
        await new Promise((r) => setTimeout(r, 1100));
      }
      await page.waitForFunction(
        'document.querySelectorAll(\'.timeline[data-vm="web1"] svg.cps line.cp\').length >= 3',
        undefined,
        { timeout: 30_000 },
      );
      const ids = await page.$$eval('.timeline[data-vm="web1"] line.cp', (ls) =>
        ls.map((l) => l.getAttribute('data-id')),
      );
      const st0 = (await (await fetch(`http://127.0.0.1:${web.port}/status`)).json()) as any;
      const j0 = st0.journals.find((j: any) => j.vm === 'web1');
      assert.ok(ids.length >= 3 && ids.length === j0.points, `${ids.length} drawn`);
      const xs = await page.$$eval('.timeline[data-vm="web1"] line.cp', (ls) =>
        ls.map((l) => Number(l.getAttribute('x1'))),
      );
      assert.ok(
        xs.every((x, i) => x >= 0 && x <= 1000 && (i === 0 || x >= xs[i - 1])),
        `in time order: ${xs}`,
      );
      await checkHistory(page, web.port);
      const shot = process.env.SCREENSHOT_OUT ?? path.join(os.tmpdir(), 'rephub-dashboard.png');
      await page.fill('#token', TOKEN);
      await page.click('#tokform button');
      await page.screenshot({ path: shot, fullPage: true });
      assert.ok(fs.statSync(shot).size > 5000, 'a real screenshot');
      await page.click('#forget');
      await checkActions(page, web.port);

      const { stdout } = await promisify(execFile)(process.execPath, [
        CLI,
        'status',
        '--hub',
        `http://127.0.0.1:${web.port}`,
      ]);
      assert.match(stdout, /V1\s+protecting\s+web1\s+128\.0MiB\s+0B\s+100\.0%/);
      const { stdout: js } = await promisify(execFile)(process.execPath, [
        CLI,
        'status',
        '--json',
        '--hub',
        `http://127.0.0.1:${web.port}`,
      ]);
      const st = JSON.parse(js);
      assert.equal(st.volumes[0].rpoLagMs, 0);
      assert.equal(st.agents[0].vm, 'web1');
      await agent.stop();
      await agent2.stop();
    } finally {
      await browser.close();
      await hub.close();
    }
  });
});
