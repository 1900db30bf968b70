// `rephub status`: the hub's volumes and agents as a table, as JSON, or redrawn every second.
import type { Command } from 'commander';
import { renderStatus } from './format';

async function status(o: { hub: string; json?: boolean; watch?: boolean }) {
  const url = o.hub.replace(/\/$/, '') + '/status';
  const get = async () => {
    const res = await fetch(url).catch((e) => {
      throw new Error(`cannot reach ${url}: ${e.cause?.message ?? e.message}`);
    });
    return (await res.json()) as any;
  };
  if (o.json) {
    process.stdout.write(JSON.stringify(await get(), null, 2) + '\n');
    return;
  }
  if (!o.watch) {
    process.stdout.write(renderStatus(await get(), false));
    return;
  }
  for (;;) {
    const text = renderStatus(await get(), true);
    process.stdout.write('\x1b[H\x1b[2J' + text + `\n(every 1 s; Ctrl-C to quit)\n`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

export function addStatusCommand(program: Command): void {
  program
    .command('status')
    .description("show the hub's volumes and agents")
    .option('--hub <url>', 'hub status URL', 'http://127.0.0.1:7080')
    .option('--json', 'print JSON for scripts')
    .option('--watch', 'redraw every second, with progress bars')
    .action(status);
}
