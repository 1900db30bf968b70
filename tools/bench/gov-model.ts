// gov-model.ts: the resync governor against model links (test/harness/model-link.ts), an idle
// guest, 10 s each, the first second left out: the longest a mirrored write would queue behind
// answers, and the share of the link used. No sockets, no timing: a policy's shape in numbers.
// Usage: node dist/tools/bench/gov-model.js [MiB/s:base_ms ...]   (default 5:1 5:20 8:1 20:1 100:1)
import { overLink } from '../../test/harness/model-link';

const MiB = 1 << 20;
const links = process.argv.slice(2).length > 0 ? process.argv.slice(2) : ['5:1', '5:20', '8:1', '20:1', '100:1'];
console.log('| link | base round trip | worst queue | one answer | link used |');
console.log('|---|---|---|---|---|');
for (const spec of links) {
  const [mibs, baseMs] = spec.split(':').map(Number);
  if (!(mibs > 0) || !(baseMs >= 0)) throw new Error(`gov-model: '${spec}' is not MiB/s:base_ms`);
  const rate = mibs * MiB;
  const { worst, bytes } = overLink(rate, baseMs, 10_000, 1000, 0);
  const used = bytes / rate / 10;
  console.log(
    `| ${mibs} MiB/s | ${baseMs} ms | ${worst.toFixed(0)} ms | ${(1000 / mibs).toFixed(0)} ms | ${used.toFixed(2)} |`,
  );
}
