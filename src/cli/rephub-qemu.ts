#!/usr/bin/env node
// rephub-qemu: runs a QEMU command line with the seed's `-repagent host[:port][,…]` option.
// It takes the option out, starts the agent (qemu-agent.ts) for the VM's writable raw disks,
// points those disks at the agent's NBD exports on a UNIX socket in a private runtime
// directory, runs QEMU with everything else unchanged, and stops the agent once QEMU exits.
// Its exit status is QEMU's. The command-line work is src/qemu/'s pure functions.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { planQemu, QemuPlan } from '../qemu/plan';
import { probeImage } from '../qemu/probe';
import { QemuAgent, agentArgs } from './qemu-agent';
import { UNIX_PATH_MAX } from './listen-addr';
import { probeHub, watchRefusal } from './qemu-hub-check';
import { VERSION } from './version';

const FORWARDED = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

export const HELP = `usage: rephub-qemu QEMU-BINARY [qemu options] -repagent host[:port][,...]
       rephub-qemu --version

Runs QEMU with the VM's writable raw disks replicated to a rephub hub: the one option
below is taken out, every other argument goes to QEMU unchanged.

Replication options:
-repagent host[:port][,psk-file=file][,tls-cert=file,tls-key=file,tls-ca=file]
          [,tls-servername=name][,state=dir]
                replicate the VM's disks to the rephub hub at host:port (default port 7000)
                psk-file=file TLS with a pre-shared key: identity:hexkey lines, identity = the VM name
                tls-cert=file,tls-key=file,tls-ca=file TLS with certificates (CN = the VM name)
                tls-servername=name name to verify in the hub's certificate (default: host)
                state=dir directory for the agent's dirty logs and log file
                (default: /var/lib/rephub-qemu as root, else $XDG_STATE_HOME/rephub-qemu)
                protected: -drive file=PATH with format=raw (or no format and no other format's
                header: it then gets format=raw), -blockdev driver=file|host_device under a
                driver=raw node; each becomes nbd+unix:///VOLUME?socket=... on the agent
                VOLUME (the hub's --vol name): the drive's id= or node-name=, else the image's
                base name without extension; the VM (the agent's --vm): -name, else the first
                image's base name; all of a VM's disks are one consistency group
                not protected, passed through with one line each: read-only, media=cdrom,
                snapshot=on or -snapshot, network URLs, -hda/-cdrom shorthands
                refused: a writable qcow2 (or other non-raw) image
                a hub that is down, or refuses the agent (a wrong key, no such volume), does
                not stop the VM: one warning line; its writes are kept as dirty regions
                if rephub-qemu is killed, the agent serves QEMU on until QEMU exits
`;

const say = (line: string) => process.stderr.write(`rephub-qemu: ${line}\n`);

function defaultStateDir(): string {
  if (process.getuid?.() === 0) return '/var/lib/rephub-qemu';
  const base = process.env.XDG_STATE_HOME || path.join(os.homedir(), '.local', 'state');
  return path.join(base, 'rephub-qemu');
}

/** A private (0700) directory for the sockets, short and plain enough for a socket path in a URI. */
function runtimeDir(): string {
  const fits = (d: string) => /^[A-Za-z0-9._/-]+$/.test(d) && d.length + 40 <= UNIX_PATH_MAX;
  const xdg = process.env.XDG_RUNTIME_DIR;
  const base = xdg && fits(xdg) && fs.existsSync(xdg) ? xdg : fits(os.tmpdir()) ? os.tmpdir() : '/tmp';
  return fs.mkdtempSync(path.join(base, 'rephub-qemu-'));
}

function exitStatus(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  return 128 + (signal ? (os.constants.signals[signal] ?? 0) : 0);
}

async function run(argv: string[]): Promise<number> {
  const [qemu, ...args] = argv;
  const plan = planQemu(args, probeImage);
  for (const n of plan.notes) say(n);
  const dir = runtimeDir();
  const state = path.resolve(plan.repagent.state ?? defaultStateDir());
  const paths = {
    socket: path.join(dir, 'nbd.sock'),
    httpSocket: path.join(dir, 'agent.sock'),
    state,
    logFile: path.join(state, `${plan.vm}.agent.log`),
  };
  const cleanup = () => fs.rmSync(dir, { recursive: true, force: true });
  const agent = new QemuAgent(agentArgs(plan, paths), paths.logFile);
  const hubWarning = probeHub(plan); // said once the agent serves: an agent error is the one line otherwise
  const early = () => void agent.stop().then(() => (cleanup(), process.exit(130)));
  for (const sig of FORWARDED) process.once(sig, early);
  try {
    await agent.start();
  } catch (e) {
    cleanup();
    throw new Error(`${describe(plan, (e as Error).message)}; QEMU not started`, { cause: e });
  }
  for (const sig of FORWARDED) process.removeListener(sig, early);
  let qemuGone = false;
  // one warning at most: the hub unreachable, else the hub refusing the agent in the first seconds
  void hubWarning.then((w) => w ?? watchRefusal(plan, paths.httpSocket, () => qemuGone)).then((w) => w && say(w));
  const vols = plan.disks.map((d) => `${d.volume}=${d.image}`).join(', ');
  say(
    `VM ${plan.vm}: protecting ${vols} through hub ${plan.repagent.host}:${plan.repagent.port} (agent log ${paths.logFile})`,
  );
  const status = await runQemu(qemu, plan.rewrite(paths.socket), agent);
  qemuGone = true;
  const stopped = await agent.stop();
  if (stopped.killed) say(`warning: the agent did not stop within 30 s and was killed; log: ${paths.logFile}`);
  else if (stopped.code !== 0) say(`warning: the agent exited with status ${stopped.code}; log: ${paths.logFile}`);
  cleanup();
  return status;
}

/** The agent's error, prefixed with the disk it names when it names one. */
function describe(plan: QemuPlan, cause: string): string {
  const d = plan.disks.find((x) => cause.includes(x.image) || new RegExp(`\\b${x.volume}\\b`).test(cause));
  return d ? `${d.what}: the agent cannot serve it: ${cause}` : `the agent did not start: ${cause}`;
}

/** QEMU in the foreground; SIGINT/SIGTERM/SIGHUP go to it; resolves with its exit status. */
function runQemu(qemu: string, args: string[], agent: QemuAgent): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(qemu, args, { stdio: 'inherit' });
    if (child.pid !== undefined) agent.qemuStarted(child.pid);
    const forward = (sig: NodeJS.Signals) => child.kill(sig);
    for (const sig of FORWARDED) process.on(sig, forward);
    let done = false;
    agent.onUnexpectedExit(() => {
      if (!done)
        say(
          `error: the agent exited (${agent.exit?.signal ?? agent.exit?.code}) while QEMU runs; log: ${agent.logFile}`,
        );
    });
    child.on('error', (e) => {
      done = true;
      say(`cannot run ${qemu}: ${e.message}`);
      resolve(127);
    });
    child.on('exit', (code, signal) => {
      done = true;
      for (const sig of FORWARDED) process.removeListener(sig, forward);
      resolve(exitStatus(code, signal));
    });
  });
}

function main(argv: string[]): void {
  if (argv[0] === '--version' || argv[0] === '-V') {
    process.stdout.write(`${VERSION}\n`);
    process.exit(0);
  }
  if (argv.length === 0 || ['-h', '-help', '--help'].includes(argv[0])) {
    process.stdout.write(HELP);
    process.exit(argv.length === 0 ? 1 : 0);
  }
  run(argv).then(
    (status) => process.exit(status),
    (e: Error) => {
      say(e.message);
      process.exit(2);
    },
  );
}

main(process.argv.slice(2));
