// A KVM VM fd: the VM-wide ioctls (TSS, irqchip, PIT, memory slots, interrupts, eventfds, dirty log,
// VM state for snapshots). Every method is safe to call from any thread of the process.
import koffi from 'koffi';
import * as libc from '../sys/libc.js';
import { VmmError } from './errors.js';
import * as ioc from './ioctls.js';
import {
  build, kvmClearDirtyLog, kvmClockData, kvmDirtyLog, kvmIoeventfd, kvmIrqchip, kvmIrqfd, kvmIrqLevel, kvmPitConfig,
  kvmUserspaceMemoryRegion, KVM_CLOCK_DATA_SIZE, KVM_IRQCHIP_SIZE, KVM_PIT_STATE2_SIZE,
} from './structs.js';
import type { Kvm } from './system.js';

/** What the VM-wide state of a paused VM is made of (opaque KVM blobs; see docs/vmm.md). */
export interface VmState {
  clock: Uint8Array;
  pit2: Uint8Array;
  /** PIC master, PIC slave, IOAPIC (kvm_irqchip, 520 bytes each). */
  irqchips: Uint8Array[];
}

export class VmFd {
  private readonly irqLevel = Buffer.alloc(kvmIrqLevel.size);

  constructor(readonly fd: number, readonly kvm: Kvm) {}

  /**
   * The platform every VM gets before memory and vCPUs: the TSS KVM needs below 4 GiB, the in-kernel
   * PIC/IOAPIC/LAPIC, and the in-kernel PIT (speaker port ignored).
   */
  createPlatform(tssAddress: number): void {
    this.setTssAddress(tssAddress);
    this.createIrqchip();
    this.createPit2();
  }

  /** One memory slot per region of guest RAM; `logDirty` asks KVM to track written pages. */
  mapMemory(regions: ReadonlyArray<{ slot: number; gpa: number; size: number; fileOffset: number }>, hostAddress: bigint, logDirty: boolean): void {
    for (const r of regions) {
      this.setUserMemoryRegion(r.slot, r.gpa, r.size, hostAddress + BigInt(r.fileOffset), logDirty ? ioc.KVM_MEM_LOG_DIRTY_PAGES : 0);
    }
  }

  setTssAddress(address: number): void {
    libc.ioctlInt(this.fd, ioc.KVM_SET_TSS_ADDR, address, 'KVM_SET_TSS_ADDR');
  }

  createIrqchip(): void {
    libc.ioctlInt(this.fd, ioc.KVM_CREATE_IRQCHIP, 0, 'KVM_CREATE_IRQCHIP');
  }

  createPit2(): void {
    libc.ioctlBuf(this.fd, ioc.KVM_CREATE_PIT2, build(kvmPitConfig, { flags: ioc.KVM_PIT_SPEAKER_DUMMY }), 'KVM_CREATE_PIT2');
  }

  setUserMemoryRegion(slot: number, guestPhysAddr: number, size: number, hostAddress: bigint, flags = 0): void {
    const region = build(kvmUserspaceMemoryRegion, {
      slot, flags, guest_phys_addr: BigInt(guestPhysAddr), memory_size: BigInt(size), userspace_addr: hostAddress,
    });
    try {
      libc.ioctlBuf(this.fd, ioc.KVM_SET_USER_MEMORY_REGION, region, 'KVM_SET_USER_MEMORY_REGION');
    } catch (err) {
      throw new VmmError(`KVM refused guest memory slot ${slot} (0x${guestPhysAddr.toString(16)}, ${size} bytes): ${(err as Error).message}`);
    }
  }

  /** Drives an interrupt line of the in-kernel irqchip (level 1 then 0 = one edge). Any thread. */
  irqLine(gsi: number, level: 0 | 1): void {
    this.irqLevel.writeUInt32LE(gsi, 0);
    this.irqLevel.writeUInt32LE(level, 4);
    libc.ioctlBuf(this.fd, ioc.KVM_IRQ_LINE, this.irqLevel, 'KVM_IRQ_LINE');
  }

  /** Writing 1 to eventfd `fd` will inject `gsi` (KVM_IRQFD). */
  registerIrqfd(gsi: number, fd: number): void {
    libc.ioctlBuf(this.fd, ioc.KVM_IRQFD, build(kvmIrqfd, { fd, gsi }), 'KVM_IRQFD');
  }

  unregisterIrqfd(gsi: number, fd: number): void {
    libc.ioctlBuf(this.fd, ioc.KVM_IRQFD, build(kvmIrqfd, { fd, gsi, flags: ioc.KVM_IRQFD_FLAG_DEASSIGN }), 'KVM_IRQFD(deassign)');
  }

  /**
   * A guest MMIO write of `length` bytes at `addr` signals eventfd `fd` instead of exiting to the VMM.
   * With `datamatch` >= 0 only writes of that value match (virtio: the queue index); -1 matches any value.
   */
  registerIoeventfd(addr: number, length: number, datamatch: number, fd: number): void {
    libc.ioctlBuf(this.fd, ioc.KVM_IOEVENTFD, this.ioeventfd(addr, length, datamatch, fd, 0), 'KVM_IOEVENTFD');
  }

  unregisterIoeventfd(addr: number, length: number, datamatch: number, fd: number): void {
    libc.ioctlBuf(this.fd, ioc.KVM_IOEVENTFD, this.ioeventfd(addr, length, datamatch, fd, ioc.KVM_IOEVENTFD_FLAG_DEASSIGN), 'KVM_IOEVENTFD(deassign)');
  }

  private ioeventfd(addr: number, length: number, datamatch: number, fd: number, extraFlags: number): Buffer {
    const flags = (datamatch >= 0 ? ioc.KVM_IOEVENTFD_FLAG_DATAMATCH : 0) | extraFlags;
    return build(kvmIoeventfd, { datamatch: BigInt(Math.max(0, datamatch)), addr: BigInt(addr), len: length, fd, flags });
  }

  createVcpu(index: number): number {
    return libc.ioctlInt(this.fd, ioc.KVM_CREATE_VCPU, index, `KVM_CREATE_VCPU(${index})`);
  }

  /**
   * KVM_GET_DIRTY_LOG for a slot of `pages` pages: returns (and KVM clears) one bit per page, as 64-bit
   * words. Only for slots created with KVM_MEM_LOG_DIRTY_PAGES.
   */
  getDirtyLog(slot: number, pages: number): BigUint64Array {
    const bitmap = new BigUint64Array(Math.ceil(pages / 64));
    const arg = build(kvmDirtyLog, { slot, dirty_bitmap: koffi.address(bitmap) });
    libc.ioctlBuf(this.fd, ioc.KVM_GET_DIRTY_LOG, arg, 'KVM_GET_DIRTY_LOG');
    return bitmap;
  }

  /** KVM_CLEAR_DIRTY_LOG (needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled): re-protects the given pages. */
  clearDirtyLog(slot: number, firstPage: number, pages: number, bitmap: BigUint64Array): void {
    const arg = build(kvmClearDirtyLog, { slot, num_pages: pages, first_page: BigInt(firstPage), dirty_bitmap: koffi.address(bitmap) });
    libc.ioctlBuf(this.fd, ioc.KVM_CLEAR_DIRTY_LOG, arg, 'KVM_CLEAR_DIRTY_LOG');
  }

  getClock(): Uint8Array {
    const buf = Buffer.alloc(KVM_CLOCK_DATA_SIZE);
    libc.ioctlBuf(this.fd, ioc.KVM_GET_CLOCK, buf, 'KVM_GET_CLOCK');
    return buf;
  }

  /** Sets kvmclock; only the clock value (and flags) are taken from `state`. */
  setClock(state: Uint8Array): void {
    const buf = build(kvmClockData, { clock: Buffer.from(state).readBigUInt64LE(0) });
    libc.ioctlBuf(this.fd, ioc.KVM_SET_CLOCK, buf, 'KVM_SET_CLOCK');
  }

  getPit2(): Uint8Array {
    const buf = Buffer.alloc(KVM_PIT_STATE2_SIZE);
    libc.ioctlBuf(this.fd, ioc.KVM_GET_PIT2, buf, 'KVM_GET_PIT2');
    return buf;
  }

  setPit2(state: Uint8Array): void {
    libc.ioctlBuf(this.fd, ioc.KVM_SET_PIT2, Buffer.from(state), 'KVM_SET_PIT2');
  }

  getIrqchip(chipId: number): Uint8Array {
    const buf = build(kvmIrqchip, { chip_id: chipId });
    libc.ioctlBuf(this.fd, ioc.KVM_GET_IRQCHIP, buf, 'KVM_GET_IRQCHIP');
    return buf;
  }

  setIrqchip(state: Uint8Array): void {
    if (state.length !== KVM_IRQCHIP_SIZE) throw new Error(`kvm_irqchip must be ${KVM_IRQCHIP_SIZE} bytes`);
    libc.ioctlBuf(this.fd, ioc.KVM_SET_IRQCHIP, Buffer.from(state), 'KVM_SET_IRQCHIP');
  }

  /** VM-wide state of a paused VM: PIT2, CLOCK, PIC master/slave and IOAPIC. */
  saveState(): VmState {
    return {
      clock: this.getClock(),
      pit2: this.getPit2(),
      irqchips: [ioc.KVM_IRQCHIP_PIC_MASTER, ioc.KVM_IRQCHIP_PIC_SLAVE, ioc.KVM_IRQCHIP_IOAPIC].map((c) => this.getIrqchip(c)),
    };
  }

  loadState(state: VmState): void {
    this.setPit2(state.pit2);
    for (const chip of state.irqchips) this.setIrqchip(chip);
    this.setClock(state.clock);
  }

  close(): void {
    libc.close(this.fd);
  }
}
