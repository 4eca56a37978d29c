// The order a KVM VM is built in, for a boot and for a VM made ahead of a restore
// (snapshot/prepared-vm.ts): dirty logging first (manual-protect mode must be enabled before the slots
// exist, tracking/dirty-memory.ts), then the memory slots, then irqchip, PIT and TSS. Slots registered
// before the irqchip take ~0.3-0.8 ms on this project's PVM host, after it 3-10 ms.
import type { VmFd } from './kvm/vm.js';
import { KVM_TSS_ADDR } from './layout.js';
import type { MemoryRegion } from './memory.js';
import { enableDirtyLogging, type DirtyLogMode } from './tracking/dirty-memory.js';

/** Builds `vm`'s memory slots over `hostAddress` and its platform; returns the dirty-log mode, if logging. */
export function createVmPlatform(vm: VmFd, regions: readonly MemoryRegion[], hostAddress: bigint, logDirtyPages: boolean): DirtyLogMode | undefined {
  const dirtyLogMode = logDirtyPages ? enableDirtyLogging(vm) : undefined;
  vm.mapMemory(regions, hostAddress, dirtyLogMode !== undefined);
  vm.createPlatform(KVM_TSS_ADDR);
  return dirtyLogMode;
}
