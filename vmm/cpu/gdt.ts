// The GDT and (empty) IDT the vCPU starts with for the 64-bit boot protocol, and the KVM segment
// registers derived from the GDT entries (so the hidden parts of each segment register match the table).

import { GDT_ADDR, IDT_ADDR } from '../layout.js';
import type { GuestWrite } from '../boot/guest-write.js';

/** A u64 field as KVM (through koffi) hands it over: a number, or a bigint above 2^53. */
export type U64 = number | bigint;

/** struct kvm_segment, field for field. */
export interface Segment {
  base: U64;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

/** struct kvm_dtable (base, limit). */
export interface DescriptorTable {
  base: U64;
  limit: number;
}

/** Index in the GDT times 8 = selector. */
export const GDT_ENTRIES: readonly bigint[] = [
  0x0000000000000000n, // null
  0x00af9b000000ffffn, // 0x08: code, 64-bit (L=1), present, DPL 0, 4 KiB granularity
  0x00cf93000000ffffn, // 0x10: data, read/write, 32-bit (D/B=1), 4 KiB granularity
  0x008f8b000000ffffn, // 0x18: TSS, 64-bit busy
];
export const CODE_SELECTOR = 0x08;
export const DATA_SELECTOR = 0x10;
export const TSS_SELECTOR = 0x18;
export const GDT_LIMIT = GDT_ENTRIES.length * 8 - 1;
/** An empty IDT (one null gate): the guest installs its own before enabling interrupts. */
export const IDT_LIMIT = 7;

export function gdtBytes(): Uint8Array {
  const out = new Uint8Array(GDT_ENTRIES.length * 8);
  const view = new DataView(out.buffer);
  GDT_ENTRIES.forEach((e, i) => view.setBigUint64(i * 8, e, true));
  return out;
}

/** The GDT at GDT_ADDR and the zeroed IDT at IDT_ADDR. */
export function descriptorTableWrites(): GuestWrite[] {
  return [
    { gpa: GDT_ADDR, bytes: gdtBytes() },
    { gpa: IDT_ADDR, bytes: new Uint8Array(IDT_LIMIT + 1) },
  ];
}

/** Decode a GDT descriptor into the KVM segment register that loading `selector` would produce. */
export function segmentFromGdtEntry(entry: bigint, selector: number): Segment {
  const bits = (shift: number, width: number) => Number((entry >> BigInt(shift)) & ((1n << BigInt(width)) - 1n));
  const rawLimit = bits(0, 16) | (bits(48, 4) << 16);
  const g = bits(55, 1);
  const present = bits(47, 1);
  return {
    base: BigInt(bits(16, 24) | (bits(56, 8) << 24)),
    // With G=1 the limit counts 4 KiB pages: the byte limit is (limit << 12) | 0xFFF.
    limit: g ? ((rawLimit << 12) | 0xfff) >>> 0 : rawLimit,
    selector,
    type: bits(40, 4),
    s: bits(44, 1),
    dpl: bits(45, 2),
    present,
    avl: bits(52, 1),
    l: bits(53, 1),
    db: bits(54, 1),
    g,
    unusable: present ? 0 : 1,
  };
}
