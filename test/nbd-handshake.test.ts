// The NBD handshake as pure functions (src/nbd/handshake.ts): every option's replies, next
// state and action, with no socket.
import { strict as assert } from 'node:assert';
import {
  initialState,
  clientFlags,
  optionHeader,
  handleOption,
  HandshakeConfig,
  HandshakeState,
  MAX_OPTIONS,
  TRANSMISSION_FLAGS,
} from '../src/nbd/handshake';
import type { NbdExport } from '../src/nbd/exports';
import {
  IHAVEOPT,
  OPT_REPLY_MAGIC,
  Opt,
  Rep,
  Info,
  REP_ERR_UNSUP,
  REP_ERR_UNKNOWN,
  REP_ERR_INVALID,
  REP_ERR_TLS_REQD,
  MAX_OPTION_LEN,
  MAX_REQUEST,
  CF_FIXED_NEWSTYLE,
  CF_NO_ZEROES,
} from '../protocol/nbd';

const V1: NbdExport = {
  name: 'V1',
  sizeBytes: 1 << 20,
  read: async () => {},
  write: async () => {},
  zero: async () => {},
  flush: async () => {},
};
const V2: NbdExport = { ...V1, name: 'V2' };
const catalog = { get: (n: string) => [V1, V2].find((e) => e.name === n), names: () => ['V1', 'V2'] };
const plain: HandshakeConfig = { tls: false, catalog };
const tlsRequired: HandshakeConfig = { tls: true, catalog };

interface Reply {
  opt: number;
  type: number;
  data: Buffer;
}
function parseReply(b: Buffer): Reply {
  assert.equal(b.readBigUInt64BE(0), OPT_REPLY_MAGIC);
  const len = b.readUInt32BE(16);
  assert.equal(b.length, 20 + len);
  return { opt: b.readUInt32BE(8), type: b.readUInt32BE(12), data: b.subarray(20) };
}
function goData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 4 + n.length + 2 + 2 * i));
  return b;
}
const ready = (config: HandshakeConfig): HandshakeState =>
  clientFlags(initialState(config.tls), CF_FIXED_NEWSTYLE) as HandshakeState;

describe('NBD handshake (pure)', () => {
  it('client flags: fixed newstyle required, NO_ZEROES remembered', () => {
    assert.match(clientFlags(initialState(false), 0) as string, /fixed newstyle/);
    const s = clientFlags(initialState(false), CF_FIXED_NEWSTYLE | CF_NO_ZEROES) as HandshakeState;
    assert.equal(s.noZeroes, true);
    assert.equal(s.secured, true);
    assert.equal(initialState(true).secured, false);
  });

  it('option header: magic checked, oversized option refused', () => {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(IHAVEOPT, 0);
    h.writeUInt32BE(Opt.GO, 8);
    h.writeUInt32BE(10, 12);
    assert.deepEqual(optionHeader(h), { opt: Opt.GO, length: 10 });
    h.writeUInt32BE(MAX_OPTION_LEN + 1, 12);
    assert.match(optionHeader(h) as string, /too long/);
    h.writeBigUInt64BE(1n, 0);
    assert.match(optionHeader(h) as string, /bad option magic/);
  });

  it('EXPORT_NAME: size and flags, 124 zero bytes unless NO_ZEROES; attaches', () => {
    const r = handleOption(ready(plain), Opt.EXPORT_NAME, Buffer.from('V1'), plain);
    assert.equal(r.action, 'attach');
    assert.equal(r.export, V1);
    assert.equal(r.replies.length, 1);
    assert.equal(r.replies[0].length, 10 + 124);
    assert.equal(Number(r.replies[0].readBigUInt64BE(0)), 1 << 20);
    assert.equal(r.replies[0].readUInt16BE(8), TRANSMISSION_FLAGS);
    const nz = clientFlags(initialState(false), CF_FIXED_NEWSTYLE | CF_NO_ZEROES) as HandshakeState;
    assert.equal(handleOption(nz, Opt.EXPORT_NAME, Buffer.from('V1'), plain).replies[0].length, 10);
  });

  it('EXPORT_NAME of an unknown export closes without a reply', () => {
    const r = handleOption(ready(plain), Opt.EXPORT_NAME, Buffer.from('nope'), plain);
    assert.equal(r.action, 'fatal');
    assert.equal(r.replies.length, 0);
    assert.match(r.reason!, /unknown export "nope"/);
  });

  for (const opt of [Opt.GO, Opt.INFO]) {
    const what = opt === Opt.GO ? 'GO' : 'INFO';
    const then = what === 'GO' ? 'attaches' : 'stays in options';
    it(`${what}: export and block-size infos then ACK, NAME only when asked; ${then}`, () => {
      for (const infos of [[], [Info.NAME]]) {
        const r = handleOption(ready(plain), opt, goData('V2', infos), plain);
        assert.equal(r.action, opt === Opt.GO ? 'attach' : 'continue');
        assert.equal(r.export, opt === Opt.GO ? V2 : undefined);
        const replies = r.replies.map(parseReply);
        assert.deepEqual(
          replies.map((x) => x.type),
          [...Array(infos.length ? 3 : 2).fill(Rep.INFO), Rep.ACK],
        );
        assert.ok(replies.every((x) => x.opt === opt));
        assert.equal(replies[0].data.readUInt16BE(0), Info.EXPORT);
        assert.equal(Number(replies[0].data.readBigUInt64BE(2)), 1 << 20);
        assert.equal(replies[0].data.readUInt16BE(10), TRANSMISSION_FLAGS);
        assert.equal(replies[1].data.readUInt16BE(0), Info.BLOCK_SIZE);
        assert.equal(replies[1].data.readUInt32BE(10), MAX_REQUEST);
        const name = Buffer.concat([Buffer.from([0, Info.NAME]), Buffer.from('V2')]);
        if (infos.length) assert.deepEqual(replies[2].data, name);
      }
    });
    it(`${what}: unknown export gets ERR_UNKNOWN, malformed data ERR_INVALID; the handshake goes on`, () => {
      const r = handleOption(ready(plain), opt, goData('nope'), plain);
      assert.equal(r.action, 'continue');
      assert.equal(parseReply(r.replies[0]).type, REP_ERR_UNKNOWN);
      assert.match(parseReply(r.replies[0]).data.toString(), /no export named "nope"/);
      const bad = handleOption(ready(plain), opt, Buffer.from([0, 0, 0, 9, 1]), plain);
      assert.equal(bad.action, 'continue');
      assert.equal(parseReply(bad.replies[0]).type, REP_ERR_INVALID);
    });
  }

  it('LIST: one SERVER reply per export then ACK; data is invalid', () => {
    const r = handleOption(ready(plain), Opt.LIST, Buffer.alloc(0), plain);
    const replies = r.replies.map(parseReply);
    assert.deepEqual(
      replies.map((x) => x.type),
      [Rep.SERVER, Rep.SERVER, Rep.ACK],
    );
    const names = replies.slice(0, 2).map((x) => x.data.subarray(4, 4 + x.data.readUInt32BE(0)).toString());
    assert.deepEqual(names, ['V1', 'V2']);
    assert.equal(r.action, 'continue');
    const withData = handleOption(ready(plain), Opt.LIST, Buffer.from('x'), plain);
    assert.equal(parseReply(withData.replies[0]).type, REP_ERR_INVALID);
  });

  it('ABORT: ACK, then the connection ends (allowed before STARTTLS too)', () => {
    for (const config of [plain, tlsRequired]) {
      const r = handleOption(ready(config), Opt.ABORT, Buffer.alloc(0), config);
      assert.equal(r.action, 'abort');
      assert.equal(parseReply(r.replies[0]).type, Rep.ACK);
    }
  });

  it('STARTTLS: unsupported without TLS; required before anything else with it; refused twice', () => {
    const unsup = handleOption(ready(plain), Opt.STARTTLS, Buffer.alloc(0), plain);
    assert.equal(unsup.action, 'continue');
    assert.equal(parseReply(unsup.replies[0]).type, REP_ERR_UNSUP);

    const s0 = ready(tlsRequired);
    const list = handleOption(s0, Opt.LIST, Buffer.alloc(0), tlsRequired);
    assert.equal(parseReply(list.replies[0]).type, REP_ERR_TLS_REQD);
    assert.equal(list.replies.length, 1);
    const go = handleOption(s0, Opt.GO, goData('V1'), tlsRequired);
    assert.equal(go.action, 'continue');
    assert.equal(parseReply(go.replies[0]).type, REP_ERR_TLS_REQD);
    const exportName = handleOption(s0, Opt.EXPORT_NAME, Buffer.from('V1'), tlsRequired);
    assert.equal(exportName.action, 'fatal');
    assert.match(exportName.reason!, /TLS required/);

    const up = handleOption(s0, Opt.STARTTLS, Buffer.alloc(0), tlsRequired);
    assert.equal(up.action, 'starttls');
    assert.equal(parseReply(up.replies[0]).type, Rep.ACK);
    assert.equal(up.next.secured, true);
    const twice = handleOption(up.next, Opt.STARTTLS, Buffer.alloc(0), tlsRequired);
    assert.equal(twice.action, 'continue');
    assert.equal(parseReply(twice.replies[0]).type, REP_ERR_INVALID);
    assert.equal(handleOption(twice.next, Opt.GO, goData('V1'), tlsRequired).action, 'attach');
  });

  it('an unknown option gets ERR_UNSUP and the handshake goes on', () => {
    const r = handleOption(ready(plain), 999, Buffer.alloc(3), plain);
    assert.equal(r.action, 'continue');
    assert.deepEqual(parseReply(r.replies[0]), { opt: 999, type: REP_ERR_UNSUP, data: Buffer.alloc(0) });
  });

  it(`more than ${MAX_OPTIONS} options close the connection`, () => {
    let s = ready(plain);
    for (let i = 0; i < MAX_OPTIONS; i++) {
      const r = handleOption(s, Opt.LIST, Buffer.alloc(0), plain);
      assert.equal(r.action, 'continue');
      s = r.next;
    }
    const r = handleOption(s, Opt.LIST, Buffer.alloc(0), plain);
    assert.equal(r.action, 'fatal');
    assert.match(r.reason!, /too many options/);
    assert.equal(r.replies.length, 0);
  });

  it('the state is never changed in place', () => {
    const s = ready(tlsRequired);
    const copy = { ...s };
    handleOption(s, Opt.STARTTLS, Buffer.alloc(0), tlsRequired);
    handleOption(s, Opt.LIST, Buffer.alloc(0), tlsRequired);
    assert.deepEqual(s, copy);
  });
});
