// The one loader of the optional native addon (build/Release/rephub_native.node, built from
// native/*.c by `npm install`): storage/fileio.ts and protocol/crc.ts both take it from here.
// It sits at the top level, beside its C sources, because protocol/ and storage/ may import
// nothing from src/, and protocol/ (pure codecs) importing storage/ would tie the wire format
// to persistence. Without the addon rephub still works, only slower.
import * as path from 'node:path';

/** What native/fileio.c and native/crc32.c export. */
export interface NativeAddon {
  fadvise(fd: number, offset: number, length: number, advice: number): number;
  seek(fd: number, offset: number, whence: number): number;
  misalign?(buf: Buffer, align: number): number; // absent in an addon built before it
  /** Pages of the range in the page cache, or -errno (-ENOSYS before Linux 6.5); absent in an older addon. */
  cached?(fd: number, offset: number, length: number): number;
  /** flock(2): 0 or -errno; absent in an addon built before it. */
  flock?(fd: number, operation: number): number;
  LOCK_EX?: number;
  LOCK_NB?: number;
  LOCK_UN?: number;
  EWOULDBLOCK?: number;
  crc32(data: Buffer, prev: number): number;
  CRC32_FOLDED: number; // non-zero when the CPU has carry-less multiply folding
  RANDOM: number;
  DONTNEED: number;
  WILLNEED?: number; // absent in an addon built before it
  SEEK_DATA: number;
  SEEK_HOLE: number;
  ENXIO: number;
}

function load(): { addon: NativeAddon | null; error: string } {
  try {
    // Compiled to dist/native/addon.js: two levels up is the checkout, where node-gyp builds.
    const file = path.join(__dirname, '..', '..', 'build', 'Release', 'rephub_native.node');
    return { addon: require(file) as NativeAddon, error: '' };
  } catch (e) {
    return { addon: null, error: (e as Error).message };
  }
}

const loaded = load();

/** The addon, or null when it is not built. */
export const nativeAddon: NativeAddon | null = loaded.addon;

/** Why the addon is unavailable ('' when it is loaded). */
export const nativeUnavailable = (): string =>
  loaded.addon ? '' : `native addon not built (${loaded.error}); run npm install`;
