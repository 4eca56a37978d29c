// The complete architectural state of a paused vCPU, read and written in the order KVM needs
// (vmm-facts "Dirty tracking and snapshots"). Called on the vCPU's own thread while it is parked.
import type { VcpuFd } from './kvm/vcpu.js';
import type { KvmCpuidEntry, KvmMsr, KvmRegs, KvmSregs } from './kvm/structs.js';

export interface VcpuState {
  mpState: number;
  regs: KvmRegs;
  sregs: KvmSregs;
  /** kvm_xsave (4096 bytes, or KVM_CAP_XSAVE2's size). */
  xsave: Uint8Array;
  xcrs: Uint8Array;
  debugregs: Uint8Array;
  lapic: Uint8Array;
  tscKhz: number;
  cpuid: KvmCpuidEntry[];
  msrs: KvmMsr[];
  /** kvm_vcpu_events, read last. */
  events: Uint8Array;
}

const MSR_IA32_TSC = 0x10;

export function saveVcpuState(vcpu: VcpuFd, msrIndices: readonly number[], xsaveSize: number): VcpuState {
  return {
    mpState: vcpu.getMpState(),
    regs: vcpu.getRegs(),
    sregs: vcpu.getSregs(),
    xsave: vcpu.getXsave(xsaveSize),
    xcrs: vcpu.getXcrs(),
    debugregs: vcpu.getDebugregs(),
    lapic: vcpu.getLapic(),
    tscKhz: vcpu.getTscKhz(),
    cpuid: vcpu.getCpuid(),
    msrs: vcpu.getMsrs(msrIndices),
    events: vcpu.getVcpuEvents(),
  };
}

export function loadVcpuState(vcpu: VcpuFd, s: VcpuState): void {
  vcpu.setCpuid(s.cpuid);
  vcpu.setMpState(s.mpState);
  vcpu.setRegs(s.regs);
  vcpu.setSregs(s.sregs);
  vcpu.setXsave(s.xsave);
  vcpu.setXcrs(s.xcrs);
  vcpu.setDebugregs(s.debugregs);
  vcpu.setLapic(s.lapic);
  // The TSC first: TSC_DEADLINE is relative to it.
  const msrs = [...s.msrs].sort((a, b) => (a.index === MSR_IA32_TSC ? -1 : b.index === MSR_IA32_TSC ? 1 : 0));
  vcpu.setMsrs(msrs);
  vcpu.setVcpuEvents(s.events);
  try {
    vcpu.kvmclockCtrl();
  } catch {
    // EINVAL when the guest has not enabled kvmclock: nothing to tell it.
  }
}
