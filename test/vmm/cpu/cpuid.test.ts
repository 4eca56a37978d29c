import assert from 'node:assert/strict';
import { patchCpuid, type CpuidEntry } from '../../../vmm/cpu/cpuid.js';
import { Kvm } from '../../../vmm/kvm/system.js';

function entry(fn: number, index: number, regs: Partial<CpuidEntry> = {}): CpuidEntry {
  return { function: fn, index, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0, ...regs };
}

const leaf = (entries: CpuidEntry[], fn: number, index = 0) => entries.find((e) => e.function === fn && e.index === index)!;

describe('CPUID as each vCPU sees it', () => {
  const host = [
    entry(0, 0, { eax: 0x1f, ebx: 0x68747541 }),
    // Host leaf 1: APIC id 0x2a, 64 logical CPUs, PDCM set, no hypervisor bit, HTT set.
    entry(1, 0, { eax: 0x00a00f11, ebx: 0x2a400805, ecx: 0x7ed8320b | (1 << 15), edx: 0x178bfbff }),
    entry(0xb, 0, { flags: 1, eax: 1, ebx: 2, ecx: 0x100, edx: 0x2a }),
    entry(0xb, 1, { flags: 1, eax: 7, ebx: 64, ecx: 0x201, edx: 0x2a }),
    entry(0xb, 2, { flags: 1, ecx: 2, edx: 0x2a }),
    entry(0x40000001, 0, { eax: 0x01007afb }),
  ];

  it('gives vCPU 2 of 4 its APIC id, the vCPU count, TSC-deadline and the hypervisor bit in leaf 1', () => {
    const patched = patchCpuid(host, { vcpuIndex: 2, vcpuCount: 4 });
    const l1 = leaf(patched, 1);
    assert.equal(l1.ebx >>> 24, 2, 'APIC id');
    assert.equal((l1.ebx >>> 16) & 0xff, 4, 'logical processor count');
    assert.equal((l1.ebx >>> 8) & 0xff, 8, 'CLFLUSH line size / 8');
    assert.equal(l1.ebx & 0xff, 0x05, 'brand index kept');
    assert.equal((l1.ecx >>> 24) & 1, 1, 'TSC-deadline');
    assert.equal(l1.ecx >>> 31, 1, 'hypervisor');
    assert.equal((l1.ecx >>> 15) & 1, 0, 'PDCM cleared');
    assert.equal((l1.edx >>> 28) & 1, 1, 'HTT with more than one vCPU');
    assert.equal(l1.eax, 0x00a00f11, 'signature untouched');
    assert.deepEqual(leaf(patched, 0x40000001), leaf(host, 0x40000001), 'KVM leaves pass through');
    assert.deepEqual(host[1]!.ebx, 0x2a400805, 'input not modified');
  });

  it('clears HTT for a single vCPU', () => {
    const l1 = leaf(patchCpuid(host, { vcpuIndex: 0, vcpuCount: 1 }), 1);
    assert.equal((l1.edx >>> 28) & 1, 0);
    assert.equal(l1.ebx >>> 24, 0);
  });

  it('describes one package of single-thread cores in leaf 0xB, with each vCPU\'s x2APIC id', () => {
    const patched = patchCpuid(host, { vcpuIndex: 3, vcpuCount: 6 });
    assert.deepEqual(leaf(patched, 0xb, 0), entry(0xb, 0, { flags: 1, eax: 0, ebx: 1, ecx: 0x100, edx: 3 }));
    assert.deepEqual(leaf(patched, 0xb, 1), entry(0xb, 1, { flags: 1, eax: 3, ebx: 6, ecx: 0x201, edx: 3 }));
    assert.deepEqual(leaf(patched, 0xb, 2), entry(0xb, 2, { flags: 1, eax: 0, ebx: 0, ecx: 2, edx: 3 }));
  });

  it('refuses a vCPU index outside the machine', () => {
    assert.throws(() => patchCpuid(host, { vcpuIndex: 4, vcpuCount: 4 }), /vcpu index 4 out of range 0..3/);
  });

  it("patches the list this host's KVM supports (KVM_GET_SUPPORTED_CPUID) the same way", () => {
    const kvm = Kvm.open();
    try {
      const supported = kvm.supportedCpuid();
      assert.ok(supported.some((e) => e.function === 1), 'KVM lists leaf 1');
      const patched = patchCpuid(supported, { vcpuIndex: 1, vcpuCount: 2 });
      assert.equal(patched.length, supported.length);
      const l1 = leaf(patched, 1);
      assert.equal(l1.ebx >>> 24, 1);
      assert.equal(l1.ecx >>> 31, 1);
      for (const e of patched.filter((x) => x.function === 0xb)) assert.equal(e.edx, 1);
    } finally {
      kvm.close();
    }
  });
});
