// Changed-block tracking for one disk image, as the VMM's main thread sees it: loads (and judges) the
// bitmap saved beside the image, marks the file "in use" before the guest can write, hands the write
// observer's config to the virtio I/O worker, freezes/releases/merges generations, opens disk points
// (copy-before-write) and saves the bitmap at clean shutdown. docs/change-tracking.md tells the story.
import { randomUUID } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, rmSync } from 'node:fs';
import { BlockBitmap, DEFAULT_GRANULARITY, MIN_CHANGED_ONLY_GRANULARITY, POINT_BROKEN, checkGranularity, type GenerationInfo } from './block-bitmap.js';
import { coarsen, orBytesInto, popcount, setRange, setRuns, toBytes, wordsFor } from './bits.js';
import {
  CBT_STATE_CLEAN, CBT_STATE_IN_USE, CbtFormatError, cbtPath, encodeCbt, identityMismatch, imageIdentity, readCbt, writeCbt, type CbtRecord,
} from './cbt-file.js';
import {
  changedRangesOf, pointSidePath, PointReader, removeStaleSideFiles, type ByteRange, type ChangeTrackingObserverConfig,
} from './copy-before-write.js';
import { fsyncPath } from './durable-write.js';
import { ensureInUseMarked, prepareInUseMark, retireInUseMark, type InUseMark } from './in-use-mark.js';

export interface TrackerOptions {
  /** Bytes per bit: a power of two from 4 KiB to 1 MiB (default 64 KiB). */
  granularity?: number;
  /**
   * When the tracking file is durably marked in use (in-use-mark.ts): 'at-open' (default), or
   * 'by-writer': by the first write observer built on this tracker, in the writing thread, before it can
   * write (the VMM: its virtio I/O worker, off the main thread's path to the guest's first instruction).
   * Either way no byte of the image changes before the mark is on disk.
   */
  markInUse?: 'at-open' | 'by-writer';
}

/** What a consumer gets when it freezes a generation (or opens a point). */
export interface FrozenGeneration {
  generation: number;
  /** Changes are exact relative to generation `base` of the same trackingId only when trusted. */
  trusted: boolean;
  /** The generation whose freeze began the history this one covers (usually generation - 1; earlier after a merge-back or a clean restart). */
  base: number;
  trackingId: string;
  granularity: number;
  imageSize: number;
}

export interface PointInfo extends FrozenGeneration {
  state: 'open' | 'broken';
  createdAt: string;
  changedBytes: number;
  /** Old contents preserved in the side file so far. */
  preservedBytes: number;
}

interface OpenPoint {
  generation: number;
  slot: number;
  fd: number;
  createdAt: string;
}

export class BlockChangeTracker {
  private readonly points = new Map<number, OpenPoint>();
  /**
   * Generations whose latest image export was changed-only, with that image's granularity: the bitmap
   * exported next describes that image (see bitmap-export.ts).
   */
  private readonly changedOnlyExports = new Map<number, number>();
  private closed = false;

  private constructor(
    readonly imagePath: string,
    readonly bitmap: BlockBitmap,
    /** Whether the history loaded at start is complete (see `reason` when not). */
    readonly trusted: boolean,
    /** Why the history is not trusted ('' when it is). */
    readonly reason: string,
    /** Stays the same across clean restarts; a new one starts whenever history is lost. */
    readonly trackingId: string,
    private readonly inUse: InUseMark,
  ) {}

  /**
   * Opens tracking for `imagePath`: judges the saved bitmap, then durably marks it in use, so that a
   * crash from here on is detected at the next start. Call before the guest can write.
   */
  static open(imagePath: string, options: TrackerOptions = {}): BlockChangeTracker {
    const granularity = options.granularity ?? DEFAULT_GRANULARITY;
    checkGranularity(granularity);
    const identity = imageIdentity(imagePath);
    const path = cbtPath(imagePath);
    let saved: CbtRecord | undefined;
    let reason = '';
    try {
      saved = readCbt(path);
      if (!saved) reason = 'no change history for this image yet (first start with change tracking)';
      else if (saved.state === CBT_STATE_IN_USE) reason = 'the previous VMM did not stop cleanly (crash or kill): writes it served may be missing from the bitmap';
      else reason = identityMismatch(saved.identity, identity) ?? (saved.trusted ? '' : 'the saved bitmap was already untrusted and has not been consumed');
    } catch (err) {
      if (!(err instanceof CbtFormatError)) throw err;
      reason = `the saved change-tracking file is unusable: ${err.message}`;
    }
    const trusted = reason === '';
    const firstGeneration = saved?.nextGeneration ?? 1;
    // A trusted saved bitmap continues the saved history: it counts changes since the saved base.
    const base = trusted && saved ? saved.baseGeneration : firstGeneration - 1;
    const bitmap = BlockBitmap.create(Number(identity.size), granularity, firstGeneration, trusted, base);
    if (trusted && saved) loadSavedBitmap(bitmap, saved);
    const trackingId = trusted && saved ? saved.trackingId : randomUUID();
    removeStaleSideFiles(imagePath);
    const inUse = prepareInUseMark(path, encodeCbt({
      state: CBT_STATE_IN_USE, granularity, trusted: false, identity, trackingId,
      nextGeneration: firstGeneration, baseGeneration: base, granules: bitmap.granules, bitmap: new Uint8Array(0),
    }));
    if (options.markInUse !== 'by-writer') ensureInUseMarked(inUse);
    return new BlockChangeTracker(imagePath, bitmap, trusted, reason, trackingId, inUse);
  }

  get granularity(): number {
    return this.bitmap.granularity;
  }

  get imageSize(): number {
    return this.bitmap.imageSize;
  }

  /** For the virtio I/O worker: build a ChangeTrackingObserver from this. */
  observerConfig(): ChangeTrackingObserverConfig {
    return { bitmap: this.bitmap.shared, imagePath: this.imagePath, inUse: this.inUse };
  }

  /** How frozen generation `generation` is described to its consumer. */
  describe(generation: number): FrozenGeneration {
    const slot = this.bitmap.frozenSlot(generation);
    return {
      generation, trusted: this.bitmap.slotTrusted(slot), base: this.bitmap.slotBase(slot),
      trackingId: this.trackingId, granularity: this.granularity, imageSize: this.imageSize,
    };
  }

  /** Freezes the active generation (a new empty one starts, atomically with respect to in-flight writes). */
  freeze(): FrozenGeneration {
    this.checkHandOut();
    return this.describe(this.bitmap.freeze());
  }

  /** The consumer of a frozen generation finished: forget its bits. */
  release(generation: number): void {
    if (this.points.has(generation)) return this.releasePoint(generation);
    this.bitmap.release(generation);
    this.changedOnlyExports.delete(generation);
  }

  /** The consumer failed: its bits return to the active generation, so the next one still has them. */
  mergeBack(generation: number): void {
    if (this.points.has(generation)) return this.mergePoint(generation);
    this.bitmap.mergeBack(generation);
    this.changedOnlyExports.delete(generation);
  }

  /**
   * The granularity of an image holding only frozen generation `generation`'s changed granules:
   * MIN_CHANGED_ONLY_GRANULARITY, or the tracking granularity if coarser. Refuses an untrusted
   * generation: its changed ranges are not a delta from anything, so such an image could never be used
   * (a consumer must read the whole disk as of the point).
   */
  changedOnlyGranularityFor(generation: number): number {
    if (!this.describe(generation).trusted) {
      throw new Error(
        `generation ${generation} of ${this.imagePath} is untrusted (change history was lost before it began: first start, unclean stop or an image changed while stopped), ` +
          'so it has no usable delta; export the whole point (without --changed-only)',
      );
    }
    return Math.max(this.granularity, MIN_CHANGED_ONLY_GRANULARITY);
  }

  /**
   * An image of frozen `generation` was exported: changed-only at `changedOnlyGranularity`, or whole
   * (undefined). The bitmap exported next describes it.
   */
  noteImageExport(generation: number, changedOnlyGranularity: number | undefined): void {
    this.describe(generation);
    if (changedOnlyGranularity === undefined) this.changedOnlyExports.delete(generation);
    else this.changedOnlyExports.set(generation, changedOnlyGranularity);
  }

  /** The granularity of the changed-only image of `generation` last exported (undefined: none, or a whole one since). */
  changedOnlyGranularity(generation: number): number | undefined {
    return this.changedOnlyExports.get(generation);
  }

  /** Frozen `generation`'s changed granules at `granularity` (a power-of-two multiple of the tracking one). */
  changedGranules(generation: number, granularity = this.granularity): { words: Int32Array; bits: number } {
    const map = this.bitmap.generationMap(this.bitmap.frozenSlot(generation));
    if (granularity === this.granularity) return { words: map, bits: this.bitmap.granules };
    return coarsen(map, this.bitmap.granules, granularity / this.granularity);
  }

  /** Frozen `generation`'s changed byte ranges, each rounded out to `granularity` (clipped to the image). */
  changedRangesAt(generation: number, granularity: number): ByteRange[] {
    const { words, bits } = this.changedGranules(generation, granularity);
    return [...setRuns(words, bits)].map(([first, count]) => ({
      offset: first * granularity,
      length: Math.min((first + count) * granularity, this.imageSize) - first * granularity,
    }));
  }

  generations(): GenerationInfo[] {
    return this.bitmap.generations();
  }

  changedRanges(generation: number): ByteRange[] {
    return changedRangesOf(this.bitmap, this.bitmap.generationMap(this.bitmap.frozenSlot(generation)));
  }

  /** The generation's bitmap as little-endian bytes, one bit per granule. */
  generationBitmap(generation: number): Uint8Array {
    return toBytes(this.bitmap.generationMap(this.bitmap.frozenSlot(generation)), this.bitmap.granules);
  }

  /**
   * Takes a consistent disk point: drains in-flight writes, freezes the active generation and starts
   * copy-before-write into a new side file, all while new writes are held out. Returns at once.
   */
  createPoint(): PointInfo {
    this.checkHandOut();
    const generation = this.bitmap.activeGeneration;
    const sidePath = pointSidePath(this.imagePath, generation);
    const fd = openSync(sidePath, 'w+', 0o600);
    try {
      ftruncateSync(fd, this.imageSize);
      const opened = this.bitmap.drain(() => this.bitmap.openPointDrained(fd));
      if (opened.generation !== generation) throw new Error(`internal: froze generation ${opened.generation}, expected ${generation}`);
      this.points.set(generation, { generation, slot: opened.pointSlot, fd, createdAt: new Date().toISOString() });
    } catch (err) {
      closeSync(fd);
      rmSync(sidePath, { force: true });
      throw err;
    }
    return this.pointInfo(generation);
  }

  private point(generation: number): OpenPoint {
    const p = this.points.get(generation);
    if (!p) throw new Error(`no open point ${generation} on ${this.imagePath}`);
    return p;
  }

  pointInfo(generation: number): PointInfo {
    const p = this.point(generation);
    const slot = this.bitmap.frozenSlot(generation);
    const changed = popcount(this.bitmap.generationMap(slot));
    const preserved = popcount(this.bitmap.preservedMap(p.slot));
    return {
      ...this.describe(generation),
      state: this.bitmap.pointState(p.slot) === POINT_BROKEN ? 'broken' : 'open',
      createdAt: p.createdAt,
      changedBytes: Math.min(changed * this.granularity, this.imageSize),
      preservedBytes: Math.min(preserved * this.granularity, this.imageSize),
    };
  }

  listPoints(): PointInfo[] {
    return [...this.points.keys()].sort((a, b) => a - b).map((g) => this.pointInfo(g));
  }

  /** A reader of the disk as of point `generation` (usable from this thread; close it when done). */
  pointReader(generation: number): PointReader {
    this.point(generation);
    return new PointReader(this.bitmap.shared, this.imagePath, generation);
  }

  /** The point was consumed: stop copy-before-write, delete the side file, drop the generation. */
  releasePoint(generation: number): void {
    this.closePoint(generation);
    this.bitmap.release(generation);
    this.changedOnlyExports.delete(generation);
  }

  /** The point's consumer failed: as releasePoint, but the generation's bits return to the active one. */
  mergePoint(generation: number): void {
    this.closePoint(generation);
    this.bitmap.mergeBack(generation);
    this.changedOnlyExports.delete(generation);
  }

  private closePoint(generation: number): void {
    const p = this.point(generation);
    const fd = this.bitmap.closePoint(p.slot);
    closeSync(fd);
    rmSync(pointSidePath(this.imagePath, generation), { force: true });
    this.points.delete(generation);
  }

  /**
   * Clean shutdown, after the last guest write: flushes the image, then durably saves every change not
   * yet released with the image's identity. A generation still frozen has not been consumed (its
   * consumer cannot release it once this process is gone), so it counts as failed: it is merged back,
   * newest first, exactly as `mergeBack` would, and the saved history starts at the resulting base.
   */
  close(): void {
    if (this.closed) return;
    for (const g of [...this.points.keys()]) this.closePoint(g);
    for (const g of this.bitmap.frozenGenerations()) this.mergeBack(g);
    fsyncPath(this.imagePath);
    retireInUseMark(this.inUse);
    const active = this.bitmap.activeSlot;
    writeCbt(cbtPath(this.imagePath), {
      state: CBT_STATE_CLEAN, granularity: this.granularity, trusted: this.bitmap.slotTrusted(active), identity: imageIdentity(this.imagePath),
      trackingId: this.trackingId, nextGeneration: this.bitmap.control.get('nextGeneration'), baseGeneration: this.bitmap.slotBase(active),
      granules: this.bitmap.granules, bitmap: toBytes(this.bitmap.generationMap(active), this.bitmap.granules),
    });
    this.closed = true;
  }

  /**
   * Before a generation is handed to a consumer: the tracker is open and the file is marked in use (a
   * crash from here on must start a new history, or the saved file would hand out the same generation
   * numbers again). Normally the I/O worker has marked it long before; if not, it is written now.
   */
  private checkHandOut(): void {
    this.checkOpen();
    ensureInUseMarked(this.inUse);
  }

  private checkOpen(): void {
    if (this.closed) throw new Error(`change tracking for ${this.imagePath} is closed`);
  }
}

/** Puts a clean saved bitmap into the active generation, converting granularity if it changed. */
function loadSavedBitmap(bitmap: BlockBitmap, saved: CbtRecord): void {
  const active = bitmap.generationMap(bitmap.activeSlot);
  if (saved.granularity === bitmap.granularity && saved.granules === bitmap.granules) {
    orBytesInto(active, saved.bitmap, saved.granules);
    return;
  }
  // Another granularity: mark every new granule overlapping a saved one (a superset is still exact
  // enough: nothing changed is left out).
  const words = new Int32Array(wordsFor(saved.granules));
  orBytesInto(words, saved.bitmap, saved.granules);
  for (const [first, count] of setRuns(words, saved.granules)) {
    const range = bitmap.granuleRange(first * saved.granularity, count * saved.granularity);
    if (range) setRange(active, range[0], range[1]);
  }
}

