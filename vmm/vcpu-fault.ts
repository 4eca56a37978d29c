// Describing a vCPU that stopped on an error: exit reason, RIP and the bytes of the instruction there
// (read from guest memory through the guest's own page tables).
import type { GuestMemory } from './memory.js';
import { EXIT_REASON_NAMES, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_SIMUL_EX } from './kvm/ioctls.js';
import type { KvmSregs } from './kvm/structs.js';

const CR0_PG = 0x80000000n;
const CR4_PAE = 0x20n;
const EFER_LMA = 0x400n;
const PTE_PRESENT = 1n;
const PTE_HUGE = 0x80n;
const ADDR_MASK = 0x000f_ffff_ffff_f000n;
export const INSTRUCTION_BYTES = 16;

/** Guest-physical address of a guest-virtual one (4-level paging, or none), or undefined if unmapped. */
export function translate(memory: GuestMemory, sregs: KvmSregs, gva: bigint): bigint | undefined {
  if (!(sregs.cr0 & CR0_PG)) return gva;
  if (!(sregs.efer & EFER_LMA) || !(sregs.cr4 & CR4_PAE)) return undefined; // 32-bit paging: not used by our guests
  let table = sregs.cr3 & ADDR_MASK;
  for (let level = 3; level >= 0; level--) {
    const index = (gva >> BigInt(12 + 9 * level)) & 0x1ffn;
    let entry: bigint;
    try {
      entry = Buffer.from(memory.slice(Number(table + index * 8n), 8)).readBigUInt64LE(0);
    } catch {
      return undefined;
    }
    if (!(entry & PTE_PRESENT)) return undefined;
    const pageBits = BigInt(12 + 9 * level);
    if (level === 0 || (level <= 2 && entry & PTE_HUGE)) {
      const base = entry & ADDR_MASK & ~((1n << pageBits) - 1n);
      return base | (gva & ((1n << pageBits) - 1n));
    }
    table = entry & ADDR_MASK;
  }
  return undefined;
}

/** Up to INSTRUCTION_BYTES bytes at `rip` as hex, or a note why they cannot be read. */
export function instructionBytes(memory: GuestMemory, sregs: KvmSregs, rip: bigint): string {
  const linear = (sregs.cs.base + rip) & 0xffff_ffff_ffff_ffffn;
  const bytes: string[] = [];
  for (let i = 0n; i < BigInt(INSTRUCTION_BYTES); i++) {
    const gpa = translate(memory, sregs, linear + i);
    if (gpa === undefined) break;
    try {
      bytes.push(memory.slice(Number(gpa), 1)[0]!.toString(16).padStart(2, '0'));
    } catch {
      break;
    }
  }
  return bytes.length ? bytes.join(' ') : '(not readable: RIP is not mapped to RAM)';
}

export function internalErrorName(suberror: number): string {
  switch (suberror) {
    case KVM_INTERNAL_ERROR_EMULATION: return 'emulation failure';
    case KVM_INTERNAL_ERROR_SIMUL_EX: return 'exception while delivering an exception';
    case KVM_INTERNAL_ERROR_DELIVERY_EV: return 'event delivery failed';
    default: return `suberror ${suberror}`;
  }
}

export function exitReasonName(reason: number): string {
  return `${EXIT_REASON_NAMES[reason] ?? 'exit'} (${reason})`;
}
