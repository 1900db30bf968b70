// What every rephub process exports besides its own metrics: prom-client's default process
// metrics (CPU, memory, descriptors, event-loop lag, GC) and rephub_build_info. Shared by the
// hub's and the agent's registries; the version comes from the caller (cli/version.ts).
import { Gauge, Registry, collectDefaultMetrics } from 'prom-client';

export function registerProcessMetrics(r: Registry, version: string): void {
  collectDefaultMetrics({ register: r });
  const info = new Gauge({
    name: 'rephub_build_info',
    help: 'Always 1; the labels name the rephub version and the Node.js version running it',
    labelNames: ['version', 'node'],
    registers: [r],
  });
  info.set({ version, node: process.version }, 1);
}
