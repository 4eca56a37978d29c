// MSR values written at boot (KVM_SET_MSRS), as Firecracker sets them: syscall/sysenter state cleared,
// TSC at 0, fast-strings enabled, MTRRs enabled with write-back default.

export interface MsrEntry {
  readonly index: number;
  readonly value: bigint;
}

export const MSR_IA32_TSC = 0x10;
export const MSR_IA32_SYSENTER_CS = 0x174;
export const MSR_IA32_SYSENTER_ESP = 0x175;
export const MSR_IA32_SYSENTER_EIP = 0x176;
export const MSR_IA32_MISC_ENABLE = 0x1a0;
export const MSR_MTRR_DEF_TYPE = 0x2ff;
export const MSR_STAR = 0xc0000081;
export const MSR_LSTAR = 0xc0000082;
export const MSR_CSTAR = 0xc0000083;
export const MSR_SYSCALL_MASK = 0xc0000084;
export const MSR_KERNEL_GS_BASE = 0xc0000102;

const MISC_ENABLE_FAST_STRING = 1n;
/** MTRRdefType: E (bit 11) enables MTRRs, default type 6 = write-back. */
const MTRR_ENABLE_WRITEBACK_DEFAULT = 0x806n;

export function bootMsrs(): MsrEntry[] {
  return [
    { index: MSR_IA32_SYSENTER_CS, value: 0n },
    { index: MSR_IA32_SYSENTER_ESP, value: 0n },
    { index: MSR_IA32_SYSENTER_EIP, value: 0n },
    { index: MSR_STAR, value: 0n },
    { index: MSR_CSTAR, value: 0n },
    { index: MSR_KERNEL_GS_BASE, value: 0n },
    { index: MSR_SYSCALL_MASK, value: 0n },
    { index: MSR_LSTAR, value: 0n },
    { index: MSR_IA32_TSC, value: 0n },
    { index: MSR_IA32_MISC_ENABLE, value: MISC_ENABLE_FAST_STRING },
    { index: MSR_MTRR_DEF_TYPE, value: MTRR_ENABLE_WRITEBACK_DEFAULT },
  ];
}
