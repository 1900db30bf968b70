// Walks a QEMU command line (the arguments after the binary) the way QEMU's own parser does:
// `-opt` and `--opt` alike, each option either a flag or followed by exactly one argument.
// Pure: it finds where things are and changes nothing.

/**
 * QEMU's options that take no argument (from `qemu-system-x86_64 -help`, 7.2 to 9.x, plus the
 * deprecated ones still accepted). Every other option takes one, so an option value that happens
 * to begin with `-` (`-append "-drive"`) is never read as an option.
 */
const FLAGS = new Set([
  'h',
  'help',
  'version',
  'mem-prealloc',
  'audio-help',
  'snapshot',
  'usb',
  'nographic',
  'portrait',
  'full-screen',
  'win2k-hack',
  'no-fd-bootchk',
  'no-acpi',
  'no-hpet',
  'singlestep',
  'preconfig',
  'S',
  's',
  'enable-kvm',
  'xen-attach',
  'xen-domid-restrict',
  'no-reboot',
  'no-shutdown',
  'daemonize',
  'only-migratable',
  'nodefaults',
  'no-user-config',
  'enable-sync-profile',
  'sdl',
  'curses',
  'alt-grab',
  'ctrl-grab',
  'no-quit',
  'no-frame',
  'show-cursor',
  'enable-fips',
  'semihosting',
  'perfmap',
  'jitdump',
  'no-kvm',
  'no-kvm-irqchip',
  'no-kvm-pit',
  'no-kvm-pit-reinjection',
  'rtc-td-hack',
]);

/** One option: its name without dashes, where it sits, and its argument's position if it has one. */
export interface QemuOption {
  name: string;
  index: number;
  valueIndex?: number;
}

export interface WalkedCommandLine {
  options: QemuOption[];
  /** Bare arguments: QEMU treats the first as -hda's image. */
  positionals: number[];
}

export function walkCommandLine(args: readonly string[]): WalkedCommandLine {
  const options: QemuOption[] = [];
  const positionals: number[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith('-') || a === '-') {
      positionals.push(i);
      continue;
    }
    const name = a.replace(/^--?/, '');
    if (FLAGS.has(name) || i + 1 >= args.length) options.push({ name, index: i });
    else options.push({ name, index: i, valueIndex: ++i });
  }
  return { options, positionals };
}
