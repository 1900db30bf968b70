// rephub-qemu's command-line work as pure functions (src/qemu/): QEMU's option syntax, the
// -repagent value, the walk over QEMU's options, and the plan: which disks are tapped, which
// pass through with a note, which are refused, and the command line QEMU then gets.
import { strict as assert } from 'node:assert';
import { parseOpts, formatOpts, optGet, optSet, parseBlockdev, formatBlockdev } from '../src/qemu/opts';
import { parseRepagent } from '../src/qemu/repagent';
import { walkCommandLine } from '../src/qemu/cmdline';
import { planQemu, ImageProbe } from '../src/qemu/plan';

const SOCK = '/run/rq/nbd.sock';
const uri = (v: string) => `nbd+unix:///${v}?socket=${SOCK}`;
/** Every image exists, is writable raw of 1 MiB, unless listed. */
const probe =
  (special: Record<string, ImageProbe> = {}) =>
  (file: string): ImageProbe =>
    special[file] ?? { kind: 'file', writable: true, sizeBytes: 1 << 20 };
const REP = ['-repagent', 'host2'];

describe('QEMU option syntax', () => {
  it('doubled commas are one comma inside a value, and come back doubled', () => {
    const l = parseOpts('file=/vm/a,,b.img,format=raw,if=virtio');
    assert.deepEqual(l, [
      ['file', '/vm/a,b.img'],
      ['format', 'raw'],
      ['if', 'virtio'],
    ]);
    assert.equal(formatOpts(l), 'file=/vm/a,,b.img,format=raw,if=virtio');
  });
  it('an implied first key (-name web1), bare keys, a trailing comma, the last value wins', () => {
    assert.deepEqual(parseOpts('web1,debug-threads=on', 'guest'), [
      ['guest', 'web1'],
      ['debug-threads', 'on'],
    ]);
    assert.deepEqual(parseOpts('a=1,flag,', undefined), [
      ['a', '1'],
      ['flag', undefined],
    ]);
    assert.equal(optGet(parseOpts('id=a,id=b'), 'id'), 'b');
    assert.equal(optGet(parseOpts('x,snapshot'), 'snapshot'), 'on');
  });
  it('optSet replaces in place and drops repeats, or appends', () => {
    assert.equal(formatOpts(optSet(parseOpts('file=a,id=x,file=b'), 'file', 'n')), 'file=n,id=x');
    assert.equal(formatOpts(optSet(parseOpts('id=x'), 'format', 'raw')), 'id=x,format=raw');
  });
  it('-blockdev: dotted keyval and JSON to a tree and back', () => {
    const k = parseBlockdev('driver=raw,node-name=d0,file.driver=file,file.filename=/a,,b.img');
    assert.deepEqual(k.tree, { driver: 'raw', 'node-name': 'd0', file: { driver: 'file', filename: '/a,b.img' } });
    assert.equal(formatBlockdev(k.tree, k.json), 'driver=raw,node-name=d0,file.driver=file,file.filename=/a,,b.img');
    const j = parseBlockdev('{"driver":"file","filename":"/x.img","auto-read-only":true}');
    assert.equal(j.json, true);
    assert.equal(formatBlockdev(j.tree, j.json), '{"driver":"file","filename":"/x.img","auto-read-only":true}');
    assert.throws(() => parseBlockdev('{"driver":'), SyntaxError);
  });
});

describe('-repagent value', () => {
  it('host, host:port, [v6]:port; the default port is 7000', () => {
    assert.deepEqual(parseRepagent('host2'), { host: 'host2', port: 7000 });
    assert.deepEqual(parseRepagent('host2:7100'), { host: 'host2', port: 7100 });
    assert.deepEqual(parseRepagent('[::1]:7001'), { host: '::1', port: 7001 });
    assert.deepEqual(parseRepagent('[fe80::1]'), { host: 'fe80::1', port: 7000 });
  });
  it('psk-file, the TLS triple, state; commas doubled inside a path', () => {
    assert.deepEqual(parseRepagent('h:1,psk-file=/etc/k,,1,state=/s'), {
      host: 'h',
      port: 1,
      pskFile: '/etc/k,1',
      state: '/s',
    });
    const t = parseRepagent('h,tls-cert=c,tls-key=k,tls-ca=a,tls-servername=hub');
    assert.deepEqual([t.tlsCert, t.tlsKey, t.tlsCa, t.tlsServername], ['c', 'k', 'a', 'hub']);
  });
  const bad: Array<[string, RegExp]> = [
    ['', /expected the hub first/],
    ['psk-file=x', /expected the hub first/],
    ['host2:', /is not host\[:port\]/],
    ['host2:99999', /out of range/],
    ['host2:0', /out of range/],
    ['::1:7000', /IPv6 address in brackets/],
    ['nbd://host2', /is not host\[:port\]/],
    ['host2,psk=x', /unknown key "psk"/],
    ['host2,state=a,state=b', /"state" given twice/],
    ['host2,state=', /"state" needs a value/],
    ['host2,state', /"state" needs a value/],
    ['host2,tls-cert=c', /go together/],
    ['host2,tls-cert=c,tls-key=k,tls-ca=a,psk-file=p', /either psk-file or/],
    ['host2,tls-servername=x', /needs tls-cert/],
  ];
  for (const [v, re] of bad)
    it(`refuses "${v}" with one line quoting it`, () =>
      assert.throws(
        () => parseRepagent(v),
        (e: Error) => re.test(e.message) && e.message.startsWith(`-repagent "${v}"`) && !e.message.includes('\n'),
      ));
});

describe('walking a QEMU command line', () => {
  it('-opt and --opt alike; flags take no argument; a value starting with - is not an option', () => {
    const w = walkCommandLine(['-nographic', '--drive', 'file=a', '-append', '-drive file=b', '-S', 'disk.img']);
    assert.deepEqual(
      w.options.map((o) => [o.name, o.index, o.valueIndex]),
      [
        ['nographic', 0, undefined],
        ['drive', 1, 2],
        ['append', 3, 4],
        ['S', 5, undefined],
      ],
    );
    assert.deepEqual(w.positionals, [6]);
  });
});

describe('planning and rewriting a QEMU command line', () => {
  it("the issue's command line: two disks rewritten, -repagent gone, everything else unchanged", () => {
    const args = [
      '-m',
      '1024',
      '-drive',
      'file=/var/lib/vm/web1.img,format=raw,if=virtio',
      '-drive',
      'file=/var/lib/vm/data.img,format=raw',
      '-name',
      'web1',
      '-repagent',
      'host2:7000,state=/var/lib/rq',
    ];
    const p = planQemu(args, probe());
    assert.equal(p.vm, 'web1');
    assert.deepEqual(p.repagent, { host: 'host2', port: 7000, state: '/var/lib/rq' });
    assert.deepEqual(
      p.disks.map((d) => [d.volume, d.image]),
      [
        ['web1', '/var/lib/vm/web1.img'],
        ['data', '/var/lib/vm/data.img'],
      ],
    );
    assert.deepEqual(p.notes, []);
    assert.deepEqual(p.rewrite(SOCK), [
      '-m',
      '1024',
      '-drive',
      `file=${uri('web1')},format=raw,if=virtio`,
      '-drive',
      `file=${uri('data')},format=raw`,
      '-name',
      'web1',
    ]);
  });
  it('--drive, id= names the volume, a comma in the path, -repagent anywhere', () => {
    const p = planQemu(['--repagent', 'h', '--drive', 'if=none,id=sys,file=/vm/a,,b.img,format=raw'], probe());
    assert.deepEqual(
      p.disks.map((d) => [d.volume, d.image]),
      [['sys', '/vm/a,b.img']],
    );
    assert.deepEqual(p.rewrite(SOCK), ['--drive', `if=none,id=sys,file=${uri('sys')},format=raw`]);
    assert.equal(p.vm, 'a,b'.replace(',', '-'));
  });
  it('-name forms: guest=, an implied guest with more keys, the last -name wins; else the first image', () => {
    const vm = (...name: string[]) => planQemu([...name, '-drive', 'file=/v/d1.img', ...REP], probe()).vm;
    assert.equal(vm('-name', 'guest=web1,debug-threads=on'), 'web1');
    assert.equal(vm('-name', 'web2,process=qemu-web2'), 'web2');
    assert.equal(vm('--name', 'a', '-name', 'b'), 'b');
    assert.equal(vm('-name', 'my vm'), 'my-vm');
    assert.equal(vm(), 'd1');
  });
  it('no format: a probed raw image is protected and given format=raw; driver=raw keeps its form', () => {
    const p = planQemu(['-drive', 'file=/v/x.raw', '-drive', 'file=/v/y.img,driver=raw', ...REP], probe());
    assert.deepEqual(p.rewrite(SOCK), [
      '-drive',
      `file=${uri('x')},format=raw`,
      '-drive',
      `file=${uri('y')},driver=raw`,
    ]);
  });
  it('a probe that finds a qcow2 header, or format=qcow2, on a writable disk: refused, naming the drive', () => {
    const q = probe({ '/v/q.img': { kind: 'file', writable: true, sizeBytes: 4096, format: 'qcow2' } });
    for (const d of ['file=/v/q.img', 'file=/v/r.img,format=qcow2,id=d7'])
      assert.throws(
        () => planQemu(['-drive', 'file=/v/ok.img', '-drive', d, ...REP], q),
        /^Error: -drive (#2 \(\/v\/q\.img\)|id=d7 \(\/v\/r\.img\)): a writable qcow2 image cannot be protected/,
      );
  });
  it('read-only, cdrom, snapshot, -snapshot, URLs, shorthands and bare images pass through with one note each', () => {
    const args = [
      '-drive',
      'file=/v/q.qcow2,format=qcow2,readonly=on',
      '-drive',
      'file=/v/iso.img,media=cdrom',
      '-drive',
      'file=/v/s.img,snapshot=on',
      '-drive',
      'file=nbd://other:10809/x,format=raw',
      '-drive',
      'file=json:{"driver":"null-co"}',
      '-hda',
      '/v/h.img',
      '-cdrom',
      '/v/c.iso',
      '/v/bare.img',
      '-drive',
      'file=/v/ok.img,format=raw',
      '-drive',
      'if=none,id=empty',
      ...REP,
    ];
    const p = planQemu(args, probe());
    assert.deepEqual(
      p.disks.map((d) => d.volume),
      ['ok'],
    );
    assert.equal(p.notes.length, 8, p.notes.join('\n'));
    for (const re of [/read-only/, /cdrom media/, /snapshot=on/, /network or protocol URL/, /-hda shorthand/])
      assert.ok(
        p.notes.some((n) => re.test(n)),
        `${re} in ${p.notes.join('\n')}`,
      );
    const out = p.rewrite(SOCK);
    assert.deepEqual(out.slice(0, 15), args.slice(0, 15), 'untouched disks unchanged');
  });
  it('-snapshot leaves every -drive unprotected: with nothing else, no disk to protect', () => {
    assert.throws(
      () => planQemu(['-snapshot', '-drive', 'file=/v/a.img,format=raw', ...REP], probe()),
      /no disk to protect/,
    );
  });
  it('bad input: missing image, unwritable, odd size, a directory, duplicate names, file.* options, bad names', () => {
    const odd = probe({
      '/v/missing.img': { kind: 'missing' },
      '/v/ro.img': { kind: 'file', writable: false },
      '/v/odd.img': { kind: 'file', writable: true, sizeBytes: 1000 },
      '/v/dir': { kind: 'other' },
    });
    const cases: Array<[string[], RegExp]> = [
      [['-drive', 'file=/v/missing.img,format=raw'], /^-drive #1 \(\/v\/missing\.img\): the image does not exist$/],
      [['-drive', 'file=/v/ro.img,format=raw'], /not writable/],
      [['-drive', 'file=/v/odd.img,format=raw'], /1000 bytes, not a positive multiple of 512/],
      [['-drive', 'file=/v/dir,format=raw'], /not a regular file or block device/],
      [['-drive', 'file=/a/d.img', '-drive', 'file=/b/d.img'], /both volume "d": give each drive its own id=/],
      [['-drive', 'file=/a/d.img,file.locking=off'], /file\.locking configure the file driver/],
      [['-drive', 'file=/a/my disk.img'], /volume name "my disk" \(from \/a\/my disk\.img\)/],
      [[], /no disk to protect/],
    ];
    for (const [args, re] of cases)
      assert.throws(
        () => planQemu([...args, ...REP], odd),
        (e: Error) => re.test(e.message) && !e.message.includes('\n'),
        args.join(' '),
      );
  });
  it('-repagent missing, twice, or without a value', () => {
    assert.throws(() => planQemu(['-drive', 'file=/v/a.img'], probe()), /no -repagent option/);
    assert.throws(() => planQemu([...REP, ...REP, '-drive', 'file=/v/a.img'], probe()), /given twice/);
    assert.throws(() => planQemu(['-drive', 'file=/v/a.img', '-repagent'], probe()), /needs a value/);
  });
  it('-blockdev keyval: a file node under a raw node becomes an NBD node; the raw node names the volume', () => {
    const args = [
      '-blockdev',
      'driver=file,node-name=f0,filename=/v/web1.img,aio=native,cache.direct=on',
      '-blockdev',
      'driver=raw,node-name=disk0,file=f0',
      '-device',
      'virtio-blk-pci,drive=disk0',
      ...REP,
    ];
    const p = planQemu(args, probe());
    assert.deepEqual(
      p.disks.map((d) => [d.volume, d.image]),
      [['disk0', '/v/web1.img']],
    );
    assert.deepEqual(p.rewrite(SOCK), [
      '-blockdev',
      `node-name=f0,driver=nbd,server.type=unix,server.path=${SOCK},export=disk0,cache.direct=on`,
      ...args.slice(2, 6),
    ]);
  });
  it('-blockdev JSON as libvirt writes it, and an inline file under raw', () => {
    const store =
      '{"driver":"file","filename":"/var/lib/libvirt/images/web1.img","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}';
    const format = '{"node-name":"libvirt-1-format","read-only":false,"driver":"raw","file":"libvirt-1-storage"}';
    const p = planQemu(
      ['-blockdev', store, '-blockdev', format, '-name', 'guest=web1,debug-threads=on', ...REP],
      probe(),
    );
    assert.equal(p.vm, 'web1');
    const out = p.rewrite(SOCK);
    assert.deepEqual(JSON.parse(out[1]), {
      'node-name': 'libvirt-1-storage',
      driver: 'nbd',
      server: { type: 'unix', path: SOCK },
      export: 'web1', // libvirt's node names change with the domain: the image names the volume
      'auto-read-only': true,
      discard: 'unmap',
    });
    assert.equal(out[3], format);
    const inline = planQemu(['-blockdev', 'driver=raw,file.driver=file,file.filename=/v/d2.img', ...REP], probe());
    assert.deepEqual(inline.rewrite(SOCK), [
      '-blockdev',
      `driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=${SOCK},file.export=d2`,
    ]);
  });
  it('-blockdev: a writable qcow2 node is refused, a read-only one and an orphan file node are noted', () => {
    const fileNode = 'driver=file,node-name=f,filename=/v/q.qcow2';
    assert.throws(
      () => planQemu(['-blockdev', fileNode, '-blockdev', 'driver=qcow2,node-name=q,file=f', ...REP], probe()),
      /-blockdev node-name=f \(\/v\/q\.qcow2\): a writable qcow2 image cannot be protected/,
    );
    const p = planQemu(
      [
        '-blockdev',
        fileNode,
        '-blockdev',
        'driver=qcow2,node-name=q,file=f,read-only=on',
        '-blockdev',
        'driver=file,node-name=lone,filename=/v/lone.img',
        '-drive',
        'file=/v/ok.img',
        ...REP,
      ],
      probe(),
    );
    assert.deepEqual(p.notes, [
      '-blockdev node-name=f (/v/q.qcow2): not protected (read-only)',
      '-blockdev node-name=lone (/v/lone.img): not protected (not under a driver=raw node)',
    ]);
  });
});
