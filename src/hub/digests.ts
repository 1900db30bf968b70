// Region digests as SPEC.md 10 defines them (the first 16 bytes of SHA-256), compared with the
// agent's, and the checks every CHECKSUM_RES must pass against its request. Shared by online
// verify (verify.ts) and checksum resync (checksum-sync.ts); pure, no IO.
import { createHash } from 'node:crypto';
import { CHECKSUM_BYTES, IO_OK, ProtocolError } from '../../protocol';
import type { ChecksumRes } from '../../protocol';
import { assert } from '../assert';

/** True when the digest of `data` equals digest `i` of `digests`. */
export function digestMatches(data: Buffer, digests: Buffer, i: number): boolean {
  const ours = createHash('sha256').update(data).digest();
  return ours.compare(digests, i * CHECKSUM_BYTES, (i + 1) * CHECKSUM_BYTES, 0, CHECKSUM_BYTES) === 0;
}

/**
 * Compare `data` (`count` blocks of `blockBytes`, the last possibly shorter) with `count`
 * digests: one flag per block, true where the block differs.
 */
export function differingBlocks(data: Buffer, blockBytes: number, digests: Buffer): boolean[] {
  const count = digests.length / CHECKSUM_BYTES;
  assert(Number.isInteger(count) && data.length > (count - 1) * blockBytes, 'one digest per block of the data');
  const out = new Array<boolean>(count);
  for (let i = 0; i < count; i++) {
    const block = data.subarray(i * blockBytes, Math.min((i + 1) * blockBytes, data.length));
    out[i] = !digestMatches(block, digests, i);
  }
  return out;
}

/** Runs [first, last] (inclusive, block indexes) of the flags that are set. */
export function runsOf(flags: readonly boolean[]): [number, number][] {
  const runs: [number, number][] = [];
  for (let i = 0; i < flags.length; i++) {
    if (!flags[i]) continue;
    let j = i;
    while (j + 1 < flags.length && flags[j + 1]) j++;
    runs.push([i, j]);
    i = j;
  }
  return runs;
}

/** SPEC 5.12: a CHECKSUM_RES for another volume than its request, or with another count, is a protocol error. */
export function checkChecksumRes(m: ChecksumRes, volumeId: number, count: number): void {
  if (m.volumeId !== volumeId) {
    throw new ProtocolError(`CHECKSUM_RES ${m.reqId}: volume id ${m.volumeId}, request was for ${volumeId}`);
  }
  if (m.ioStatus === IO_OK && m.digests.length !== count * CHECKSUM_BYTES) {
    throw new ProtocolError(`CHECKSUM_RES ${m.reqId}: ${m.digests.length / CHECKSUM_BYTES} digests, asked ${count}`);
  }
}
