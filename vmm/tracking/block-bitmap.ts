// Changed-block tracking state for one disk, shared by the virtio I/O worker (which sets bits as writes
// complete and preserves old blocks for points) and the main thread (which freezes, reads, releases and
// merges generations). Everything lives in two SharedArrayBuffers so both threads see one state:
//
//   control: a lock word, the in-flight write count, the active generation slot, and small tables for
//            generation slots and point slots (see CONTROL below);
//   bitmaps: GENERATION_SLOTS change bitmaps followed by POINT_SLOTS "preserved" bitmaps, one bit per
//            granule each.
//
// Generations: the active generation collects the granules of every completed write, discard and
// write-zeroes. `freeze` turns it into a frozen generation and starts a new, empty active one, after
// draining in-flight writes (the lock keeps new writes out while the count drains to zero), so a frozen
// generation holds exactly the writes completed before the freeze. A consumer then `release`s it (done)
// or `mergeBack`s it (failed: its bits return to the active generation, nothing lost).
//
// Bases: every generation slot records its *base*, the generation whose freeze began the history its
// bits cover: a trusted slot holds every granule written since generation `base` was frozen. A freeze
// gives the new active slot base = the generation just frozen; a merge-back that joins the failed
// generation's history onto the active one's moves the active base back (see `mergeBack`). The exported
// base epoch is epoch(base) (bitmap-export.ts), so it stays true after merges and clean restarts.
import { SharedWords, wordLayout } from '../devices/shared-state.js';
import { clearAll, orInto, setRange, wordsFor } from './bits.js';

export const DEFAULT_GRANULARITY = 64 * 1024;
export const MIN_GRANULARITY = 4 * 1024;
export const MAX_GRANULARITY = 1024 * 1024;
/**
 * Smallest granule of an image exported with only a point's changed ranges (and of its bitmap). A backup
 * reads whole repository chunks, so each exported granule must hold whole chunks: 64 KiB is the
 * repository's default chunk size (a repository with larger chunks refuses such an image; export the
 * whole point for it). See docs/change-tracking.md, "Changed-only images".
 */
export const MIN_CHANGED_ONLY_GRANULARITY = 64 * 1024;
/** One active generation plus up to seven frozen ones not yet released. */
export const GENERATION_SLOTS = 8;
/** Disk points (frozen generations with copy-before-write) that may be open at once. */
export const POINT_SLOTS = 4;
/** How long `drain` waits for in-flight writes before giving up (a write that never completes is a bug). */
export const DRAIN_TIMEOUT_MS = 10_000;

const SLOT_FREE = 0;
const SLOT_ACTIVE = 1;
const SLOT_FROZEN = 2;

export const POINT_NONE = 0;
export const POINT_ACTIVE = 1;
/** Copy-before-write failed for this point (e.g. its side file's filesystem is full): reads refuse. */
export const POINT_BROKEN = 2;

const slotFields = (prefix: string) => Array.from({ length: GENERATION_SLOTS }, (_, i) => `${prefix}${i}`);
const pointFields = (prefix: string) => Array.from({ length: POINT_SLOTS }, (_, i) => `${prefix}${i}`);

/** Word indices of the control SAB (word 0 is the lock). */
export const CONTROL = wordLayout([
  'inflight', 'activeSlot', 'granuleShift', 'granules', 'nextGeneration',
  ...slotFields('slotState'), ...slotFields('slotGeneration'), ...slotFields('slotTrusted'), ...slotFields('slotBase'),
  ...pointFields('pointState'), ...pointFields('pointGeneration'), ...pointFields('pointSlot'), ...pointFields('pointFd'),
  ...pointFields('pointErrno'),
] as const);
type ControlField = keyof typeof CONTROL & string;
/** Control word index of each point slot's state (read on every guest write). */
const POINT_STATE_WORDS: readonly number[] = Array.from({ length: POINT_SLOTS }, (_, p) => CONTROL[`pointState${p}` as ControlField]);

/** What a worker needs to attach to the same state (structured-cloneable). */
export interface SharedBlockBitmap {
  control: SharedArrayBuffer;
  bitmaps: SharedArrayBuffer;
  imageSize: number;
  granularity: number;
}

export interface GenerationInfo {
  generation: number;
  state: 'active' | 'frozen';
  /** False when this generation may be missing changes (see BlockChangeTracker.trusted). */
  trusted: boolean;
  /** When trusted: the bits hold every granule written since generation `base` was frozen. */
  base: number;
  /** Granules set. */
  granules: number;
}

export function checkGranularity(granularity: number): void {
  if (!Number.isInteger(granularity) || granularity < MIN_GRANULARITY || granularity > MAX_GRANULARITY || (granularity & (granularity - 1)) !== 0) {
    throw new RangeError(`change-tracking granularity must be a power of two from 4 KiB to 1 MiB, got ${granularity}`);
  }
}

export class BlockBitmap {
  readonly control: SharedWords<typeof CONTROL>;
  readonly granularity: number;
  readonly granuleShift: number;
  readonly granules: number;
  /** Int32 words per bitmap. */
  readonly words: number;
  private readonly generationMaps: Int32Array[];
  private readonly preservedMaps: Int32Array[];

  private constructor(readonly shared: SharedBlockBitmap) {
    this.control = new SharedWords(shared.control, CONTROL);
    this.granularity = shared.granularity;
    this.granuleShift = Math.log2(shared.granularity);
    this.granules = Math.ceil(shared.imageSize / shared.granularity);
    this.words = wordsFor(this.granules);
    const map = (i: number) => new Int32Array(shared.bitmaps, i * this.words * 4, this.words);
    this.generationMaps = Array.from({ length: GENERATION_SLOTS }, (_, i) => map(i));
    this.preservedMaps = Array.from({ length: POINT_SLOTS }, (_, i) => map(GENERATION_SLOTS + i));
  }

  /**
   * A fresh state for an image of `imageSize` bytes: generation `firstGeneration` active and empty, its
   * history starting where generation `base` ended (by default the generation before it).
   */
  static create(imageSize: number, granularity = DEFAULT_GRANULARITY, firstGeneration = 1, trusted = true, base = firstGeneration - 1): BlockBitmap {
    checkGranularity(granularity);
    const granules = Math.ceil(imageSize / granularity);
    const words = wordsFor(granules);
    const control = SharedWords.allocate(CONTROL).sab;
    const bitmaps = new SharedArrayBuffer(Math.max(4, words * 4 * (GENERATION_SLOTS + POINT_SLOTS)));
    const b = new BlockBitmap({ control, bitmaps, imageSize, granularity });
    b.control.set('granuleShift', b.granuleShift);
    b.control.set('granules', granules);
    b.control.set('activeSlot', 0);
    b.control.set('slotState0', SLOT_ACTIVE);
    b.control.set('slotGeneration0', firstGeneration);
    b.control.set('slotTrusted0', trusted ? 1 : 0);
    b.control.set('slotBase0', base);
    b.control.set('nextGeneration', firstGeneration + 1);
    return b;
  }

  static attach(shared: SharedBlockBitmap): BlockBitmap {
    return new BlockBitmap(shared);
  }

  get imageSize(): number {
    return this.shared.imageSize;
  }

  private field(name: string): ControlField {
    return name as ControlField;
  }

  slotState(slot: number): number {
    return this.control.get(this.field(`slotState${slot}`));
  }

  slotGeneration(slot: number): number {
    return this.control.get(this.field(`slotGeneration${slot}`));
  }

  slotTrusted(slot: number): boolean {
    return this.control.get(this.field(`slotTrusted${slot}`)) !== 0;
  }

  /** The generation whose freeze began the history slot `slot` covers (meaningful when trusted). */
  slotBase(slot: number): number {
    return this.control.get(this.field(`slotBase${slot}`));
  }

  get activeSlot(): number {
    return this.control.get('activeSlot');
  }

  get activeGeneration(): number {
    return this.slotGeneration(this.activeSlot);
  }

  /** The bitmap words of a generation slot (a live view: do not keep it past a release). */
  generationMap(slot: number): Int32Array {
    return this.generationMaps[slot]!;
  }

  preservedMap(pointSlot: number): Int32Array {
    return this.preservedMaps[pointSlot]!;
  }

  /** The granules [first, last] touched by the byte range [offset, offset+length), clipped to the image. */
  granuleRange(offset: number, length: number): [first: number, last: number] | undefined {
    if (length <= 0 || offset >= this.imageSize) return undefined;
    const end = Math.min(offset + length, this.imageSize);
    return [Math.floor(offset / this.granularity), Math.floor((end - 1) / this.granularity)];
  }

  // ---- writer side (the I/O worker) ----

  /**
   * Called before a write, discard or write-zeroes reaches the image: counts it in flight. `preserve`
   * runs under the lock, so a freeze cannot slip between it and the count (copy-before-write uses it).
   */
  beginWrite(offset: number, length: number, preserve?: (offset: number, length: number) => void): void {
    // Fast path, without the lock: count the write in flight first, then look at the lock (both
    // sequentially consistent). A drain that takes the lock after this look waits for this write; one
    // that holds it already is seen here, and the write goes the slow way. No point can open while the
    // write is counted (opening drains), so "no active point" stays true until endWrite.
    const words = this.control.words;
    Atomics.add(words, CONTROL.inflight, 1);
    if (this.control.isUnlocked() && (!preserve || !this.anyPointActive())) return;
    this.leaveInflight();
    this.control.locked(() => {
      // Counted only once `preserve` succeeded: a throw here fails the request before it is in flight.
      preserve?.(offset, length);
      Atomics.add(words, CONTROL.inflight, 1);
    });
  }

  /** Called once the request completed (or failed: a conservative extra bit is harmless). */
  endWrite(offset: number, length: number): void {
    if (length > 0 && offset < this.shared.imageSize) {
      const end = Math.min(offset + length, this.shared.imageSize);
      setRange(this.generationMaps[Atomics.load(this.control.words, CONTROL.activeSlot)]!, Math.floor(offset / this.granularity), Math.floor((end - 1) / this.granularity));
    }
    this.leaveInflight();
  }

  private leaveInflight(): void {
    if (Atomics.sub(this.control.words, CONTROL.inflight, 1) === 1) Atomics.notify(this.control.words, CONTROL.inflight);
  }

  private anyPointActive(): boolean {
    const words = this.control.words;
    for (const index of POINT_STATE_WORDS) if (Atomics.load(words, index) === POINT_ACTIVE) return true;
    return false;
  }

  // ---- owner side (the main thread) ----

  /**
   * Runs `fn` with new writes held out and none in flight: the block-level quiesce under which
   * generations switch. Blocks the calling thread for at most the duration of the writes in flight.
   */
  drain<T>(fn: () => T): T {
    return this.control.locked(() => {
      const deadline = Date.now() + DRAIN_TIMEOUT_MS;
      for (;;) {
        const n = Atomics.load(this.control.words, CONTROL.inflight);
        if (n === 0) break;
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`a disk write did not complete within ${DRAIN_TIMEOUT_MS} ms; cannot freeze the change bitmap`);
        Atomics.wait(this.control.words, CONTROL.inflight, n, left);
      }
      return fn();
    });
  }

  /** Must run inside `drain`. Freezes the active generation; returns its number. */
  freezeDrained(): number {
    const old = this.activeSlot;
    let next = -1;
    for (let s = 0; s < GENERATION_SLOTS; s++) if (this.slotState(s) === SLOT_FREE) { next = s; break; }
    if (next < 0) throw new Error(`too many frozen change generations (${GENERATION_SLOTS - 1}) not yet released; release or merge one first`);
    const generation = this.slotGeneration(old);
    const newGeneration = this.control.get('nextGeneration');
    clearAll(this.generationMaps[next]!);
    this.control.set(this.field(`slotGeneration${next}`), newGeneration);
    this.control.set(this.field(`slotTrusted${next}`), 1);
    this.control.set(this.field(`slotBase${next}`), generation);
    this.control.set(this.field(`slotState${next}`), SLOT_ACTIVE);
    this.control.set('nextGeneration', newGeneration + 1);
    this.control.set(this.field(`slotState${old}`), SLOT_FROZEN);
    this.control.set('activeSlot', next);
    return generation;
  }

  freeze(): number {
    return this.drain(() => this.freezeDrained());
  }

  /** The slot holding frozen generation `generation`, or a clear error. */
  frozenSlot(generation: number): number {
    for (let s = 0; s < GENERATION_SLOTS; s++) {
      if (this.slotState(s) === SLOT_FROZEN && this.slotGeneration(s) === generation) return s;
    }
    const active = this.activeGeneration;
    throw new Error(generation === active ? `generation ${generation} is the active one; freeze it first` : `no frozen generation ${generation} (already released or merged, or never frozen)`);
  }

  /** The consumer is done with a frozen generation: its bits are dropped. */
  release(generation: number): void {
    this.control.locked(() => {
      const slot = this.frozenSlot(generation);
      this.control.set(this.field(`slotState${slot}`), SLOT_FREE);
    });
  }

  /**
   * The consumer failed: the frozen generation's bits go back into the active generation.
   *
   * When the active generation's history begins exactly where this one's ended (base = generation: no
   * generation frozen in between), the two histories join: the active base becomes this generation's
   * base, and the result is trusted only if both were. Otherwise a generation frozen in between (still
   * frozen, or released after its consumer succeeded) separates them: the union would have a hole, so
   * the active generation keeps its own base and trust (its bits still hold every change since that
   * base; the merged bits are extra, which is harmless).
   */
  mergeBack(generation: number): void {
    this.control.locked(() => {
      const slot = this.frozenSlot(generation);
      const active = this.activeSlot;
      orInto(this.generationMaps[active]!, this.generationMaps[slot]!);
      if (this.slotBase(active) === generation) {
        this.control.set(this.field(`slotBase${active}`), this.slotBase(slot));
        if (!this.slotTrusted(slot)) this.control.set(this.field(`slotTrusted${active}`), 0);
      }
      this.control.set(this.field(`slotState${slot}`), SLOT_FREE);
    });
  }

  /** Frozen generations not yet released or merged, newest first. */
  frozenGenerations(): number[] {
    const out: number[] = [];
    for (let s = 0; s < GENERATION_SLOTS; s++) if (this.slotState(s) === SLOT_FROZEN) out.push(this.slotGeneration(s));
    return out.sort((a, b) => b - a);
  }

  /** Marks the active generation as possibly incomplete (e.g. the image was changed behind our back). */
  distrustActive(): void {
    this.control.set(this.field(`slotTrusted${this.activeSlot}`), 0);
  }

  generations(): GenerationInfo[] {
    const out: GenerationInfo[] = [];
    for (let s = 0; s < GENERATION_SLOTS; s++) {
      const state = this.slotState(s);
      if (state === SLOT_FREE) continue;
      let granules = 0;
      const map = this.generationMaps[s]!;
      for (let w = 0; w < map.length; w++) {
        let v = Atomics.load(map, w);
        while (v !== 0) { v &= v - 1; granules++; }
      }
      out.push({ generation: this.slotGeneration(s), state: state === SLOT_ACTIVE ? 'active' : 'frozen', trusted: this.slotTrusted(s), base: this.slotBase(s), granules });
    }
    return out.sort((a, b) => a.generation - b.generation);
  }

  // ---- point slots (copy-before-write; see copy-before-write.ts) ----

  pointState(p: number): number {
    return this.control.get(this.field(`pointState${p}`));
  }

  pointGeneration(p: number): number {
    return this.control.get(this.field(`pointGeneration${p}`));
  }

  pointFd(p: number): number {
    return this.control.get(this.field(`pointFd${p}`));
  }

  pointErrno(p: number): number {
    return this.control.get(this.field(`pointErrno${p}`));
  }

  /** Must run inside `drain`: freezes the active generation and opens point slot with side file `fd`. */
  openPointDrained(fd: number): { generation: number; pointSlot: number } {
    let p = -1;
    for (let i = 0; i < POINT_SLOTS; i++) if (this.pointState(i) === POINT_NONE) { p = i; break; }
    if (p < 0) throw new Error(`too many open points (${POINT_SLOTS}); release one first`);
    const generation = this.freezeDrained();
    clearAll(this.preservedMaps[p]!);
    this.control.set(this.field(`pointGeneration${p}`), generation);
    this.control.set(this.field(`pointFd${p}`), fd);
    this.control.set(this.field(`pointErrno${p}`), 0);
    this.control.set(this.field(`pointState${p}`), POINT_ACTIVE);
    return { generation, pointSlot: p };
  }

  /** The point slot of point `generation`, or -1. */
  findPoint(generation: number): number {
    for (let p = 0; p < POINT_SLOTS; p++) if (this.pointState(p) !== POINT_NONE && this.pointGeneration(p) === generation) return p;
    return -1;
  }

  /** Marks a point broken (copy-before-write failed); called by the writer with the lock held. */
  breakPoint(p: number, errno: number): void {
    this.control.set(this.field(`pointErrno${p}`), errno);
    this.control.set(this.field(`pointState${p}`), POINT_BROKEN);
  }

  /** Closes a point slot (under the lock, so no writer is preserving into it); returns its side-file fd. */
  closePoint(p: number): number {
    return this.control.locked(() => {
      const fd = this.pointFd(p);
      this.control.set(this.field(`pointState${p}`), POINT_NONE);
      this.control.set(this.field(`pointFd${p}`), 0);
      return fd;
    });
  }
}
