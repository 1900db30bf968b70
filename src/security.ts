// Link security: TLS with mutual certificate authentication, or TLS with a pre-shared key.
// The authenticated identity (certificate CN, or PSK identity) is the VM name the peer may use.
import * as fs from 'node:fs';
import * as tls from 'node:tls';
import * as net from 'node:net';

export interface TlsFiles {
  cert?: string;
  key?: string;
  ca?: string;
  pskFile?: string;
}

// AES-128-GCM first (RFC 8446's mandatory suite): ~12 % cheaper per byte than AES-256-GCM with
// AES-NI here, and the link's crypto is most of what TLS costs a mirrored 1 MiB write (issue 17,
// docs/BENCHMARKS.md "TLS on the agent link"). The others stay acceptable; the server's order wins.
const PSK_CIPHERS = 'PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384';
const CIPHERS = [
  'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256',
  ...tls.DEFAULT_CIPHERS.split(':').filter((c) => !c.startsWith('TLS_')), // TLS 1.2's, unchanged
].join(':');

/** PSK file: one `identity:hexkey` per line (# comments); keys of at least 16 bytes. */
export function readPskFile(file: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  fs.readFileSync(file, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      const l = line.trim();
      if (!l || l.startsWith('#')) return;
      const m = /^([A-Za-z0-9][A-Za-z0-9._-]{0,127}):([0-9a-fA-F]+)$/.exec(l);
      if (!m || m[2].length % 2 !== 0 || m[2].length < 32)
        throw new Error(`${file}:${i + 1}: expected identity:hexkey with a key of at least 16 bytes`);
      out.set(m[1], Buffer.from(m[2], 'hex'));
    });
  if (out.size === 0) throw new Error(`${file}: no keys`);
  return out;
}

export function enabled(f: TlsFiles): boolean {
  return !!(f.cert || f.key || f.ca || f.pskFile);
}

/** Server options; `identityOf` tells who authenticated on a secure socket. */
export function serverOptions(f: TlsFiles): {
  options: tls.TlsOptions;
  identityOf: (s: tls.TLSSocket) => string | null;
} {
  if (f.pskFile) {
    if (f.cert || f.key || f.ca)
      throw new Error('use either certificates (--tls-cert/--tls-key/--tls-ca) or --psk-file, not both');
    const keys = readPskFile(f.pskFile);
    const ids = new WeakMap<tls.TLSSocket, string>();
    return {
      options: {
        ciphers: PSK_CIPHERS,
        honorCipherOrder: true,
        maxVersion: 'TLSv1.2',
        minVersion: 'TLSv1.2',
        pskCallback: (socket: tls.TLSSocket, identity: string) => {
          const k = keys.get(identity);
          if (k) ids.set(socket, identity);
          return k ?? null;
        },
      } as tls.TlsOptions,
      identityOf: (s) => ids.get(s) ?? null,
    };
  }
  if (!f.cert || !f.key || !f.ca)
    throw new Error('TLS needs --tls-cert, --tls-key and --tls-ca (the CA that signs agent certificates)');
  return {
    options: {
      cert: fs.readFileSync(f.cert),
      key: fs.readFileSync(f.key),
      ca: fs.readFileSync(f.ca),
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      ciphers: CIPHERS,
      honorCipherOrder: true,
    },
    identityOf: (s) => {
      const cn = s.getPeerCertificate()?.subject?.CN;
      return typeof cn === 'string' ? cn : null;
    },
  };
}

export function clientOptions(f: TlsFiles, identity: string, servername?: string): tls.ConnectionOptions {
  if (f.pskFile) {
    if (f.cert || f.key || f.ca) throw new Error('use either certificates or --psk-file, not both');
    const keys = readPskFile(f.pskFile);
    const psk = keys.get(identity);
    if (!psk) throw new Error(`${f.pskFile}: no key for identity ${identity} (the --vm name)`);
    return {
      ciphers: PSK_CIPHERS,
      maxVersion: 'TLSv1.2',
      minVersion: 'TLSv1.2',
      pskCallback: () => ({ psk, identity }),
      checkServerIdentity: () => undefined, // the shared key authenticates the hub
    };
  }
  if (!f.cert || !f.key || !f.ca)
    throw new Error('TLS needs --tls-cert, --tls-key and --tls-ca (the CA that signs the hub certificate)');
  return {
    cert: fs.readFileSync(f.cert),
    key: fs.readFileSync(f.key),
    ca: fs.readFileSync(f.ca),
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
    ciphers: CIPHERS,
    // an IP is checked against the SAN without SNI
    servername: servername && !net.isIP(servername) ? servername : undefined,
  };
}
