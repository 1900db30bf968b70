// Decoded message shapes. Offsets and sizes are in 512-byte sectors on the wire (as in the
// seed); volume ids are u64 on the wire and JS numbers here (checked <= 2^53-1 by the decoder).
import { Cmd } from './constants';
import type { Identity } from './identity';

export interface Hello {
  cmd: Cmd.HELLO;
  version: number;
  caps: number;
  maxPayload: number;
  name: string;
}
export interface ProtectedWrite {
  cmd: Cmd.PROTECTED_WRITE;
  volumeId: number;
  offsetSectors: number;
  sizeSectors: number;
  ioStatus: number;
  data: Buffer; // empty when ioStatus != 0
}
export interface VolumeInfo {
  name: string;
  sizeBytes: number;
}
export interface ReportVmVolumes {
  cmd: Cmd.REPORT_VM_VOLUMES;
  volumes: VolumeInfo[];
}
export interface StartProtect {
  cmd: Cmd.START_PROTECT;
  volumeId: number;
  name: string;
}
/** Same layout as START_PROTECT: the volume the agent stops mirroring on this connection. */
export interface StopProtect {
  cmd: Cmd.STOP_PROTECT;
  volumeId: number;
  name: string;
}
/** Hub->agent: what size is the volume now (the hub's size in sizeBytes)? Agent->hub: the answer. */
export interface VolumeSize {
  cmd: Cmd.VOLUME_SIZE;
  volumeId: number;
  sizeBytes: number;
}
export interface RemoteIoReq {
  cmd: Cmd.REMOTE_IO_REQ;
  reqId: number;
  sizeSectors: number;
  volumeId: number;
  offsetSectors: number;
  isRead: boolean;
  data: Buffer; // data only for writes
}
export interface RemoteIoRes {
  cmd: Cmd.REMOTE_IO_RES;
  reqId: number;
  ioStatus: number;
  volumeId: number;
  data: Buffer;
}
export interface AgentShutdown {
  cmd: Cmd.AGENT_SHUTDOWN;
}
export interface WriteAck {
  cmd: Cmd.WRITE_ACK;
  seq: number;
}
export interface WriteApplied {
  cmd: Cmd.WRITE_APPLIED;
  seq: number;
}
export interface Extent {
  offsetSectors: number;
  sizeSectors: number;
}
export interface DirtyReport {
  cmd: Cmd.DIRTY_REPORT;
  volumeId: number;
  reportId: number;
  flags: number;
  extents: Extent[];
}
export interface DirtyReportAck {
  cmd: Cmd.DIRTY_REPORT_ACK;
  volumeId: number;
  reportId: number;
}
export interface ChecksumReq {
  cmd: Cmd.CHECKSUM_REQ;
  reqId: number;
  regionSectors: number;
  volumeId: number;
  offsetSectors: number;
  count: number;
}
export interface ChecksumRes {
  cmd: Cmd.CHECKSUM_RES;
  reqId: number;
  ioStatus: number;
  volumeId: number;
  digests: Buffer;
}
export interface Flush {
  cmd: Cmd.FLUSH;
  checkpointId: number;
}
/** Hub->agent: a request (checkpointId 0). Agent->hub: a consistent point after write checkpointId. */
export interface Point {
  cmd: Cmd.POINT;
  checkpointId: number;
}
export interface ErrorMsg {
  cmd: Cmd.ERROR;
  code: number;
  message: string;
}
export interface Ping {
  cmd: Cmd.PING;
  nonce: number;
}
export interface Pong {
  cmd: Cmd.PONG;
  nonce: number;
}

export type Message =
  | Hello
  | ProtectedWrite
  | ReportVmVolumes
  | StartProtect
  | StopProtect
  | VolumeSize
  | RemoteIoReq
  | RemoteIoRes
  | AgentShutdown
  | WriteAck
  | WriteApplied
  | DirtyReport
  | DirtyReportAck
  | ChecksumReq
  | ChecksumRes
  | Flush
  | Point
  | ErrorMsg
  | Ping
  | Pong
  | Identity;
