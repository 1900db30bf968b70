// Imports run one way: tools/ -> test/harness/ -> src/, protocol/, storage/. Nothing under test/
// imports from tools/, and the product never imports tests or tools. Scans the sources' import lines.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.join(__dirname, '../..'); // dist/test -> the checkout

/** Every .ts file under `dir`, recursively. */
function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(rel));
    else if (e.name.endsWith('.ts')) out.push(rel);
  }
  return out;
}

/** The modules a file imports (static imports, re-exports, require() and import()), resolved to checkout paths. */
function importsOf(file: string): string[] {
  const text = fs.readFileSync(path.join(ROOT, file), 'utf8');
  const re = /(?:\bfrom\s*|\brequire\(\s*|\bimport\(\s*|^\s*import\s+)['"]([^'"]+)['"]/gm;
  const out: string[] = [];
  for (let m = re.exec(text); m; m = re.exec(text)) {
    if (m[1].startsWith('.')) out.push(path.normalize(path.join(path.dirname(file), m[1])));
  }
  return out;
}

function violations(dirs: string[], forbidden: string[]): string[] {
  const bad: string[] = [];
  for (const file of dirs.flatMap(sources)) {
    for (const target of importsOf(file)) {
      if (forbidden.some((f) => target === f || target.startsWith(`${f}${path.sep}`)))
        bad.push(`${file} imports ${target}`);
    }
  }
  return bad;
}

describe('import direction (tools -> test/harness -> product)', () => {
  it('the scanner sees imports at all', () => {
    assert.ok(importsOf(path.join('tools', 'fuzz-hub.ts')).some((t) => t.startsWith(path.join('test', 'harness'))));
  });

  it('nothing under test/ imports from tools/', () => {
    assert.deepEqual(violations(['test'], ['tools']), []);
  });

  it('src/, protocol/ and storage/ import neither test/ nor tools/', () => {
    assert.deepEqual(violations(['src', 'protocol', 'storage'], ['test', 'tools']), []);
  });
});
