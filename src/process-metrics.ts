// What every rephub process exports besides its own metrics: prom-client's default process
// metrics (CPU, memory, descriptors, event-loop lag, GC) and rephub_build_info, in a registry
// of their own, made once per process. The default metrics start samplers that nothing stops (an
// event-loop delay monitor, a GC observer): one per hub or per agent registry left every hub a
// process had made (a test makes thousands) sampling, and holding that hub, forever.
import { Gauge, Registry, collectDefaultMetrics } from 'prom-client';

let shared: Registry | null = null;

/** The process's registry; `version` (cli/version.ts) labels rephub_build_info from the first call. */
function processRegistry(version: string): Registry {
  if (shared) return shared;
  const r = new Registry();
  collectDefaultMetrics({ register: r });
  const info = new Gauge({
    name: 'rephub_build_info',
    help: 'Always 1; the labels name the rephub version and the Node.js version running it',
    labelNames: ['version', 'node'],
    registers: [r],
  });
  info.set({ version, node: process.version }, 1);
  shared = r;
  return r;
}

/** One scrape: `own`'s metrics, then the process's (both in prom-client's text format). */
export async function scrapeWithProcess(own: Registry, version: string): Promise<string> {
  const [a, b] = await Promise.all([own.metrics(), processRegistry(version).metrics()]);
  return a.length === 0 || a.endsWith('\n') ? a + b : `${a}\n${b}`;
}
