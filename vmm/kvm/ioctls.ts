// KVM ioctl request numbers and capability ids, checked against this machine's 6.1 <linux/kvm.h>
// (see test/vmm/kvm-structs.test.ts). Many requests exceed 2^31: libc.ts declares the argument
// `unsigned long`.

/** On /dev/kvm. */
export const KVM_GET_API_VERSION = 0xae00;
export const KVM_CREATE_VM = 0xae01;
export const KVM_GET_MSR_INDEX_LIST = 0xc004ae02;
export const KVM_CHECK_EXTENSION = 0xae03;
export const KVM_GET_VCPU_MMAP_SIZE = 0xae04;
export const KVM_GET_SUPPORTED_CPUID = 0xc008ae05;

/** On a VM fd. */
export const KVM_CREATE_VCPU = 0xae41;
export const KVM_GET_DIRTY_LOG = 0x4010ae42;
export const KVM_SET_USER_MEMORY_REGION = 0x4020ae46;
export const KVM_SET_TSS_ADDR = 0xae47;
export const KVM_CREATE_IRQCHIP = 0xae60;
export const KVM_IRQ_LINE = 0x4008ae61;
export const KVM_GET_IRQCHIP = 0xc208ae62;
export const KVM_SET_IRQCHIP = 0x8208ae63;
export const KVM_IRQFD = 0x4020ae76;
export const KVM_CREATE_PIT2 = 0x4040ae77;
export const KVM_IOEVENTFD = 0x4040ae79;
export const KVM_SET_CLOCK = 0x4030ae7b;
export const KVM_GET_CLOCK = 0x8030ae7c;
export const KVM_GET_PIT2 = 0x8070ae9f;
export const KVM_SET_PIT2 = 0x4070aea0;
export const KVM_ENABLE_CAP = 0x4068aea3;
export const KVM_CLEAR_DIRTY_LOG = 0xc018aec0;

/** On a vCPU fd. */
export const KVM_RUN = 0xae80;
export const KVM_GET_REGS = 0x8090ae81;
export const KVM_SET_REGS = 0x4090ae82;
export const KVM_GET_SREGS = 0x8138ae83;
export const KVM_SET_SREGS = 0x4138ae84;
export const KVM_GET_MSRS = 0xc008ae88;
export const KVM_SET_MSRS = 0x4008ae89;
export const KVM_GET_FPU = 0x81a0ae8c;
export const KVM_SET_FPU = 0x41a0ae8d;
export const KVM_GET_LAPIC = 0x8400ae8e;
export const KVM_SET_LAPIC = 0x4400ae8f;
export const KVM_SET_CPUID2 = 0x4008ae90;
export const KVM_GET_CPUID2 = 0xc008ae91;
export const KVM_GET_MP_STATE = 0x8004ae98;
export const KVM_SET_MP_STATE = 0x4004ae99;
export const KVM_GET_VCPU_EVENTS = 0x8040ae9f;
export const KVM_SET_VCPU_EVENTS = 0x4040aea0;
export const KVM_GET_DEBUGREGS = 0x8080aea1;
export const KVM_SET_DEBUGREGS = 0x4080aea2;
export const KVM_GET_TSC_KHZ = 0xaea3;
export const KVM_GET_XSAVE = 0x9000aea4;
export const KVM_SET_XSAVE = 0x5000aea5;
export const KVM_GET_XCRS = 0x8188aea6;
export const KVM_SET_XCRS = 0x4188aea7;
export const KVM_KVMCLOCK_CTRL = 0xaead;
export const KVM_GET_XSAVE2 = 0x9000aecf;

export const KVM_API_VERSION = 12;

export const KVM_CAP_IRQCHIP = 0;
export const KVM_CAP_USER_MEMORY = 3;
export const KVM_CAP_SET_TSS_ADDR = 4;
export const KVM_CAP_EXT_CPUID = 7;
export const KVM_CAP_NR_VCPUS = 9;
export const KVM_CAP_MP_STATE = 14;
export const KVM_CAP_IRQFD = 32;
export const KVM_CAP_PIT2 = 33;
export const KVM_CAP_PIT_STATE2 = 35;
export const KVM_CAP_IOEVENTFD = 36;
export const KVM_CAP_ADJUST_CLOCK = 39;
export const KVM_CAP_VCPU_EVENTS = 41;
export const KVM_CAP_DEBUGREGS = 50;
export const KVM_CAP_XSAVE = 55;
export const KVM_CAP_XCRS = 56;
export const KVM_CAP_GET_TSC_KHZ = 61;
export const KVM_CAP_MAX_VCPUS = 66;
export const KVM_CAP_KVMCLOCK_CTRL = 76;
export const KVM_CAP_IMMEDIATE_EXIT = 136;
export const KVM_CAP_XSAVE2 = 208;

/** Capabilities the VMM cannot run without (checked right after opening /dev/kvm). */
export const REQUIRED_CAPS: ReadonlyArray<readonly [number, string]> = [
  [KVM_CAP_IRQCHIP, 'IRQCHIP'],
  [KVM_CAP_IOEVENTFD, 'IOEVENTFD'],
  [KVM_CAP_IRQFD, 'IRQFD'],
  [KVM_CAP_USER_MEMORY, 'USER_MEMORY'],
  [KVM_CAP_SET_TSS_ADDR, 'SET_TSS_ADDR'],
  [KVM_CAP_PIT2, 'PIT2'],
  [KVM_CAP_PIT_STATE2, 'PIT_STATE2'],
  [KVM_CAP_ADJUST_CLOCK, 'ADJUST_CLOCK'],
  [KVM_CAP_DEBUGREGS, 'DEBUGREGS'],
  [KVM_CAP_MP_STATE, 'MP_STATE'],
  [KVM_CAP_VCPU_EVENTS, 'VCPU_EVENTS'],
  [KVM_CAP_XCRS, 'XCRS'],
  [KVM_CAP_XSAVE, 'XSAVE'],
  [KVM_CAP_EXT_CPUID, 'EXT_CPUID'],
  [KVM_CAP_IMMEDIATE_EXIT, 'IMMEDIATE_EXIT'],
];

/** kvm_run.exit_reason values the VMM handles. */
export const KVM_EXIT_UNKNOWN = 0;
export const KVM_EXIT_EXCEPTION = 1;
export const KVM_EXIT_IO = 2;
export const KVM_EXIT_HLT = 5;
export const KVM_EXIT_MMIO = 6;
export const KVM_EXIT_SHUTDOWN = 8;
export const KVM_EXIT_FAIL_ENTRY = 9;
export const KVM_EXIT_INTR = 10;
export const KVM_EXIT_INTERNAL_ERROR = 17;
export const KVM_EXIT_SYSTEM_EVENT = 24;
export const KVM_EXIT_DIRTY_RING_FULL = 31;

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;
export const KVM_SYSTEM_EVENT_SHUTDOWN = 1;
export const KVM_SYSTEM_EVENT_RESET = 2;
export const KVM_SYSTEM_EVENT_CRASH = 3;

export const KVM_INTERNAL_ERROR_EMULATION = 1;
export const KVM_INTERNAL_ERROR_SIMUL_EX = 2;
export const KVM_INTERNAL_ERROR_DELIVERY_EV = 3;

export const KVM_MEM_LOG_DIRTY_PAGES = 1;
export const KVM_MEM_READONLY = 2;
export const KVM_PIT_SPEAKER_DUMMY = 1;
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1;
export const KVM_IOEVENTFD_FLAG_PIO = 2;
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 4;
export const KVM_IRQFD_FLAG_DEASSIGN = 1;
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

export const KVM_IRQCHIP_PIC_MASTER = 0;
export const KVM_IRQCHIP_PIC_SLAVE = 1;
export const KVM_IRQCHIP_IOAPIC = 2;

/** Names for the exit reasons we print in error messages. */
export const EXIT_REASON_NAMES: Readonly<Record<number, string>> = {
  0: 'UNKNOWN', 1: 'EXCEPTION', 2: 'IO', 3: 'HYPERCALL', 4: 'DEBUG', 5: 'HLT', 6: 'MMIO', 7: 'IRQ_WINDOW_OPEN',
  8: 'SHUTDOWN', 9: 'FAIL_ENTRY', 10: 'INTR', 11: 'SET_TPR', 12: 'TPR_ACCESS', 17: 'INTERNAL_ERROR',
  24: 'SYSTEM_EVENT', 31: 'DIRTY_RING_FULL',
};
