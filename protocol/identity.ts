// The IDENTITY frame (cap IDENTITY, agent->hub, SPEC.md 5.16): the agent process's instance id
// and, per protected volume, its identity lineage (the current volume UUID, then its ancestors).
// Pure codec: bytes in, message out, ProtocolError on anything malformed.
import { Cmd, HEADER_SIZE, Limits } from './constants';
import { ProtocolError } from './errors';

export const UUID_BYTES = 16;
/** Most UUIDs a volume's lineage may carry (current + ancestors). */
export const MAX_LINEAGE = 4;

export interface VolumeIdentity {
  name: string;
  /** lineage[0]: the volume's current UUID; then its ancestors, newest first (1..MAX_LINEAGE). */
  lineage: Buffer[];
}
export interface Identity {
  cmd: Cmd.IDENTITY;
  instanceId: Buffer; // 16 random bytes, one per agent process
  volumes: VolumeIdentity[];
}

const strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** payload: instance_id[16], count u32, then per volume: name_len u16, name, n u16, n x uuid[16]. */
export function encodeIdentity(instanceId: Buffer, volumes: VolumeIdentity[]): Buffer {
  if (instanceId.length !== UUID_BYTES) throw new RangeError(`instance id must be ${UUID_BYTES} bytes`);
  if (volumes.length > Limits.maxVolumes)
    throw new RangeError(`${volumes.length} volumes exceeds ${Limits.maxVolumes}`);
  const names = volumes.map((v) => Buffer.from(v.name, 'utf8'));
  let len = UUID_BYTES + 4;
  volumes.forEach((v, i) => {
    if (names[i].length === 0 || names[i].length > Limits.maxNameBytes)
      throw new RangeError(`name "${v.name}" must be 1..${Limits.maxNameBytes} bytes`);
    if (v.lineage.length === 0 || v.lineage.length > MAX_LINEAGE || v.lineage.some((u) => u.length !== UUID_BYTES))
      throw new RangeError(`volume ${v.name}: lineage of 1..${MAX_LINEAGE} UUIDs of ${UUID_BYTES} bytes`);
    len += 4 + names[i].length + UUID_BYTES * v.lineage.length;
  });
  const b = Buffer.alloc(HEADER_SIZE + len);
  b.writeUInt32LE(0x42485052, 0);
  b.writeUInt16LE(Cmd.IDENTITY, 4);
  b.writeUInt32LE(len, 8);
  let o = HEADER_SIZE + instanceId.copy(b, HEADER_SIZE);
  o = b.writeUInt32LE(volumes.length, o);
  volumes.forEach((v, i) => {
    o = b.writeUInt16LE(names[i].length, o);
    o += names[i].copy(b, o);
    o = b.writeUInt16LE(v.lineage.length, o);
    for (const u of v.lineage) o += u.copy(b, o);
  });
  return b;
}

export function decodeIdentity(p: Buffer): Identity {
  const need = (o: number, n: number) => {
    if (o + n > p.length) throw new ProtocolError(`truncated IDENTITY (${p.length} bytes)`);
  };
  need(0, UUID_BYTES + 4);
  const instanceId = Buffer.from(p.subarray(0, UUID_BYTES));
  const count = p.readUInt32LE(UUID_BYTES);
  if (count > Limits.maxVolumes) throw new ProtocolError(`IDENTITY: ${count} volumes exceeds ${Limits.maxVolumes}`);
  let o = UUID_BYTES + 4;
  const volumes: VolumeIdentity[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < count; i++) {
    need(o, 2);
    const nameLen = p.readUInt16LE(o);
    if (nameLen === 0 || nameLen > Limits.maxNameBytes)
      throw new ProtocolError(`IDENTITY: name length ${nameLen} out of 1..${Limits.maxNameBytes}`);
    need(o + 2, nameLen + 2);
    let name: string;
    try {
      name = strict.decode(p.subarray(o + 2, o + 2 + nameLen));
    } catch {
      throw new ProtocolError('IDENTITY: name is not valid UTF-8');
    }
    o += 2 + nameLen;
    const n = p.readUInt16LE(o);
    if (n === 0 || n > MAX_LINEAGE)
      throw new ProtocolError(`IDENTITY: volume ${name}: ${n} UUIDs, expected 1..${MAX_LINEAGE}`);
    need(o + 2, n * UUID_BYTES);
    o += 2;
    const lineage: Buffer[] = [];
    for (let k = 0; k < n; k++, o += UUID_BYTES) lineage.push(Buffer.from(p.subarray(o, o + UUID_BYTES)));
    if (seen.has(name)) throw new ProtocolError(`IDENTITY: volume ${name} named twice`);
    seen.add(name);
    volumes.push({ name, lineage });
  }
  if (o !== p.length) throw new ProtocolError(`IDENTITY: payload ${p.length} bytes, expected ${o}`);
  return { cmd: Cmd.IDENTITY, instanceId, volumes };
}
