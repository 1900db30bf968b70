#!/usr/bin/env node
// Import direction: protocol/ and storage/ (and native/, the addon loader both use) import
// nothing from src/, test/ or tools/, so the wire format and the persistence layer stay usable
// without the hub or agent. Import cycles are madge's job (npm run lint:imports runs both).
// Plain JavaScript, no build step: it runs before tsc in CI and reads the .ts sources.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const LOWER = ['protocol', 'storage', 'native']; // the layers that must not reach up
const FORBIDDEN = ['src', 'test', 'tools'];
// static imports and re-exports, side-effect imports, require() and import()
const SPECIFIER = /(?:\bfrom\s*|\bimport\s*|\brequire\s*\(\s*|\bimport\s*\(\s*)['"]([^'"]+)['"]/g;

function sources(dir) {
  const out = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(p));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

const bad = [];
for (const layer of LOWER) {
  const dir = path.join(root, layer);
  if (!fs.existsSync(dir)) continue;
  for (const file of sources(dir)) {
    const text = fs.readFileSync(file, 'utf8');
    for (const m of text.matchAll(SPECIFIER)) {
      if (!m[1].startsWith('.')) continue; // a package or a node: builtin
      const target = path.relative(root, path.resolve(path.dirname(file), m[1]));
      const top = target.split(path.sep)[0];
      if (FORBIDDEN.includes(top)) bad.push(`${path.relative(root, file)} imports ${m[1]} (${top}/)`);
    }
  }
}
if (bad.length) {
  console.error(`import direction: ${LOWER.join('/, ')}/ may not import from ${FORBIDDEN.join('/, ')}/:`);
  for (const b of bad) console.error(`  ${b}`);
  process.exit(1);
}
console.log(`import direction ok: ${LOWER.join('/, ')}/ import nothing from ${FORBIDDEN.join('/, ')}/`);
