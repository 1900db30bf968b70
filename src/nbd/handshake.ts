// The NBD fixed-newstyle handshake as pure functions (nbdkit's protocol-handshake-newstyle.c):
// the client's flags, each option header, and each option (state + option + data -> replies
// + next state + what the connection must do). No socket here; test/nbd-handshake.test.ts
// drives it directly.
import {
  optReply,
  infoExport,
  infoBlockSize,
  infoName,
  exportNameReply,
  parseGo,
  IHAVEOPT,
  CF_FIXED_NEWSTYLE,
  CF_NO_ZEROES,
  Opt,
  Rep,
  Info,
  REP_ERR_UNSUP,
  REP_ERR_UNKNOWN,
  REP_ERR_INVALID,
  REP_ERR_TLS_REQD,
  TF,
  MAX_OPTION_LEN,
  MAX_REQUEST,
} from '../../protocol/nbd';
import type { NbdExport } from './exports';

export const MAX_OPTIONS = 64; // options per handshake
export const OPTION_HEADER = 16;

/** What every export offers in transmission. */
export const TRANSMISSION_FLAGS =
  TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_TRIM | TF.SEND_WRITE_ZEROES | TF.CAN_MULTI_CONN;

export interface HandshakeState {
  readonly options: number; // options seen so far
  readonly secured: boolean; // TLS is up, or not required
  readonly noZeroes: boolean; // the client set NO_ZEROES
}

/** The exports the handshake may name. */
export interface ExportCatalog {
  get(name: string): NbdExport | undefined;
  names(): string[];
}

export interface HandshakeConfig {
  readonly tls: boolean; // STARTTLS offered, and required before anything else
  readonly catalog: ExportCatalog;
}

/**
 * After an option: 'continue' reads the next option; 'starttls' upgrades the socket after the
 * replies; 'abort' ends it gracefully after them; 'fatal' closes at once (no reply, `reason`
 * says why); 'attach' starts transmission on `export` after the replies.
 */
export type HandshakeAction = 'continue' | 'starttls' | 'abort' | 'fatal' | 'attach';

export interface OptionResult {
  readonly replies: Buffer[];
  readonly next: HandshakeState;
  readonly action: HandshakeAction;
  readonly export?: NbdExport;
  readonly reason?: string;
}

export function initialState(tls: boolean): HandshakeState {
  return { options: 0, secured: !tls, noZeroes: false };
}

/** The client's 4 flag bytes: the next state, or the reason to close. */
export function clientFlags(state: HandshakeState, flags: number): HandshakeState | string {
  if (!(flags & CF_FIXED_NEWSTYLE)) return 'client does not speak fixed newstyle';
  return { ...state, noZeroes: (flags & CF_NO_ZEROES) !== 0 };
}

/** A 16-byte option header: the option and its data length, or the reason to close. */
export function optionHeader(h: Buffer): { opt: number; length: number } | string {
  if (h.readBigUInt64BE(0) !== IHAVEOPT) return 'bad option magic';
  const opt = h.readUInt32BE(8),
    length = h.readUInt32BE(12);
  if (length > MAX_OPTION_LEN) return `option ${opt} of ${length} bytes is too long`;
  return { opt, length };
}

/** One option with its data. */
export function handleOption(state: HandshakeState, opt: number, data: Buffer, config: HandshakeConfig): OptionResult {
  const next = { ...state, options: state.options + 1 };
  if (next.options > MAX_OPTIONS) return fatal(next, 'too many options');
  if (opt === Opt.STARTTLS) return startTls(next, config);
  if (!next.secured && opt !== Opt.ABORT) {
    if (opt === Opt.EXPORT_NAME) return fatal(next, 'TLS required: EXPORT_NAME before STARTTLS');
    return reply(next, optReply(opt, REP_ERR_TLS_REQD));
  }
  switch (opt) {
    case Opt.EXPORT_NAME:
      return exportName(next, data, config.catalog);
    case Opt.ABORT:
      return { replies: [optReply(opt, Rep.ACK)], next, action: 'abort' };
    case Opt.LIST:
      return list(next, data, config.catalog);
    case Opt.INFO:
    case Opt.GO:
      return info(next, opt, data, config.catalog);
    default:
      return reply(next, optReply(opt, REP_ERR_UNSUP));
  }
}

function reply(next: HandshakeState, ...replies: Buffer[]): OptionResult {
  return { replies, next, action: 'continue' };
}

function fatal(next: HandshakeState, reason: string): OptionResult {
  return { replies: [], next, action: 'fatal', reason };
}

function startTls(next: HandshakeState, config: HandshakeConfig): OptionResult {
  if (!config.tls) return reply(next, optReply(Opt.STARTTLS, REP_ERR_UNSUP));
  if (next.secured) return reply(next, optReply(Opt.STARTTLS, REP_ERR_INVALID));
  // Nothing more can arrive in plaintext: the next option comes through TLS.
  return { replies: [optReply(Opt.STARTTLS, Rep.ACK)], next: { ...next, secured: true }, action: 'starttls' };
}

function exportName(next: HandshakeState, data: Buffer, catalog: ExportCatalog): OptionResult {
  const name = data.toString('utf8');
  const exp = catalog.get(name);
  if (!exp) return fatal(next, `unknown export "${name}"`);
  const replies = [exportNameReply(exp.sizeBytes, TRANSMISSION_FLAGS, next.noZeroes)];
  return { replies, next, action: 'attach', export: exp };
}

function list(next: HandshakeState, data: Buffer, catalog: ExportCatalog): OptionResult {
  if (data.length) return reply(next, optReply(Opt.LIST, REP_ERR_INVALID));
  const replies: Buffer[] = [];
  for (const name of catalog.names()) {
    const n = Buffer.from(name, 'utf8');
    const d = Buffer.alloc(4 + n.length);
    d.writeUInt32BE(n.length, 0);
    n.copy(d, 4);
    replies.push(optReply(Opt.LIST, Rep.SERVER, d));
  }
  replies.push(optReply(Opt.LIST, Rep.ACK));
  return { replies, next, action: 'continue' };
}

/** INFO and GO answer alike; GO then starts transmission. */
function info(next: HandshakeState, opt: number, data: Buffer, catalog: ExportCatalog): OptionResult {
  const go = parseGo(data);
  if (!go) return reply(next, optReply(opt, REP_ERR_INVALID));
  const exp = catalog.get(go.name);
  if (!exp) return reply(next, optReply(opt, REP_ERR_UNKNOWN, Buffer.from(`no export named "${go.name}"`)));
  const replies = [
    optReply(opt, Rep.INFO, infoExport(exp.sizeBytes, TRANSMISSION_FLAGS)),
    optReply(opt, Rep.INFO, infoBlockSize(1, 4096, MAX_REQUEST)),
  ];
  if (go.infos.includes(Info.NAME)) replies.push(optReply(opt, Rep.INFO, infoName(exp.name)));
  replies.push(optReply(opt, Rep.ACK));
  if (opt === Opt.INFO) return { replies, next, action: 'continue' };
  return { replies, next, action: 'attach', export: exp };
}
