// The agent's NBD export of one protected volume: the top filter of its stack, over the agent's
// write path (dirty log, local image, mirror to the hub), which sits over the local image.
// Thin on purpose: the small-write fast path must cost nothing more than the agent's own.
import { BlockTarget, writeZeroes } from '../../storage/volume';
import type { NbdExport } from '../nbd/exports';

/** What the export needs of the agent (ReplicationAgent fits). */
export interface MirroredWritePath {
  write(name: string, offset: number, data: Buffer | Buffer[]): Promise<void>;
  writeNow(name: string, offset: number, data: Buffer): boolean;
  zero(name: string, offset: number, length: number, apply: () => Promise<void>): Promise<void>;
  flush(name: string): Promise<void>;
  flushNow(name: string): boolean;
}

export class MirroredExport implements NbdExport {
  private readonly writeImage: (buf: Buffer, offset: number) => Promise<void>;

  /** `image` is the local image the write path applies to; reads come straight from it. */
  constructor(
    readonly name: string,
    private readonly image: BlockTarget,
    private readonly agent: MirroredWritePath,
  ) {
    this.writeImage = (buf, offset) => image.write(buf, offset); // zeroing's piece writer, made once
  }

  get sizeBytes(): number {
    return this.image.sizeBytes;
  }
  read(buf: Buffer, offset: number): Promise<void> {
    return this.image.read(buf, offset);
  }
  write(buf: Buffer, offset: number): Promise<void> {
    return this.agent.write(this.name, offset, buf);
  }
  writeNow(buf: Buffer, offset: number): boolean {
    return this.agent.writeNow(this.name, offset, buf);
  }
  writev(parts: Buffer[], offset: number): Promise<void> {
    return this.agent.write(this.name, offset, parts);
  }
  /** Zeroing is applied to the image under the agent's range lock, then owed to the hub as dirty. */
  zero(offset: number, length: number): Promise<void> {
    return this.agent.zero(this.name, offset, length, () => writeZeroes(this.writeImage, offset, length));
  }
  flush(): Promise<void> {
    return this.agent.flush(this.name);
  }
  flushNow(): boolean {
    return this.agent.flushNow(this.name);
  }
}
