// QEMU's option-value syntax as pure functions: `key=value,key2=value2` lists where a comma
// inside a value is written twice (`file=a,,b.img` is the file "a,b.img"), an optional implied
// first key (`-name web1` is `-name guest=web1`), and -blockdev's JSON form. Owns nothing else:
// which options exist and what they mean is cmdline.ts's and plan.ts's business.

/** One `key=value` element, in command-line order; `value` undefined for a bare `key`. */
export type OptList = Array<[key: string, value: string | undefined]>;

/** Split on single commas (`,,` is a literal comma), then each element at its first `=`. */
export function parseOpts(text: string, impliedKey?: string): OptList {
  const elements: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] !== ',') cur += text[i];
    else if (text[i + 1] === ',') {
      cur += ',';
      i++;
    } else {
      elements.push(cur);
      cur = '';
    }
  }
  elements.push(cur);
  const out: OptList = [];
  elements.forEach((e, i) => {
    if (e === '') return; // QEMU ignores an empty element (a trailing comma)
    const eq = e.indexOf('=');
    if (eq >= 0) out.push([e.slice(0, eq), e.slice(eq + 1)]);
    else if (i === 0 && impliedKey) out.push([impliedKey, e]);
    else out.push([e, undefined]);
  });
  return out;
}

/** The inverse of parseOpts: commas in values doubled again. */
export function formatOpts(list: OptList): string {
  return list.map(([k, v]) => (v === undefined ? k : `${k}=${v.replace(/,/g, ',,')}`)).join(',');
}

/** The last value given for `key` (QEMU: the last one wins). */
export function optGet(list: OptList, key: string): string | undefined {
  for (let i = list.length - 1; i >= 0; i--) if (list[i][0] === key) return list[i][1] ?? 'on';
  return undefined;
}

/** `key` set to `value`: its first occurrence replaced in place, later ones dropped; else appended. */
export function optSet(list: OptList, key: string, value: string): OptList {
  const at = list.findIndex(([k]) => k === key);
  if (at < 0) return [...list, [key, value]];
  return list.flatMap((e, i) => (i === at ? [[key, value]] : e[0] === key ? [] : [e])) as OptList;
}

/** QEMU's boolean spellings (on/off, yes/no, true/false); a bare key is on. */
export function isOn(v: string | undefined): boolean {
  return v !== undefined && ['on', 'yes', 'true', 'y'].includes(v.toLowerCase());
}

/** A -blockdev value as a nested object, from JSON (`{...}`) or dotted keyval (`file.driver=file`). */
export type Tree = { [key: string]: string | number | boolean | null | Tree | unknown[] };

export function parseBlockdev(text: string): { tree: Tree; json: boolean } {
  if (text.trimStart().startsWith('{')) {
    const tree = JSON.parse(text) as unknown;
    if (tree === null || typeof tree !== 'object' || Array.isArray(tree)) throw new Error('not a JSON object');
    return { tree: tree as Tree, json: true };
  }
  const tree: Tree = {};
  for (const [key, value] of parseOpts(text)) {
    const parts = key.split('.');
    let node = tree;
    for (const p of parts.slice(0, -1)) {
      if (typeof node[p] !== 'object' || node[p] === null) node[p] = {};
      node = node[p] as Tree;
    }
    node[parts[parts.length - 1]] = value ?? 'on';
  }
  return { tree, json: false };
}

/** Back to the form it came in: JSON, or dotted keyval with commas doubled. */
export function formatBlockdev(tree: Tree, json: boolean): string {
  if (json) return JSON.stringify(tree);
  const flat: OptList = [];
  const walk = (node: Tree, prefix: string) => {
    for (const [k, v] of Object.entries(node)) {
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) walk(v as Tree, `${prefix}${k}.`);
      else flat.push([`${prefix}${k}`, String(v)]);
    }
  };
  walk(tree, '');
  return formatOpts(flat);
}

/** A tree value as QEMU reads it: "on", true and "true" alike. */
export function treeOn(v: unknown): boolean {
  return v === true || (typeof v === 'string' && isOn(v));
}
