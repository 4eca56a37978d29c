// Guest RAM: one memfd (so snapshots can write or map it as a file), mapped once per process and shared
// with every worker as a zero-copy view. RAM above MMIO_HOLE_START continues at 4 GiB.
import { MMIO_HOLE_START, PAGE_SIZE } from './layout.js';
import * as libc from './sys/libc.js';

const FOUR_GIB = 0x1_0000_0000;

/** A run of guest-physical RAM backed by one part of the memfd; one KVM memory slot each. */
export interface MemoryRegion {
  slot: number;
  gpa: number;
  size: number;
  /** Offset of this region in the memfd (and in the host mapping). */
  fileOffset: number;
}

/** What a worker needs to attach to the same guest memory (structured-cloneable). */
export interface SharedGuestMemory {
  fd: number;
  size: number;
  hostAddress: bigint;
  regions: MemoryRegion[];
  /** One bit per 4 KiB page of the memfd, set for pages the VMM itself wrote. */
  vmmDirty: SharedArrayBuffer;
}

export function layoutRegions(size: number): MemoryRegion[] {
  if (size <= MMIO_HOLE_START) return [{ slot: 0, gpa: 0, size, fileOffset: 0 }];
  return [
    { slot: 0, gpa: 0, size: MMIO_HOLE_START, fileOffset: 0 },
    { slot: 1, gpa: FOUR_GIB, size: size - MMIO_HOLE_START, fileOffset: MMIO_HOLE_START },
  ];
}

export class GuestMemory {
  /**
   * All of guest RAM as one view, made on first use. V8 counts such a view as external memory and
   * answers a large one (256 MiB) with a full garbage collection at once (2-8 ms): so `write` and `read`
   * (the boot recipe's few copies) use views of just the range they copy until something needs this.
   */
  private wholeView: Uint8Array | undefined;
  private readonly dirty: Int32Array;

  private constructor(readonly shared: SharedGuestMemory, private readonly owner: boolean, private readonly release?: () => void) {
    this.dirty = new Int32Array(shared.vmmDirty);
  }

  /** Allocates `size` bytes (a multiple of 4 KiB) of zeroed guest RAM. */
  static create(size: number): GuestMemory {
    if (size <= 0 || size % PAGE_SIZE !== 0) throw new Error(`guest memory size must be a positive multiple of 4 KiB, got ${size}`);
    const fd = libc.memfdCreate('lifeboat-guest-ram');
    try {
      libc.ftruncate(fd, size);
      const hostAddress = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED | libc.MAP_NORESERVE, fd);
      const pages = size / PAGE_SIZE;
      const vmmDirty = new SharedArrayBuffer(Math.ceil(pages / 32) * 4);
      return new GuestMemory({ fd, size, hostAddress, regions: layoutRegions(size), vmmDirty }, true);
    } catch (err) {
      libc.close(fd);
      throw err;
    }
  }

  /**
   * Takes ownership of memory mapped elsewhere (a VM snapshot's private mapping): `close()` calls
   * `release` instead of unmapping a memfd. A fresh VMM-dirty bitmap is made.
   */
  static adopt(mapping: { fd: number; size: number; hostAddress: bigint }, release: () => void): GuestMemory {
    const { fd, size, hostAddress } = mapping;
    const vmmDirty = new SharedArrayBuffer(Math.ceil(size / PAGE_SIZE / 32) * 4);
    return new GuestMemory({ fd, size, hostAddress, regions: layoutRegions(size), vmmDirty }, true, release);
  }

  /** The same memory, seen from a worker thread of the same process. */
  static attach(shared: SharedGuestMemory): GuestMemory {
    return new GuestMemory(shared, false);
  }

  get size(): number {
    return this.shared.size;
  }

  get regions(): readonly MemoryRegion[] {
    return this.shared.regions;
  }

  /** Offset in the memfd of guest-physical `gpa`, checking that [gpa, gpa+length) is RAM in one region. */
  fileOffset(gpa: number, length: number): number {
    for (const r of this.shared.regions) {
      if (gpa >= r.gpa && gpa + length <= r.gpa + r.size) return r.fileOffset + (gpa - r.gpa);
    }
    throw new RangeError(`guest address 0x${gpa.toString(16)}+0x${length.toString(16)} is not RAM`);
  }

  /** A zero-copy window on guest RAM. Writing through it does NOT mark pages dirty: use `write` or `markDirty`. */
  slice(gpa: number, length: number): Uint8Array {
    const off = this.fileOffset(gpa, length);
    this.wholeView ??= libc.view(this.shared.hostAddress, this.shared.size);
    return this.wholeView.subarray(off, off + length);
  }

  /** Copies `data` into guest RAM at `gpa` and records the pages as written by the VMM. */
  write(gpa: number, data: Uint8Array): void {
    this.window(gpa, data.length).set(data);
    this.markDirty(gpa, data.length);
  }

  read(gpa: number, length: number): Uint8Array {
    return Uint8Array.from(this.window(gpa, length));
  }

  /** [gpa, gpa+length) for one copy: a window on the whole view if it exists, else a view of just that range. */
  private window(gpa: number, length: number): Uint8Array {
    if (this.wholeView || length === 0) return this.slice(gpa, length);
    return libc.view(this.shared.hostAddress + BigInt(this.fileOffset(gpa, length)), length);
  }

  /** Records that the VMM wrote [gpa, gpa+length): KVM's dirty log cannot see these writes. */
  markDirty(gpa: number, length: number): void {
    if (length <= 0) return;
    const off = this.fileOffset(gpa, length);
    const first = Math.floor(off / PAGE_SIZE);
    const last = Math.floor((off + length - 1) / PAGE_SIZE);
    for (let page = first; page <= last; page++) Atomics.or(this.dirty, page >>> 5, 1 << (page & 31));
  }

  /**
   * Takes and clears the VMM's own dirty bits for pages [firstPage, firstPage+pages) of the memfd, as a
   * bitmap of 64-bit words (the layout of KVM_GET_DIRTY_LOG), so the two can be OR-ed.
   */
  takeVmmDirty(firstPage: number, pages: number): BigUint64Array {
    const out = new BigUint64Array(Math.ceil(pages / 64));
    for (let i = 0; i < pages; i++) {
      const page = firstPage + i;
      const bit = 1 << (page & 31);
      const old = Atomics.and(this.dirty, page >>> 5, ~bit);
      if (old & bit) out[i >>> 6]! |= 1n << BigInt(i & 63);
    }
    return out;
  }

  /** Puts bits back (a consumer of `takeVmmDirty` failed), so no change is lost. */
  restoreVmmDirty(firstPage: number, bitmap: BigUint64Array, pages: number): void {
    for (let i = 0; i < pages; i++) {
      if ((bitmap[i >>> 6]! >> BigInt(i & 63)) & 1n) {
        const page = firstPage + i;
        Atomics.or(this.dirty, page >>> 5, 1 << (page & 31));
      }
    }
  }

  /** Unmaps and closes the memfd (owner only; views attached in workers become invalid). */
  close(): void {
    if (!this.owner) return;
    if (this.release) return this.release();
    libc.munmap(this.shared.hostAddress, this.shared.size);
    libc.close(this.shared.fd);
  }
}
