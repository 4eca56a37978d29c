// Per-vCPU patch of the CPUID entries KVM supports (KVM_GET_SUPPORTED_CPUID) before KVM_SET_CPUID2:
// APIC ids and the CPU count the guest should see, TSC-deadline timer, and the hypervisor bit.

/** struct kvm_cpuid_entry2 without its padding. */
export interface CpuidEntry {
  function: number;
  index: number;
  /** KVM_CPUID_FLAG_SIGNIFCANT_INDEX (1) when `index` selects a subleaf. */
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export interface CpuidTopology {
  /** This vCPU's index, which is also its APIC id. */
  readonly vcpuIndex: number;
  readonly vcpuCount: number;
}

export const LEAF_FEATURES = 0x1;
export const LEAF_EXTENDED_TOPOLOGY = 0xb;
export const LEAF_EXTENDED_TOPOLOGY_V2 = 0x1f;

export const ECX_PDCM = 1 << 15;
export const ECX_TSC_DEADLINE = 1 << 24;
/** Not in KVM's supported list, yet without it Linux ignores the KVM leaves (kvmclock, PV features). */
export const ECX_HYPERVISOR = 1 << 31;
export const EDX_HTT = 1 << 28;
/** EBX[15:8]: CLFLUSH line size in 8-byte units (64 bytes). */
const CLFLUSH_LINE_SIZE_QWORDS = 8;

const TOPOLOGY_LEVEL_SMT = 1;
const TOPOLOGY_LEVEL_CORE = 2;

/**
 * Returns patched copies of `entries` for one vCPU. The topology is one package of `vcpuCount`
 * single-threaded cores, so KVM's pass-through of the host's topology leaves never leaks into the guest.
 */
export function patchCpuid(entries: readonly CpuidEntry[], topology: CpuidTopology): CpuidEntry[] {
  const { vcpuIndex: apicId, vcpuCount } = topology;
  if (!Number.isInteger(vcpuCount) || vcpuCount < 1 || vcpuCount > 254) throw new Error(`vcpu count ${vcpuCount} out of range 1..254`);
  if (!Number.isInteger(apicId) || apicId < 0 || apicId >= vcpuCount) throw new Error(`vcpu index ${apicId} out of range 0..${vcpuCount - 1}`);
  return entries.map((original) => {
    const e = { ...original };
    switch (e.function) {
      case LEAF_FEATURES:
        e.ebx = ((e.ebx & 0xff) | (CLFLUSH_LINE_SIZE_QWORDS << 8) | (vcpuCount << 16) | (apicId << 24)) >>> 0;
        e.ecx = ((e.ecx | ECX_TSC_DEADLINE | ECX_HYPERVISOR) & ~ECX_PDCM) >>> 0;
        e.edx = (vcpuCount > 1 ? e.edx | EDX_HTT : e.edx & ~EDX_HTT) >>> 0;
        break;
      case LEAF_EXTENDED_TOPOLOGY:
      case LEAF_EXTENDED_TOPOLOGY_V2:
        Object.assign(e, topologyLevel(e.index, apicId, vcpuCount));
        break;
    }
    return e;
  });
}

/** Leaf 0xB/0x1F subleaf: EAX = APIC-id bits below the next level, EBX = CPUs at this level, ECX = level type | subleaf, EDX = x2APIC id. */
function topologyLevel(subleaf: number, apicId: number, vcpuCount: number): Pick<CpuidEntry, 'eax' | 'ebx' | 'ecx' | 'edx'> {
  if (subleaf === 0) return { eax: 0, ebx: 1, ecx: (TOPOLOGY_LEVEL_SMT << 8) | subleaf, edx: apicId };
  if (subleaf === 1) {
    const coreBits = Math.ceil(Math.log2(vcpuCount));
    return { eax: coreBits, ebx: vcpuCount, ecx: (TOPOLOGY_LEVEL_CORE << 8) | subleaf, edx: apicId };
  }
  return { eax: 0, ebx: 0, ecx: subleaf & 0xff, edx: apicId };
}
