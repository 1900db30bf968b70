// A throw-away one-node Ceph cluster for tests: one mon and one OSD on memstore (RAM), pool
// size 1, no manager, cephx, on loopback ports of its own; ready in a few seconds. Needs
// Debian's ceph-mon, ceph-osd and ceph-common (.ci/run installs them).
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import { freePort } from './ports';
import { tmpdir, sleep } from './util';

export interface CephCluster {
  dir: string;
  conf: string; // ceph.conf for clients (CEPH_CONF)
  pool: string;
  /** Run a ceph CLI tool (ceph, rbd) against the cluster; its stdout. */
  run(tool: string, ...args: string[]): string;
  stop(): void;
}

function conf(dir: string, fsid: string, p2: number, p1: number, storeBytes: number): string {
  return `[global]
fsid = ${fsid}
mon host = [v2:127.0.0.1:${p2},v1:127.0.0.1:${p1}]
public network = 127.0.0.0/8
public addr = 127.0.0.1
ms bind ipv6 = false
keyring = ${dir}/keyring
run dir = ${dir}/run
pid file = ${dir}/run/$name.pid
log file = ${dir}/log/$name.log
crash dir = ${dir}/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
mon data avail warn = 2
mon data avail crit = 1
auth allow insecure global id reclaim = false
[mon]
admin socket = ${dir}/run/$name.asok
paxos propose interval = 0.1
paxos min wait = 0.01
mon data = ${dir}/mon/$id
mon initial members = a
[osd]
admin socket = ${dir}/run/$name.asok
osd data = ${dir}/osd/$id
osd objectstore = memstore
memstore device bytes = ${storeBytes}
osd op num shards = 2
osd op num threads per shard = 2
# A client that died (a hub killed with -9) keeps an image's exclusive lock until its watch
# times out; 30 s by default, shorter here so that takeover tests wait less.
osd client watch timeout = 10
`;
}

async function until(what: string, fn: () => boolean, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`ceph: timed out waiting for ${what}`);
    await sleep(250);
  }
}

/** Start a cluster with pool `pool` ready for RBD; stop() kills the daemons and deletes it. */
export async function startCeph(pool = 'rbd', storeBytes = 2 << 30): Promise<CephCluster> {
  const dir = tmpdir('rephub-ceph-');
  for (const d of ['run', 'log', 'mon/a', 'osd/0', 'crash']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  const [p2, p1] = [await freePort(), await freePort()];
  const fsid = randomUUID(),
    osdUuid = randomUUID();
  const cfg = path.join(dir, 'ceph.conf');
  fs.writeFileSync(cfg, conf(dir, fsid, p2, p1, storeBytes));
  const sh = (cmd: string, args: string[], timeout = 60_000) =>
    execFileSync(cmd, args, {
      encoding: 'utf8',
      timeout,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CEPH_CONF: cfg },
    });
  const keyring = path.join(dir, 'keyring');
  sh('ceph-authtool', [keyring, '--create-keyring', '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
  sh('ceph-authtool', [
    keyring,
    '--gen-key',
    '-n',
    'client.admin',
    '--cap',
    'mon',
    'allow *',
    '--cap',
    'osd',
    'allow *',
    '--cap',
    'mgr',
    'allow *',
  ]);
  sh('ceph-authtool', [
    keyring,
    '--gen-key',
    '-n',
    'osd.0',
    '--cap',
    'mon',
    'allow profile osd',
    '--cap',
    'osd',
    'allow *',
  ]);
  const monmap = path.join(dir, 'monmap');
  sh('monmaptool', [
    '--create',
    '--enable-all-features',
    '--fsid',
    fsid,
    '--addv',
    'a',
    `[v2:127.0.0.1:${p2},v1:127.0.0.1:${p1}]`,
    monmap,
  ]);
  sh('ceph-mon', ['-c', cfg, '--mkfs', '-i', 'a', '--monmap', monmap, '--keyring', keyring]);
  sh('ceph-mon', ['-c', cfg, '-i', 'a']); // daemonizes
  const cluster: CephCluster = {
    dir,
    conf: cfg,
    pool,
    run: (tool, ...args) => sh(tool, args),
    stop: () => {
      for (const f of ['osd.0.pid', 'mon.a.pid']) {
        try {
          process.kill(Number(fs.readFileSync(path.join(dir, 'run', f), 'utf8')), 'SIGKILL');
        } catch {
          /* not running */
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await until('mon quorum', () => ok(() => sh('ceph', ['mon', 'stat'], 5000)));
    const id = sh('ceph', ['osd', 'new', osdUuid]).trim();
    if (id !== '0') throw new Error(`ceph: unexpected osd id ${id}`);
    sh('ceph-osd', ['-c', cfg, '-i', '0', '--mkfs', '--osd-uuid', osdUuid]);
    sh('ceph-osd', ['-c', cfg, '-i', '0']);
    await until('osd.0 up', () => /"osd":0,"uuid":"[^"]*","up":1/.test(sh('ceph', ['osd', 'dump', '-f', 'json'])));
    sh('ceph', ['osd', 'pool', 'create', pool, '8', '8']);
    sh('rbd', ['pool', 'init', pool]);
  } catch (e) {
    const logs = fs
      .readdirSync(path.join(dir, 'log'))
      .map((f) => fs.readFileSync(path.join(dir, 'log', f), 'utf8').slice(-2000));
    cluster.stop();
    throw new Error(`${(e as Error).message}\n${logs.join('\n')}`, { cause: e });
  }
  return cluster;
}

function ok(fn: () => unknown): boolean {
  try {
    fn();
    return true;
  } catch {
    return false;
  }
}
