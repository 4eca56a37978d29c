// Copy-before-write for disk points, and the write-path observer that sets change bits.
//
// A point is a frozen generation plus a side file. Until the point is released, the first guest write
// after the point to any granule preserves that granule's old contents in the side file, before the
// write reaches the image; a reader of the point then sees the disk exactly as it was at the point
// (preserved granules from the side file, the others from the live image) while the guest goes on
// writing. Every granule is preserved, not only the frozen generation's, so that any range of the disk
// can be read as of the point (a consumer whose bitmap is untrusted compares the whole disk).
//
// Side file layout: a sparse file as large as the image; granule g's old contents sit at offset
// g * granularity, exactly where they sit in the image, so the "index" is the point's preserved bitmap
// (one bit per granule, in the shared BlockBitmap). The side file lives only as long as the point, in
// this process: it is never fsynced (nothing reads it after a crash; stale ones are deleted at start).
import { closeSync, openSync, readdirSync, readSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { BlockBitmap, POINT_ACTIVE, POINT_BROKEN, POINT_SLOTS, type SharedBlockBitmap } from './block-bitmap.js';
import { setBit, setRuns, testBit } from './bits.js';
import { writeFully } from './durable-write.js';
import { ensureInUseMarked, type InUseMark } from './in-use-mark.js';
import type { BlockWriteObserver, ObservedDisk, ObserverDescriptor } from '../devices/virtio/observer.js';

/** What the I/O worker needs to build the observer for a disk (structured-cloneable). */
export interface ChangeTrackingObserverConfig {
  bitmap: SharedBlockBitmap;
  imagePath: string;
  /** The tracking file's in-use mark: an observer makes sure it is on disk before it lets any write through. */
  inUse: InUseMark;
}

/** The virtio I/O worker's factory hook (vmm/devices/virtio/observer.ts): builds the observer there. */
export function createBlockWriteObserver(options: unknown, disk: ObservedDisk): BlockWriteObserver {
  const config = options as ChangeTrackingObserverConfig;
  if (disk.sizeBytes !== config.bitmap.imageSize) {
    throw new Error(`change tracking for ${config.imagePath} was set up for ${config.bitmap.imageSize} bytes, the disk has ${disk.sizeBytes}`);
  }
  return new ChangeTrackingObserver(config, disk.imageFd);
}

/** The observer descriptor the main thread hands to the virtio device set for a tracked disk. */
export function observerDescriptor(config: ChangeTrackingObserverConfig): ObserverDescriptor {
  return { module: new URL(import.meta.url).href, options: config };
}

/** Most bytes copied per read/write while preserving a run of granules. */
const COPY_CHUNK = 1024 * 1024;

export function pointSidePath(imagePath: string, generation: number): string {
  return `${imagePath}.lifeboat-point-${generation}.cbw`;
}

/** Deletes side files left by a VMM that did not stop cleanly (their points died with it). */
export function removeStaleSideFiles(imagePath: string): string[] {
  const prefix = `${basename(imagePath)}.lifeboat-point-`;
  const removed: string[] = [];
  for (const name of readdirSync(dirname(imagePath))) {
    if (name.startsWith(prefix) && name.endsWith('.cbw')) {
      rmSync(join(dirname(imagePath), name), { force: true });
      removed.push(name);
    }
  }
  return removed;
}

function errnoOf(err: unknown): number {
  const e = (err as NodeJS.ErrnoException).errno;
  return typeof e === 'number' ? Math.abs(e) : 5; // EIO
}

/** Runs inside the virtio I/O worker (or any thread that writes the image). */
export class ChangeTrackingObserver implements BlockWriteObserver {
  private readonly bitmap: BlockBitmap;
  private readonly ownsImageFd: boolean;
  private buffer: Buffer | undefined;

  /** `imageFd`: the writer's own fd of the image (the virtio worker's); else the image is opened read-only. */
  constructor(readonly config: ChangeTrackingObserverConfig, private imageFd = -1) {
    // Built before the writer's first write (the virtio I/O worker builds it before serving requests).
    ensureInUseMarked(config.inUse);
    this.bitmap = BlockBitmap.attach(config.bitmap);
    this.ownsImageFd = imageFd < 0;
  }

  beforeWrite(offset: number, length: number): void {
    this.bitmap.beginWrite(offset, length, this.preserveForPoints);
  }

  afterWrite(offset: number, length: number): void {
    this.bitmap.endWrite(offset, length);
  }

  close(): void {
    if (this.ownsImageFd && this.imageFd >= 0) closeSync(this.imageFd);
    this.imageFd = -1;
  }

  /** Runs with the bitmap lock held: no point can open or close meanwhile. */
  private readonly preserveForPoints = (offset: number, length: number): void => {
    const range = this.bitmap.granuleRange(offset, length);
    if (!range) return;
    for (let p = 0; p < POINT_SLOTS; p++) {
      if (this.bitmap.pointState(p) !== POINT_ACTIVE) continue;
      try {
        this.preserve(p, range[0], range[1]);
      } catch (err) {
        // The guest's write goes on (a backup must never fail the guest); the point refuses reads.
        this.bitmap.breakPoint(p, errnoOf(err));
      }
    }
  };

  private preserve(p: number, first: number, last: number): void {
    const preserved = this.bitmap.preservedMap(p);
    let g = first;
    while (g <= last) {
      if (testBit(preserved, g)) { g++; continue; }
      let end = g;
      while (end + 1 <= last && !testBit(preserved, end + 1)) end++;
      this.copyGranules(this.bitmap.pointFd(p), g, end);
      // Publish only after the old bytes are in the side file: a reader that sees the bit reads them.
      for (let i = g; i <= end; i++) setBit(preserved, i);
      g = end + 1;
    }
  }

  private copyGranules(sideFd: number, first: number, last: number): void {
    if (this.imageFd < 0) this.imageFd = openSync(this.config.imagePath, 'r');
    const gran = this.bitmap.granularity;
    const start = first * gran;
    const end = Math.min((last + 1) * gran, this.bitmap.imageSize);
    this.buffer ??= Buffer.alloc(Math.max(COPY_CHUNK, gran));
    for (let pos = start; pos < end; ) {
      const want = Math.min(this.buffer.length, end - pos);
      const n = readSync(this.imageFd, this.buffer, 0, want, pos);
      if (n <= 0) break; // past the end of a shorter-than-declared image: nothing to preserve
      writeFully(sideFd, this.buffer.subarray(0, n), pos);
      pos += n;
    }
  }
}

export interface ByteRange {
  offset: number;
  length: number;
}

/** Byte ranges of the set granules of a generation bitmap, merged, clipped to the image. */
export function changedRangesOf(bitmap: BlockBitmap, words: Int32Array): ByteRange[] {
  const out: ByteRange[] = [];
  for (const [first, count] of setRuns(words, bitmap.granules)) {
    const offset = first * bitmap.granularity;
    out.push({ offset, length: Math.min((first + count) * bitmap.granularity, bitmap.imageSize) - offset });
  }
  return out;
}

/** Reads the disk as it was at a point, while the guest keeps writing the image. */
export class PointReader {
  private readonly bitmap: BlockBitmap;
  private readonly imageFd: number;
  private readonly sideFd: number;

  constructor(shared: SharedBlockBitmap, readonly imagePath: string, readonly generation: number) {
    this.bitmap = BlockBitmap.attach(shared);
    this.pointSlot();
    this.imageFd = openSync(imagePath, 'r');
    try {
      this.sideFd = openSync(pointSidePath(imagePath, generation), 'r');
    } catch (err) {
      closeSync(this.imageFd);
      throw err;
    }
  }

  get imageSize(): number {
    return this.bitmap.imageSize;
  }

  private pointSlot(): number {
    const p = this.bitmap.findPoint(this.generation);
    if (p < 0) throw new Error(`point ${this.generation} is not open (released, merged, or never created)`);
    if (this.bitmap.pointState(p) === POINT_BROKEN) {
      throw new Error(`point ${this.generation} is broken: preserving old blocks failed (errno ${this.bitmap.pointErrno(p)}); merge it back and take a new point`);
    }
    return p;
  }

  /** The byte ranges written between the previous point (or tracking start) and this point. */
  changedRanges(): ByteRange[] {
    return changedRangesOf(this.bitmap, this.bitmap.generationMap(this.bitmap.frozenSlot(this.generation)));
  }

  /** [offset, offset+length) of the disk as of the point. */
  read(offset: number, length: number): Buffer {
    if (offset < 0 || length < 0 || offset + length > this.imageSize) {
      throw new RangeError(`read of ${length} bytes at ${offset} is outside the ${this.imageSize}-byte disk`);
    }
    const out = Buffer.alloc(length);
    const gran = this.bitmap.granularity;
    let pos = offset;
    while (pos < offset + length) {
      const g = Math.floor(pos / gran);
      const pieceEnd = Math.min((g + 1) * gran, offset + length);
      this.readGranulePiece(g, pos, out.subarray(pos - offset, pieceEnd - offset));
      pos = pieceEnd;
    }
    return out;
  }

  private readGranulePiece(granule: number, position: number, into: Buffer): void {
    const p = this.pointSlot();
    const preserved = this.bitmap.preservedMap(p);
    if (testBit(preserved, granule)) {
      readFullyAt(this.sideFd, into, position);
      return;
    }
    readFullyAt(this.imageFd, into, position);
    // The writer preserves (and sets the bit) before it overwrites: if the bit is still clear now, the
    // image bytes read above were the point's; if it became set, they may be newer, so use the copy.
    if (testBit(preserved, granule)) readFullyAt(this.sideFd, into, position);
    this.pointSlot();
  }

  close(): void {
    closeSync(this.imageFd);
    closeSync(this.sideFd);
  }
}

function readFullyAt(fd: number, into: Buffer, position: number): void {
  let done = 0;
  while (done < into.length) {
    const n = readSync(fd, into, done, into.length - done, position + done);
    if (n <= 0) {
      into.fill(0, done); // a hole at the end of a sparse file reads as zeroes
      return;
    }
    done += n;
  }
}
