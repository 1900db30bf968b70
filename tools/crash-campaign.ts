#!/usr/bin/env node
// The crash campaign's command line (the campaign: test/harness/crash-campaign.ts).
//
//   node dist/tools/crash-campaign.js [--kills 100] [--seed N] [--size-mib 64] [--rate-mib 4]
//                                     [--keep-going] [--keep] [--verbose] [--chain P] [--self-check-corrupt-at K]
//
// Prints one line per kill and a tally:
//   crash campaign: kills=N (hub=a agent=b) converged=N bytes_lost=0 maxHubRssMiB=.. maxAgentRssMiB=..
// Exits 1 on any mismatch or a volume that does not converge; the temp dir is then kept.
import { runCampaign } from '../test/harness/crash-campaign';

if (require.main === module) {
  const argv = process.argv.slice(2);
  const opt = (k: string) => {
    const i = argv.indexOf(`--${k}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(
      'usage: crash-campaign [--kills 100] [--seed N] [--size-mib 64] [--rate-mib 4] [--keep-going] [--keep] [--verbose] [--chain P] [--self-check-corrupt-at K]\n' +
        '  --chain P: with probability P a kill is not followed by the check, so the next kill hits the resync\n' +
        '  --self-check-corrupt-at K: after kill K, overwrite 4 KiB of the replica behind the hub (the campaign must then report a mismatch)\n',
    );
    process.exit(0);
  }
  const seed = opt('seed') !== undefined ? Number(opt('seed')) : Math.floor(Math.random() * 2 ** 31);
  const kills = Number(opt('kills') ?? 100);
  if (!Number.isInteger(kills) || kills < 1 || !Number.isFinite(seed)) {
    process.stderr.write('crash-campaign: --kills must be a positive integer and --seed a number\n');
    process.exit(2);
  }
  runCampaign({
    kills,
    seed,
    sizeMiB: opt('size-mib') ? Number(opt('size-mib')) : undefined,
    rateMiB: opt('rate-mib') ? Number(opt('rate-mib')) : undefined,
    keepGoing: argv.includes('--keep-going'),
    keep: argv.includes('--keep'),
    verbose: argv.includes('--verbose'),
    chain: opt('chain') ? Number(opt('chain')) : undefined,
    corruptReplicaAt: opt('self-check-corrupt-at') ? Number(opt('self-check-corrupt-at')) : undefined,
  }).then(
    (r) => process.exit(r.ok ? 0 : 1),
    (e) => {
      process.stderr.write(`crash-campaign: ${e.stack}\n`);
      process.exit(2);
    },
  );
}
