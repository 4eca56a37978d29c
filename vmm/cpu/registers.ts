// Register state at the 64-bit boot protocol's entry: general registers, the long-mode special registers
// (patched over what KVM_GET_SREGS returned, never built from zeros), and the FPU control words.

import {
  BOOT_STACK_POINTER,
  GDT_ADDR,
  HIGH_MEMORY_START,
  IDT_ADDR,
  KERNEL_64BIT_ENTRY_OFFSET,
  PML4_ADDR,
  ZERO_PAGE_ADDR,
} from '../layout.js';
import {
  CODE_SELECTOR,
  DATA_SELECTOR,
  GDT_ENTRIES,
  GDT_LIMIT,
  IDT_LIMIT,
  TSS_SELECTOR,
  segmentFromGdtEntry,
  type DescriptorTable,
  type Segment,
  type U64,
} from './gdt.js';

/** The kvm_regs fields the entry sets; every other general register starts at 0. */
export interface BootRegisters {
  rip: number;
  rsp: number;
  rbp: number;
  /** Address of the zero page (boot_params). */
  rsi: number;
  rflags: number;
}

/** Bit 1 of RFLAGS is reserved and always 1; interrupts stay disabled (IF=0). */
export const RFLAGS_RESERVED = 0x2;

export function bootRegisters(): BootRegisters {
  return {
    rip: HIGH_MEMORY_START + KERNEL_64BIT_ENTRY_OFFSET,
    rsp: BOOT_STACK_POINTER,
    rbp: BOOT_STACK_POINTER,
    rsi: ZERO_PAGE_ADDR,
    rflags: RFLAGS_RESERVED,
  };
}

/** The kvm_sregs fields the long-mode patch touches (named as in struct kvm_sregs). */
export interface SpecialRegisters {
  cs: Segment;
  ds: Segment;
  es: Segment;
  fs: Segment;
  gs: Segment;
  ss: Segment;
  tr: Segment;
  gdt: DescriptorTable;
  idt: DescriptorTable;
  cr0: U64;
  cr3: U64;
  cr4: U64;
  efer: U64;
}

export const CR0_PE = 1n << 0n;
export const CR0_PG = 1n << 31n;
export const CR4_PAE = 1n << 5n;
export const EFER_LME = 1n << 8n;
export const EFER_LMA = 1n << 10n;

/**
 * Patch sregs (as read with KVM_GET_SREGS) for the 64-bit entry: segments from our GDT, GDT/IDT
 * registers, protected mode with paging, PAE, long mode, CR3 at our PML4. Other fields stay as KVM
 * gave them (apic_base, cr8, ldt, interrupt bitmap...).
 */
export function applyLongModeSregs<T extends SpecialRegisters>(sregs: T): T {
  const code = segmentFromGdtEntry(GDT_ENTRIES[CODE_SELECTOR / 8]!, CODE_SELECTOR);
  const data = segmentFromGdtEntry(GDT_ENTRIES[DATA_SELECTOR / 8]!, DATA_SELECTOR);
  const tss = segmentFromGdtEntry(GDT_ENTRIES[TSS_SELECTOR / 8]!, TSS_SELECTOR);
  sregs.cs = code;
  sregs.ds = { ...data };
  sregs.es = { ...data };
  sregs.fs = { ...data };
  sregs.gs = { ...data };
  sregs.ss = { ...data };
  sregs.tr = tss;
  sregs.gdt = { base: BigInt(GDT_ADDR), limit: GDT_LIMIT };
  sregs.idt = { base: BigInt(IDT_ADDR), limit: IDT_LIMIT };
  sregs.cr0 = BigInt(sregs.cr0) | CR0_PE | CR0_PG;
  sregs.cr3 = BigInt(PML4_ADDR);
  sregs.cr4 = BigInt(sregs.cr4) | CR4_PAE;
  sregs.efer = BigInt(sregs.efer) | EFER_LME | EFER_LMA;
  return sregs;
}

/** kvm_fpu fields to set (fcw at byte 128, mxcsr at byte 408); the rest zero. */
export interface BootFpu {
  fcw: number;
  mxcsr: number;
}

export function bootFpu(): BootFpu {
  return {
    fcw: 0x37f, // x87 default: all exceptions masked, 64-bit precision, round to nearest
    mxcsr: 0x1f80, // SSE default: all exceptions masked
  };
}
