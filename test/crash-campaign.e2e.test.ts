// A CI slice of the crash campaign (tools/crash-campaign.ts): hub and agent as processes, fio
// writing through the agent's NBD export all along, 6 kill -9s of the hub or the agent at seeded
// random moments, and after each restart the replica compared with the image byte for byte.
// The full campaign: node dist/tools/crash-campaign.js --kills 100 [--seed N]
import { strict as assert } from 'node:assert';
import { runCampaign } from './harness/crash-campaign';

describe('crash campaign (CI slice: 6 kills, fixed seed)', function () {
  this.timeout(180_000);

  it('every kill -9 of hub or agent under NBD write load converges byte-equal', async () => {
    const lines: string[] = [];
    const r = await runCampaign({
      kills: 6,
      seed: 1234,
      rateMiB: 4,
      convergeTimeoutMs: 60_000,
      out: (l) => {
        lines.push(l);
        process.stdout.write(`      ${l}\n`);
      },
    });
    assert.equal(r.kills, 6, lines.join('\n'));
    assert.ok(r.hubKills > 0 && r.agentKills > 0, `seed 1234 kills both: hub=${r.hubKills} agent=${r.agentKills}`);
    assert.deepEqual(
      r.mismatches.map((m) => ({ n: m.n, victim: m.victim, differingBytes: m.differingBytes, error: m.error })),
      [],
      `mismatches (dir ${r.dir})`,
    );
    assert.equal(r.converged, 6);
    assert.equal(r.bytesLost, 0);
    assert.ok(r.guestWrites > 100, `the writer wrote through the agent: ${r.guestWrites} writes`);
    assert.ok(r.maxAgentRssMiB > 0 && r.maxAgentRssMiB < 300, `agent RSS ${r.maxAgentRssMiB} MiB`);
    assert.ok(r.maxHubRssMiB > 0 && r.maxHubRssMiB < 400, `hub RSS ${r.maxHubRssMiB} MiB`);
    assert.ok(r.ok);
  });
});
