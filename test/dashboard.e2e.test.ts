// The operator's view against a live hub and agent: /metrics in Prometheus format, the status
// CLI, and the dashboard in a real headless Chromium (playwright-core) watching a volume go
// from syncing to protecting, with its dirty-bitmap heat map filling in; then the VM's guest
// flushes make checkpoints, drawn on its timeline, with the RPO lag and throughput history
// plotted under it.
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

describe('operator view: metrics, status CLI, live dashboard in Chromium', function () {
  this.timeout(120_000);

  it('shows a volume go from syncing to protecting; metrics and status agree', async () => {
    const dir = tmpdir();
    const img = path.join(dir, 'V1.img');
    makeImage(img, 128 << 20, 0.8);
    const hub = new Hub({
      volumes: [{ name: 'V1', path: path.join(dir, 'V1R') }],
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
      const page = await browser.newPage({ viewport: { width: 1000, height: 420 } });
      await page.goto(`http://127.0.0.1:${web.port}/`);
      await page.waitForSelector('#conn:text("live")');
      const agent = startTestAgent({ port, vm: 'web1', images: { V1: img } });
      await page.waitForSelector('[data-volume="V1"] .badge.syncing', { timeout: 30_000 });
      // heat map present and some of it dirty while syncing
      const pct = await page.textContent('[data-volume="V1"] .pct');
      assert.ok(pct && parseFloat(pct) < 100, `in-sync ${pct} while syncing`);
      const metrics = await (await fetch(`http://127.0.0.1:${web.port}/metrics`)).text();
      assert.match(metrics, /rephub_volume_state\{volume="V1",state="syncing"\} 1/);
      assert.match(metrics, /rephub_volume_dirty_bytes\{volume="V1",vm="web1"\} [1-9]/);
      assert.match(metrics, /rephub_agents_connected 1/);
      if (process.env.SCREENSHOT_OUT) {
        await page.waitForFunction('parseFloat(document.querySelector(\'[data-volume="V1"] .pct\').textContent) > 30');
        await page.screenshot({ path: process.env.SCREENSHOT_OUT.replace(/\.png$/, '-syncing.png') });
      }

      await page.waitForSelector('[data-volume="V1"] .badge.protecting', { timeout: 60_000 });
      assert.equal(await page.textContent('[data-volume="V1"] .pct'), '100.0%');
      const shot = process.env.SCREENSHOT_OUT ?? path.join(os.tmpdir(), 'rephub-dashboard.png');
      await page.screenshot({ path: shot });
      assert.ok(fs.statSync(shot).size > 5000, 'a real screenshot');

      const m2 = await (await fetch(`http://127.0.0.1:${web.port}/metrics`)).text();
      assert.match(m2, /rephub_volume_state\{volume="V1",state="protecting"\} 1/);
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
      assert.equal(st0.journals[0].vm, 'web1');
      assert.ok(ids.length >= 3 && ids.length === st0.journals[0].points, `${ids.length} drawn`);
      const xs = await page.$$eval('.timeline[data-vm="web1"] line.cp', (ls) =>
        ls.map((l) => Number(l.getAttribute('x1'))),
      );
      assert.ok(
        xs.every((x, i) => x >= 0 && x <= 1000 && (i === 0 || x >= xs[i - 1])),
        `in time order: ${xs}`,
      );
      await page.waitForFunction(
        'document.querySelector(\'.timeline .hist[data-volume="V1"] polyline.tput\')?.getAttribute("points").split(" ").length > 5',
        undefined,
        { timeout: 30_000 },
      );
      const lbl = await page.textContent('.timeline .hist[data-volume="V1"]');
      assert.match(
        lbl ?? '',
        /RPO lag, max .*throughput, max [1-9][\d.]* (B|KiB|MiB)\/s/s,
        'the throughput of the writes shows',
      );
      assert.ok(await page.$('.timeline .hist[data-volume="V1"] polyline.rpo'), 'the RPO lag is plotted');
      await page.screenshot({ path: shot.replace(/\.png$/, '-timeline.png') });

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
    } finally {
      await browser.close();
      await hub.close();
    }
  });
});
