// The heap flags (src/cli/heap-flags.ts) live where nothing can import them: the bins' first
// lines and `npm start`. They must say the same, in the sources and in the build npm installs.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HEAP_FLAGS, SHEBANG, missingHeapFlags } from '../src/cli/heap-flags';

const ROOT = path.join(__dirname, '../..'); // dist/test -> the checkout
const firstLine = (file: string) => fs.readFileSync(path.join(ROOT, file), 'utf8').split('\n')[0];

describe('heap flags', () => {
  it('the hub and agent bins start Node with them, in source and build', () => {
    assert.ok(HEAP_FLAGS.length > 0);
    for (const bin of ['rephub', 'rephub-agent']) {
      assert.equal(firstLine(`src/cli/${bin}.ts`), SHEBANG, bin);
      assert.equal(firstLine(`dist/src/cli/${bin}.js`), SHEBANG, `${bin} (built)`);
    }
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    for (const bin of ['rephub', 'rephub-agent']) assert.equal(firstLine(pkg.bin[bin]), SHEBANG, `npm installs ${bin}`);
    assert.ok(
      HEAP_FLAGS.every((f) => pkg.scripts.start.split(' ').includes(f)),
      '`npm start` passes them',
    );
  });

  it('names the flags a process lacks', () => {
    assert.deepEqual(missingHeapFlags([...HEAP_FLAGS, '--inspect']), []);
    assert.deepEqual(missingHeapFlags([]), [...HEAP_FLAGS]);
    const name = HEAP_FLAGS[0].split('=')[0];
    assert.deepEqual(missingHeapFlags([`${name}=512`]), [], 'a larger value');
    assert.deepEqual(missingHeapFlags([`${name.replace(/-/g, '_').replace(/^__/, '--')}=96`]), [], 'V8 spelling');
  });
});
