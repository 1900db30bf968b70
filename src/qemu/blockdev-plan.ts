// -blockdev disks (keyval or JSON, as libvirt writes them): a `driver=raw` node over a
// `driver=file` (or `host_device`) node, given as a separate node or inline, becomes a raw
// node over `driver=nbd` on the agent's UNIX socket. A file node under a writable node of
// another format is refused; one under a read-only node, or under nothing we know, is noted.
import type { QemuOption } from './cmdline';
import { parseBlockdev, formatBlockdev, treeOn, Tree } from './opts';
import { checkImage, volumeName, PlanContext } from './disk-checks';

interface Node {
  at: number;
  tree: Tree;
  json: boolean;
}

const PROTOCOLS = new Set(['file', 'host_device']);
/** Options of a file node that mean the same on the NBD node that replaces it. */
const KEEP = ['node-name', 'cache', 'read-only', 'auto-read-only', 'discard', 'detect-zeroes', 'force-share'];
/** libvirt's generated node names (libvirt-1-format) change with the domain: the image names the volume. */
const LIBVIRT_NODE = /^libvirt-\d+-(format|storage)$/;
/** Keys by which one node refers to another. */
const CHILD_KEYS = ['file', 'backing', 'data-file', 'image', 'child'];

export function planBlockdevs(ctx: PlanContext, options: QemuOption[]): void {
  const nodes = options.map((o) => parseNode(ctx.args[o.valueIndex!], o.valueIndex!));
  const byName = new Map<string, Node>();
  for (const n of nodes) if (typeof n.tree['node-name'] === 'string') byName.set(n.tree['node-name'], n);
  const referenced = new Set<Node>();
  for (const parent of nodes) {
    for (const key of CHILD_KEYS) {
      const ref = parent.tree[key];
      const child = typeof ref === 'string' ? byName.get(ref) : undefined;
      if (child) referenced.add(child);
    }
    const ref = parent.tree.file;
    const inline = ref !== null && typeof ref === 'object' && !Array.isArray(ref) ? (ref as Tree) : undefined;
    const child = typeof ref === 'string' ? byName.get(ref) : undefined;
    const file = inline ?? child?.tree;
    if (!file || !PROTOCOLS.has(String(file.driver))) continue;
    planParent(ctx, parent, file, child);
  }
  for (const n of nodes)
    if (PROTOCOLS.has(String(n.tree.driver)) && !referenced.has(n))
      ctx.notes.push(`${nodeLabel(n.tree)}: not protected (not under a driver=raw node)`);
}

function parseNode(text: string, at: number): Node {
  try {
    return { at, ...parseBlockdev(text) };
  } catch (e) {
    throw new Error(`-blockdev ${text}: ${(e as Error).message}`, { cause: e });
  }
}

function nodeLabel(file: Tree): string {
  const name = typeof file['node-name'] === 'string' ? `node-name=${file['node-name']}` : 'driver=file';
  return `-blockdev ${name} (${String(file.filename)})`;
}

/** A format node over a file node: tap it when the format is raw and neither is read-only. */
function planParent(ctx: PlanContext, parent: Node, file: Tree, child: Node | undefined): void {
  const label = nodeLabel(file);
  const image = String(file.filename);
  const format = String(parent.tree.driver);
  if (treeOn(parent.tree['read-only']) || treeOn(file['read-only'])) {
    ctx.notes.push(`${label}: not protected (read-only)`);
    return;
  }
  checkImage(ctx.probe, image, label, format);
  const own = [parent.tree['node-name'], file['node-name']].find((n) => typeof n === 'string' && !LIBVIRT_NODE.test(n));
  const volume = volumeName(own as string | undefined, image, label);
  ctx.disks.push({ volume, image, what: label });
  if (child) ctx.edits.set(child.at, (socket) => formatBlockdev(nbdNode(file, volume, socket), child.json));
  else
    ctx.edits.set(parent.at, (socket) =>
      formatBlockdev({ ...parent.tree, file: nbdNode(file, volume, socket) }, parent.json),
    );
}

function nbdNode(file: Tree, volume: string, socket: string): Tree {
  const out: Tree = {};
  if (file['node-name'] !== undefined) out['node-name'] = file['node-name'];
  Object.assign(out, { driver: 'nbd', server: { type: 'unix', path: socket }, export: volume });
  for (const k of KEEP) if (k !== 'node-name' && file[k] !== undefined) out[k] = file[k];
  return out;
}
