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

/** A set of dirty pages taken out of the trackers by `collect`, until `commit` or `abort`. */
export class DirtyPages {
  constructor(
    /** One bit per memfd page. */
    readonly words: Uint32Array,
    readonly pages: number,
  ) {}

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
    for (const w of this.words) {
      let v = w - ((w >>> 1) & 0x55555555);
      v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
      n += Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
    }
    return n;
  }

  orWith(other: DirtyPages): void {
    for (let i = 0; i < this.words.length; i++) this.words[i]! |= other.words[i]!;
  }

  /** Runs of dirty pages, in order: [firstPage, count]. */
  *runs(): Generator<[first: number, count: number]> {
    let start = -1;
    for (let w = 0; w < this.words.length; w++) {
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

  private takeVmmDirty(into: DirtyPages): void {
    // Word-wise exchange: one atomic per 32 pages (GuestMemory.takeVmmDirty goes page by page).
    for (let w = 0; w < into.words.length; w++) {
      if (Atomics.load(this.vmmDirty, w) === 0) continue;
      into.words[w]! |= Atomics.exchange(this.vmmDirty, w, 0) >>> 0;
    }
  }

  private takeKvmLog(region: MemoryRegion, into: DirtyPages): void {
    const slotPages = region.size / PAGE_SIZE;
    const log64 = this.vm!.getDirtyLog(region.slot, slotPages);
    // Re-protect exactly the pages GET reported, at this paused instant (manual-protect mode only:
    // otherwise GET already cleared them).
    if (this.mode === 'manual-protect' && log64.some((w) => w !== 0n)) this.vm!.clearDirtyLog(region.slot, 0, slotPages, log64);
    const log = new Uint32Array(log64.buffer, log64.byteOffset, log64.length * 2);
    const firstPage = region.fileOffset / PAGE_SIZE;
    if (firstPage % 32 === 0) {
      const base = firstPage / 32;
      const n = Math.ceil(slotPages / 32);
      for (let w = 0; w < n; w++) into.words[base + w]! |= log[w]!;
      return;
    }
    for (let i = 0; i < slotPages; i++) {
      if (log[i >>> 5]! & (1 << (i & 31))) into.words[(firstPage + i) >>> 5]! |= 1 << ((firstPage + i) & 31);
    }
  }
}
