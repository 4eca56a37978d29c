// Dirty guest-memory tracking: which 4 KiB pages changed since the last durable VM snapshot.
//
// A page is dirty when the guest wrote it (KVM's dirty log, one per memory slot) or when the VMM wrote
// it (GuestMemory's VMM-dirty bitmap: virtio data and used rings; KVM cannot see those writes).
//
// Clearing rule: a snapshot must reset KVM's log at its paused instant, or writes made after the VM
// resumes to pages that were already dirty would go unseen (KVM records only the first write after a
// reset). So `collect` (VM paused) takes the bits out of KVM and GuestMemory at once, and holds them as
// an in-flight collection: `commit` drops them once the snapshot that consumed them is durable;
// `abort` puts them back (into `pending`, OR-ed into the next collection) when it failed. No dirty
// page is ever forgotten before a snapshot holding it is safely on disk.
//
// Bitmaps here are one bit per page of the memfd (page = memfd offset / 4096), in 32-bit words.
import * as ioc from '../kvm/ioctls.js';
import { build, kvmEnableCap } from '../kvm/structs.js';
import type { VmFd } from '../kvm/vm.js';
import { PAGE_SIZE } from '../layout.js';
import type { GuestMemory, MemoryRegion } from '../memory.js';
import * as libc from '../sys/libc.js';
import { pauseDetail } from '../snapshot/pause-timing.js';

export const KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168;
/** KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE: GET_DIRTY_LOG no longer clears; KVM_CLEAR_DIRTY_LOG does. */
const MANUAL_PROTECT_ENABLE = 1;

export type DirtyLogMode = 'manual-protect' | 'get-and-clear';

/**
 * Asks KVM for KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (call before the memory slots are created). Returns
 * the mode the VM's dirty log works in; 'get-and-clear' when the host lacks the capability.
 */
export function enableDirtyLogging(vm: VmFd): DirtyLogMode {
  if (vm.kvm.checkExtension(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) <= 0) return 'get-and-clear';
  const cap = build(kvmEnableCap, { cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, arg0: BigInt(MANUAL_PROTECT_ENABLE) });
  libc.ioctlBuf(vm.fd, ioc.KVM_ENABLE_CAP, cap, 'KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)');
  return 'manual-protect';
}

const CHUNK_WORDS = 256;
const ZERO_CHUNK = Buffer.alloc(CHUNK_WORDS * 4);

/**
 * Calls `fn(index, value)` for every non-zero word of `words`, in order. Bitmaps are mostly zero (1 GiB
 * of guest memory = 8192 words) and this runs while the VM is paused, in code too cold for the JIT:
 * zero chunks of 1 KiB are skipped by a native compare instead of a JS loop over every word.
 */
export function forEachSetWord(words: Uint32Array | Int32Array, fn: (index: number, value: number) => void): void {
  const bytes = Buffer.from(words.buffer, words.byteOffset, words.byteLength);
  for (let from = 0; from < words.length; from += CHUNK_WORDS) {
    const to = Math.min(words.length, from + CHUNK_WORDS);
    if (bytes.compare(ZERO_CHUNK, 0, (to - from) * 4, from * 4, to * 4) === 0) continue;
    for (let w = from; w < to; w++) {
      const v = words[w]!;
      if (v !== 0) fn(w, v);
    }
  }
}

/** A set of dirty pages taken out of the trackers by `collect`, until `commit` or `abort`. */
export class DirtyPages {
  constructor(
    /** One bit per memfd page. */
    readonly words: Uint32Array,
    readonly pages: number,
    /**
     * When known: the indices of the non-zero words, ascending (a collection taken while paused keeps
     * them, so that counting, merging and listing its few pages do not scan the whole bitmap again).
     */
    readonly setWords?: readonly number[],
  ) {}

  private forEachSet(fn: (index: number, value: number) => void): void {
    if (!this.setWords) return forEachSetWord(this.words, fn);
    for (const w of this.setWords) fn(w, this.words[w]!);
  }

  static empty(pages: number): DirtyPages {
    return new DirtyPages(new Uint32Array(Math.ceil(pages / 32)), pages);
  }

  static all(pages: number): DirtyPages {
    const d = DirtyPages.empty(pages);
    d.words.fill(0xffffffff);
    if (pages % 32) d.words[d.words.length - 1] = (1 << (pages % 32)) - 1 >>> 0;
    return d;
  }

  has(page: number): boolean {
    return (this.words[page >>> 5]! & (1 << (page & 31))) !== 0;
  }

  count(): number {
    let n = 0;
    this.forEachSet((_, w) => {
      let v = w - ((w >>> 1) & 0x55555555);
      v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
      n += Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
    });
    return n;
  }

  orWith(other: DirtyPages): void {
    if (this.setWords) throw new Error('a collection with its set words listed is read-only');
    const words = this.words;
    other.forEachSet((i, v) => (words[i]! |= v));
  }

  /** Runs of dirty pages, in order: [firstPage, count]. */
  *runs(): Generator<[first: number, count: number]> {
    if (this.setWords) {
      let start = -1;
      let next = -1;
      for (const w of this.setWords) {
        const v = this.words[w]!;
        for (let b = 0; b < 32; b++) {
          if (!(v & (1 << b))) continue;
          const page = w * 32 + b;
          if (page >= this.pages) break;
          if (page !== next) {
            if (start >= 0) yield [start, next - start];
            start = page;
          }
          next = page + 1;
        }
      }
      if (start >= 0) yield [start, next - start];
      return;
    }
    const bytes = Buffer.from(this.words.buffer, this.words.byteOffset, this.words.byteLength);
    let start = -1;
    for (let w = 0; w < this.words.length; w++) {
      if (start < 0 && w % CHUNK_WORDS === 0) {
        // No run open: skip a zero chunk at once.
        const to = Math.min(this.words.length, w + CHUNK_WORDS);
        if (bytes.compare(ZERO_CHUNK, 0, (to - w) * 4, w * 4, to * 4) === 0) {
          w = to - 1;
          continue;
        }
      }
      const v = this.words[w]!;
      if ((v === 0 && start < 0) || (v === 0xffffffff && start >= 0)) continue;
      for (let b = 0; b < 32; b++) {
        const page = w * 32 + b;
        if (page >= this.pages) break;
        const set = (v & (1 << b)) !== 0;
        if (set && start < 0) start = page;
        else if (!set && start >= 0) { yield [start, page - start]; start = -1; }
      }
    }
    if (start >= 0) yield [start, Math.min(this.pages, this.words.length * 32) - start];
  }
}

export class DirtyMemoryTracker {
  private pending: DirtyPages;
  private inFlight: DirtyPages | undefined;
  private readonly vmmDirty: Int32Array;
  readonly pages: number;

  /**
   * `vm` null: only the VMM's own writes are tracked (memory not in KVM, as in tests of the format).
   * The slots of `memory` must have been created with KVM_MEM_LOG_DIRTY_PAGES.
   */
  constructor(private readonly vm: VmFd | null, private readonly memory: GuestMemory, readonly mode: DirtyLogMode = 'get-and-clear') {
    this.pages = memory.size / PAGE_SIZE;
    this.pending = DirtyPages.empty(this.pages);
    this.vmmDirty = new Int32Array(memory.shared.vmmDirty);
  }

  /** Marks every page dirty (e.g. before the first snapshot after a restore whose base is unknown). */
  markAll(): void {
    this.pending = DirtyPages.all(this.pages);
  }

  /**
   * Takes every page dirtied since the last committed collection (VM paused: no vCPU in KVM_RUN and
   * no virtio request being served). The caller writes them, then calls commit or abort.
   */
  collect(): DirtyPages {
    if (this.inFlight) throw new Error('a snapshot is already in progress: commit or abort it first');
    const out = this.pending;
    this.pending = DirtyPages.empty(this.pages);
    if (this.vm) for (const region of this.memory.regions) this.takeKvmLog(region, out);
    this.takeVmmDirty(out);
    this.inFlight = out;
    return out;
  }

  /**
   * Takes the pages dirtied since the last `collect`/`collectMore` into the in-flight collection and
   * returns just those (a snapshot copies memory while the VM runs, then once more while paused).
   */
  collectMore(): DirtyPages {
    if (!this.inFlight) throw new Error('collectMore without a collection in flight');
    const delta = DirtyPages.empty(this.pages);
    if (this.vm) for (const region of this.memory.regions) this.takeKvmLog(region, delta);
    this.takeVmmDirty(delta);
    this.inFlight.orWith(delta);
    return delta;
  }

  /**
   * Like collectMore, for the last round, taken while the VM is paused: KVM's log is read but not
   * reset (no KVM_CLEAR_DIRTY_LOG, the costliest ioctl of a pause on PVM). Those pages therefore stay
   * dirty in KVM and come back in the next collection: the next snapshot copies them once more, and
   * any write to them after the resume is included with it. Nothing is missed; a few pages are copied
   * twice.
   */
  collectPaused(): DirtyPages {
    if (!this.inFlight) throw new Error('collectPaused without a collection in flight');
    const words = new Uint32Array(Math.ceil(this.pages / 32));
    const set: number[] = [];
    const scratch = new DirtyPages(words, this.pages);
    if (this.vm) for (const region of this.memory.regions) this.takeKvmLog(region, scratch, false, set);
    this.takeVmmDirty(scratch, set);
    const sorted = [...new Set(set)].sort((a, b) => a - b);
    const delta = new DirtyPages(words, this.pages, sorted);
    this.inFlight.orWith(delta);
    return delta;
  }

  /** The snapshot that consumed `collected` is durable: its pages are clean as of it. */
  commit(collected: DirtyPages): void {
    if (collected !== this.inFlight) throw new Error('commit of a dirty-page collection that is not in flight');
    this.inFlight = undefined;
  }

  /** The snapshot failed: its pages stay dirty for the next one. */
  abort(collected: DirtyPages): void {
    if (collected !== this.inFlight) throw new Error('abort of a dirty-page collection that is not in flight');
    this.pending.orWith(collected);
    this.inFlight = undefined;
  }

  private takeVmmDirty(into: DirtyPages, set?: number[]): void {
    // Word-wise exchange: one atomic per 32 pages with a bit set (GuestMemory.takeVmmDirty goes page by
    // page). The scan for them reads without atomics: a bit set meanwhile is taken by the next collection.
    const words = into.words;
    const vmmDirty = this.vmmDirty;
    forEachSetWord(vmmDirty.length > words.length ? vmmDirty.subarray(0, words.length) : vmmDirty, (w) => {
      words[w]! |= Atomics.exchange(vmmDirty, w, 0) >>> 0;
      set?.push(w);
    });
  }

  /** `set`: where to note the indices of the words of `into` it set bits in. */
  private takeKvmLog(region: MemoryRegion, into: DirtyPages, reset = true, set?: number[]): void {
    const slotPages = region.size / PAGE_SIZE;
    const t0 = performance.now();
    const log64 = this.vm!.getDirtyLog(region.slot, slotPages);
    const t1 = performance.now();
    pauseDetail(`  KVM_GET_DIRTY_LOG slot ${region.slot}`, (t1 - t0) * 1000);
    // Re-protect exactly the pages GET reported, at this paused instant (manual-protect mode only:
    // otherwise GET already cleared them).
    const log = new Uint32Array(log64.buffer, log64.byteOffset, log64.length * 2);
    if (reset && this.mode === 'manual-protect' && !Buffer.from(log.buffer, log.byteOffset, log.byteLength).equals(Buffer.alloc(log.byteLength))) {
      this.vm!.clearDirtyLog(region.slot, 0, slotPages, log64);
      pauseDetail(`  KVM_CLEAR_DIRTY_LOG slot ${region.slot}`, (performance.now() - t1) * 1000);
    }
    const firstPage = region.fileOffset / PAGE_SIZE;
    if (firstPage % 32 === 0) {
      const base = firstPage / 32;
      const n = Math.ceil(slotPages / 32);
      const words = into.words;
      forEachSetWord(log.subarray(0, n), (w, v) => {
        words[base + w]! |= v;
        set?.push(base + w);
      });
      return;
    }
    for (let i = 0; i < slotPages; i++) {
      if (log[i >>> 5]! & (1 << (i & 31))) {
        into.words[(firstPage + i) >>> 5]! |= 1 << ((firstPage + i) & 31);
        set?.push((firstPage + i) >>> 5);
      }
    }
  }
}
