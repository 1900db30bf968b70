// Wire constants of the rephub agent<->hub protocol (see protocol/SPEC.md).

export const MAGIC = 0x42485052; // bytes "RPHB" on the wire (little-endian u32)
export const HEADER_SIZE = 12; // magic u32, cmd u16, flags u16, length u32
export const SECTOR = 512;
export const PROTOCOL_VERSION = 1;

export enum Cmd {
  HELLO = 1,
  PROTECTED_WRITE = 2, // seed
  REPORT_VM_VOLUMES = 3, // seed
  START_PROTECT = 4, // seed
  REMOTE_IO_REQ = 5, // seed
  REMOTE_IO_RES = 6, // seed
  AGENT_SHUTDOWN = 7, // seed
  WRITE_ACK = 16,
  DIRTY_REPORT = 17,
  DIRTY_REPORT_ACK = 18,
  CHECKSUM_REQ = 19,
  CHECKSUM_RES = 20,
  FLUSH = 21,
  ERROR = 22,
  PING = 23,
  PONG = 24,
  IDENTITY = 25, // agent->hub, cap IDENTITY: instance id and volume identities (SPEC.md 5.16)
  STOP_PROTECT = 26, // hub->agent, cap STOP_PROTECT: the operator removed the volume from protection (SPEC.md 5.17)
  VOLUME_SIZE = 27, // both ways, cap RESIZE: hub asks for the image's size, the agent answers it, grown (SPEC.md 5.18)
  WRITE_APPLIED = 28, // hub->agent, cap APPLIED: writes up to seq are applied, not yet durable (SPEC.md 5.19)
  POINT = 29, // both ways, cap POINT: the hub asks for a consistent point, the agent marks one (SPEC.md 5.20)
}

/** Capability bits exchanged in HELLO; the session uses the intersection. */
export const Cap = {
  WRITE_ACK: 1 << 0, // hub acks durable protected writes by sequence number
  DIRTY_REPORT: 1 << 1, // agent reports its dirty extents; hub acks the hand-over
  CHECKSUM: 1 << 2, // region checksums for resync and verify
  FLUSH: 1 << 3, // flush/checkpoint markers
  PING: 1 << 4, // heartbeats
  ZEROES: 1 << 5, // a remote read of all-zero data may be answered with io_status IO_ZEROES and no data
  FRAME_CRC: 1 << 6, // after HELLO, frames carry a CRC-32 trailer (header flag FLAG_CRC)
  SPARSE: 1 << 7, // a remote read may be answered with io_status IO_SPARSE: a chunk map and only the non-zero chunks
  IDENTITY: 1 << 8, // the agent sends IDENTITY (instance id, volume UUIDs) before REPORT_VM_VOLUMES
  STOP_PROTECT: 1 << 9, // the hub may send STOP_PROTECT: mirror that volume no more on this connection
  RESIZE: 1 << 10, // VOLUME_SIZE: the hub asks, the agent grows the volume online and answers its size
  APPLIED: 1 << 11, // WRITE_APPLIED: the hub says, batched, how far it applied (the agent's lag bound drains on it)
  POINT: 1 << 12, // the agent marks consistent points on request, its markers behind its owed reports
  HOLES: 1 << 13, // DIRTY_REPORT frames with DIRTY_ZERO: extents that read as zero on the protected volume now
} as const;
export const ALL_CAPS =
  Cap.WRITE_ACK |
  Cap.DIRTY_REPORT |
  Cap.CHECKSUM |
  Cap.FLUSH |
  Cap.PING |
  Cap.ZEROES |
  Cap.FRAME_CRC |
  Cap.SPARSE |
  Cap.IDENTITY |
  Cap.STOP_PROTECT |
  Cap.RESIZE |
  Cap.APPLIED |
  Cap.POINT |
  Cap.HOLES;

/** Header flag: a 4-byte CRC-32 (zlib) of header + payload follows the payload (not counted in length). */
export const FLAG_CRC = 1;

/** DIRTY_REPORT flags. */
export const DIRTY_FINAL = 1; // last report of the reconnect hand-over for this volume
export const DIRTY_ZERO = 2; // cap HOLES: these extents read as zero now (holes); the hub zeroes them, no read

/** ERROR codes. */
export enum ErrorCode {
  PROTOCOL = 1, // malformed or oversized frame
  UNKNOWN_VOLUME = 2,
  OUT_OF_RANGE = 3,
  VOLUME_REFUSED = 4, // size mismatch, claimed by another agent, ...
  IO = 5,
  SHUTTING_DOWN = 6,
  UNAUTHORIZED = 7, // HELLO name differs from the authenticated identity, or volume bound to another VM
  TIMEOUT = 8, // the peer was silent past the dead-peer timeout (SPEC.md section 11), or never finished its handshake
}

/** The smallest max_payload a HELLO may announce (SPEC.md 6.3): any hub->agent frame but a remote write fits. */
export const MIN_MAX_PAYLOAD = 4096;

/** Hard limits: a frame over any of them closes the session before any large allocation. */
export const Limits = {
  maxPayload: 32 * 1024 * 1024 + 64, // largest data-bearing frame: 32 MiB of data plus fixed fields
  maxIoBytes: 32 * 1024 * 1024, // largest single protected write or remote IO
  maxVolumes: 256, // per REPORT_VM_VOLUMES
  maxNameBytes: 255, // volume and VM names (UTF-8 bytes)
  maxExtents: 65536, // per DIRTY_REPORT
  maxChecksumRegions: 4096, // per CHECKSUM_REQ
  maxErrorBytes: 1024,
} as const;

export const CHECKSUM_BYTES = 16; // truncated SHA-256 per region

/** io_status values; negative errno on failure, like the seed. */
export const IO_OK = 0;
/** REMOTE_IO_RES of a read (cap ZEROES): the range is all zeroes; no data follows. */
export const IO_ZEROES = 1;
/** REMOTE_IO_RES of a read (cap SPARSE): a chunk map, then only the chunks that hold data (protocol/sparse.ts). */
export const IO_SPARSE = 2;
export const SPARSE_CHUNK = 64 * 1024;
export const SPARSE_MAP_BYTES = 512; // one sector: bit i = chunk i present; 4096 chunks cover any read
