// A KVM VM made ahead of a restore, for a warm standby (src/cli/commands/vm-standby.ts): /dev/kvm opened
// and checked, the VM created with dirty logging, its memory slots registered over an address range
// reserved for guest memory (PROT_NONE, nothing allocated), then irqchip, PIT and TSS, in the boot
// recipe's order (vm-platform.ts). A restore maps the snapshot's memory over the reservation
// (MAP_FIXED: KVM follows the new mapping, its slots are addresses in this process) and boots the
// machine on this VM instead of building one. Only a snapshot of the size it was prepared for can use
// it; any other is restored the usual way.
import { VmmError } from '../kvm/errors.js';
import { Kvm } from '../kvm/system.js';
import type { VmFd } from '../kvm/vm.js';
import { layoutRegions } from '../memory.js';
import * as libc from '../sys/libc.js';
import type { DirtyLogMode } from '../tracking/dirty-memory.js';
import { createVmPlatform } from '../vm-platform.js';

/** What bootMachine takes over from a prepared VM (it closes them from then on). */
export interface PreparedKvm {
  kvm: Kvm;
  vm: VmFd;
  dirtyLogMode: DirtyLogMode;
}

export class PreparedVm {
  private held: PreparedKvm | undefined;
  /** The reserved range, until a snapshot's memory is mapped over it (the mapping's owner unmaps it). */
  private reserved: boolean;

  private constructor(held: PreparedKvm, readonly memoryBytes: number, readonly hostAddress: bigint) {
    this.held = held;
    this.reserved = true;
  }

  /** Builds the VM for guest memory of `memoryBytes` (a positive multiple of 4 KiB). */
  static create(memoryBytes: number): PreparedVm {
    const kvm = Kvm.open();
    let vm: VmFd | undefined;
    let hostAddress: bigint | undefined;
    try {
      vm = kvm.createVm();
      hostAddress = libc.mmap(memoryBytes, libc.PROT_NONE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE, -1, 0);
      const dirtyLogMode = createVmPlatform(vm, layoutRegions(memoryBytes), hostAddress, true)!;
      return new PreparedVm({ kvm, vm, dirtyLogMode }, memoryBytes, hostAddress);
    } catch (err) {
      if (hostAddress !== undefined) libc.munmap(hostAddress, memoryBytes);
      vm?.close();
      kvm.close();
      throw err instanceof VmmError ? err : new VmmError(`preparing a VM ahead of the restore failed: ${(err as Error).message}`);
    }
  }

  /**
   * Where to map guest memory of `size` bytes (MAP_FIXED over the reservation), or undefined when this VM
   * was prepared for another size or is used already. From then on the mapping's owner unmaps the range.
   */
  claimMemory(size: number): bigint | undefined {
    if (!this.reserved || !this.held || size !== this.memoryBytes) return undefined;
    this.reserved = false;
    return this.hostAddress;
  }

  /** The VM, for guest memory mapped at `hostAddress` (claimMemory's); undefined if it does not fit. */
  take(hostAddress: bigint, size: number): PreparedKvm | undefined {
    if (this.reserved || !this.held || hostAddress !== this.hostAddress || size !== this.memoryBytes) return undefined;
    const held = this.held;
    this.held = undefined;
    return held;
  }

  /** Whether a restore can still use it (not claimed, not closed). */
  get usable(): boolean {
    return this.reserved && this.held !== undefined;
  }

  /** Releases what was not taken: the VM and /dev/kvm, and the reservation unless memory was mapped over it. Idempotent. */
  close(): void {
    if (this.held) {
      this.held.vm.close();
      this.held.kvm.close();
      this.held = undefined;
    }
    if (this.reserved) {
      this.reserved = false;
      libc.munmap(this.hostAddress, this.memoryBytes);
    }
  }
}
