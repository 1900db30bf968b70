// The one impure input of the planner: what is at an image path (kind, size, writability)
// and which format its header names, as QEMU's own probe would see it. Unknown header: raw.
import * as fs from 'node:fs';
import type { ImageProbe } from './disk-checks';

/** Header magics of the formats QEMU probes, at offset 0 (first bytes of the image). */
const MAGICS: Array<[format: string, magic: Buffer]> = [
  ['qcow2', Buffer.from([0x51, 0x46, 0x49, 0xfb])], // "QFI\xfb": qcow and qcow2
  ['qed', Buffer.from('QED\0', 'latin1')],
  ['vhdx', Buffer.from('vhdxfile', 'latin1')],
  ['vmdk', Buffer.from('KDMV', 'latin1')],
  ['vmdk', Buffer.from('# Disk DescriptorFile', 'latin1')],
  ['vpc', Buffer.from('conectix', 'latin1')],
  ['vdi', Buffer.from('<<< ', 'latin1')],
  ['luks', Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe])],
  ['parallels', Buffer.from('WithoutFreeSpace', 'latin1')],
  ['parallels', Buffer.from('WithouFreSpacExt', 'latin1')],
  ['bochs', Buffer.from('Bochs Virtual HD Image', 'latin1')],
  ['cloop', Buffer.from('#!/bin/sh\n#V2.0 Format', 'latin1')],
];

export function probeImage(file: string): ImageProbe {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? { kind: 'missing' } : { kind: 'other', error: (e as Error).message };
  }
  if (!st.isFile() && !st.isBlockDevice()) return { kind: 'other' };
  let fd: number;
  try {
    fd = fs.openSync(file, 'r+');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EROFS' || code === 'EPERM')
      return { kind: 'file', writable: false, ...head(file) };
    return { kind: 'other', error: (e as Error).message };
  }
  try {
    // A block device's size is the agent's to read (fstat says 0); its check names the volume too.
    const size = st.isFile() ? st.size : undefined;
    return { kind: st.isFile() ? 'file' : 'block', writable: true, sizeBytes: size, format: formatOf(fd) };
  } finally {
    fs.closeSync(fd);
  }
}

function head(file: string): { format?: string } {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      return { format: formatOf(fd) };
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return {};
  }
}

function formatOf(fd: number): string | undefined {
  const b = Buffer.alloc(64);
  const n = fs.readSync(fd, b, 0, b.length, 0);
  return MAGICS.find(([, m]) => n >= m.length && b.subarray(0, m.length).equals(m))?.[0];
}
