import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { EncryptionAlarm, entropy, DEFAULT_ALARM } from '../src/hub/encryption-alarm';

const TEXT = Buffer.from(
  'The quarterly report lists revenue by region, customer churn and the open support tickets.\n'.repeat(800),
);
const ZERO = Buffer.alloc(64 << 10);
const RANDOM = Array.from({ length: 16 }, () => randomBytes(64 << 10));
let turn = 0;
const random = () => RANDOM[turn++ % RANDOM.length];

/** Compressible data: half of each 4 KiB random, the rest repeated (a compressed file's head, say). */
function compressible(n: number): Buffer {
  const b = Buffer.alloc(n, 0x61);
  for (let o = 0; o < n; o += 4096) random().copy(b, o, 0, 2048);
  return b;
}
const COMPRESSIBLE = compressible(64 << 10);

interface Run {
  seconds: number;
  bytesPerSec: number;
  writeBytes: number;
  data: () => Buffer;
  old: () => Buffer;
}

/** Feed `seconds` of writes at a rate; the second (1-based) at which the alarm rose, or 0. */
function run(alarm: EncryptionAlarm, r: Run, t0 = 0): number {
  let raisedAt = 0;
  for (let s = 1; s <= r.seconds; s++) {
    for (let w = 0; w < r.bytesPerSec / r.writeBytes; w++) {
      if (alarm.due(r.writeBytes)) alarm.score(r.data().subarray(0, r.writeBytes), r.old());
      alarm.count(r.writeBytes);
    }
    alarm.tick(t0 + s * 1000);
    if (!raisedAt && alarm.status().active) raisedAt = s;
  }
  return raisedAt;
}

describe('encryption alarm', () => {
  it('entropy: random bytes near 8 bits, text near 4, zeroes 0', () => {
    assert.ok(entropy(randomBytes(1024)) > DEFAULT_ALARM.highEntropy);
    assert.ok(entropy(TEXT.subarray(0, 1024)) < DEFAULT_ALARM.lowEntropy);
    assert.equal(entropy(Buffer.alloc(1024)), 0);
  });

  it('random data over a text-filled volume at 20 MiB/s raises the alarm within a few seconds, once', () => {
    const events: [boolean, number][] = [];
    const a = new EncryptionAlarm(DEFAULT_ALARM, (on, start) => events.push([on, start]));
    const quiet = run(a, { seconds: 60, bytesPerSec: 2 << 20, writeBytes: 4096, data: () => TEXT, old: () => TEXT });
    assert.equal(quiet, 0, 'text over text is ordinary');
    const at = run(
      a,
      { seconds: 10, bytesPerSec: 20 << 20, writeBytes: 65536, data: () => random(), old: () => TEXT },
      60_000,
    );
    assert.ok(at > 0 && at <= DEFAULT_ALARM.sustainSecs + 1, `raised after ${at} s`);
    assert.deepEqual(events, [[true, 60_000]], 'raised once, dated at the start of the run');
    assert.equal(a.status().raised, 1);
    // The writes stop: the alarm ends and is remembered.
    run(a, { seconds: 2, bytesPerSec: 0, writeBytes: 4096, data: () => TEXT, old: () => TEXT }, 70_000);
    assert.equal(a.status().active, false);
    assert.ok(a.status().last, 'the ended alarm is kept for status');
  });

  for (const [name, r] of [
    ['random writes to fresh space', { data: () => random(), old: () => ZERO }],
    ['fio with compressible buffers over text', { data: () => COMPRESSIBLE, old: () => TEXT }],
    ['random over random (compressed files rewritten)', { data: () => random(), old: () => random() }],
  ] as const) {
    it(`does not trip on ${name} at 50 MiB/s`, () => {
      const a = new EncryptionAlarm();
      assert.equal(run(a, { seconds: 30, bytesPerSec: 50 << 20, writeBytes: 65536, ...r }), 0);
      assert.equal(a.status().suspiciousBps < DEFAULT_ALARM.minRateBps, true);
    });
  }

  it('samples at most maxSamplesPerSec writes a second', () => {
    const a = new EncryptionAlarm({ ...DEFAULT_ALARM, sampleEveryBytes: 4096, maxSamplesPerSec: 10 });
    let due = 0;
    for (let i = 0; i < 1000; i++) {
      if (a.due(4096)) {
        due++;
        a.score(TEXT, TEXT);
      }
      a.count(4096);
    }
    assert.equal(due, 10);
  });

  it('a volume whose baseline is high needs a larger spike', () => {
    const opts = { ...DEFAULT_ALARM, minRateBps: 1 << 20 };
    const susp = { writeBytes: 65536, data: () => random(), old: () => TEXT };
    const fresh = new EncryptionAlarm(opts);
    assert.ok(run(fresh, { seconds: 10, bytesPerSec: 2 << 20, ...susp }) > 0, 'no baseline: 2 MiB/s alarms');
    const used = new EncryptionAlarm(opts);
    // For long, 2 MiB/s of suspicious overwrites 2 s in every 10 (a nightly compaction, say).
    for (let i = 0; i < 100; i++) {
      run(used, { seconds: 2, bytesPerSec: 2 << 20, ...susp }, i * 10_000);
      run(used, { seconds: 8, bytesPerSec: 0, ...susp }, i * 10_000 + 2000);
    }
    assert.ok(used.status().baselineBps > 128 << 10, `baseline ${used.status().baselineBps}`);
    assert.equal(run(used, { seconds: 10, bytesPerSec: 2 << 20, ...susp }, 1e6), 0, 'within its baseline');
    assert.ok(run(used, { seconds: 10, bytesPerSec: 20 << 20, ...susp }, 2e6) > 0, 'a spike still alarms');
  });
});
