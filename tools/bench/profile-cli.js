#!/usr/bin/env node
// Run a rephub CLI under V8's CPU profiler until SIGTERM, for tools that start the hub as
// `node $REPHUB_CLI ...` (loadgen, hub-ingest.sh): node refuses --cpu-prof in NODE_OPTIONS, and a
// hub stopped by SIGTERM would not write one anyway. The profile goes to $PROFILE_OUT
// (default /tmp/rephub-hub.cpuprofile); summarize it with cpuprof-top.js.
// Usage: REPHUB_CLI=tools/bench/profile-cli.js PORT=27900 node dist/tools/loadgen.js --seconds 8 --workload 1m
const inspector = require('node:inspector');
const fs = require('node:fs');
const path = require('node:path');

const out = process.env.PROFILE_OUT || '/tmp/rephub-hub.cpuprofile';
const cli = process.env.PROFILED_CLI || path.join(__dirname, '../../dist/src/cli/rephub.js');
const session = new inspector.Session();
session.connect();
session.post('Profiler.enable', () =>
  session.post('Profiler.start', () => {
    // first in line: the profile is written before the CLI's own handler exits the process
    process.prependListener('SIGTERM', () =>
      session.post('Profiler.stop', (err, res) => {
        if (err) console.error(`profile-cli: ${err.message}`);
        else fs.writeFileSync(out, JSON.stringify(res.profile));
      }),
    );
    require(cli);
  }),
);
