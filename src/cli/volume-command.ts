// `rephub volume pause|resume|remove|resize NAME`: the operator's volume operations on a running hub
// (POST /volume/pause, /volume/resume, /volume/remove, /volume/resize with the admin token). Each prints the
// volume's state after it; a refusal (unknown volume, wrong state, no token) is the hub's one-line
// error on stderr and a non-zero exit, as for every subcommand.
import type { Command } from 'commander';

type Post = (hub: string, action: string, body: object) => Promise<any>;

const ACTIONS: [string, string][] = [
  ['pause', 'stop applying the volume on the hub; its writes only mark regions dirty (kept across a hub restart)'],
  ['resume', 'apply the volume again: resync what changed while it was paused, then protect it'],
  ['remove', 'stop protecting the volume; the agent stops mirroring it and the recovery volume is kept on disk'],
  ['resize', 'the protected image grew: grow the volume and its replica online; only the new space syncs'],
];

export function addVolumeCommands(program: Command, tokenOption: (c: Command) => Command, post: Post): void {
  const vol = program.command('volume').description('operate on one protected volume of a running hub');
  for (const [action, what] of ACTIONS) {
    tokenOption(vol.command(`${action} <name>`))
      .description(what)
      .option('--hub <url>', 'hub operator URL', 'http://127.0.0.1:7080')
      .option('--json', 'print the hub answer as JSON')
      .action(async (name: string, o: { hub: string; json?: boolean }) => {
        const r = await post(o.hub, `/volume/${action}`, { volume: name });
        if (o.json) return void process.stdout.write(JSON.stringify(r) + '\n');
        if (action === 'remove') process.stdout.write(`${r.name}\tremoved; recovery volume kept at ${r.recovery}\n`);
        else if (action === 'resize')
          process.stdout.write(`${r.name}\t${r.state}\tgrew from ${r.oldSizeBytes} to ${r.sizeBytes} bytes\n`);
        else process.stdout.write(`${r.name}\t${r.state}\tdirty ${r.dirtyBytes} bytes\n`);
      });
  }
}
