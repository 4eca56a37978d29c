// Puts a fresh vCPU into its boot state, on the vCPU's own thread: the platform's pure patches
// (vmm/cpu) mapped onto KVM ioctls. CPUID, MSRs, registers, special registers (patched over what KVM
// returns, never built from zeros), FPU, local APIC.
import { patchCpuid } from './cpu/cpuid.js';
import { applyBootLapic } from './cpu/lapic.js';
import { bootMsrs } from './cpu/msrs.js';
import { applyLongModeSregs, bootFpu, bootRegisters } from './cpu/registers.js';
import { build, kvmFpu, type KvmCpuidEntry } from './kvm/structs.js';
import type { VcpuFd } from './kvm/vcpu.js';
import { loadVcpuState, type VcpuState } from './vcpu-state.js';

export type VcpuBoot =
  /** The Linux 64-bit boot protocol entry (bzImage, the Lifeboat guest). */
  | { kind: 'linux64'; supportedCpuid: KvmCpuidEntry[]; vcpuCount: number }
  /** Real mode at 0:`ip`, the state of a CPU after reset (used to run hand-placed code in tests). */
  | { kind: 'real-mode'; ip: number; supportedCpuid: KvmCpuidEntry[]; vcpuCount: number }
  /** A saved vCPU state (a snapshot being resumed). */
  | { kind: 'restore'; state: VcpuState }
  /** Put into its boot state already, by the thread that created it (vcpus.ts): nothing left to do. */
  | { kind: 'configured' };

export function configureVcpu(vcpu: VcpuFd, boot: VcpuBoot): void {
  if (boot.kind === 'configured') return;
  if (boot.kind === 'restore') {
    loadVcpuState(vcpu, boot.state);
    return;
  }
  vcpu.setCpuid(patchCpuid(boot.supportedCpuid, { vcpuIndex: vcpu.index, vcpuCount: boot.vcpuCount }));
  vcpu.setMsrs(bootMsrs().map((m) => ({ index: m.index, data: m.value })));
  if (boot.kind === 'linux64') {
    const r = bootRegisters();
    vcpu.setRegs({ rip: BigInt(r.rip), rsp: BigInt(r.rsp), rbp: BigInt(r.rbp), rsi: BigInt(r.rsi), rflags: BigInt(r.rflags) });
    vcpu.setFpu(build(kvmFpu, bootFpu()));
    vcpu.setSregs(applyLongModeSregs(vcpu.getSregs()));
  } else {
    vcpu.setRegs({ rip: BigInt(boot.ip), rflags: 2n });
    const sregs = vcpu.getSregs();
    sregs.cs = { ...sregs.cs, base: 0n, selector: 0 };
    vcpu.setSregs(sregs);
  }
  vcpu.setLapic(applyBootLapic(vcpu.getLapic()));
}
