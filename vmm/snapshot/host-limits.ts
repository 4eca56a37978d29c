// What this host can give a restored VM: its TSC frequency (PVM cannot set another one) and vCPU limit.
import { Kvm } from '../kvm/system.js';
import { VcpuFd } from '../kvm/vcpu.js';

export function hostRestoreLimits(): { tscKhz: number; maxVcpus: number } {
  const kvm = Kvm.open();
  try {
    const vm = kvm.createVm();
    try {
      const vcpu = new VcpuFd(vm.createVcpu(0), 0);
      try {
        return { tscKhz: vcpu.getTscKhz(), maxVcpus: kvm.maxVcpus() };
      } finally {
        vcpu.close();
      }
    } finally {
      vm.close();
    }
  } finally {
    kvm.close();
  }
}
