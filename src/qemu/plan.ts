// Which of a QEMU command line's disks rephub-qemu protects, and the command line QEMU then
// runs: pure functions over the arguments and an image probe (the one impure input, passed in).
// A writable, file-backed raw disk (`-drive file=PATH` with format=raw or a probe that finds
// no other format's header; `-blockdev driver=file|host_device` under a `driver=raw` node)
// is tapped: it becomes the agent's NBD export on a UNIX socket. Read-only, cdrom, snapshot
// and network disks pass through untouched, each with a note. A writable image of another
// format (qcow2 …) is refused, not tapped: a qcow2 file grows as the guest allocates clusters,
// and an NBD export has a fixed size, so serving the file itself fails the guest's writes at
// the old end; serving its raw view would need qemu-nbd under the agent, whose write path,
// dirty log and resync reads work on a file or block device (FileVolume), not on an NBD client.
import * as path from 'node:path';
import { walkCommandLine, QemuOption } from './cmdline';
import { parseOpts, formatOpts, optGet, optSet, isOn, OptList } from './opts';
import { parseRepagent, RepagentConfig } from './repagent';
import { planBlockdevs } from './blockdev-plan';
import { checkImage, volumeName, nbdUri, PlanContext, Probe, TappedDisk } from './disk-checks';

export type { ImageProbe, Probe, TappedDisk } from './disk-checks';

export interface QemuPlan {
  repagent: RepagentConfig;
  vm: string;
  disks: TappedDisk[];
  /** One line per disk left untouched, saying why. */
  notes: string[];
  /** The arguments for QEMU: -repagent gone, each tapped disk on the export at `socket`. */
  rewrite(socket: string): string[];
}

const SHORTHANDS = new Set(['hda', 'hdb', 'hdc', 'hdd', 'fda', 'fdb', 'cdrom', 'sd', 'mtdblock', 'pflash']);

export function planQemu(args: readonly string[], probe: Probe): QemuPlan {
  const { options, positionals } = walkCommandLine(args);
  const repagentAt = findRepagent(options);
  const repagent = parseRepagent(args[repagentAt.valueIndex!]);
  const ctx: PlanContext = { args, probe, disks: [], notes: [], edits: new Map() };
  const snapshot = options.some((o) => o.name === 'snapshot');
  let driveNo = 0;
  for (const o of options) {
    if (o.valueIndex === undefined) continue;
    const v = args[o.valueIndex];
    if (o.name === 'drive') planDrive(ctx, o.valueIndex, v, driveNo++, snapshot);
    else if (SHORTHANDS.has(o.name)) {
      const why = o.name === 'cdrom' ? 'cdrom media' : `-${o.name} shorthand; write it as -drive file=…,format=raw`;
      ctx.notes.push(`-${o.name} ${v}: not protected (${why})`);
    }
  }
  planBlockdevs(
    ctx,
    options.filter((o) => o.name === 'blockdev' && o.valueIndex !== undefined),
  );
  for (const p of positionals)
    ctx.notes.push(`${args[p]}: not protected (a bare image is -hda; write it as -drive file=…,format=raw)`);
  if (ctx.disks.length === 0)
    throw new Error(
      'no disk to protect: -repagent protects writable raw disks (-drive file=PATH,format=raw, or -blockdev driver=file under driver=raw)',
    );
  const seen = new Map<string, TappedDisk>();
  for (const d of ctx.disks) {
    const other = seen.get(d.volume);
    if (other)
      throw new Error(`${d.what} and ${other.what} are both volume "${d.volume}": give each drive its own id=`);
    seen.set(d.volume, d);
  }
  const skip = new Set([repagentAt.index, repagentAt.valueIndex!]);
  return {
    repagent,
    vm: vmName(options, args, ctx.disks),
    disks: ctx.disks,
    notes: ctx.notes,
    rewrite: (socket) =>
      args.flatMap((a, i) => (skip.has(i) ? [] : [ctx.edits.has(i) ? ctx.edits.get(i)!(socket) : a])),
  };
}

function findRepagent(options: QemuOption[]): QemuOption {
  const rep = options.filter((o) => o.name === 'repagent');
  if (rep.length === 0) throw new Error('no -repagent option: add -repagent HUB[:PORT] (see rephub-qemu --help)');
  if (rep.length > 1) throw new Error('-repagent is given twice: one VM replicates to one hub');
  if (rep[0].valueIndex === undefined) throw new Error('-repagent needs a value: -repagent HUB[:PORT][,…]');
  return rep[0];
}

/** How a drive is named in messages: its id, else its position, and its file. */
function driveLabel(list: OptList, n: number): string {
  const id = optGet(list, 'id');
  const file = optGet(list, 'file');
  return `-drive ${id !== undefined ? `id=${id}` : `#${n + 1}`}${file !== undefined ? ` (${file})` : ''}`;
}

function planDrive(ctx: PlanContext, at: number, value: string, n: number, snapshot: boolean): void {
  const list = parseOpts(value);
  const label = driveLabel(list, n);
  const file = optGet(list, 'file');
  const fileOpts = list.filter(([k]) => k.startsWith('file.')).map(([k]) => k);
  if (file === undefined) {
    if (fileOpts.length > 0) ctx.notes.push(`${label}: not protected (its file is given as ${fileOpts.join(', ')})`);
    return;
  }
  const why = untappable(list, file, snapshot);
  if (why) {
    ctx.notes.push(`${label}: not protected (${why})`);
    return;
  }
  const given = optGet(list, 'format') ?? optGet(list, 'driver');
  checkImage(ctx.probe, file, label, given);
  if (fileOpts.length > 0)
    throw new Error(
      `${label}: ${fileOpts.join(', ')} configure the file driver, which rephub-qemu replaces with NBD: remove them`,
    );
  const volume = volumeName(optGet(list, 'id'), file, label);
  ctx.disks.push({ volume, image: file, what: label });
  // A probed raw image gets format=raw: QEMU would otherwise probe the NBD export, and a guest
  // that writes a qcow2 header to sector 0 would change what the next boot opens.
  ctx.edits.set(at, (socket) => {
    const withFile = optSet(list, 'file', nbdUri(volume, socket));
    return formatOpts(given === undefined ? optSet(withFile, 'format', 'raw') : withFile);
  });
}

/** Why a -drive is left alone, or undefined when it is a candidate. */
function untappable(list: OptList, file: string, snapshot: boolean): string | undefined {
  if (/^[^/]*:/.test(file)) return 'a network or protocol URL';
  if (optGet(list, 'media') === 'cdrom') return 'cdrom media';
  if (isOn(optGet(list, 'readonly')) || isOn(optGet(list, 'read-only'))) return 'read-only';
  if (isOn(optGet(list, 'snapshot'))) return 'snapshot=on: its writes go to a temporary overlay';
  if (snapshot) return '-snapshot: its writes go to a temporary overlay';
  return undefined;
}

/** -name's guest (`-name web1` or `-name guest=web1,…`), else the first tapped image's name. */
function vmName(options: QemuOption[], args: readonly string[], disks: TappedDisk[]): string {
  const names = options.filter((o) => o.name === 'name' && o.valueIndex !== undefined);
  const last = names[names.length - 1];
  const guest = last ? optGet(parseOpts(args[last.valueIndex!], 'guest'), 'guest') : undefined;
  const raw = guest ?? path.posix.basename(disks[0].image).replace(/\.[^.]*$/, '');
  // The agent's --vm allows fewer characters than QEMU's -name: the others become '-'.
  const vm = raw
    .replace(/[^A-Za-z0-9._-]/g, '-')
    .replace(/^[^A-Za-z0-9]+/, '')
    .slice(0, 128);
  return vm || 'vm';
}
