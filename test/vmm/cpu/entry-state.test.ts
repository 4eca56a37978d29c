import assert from 'node:assert/strict';
import {
  CODE_SELECTOR,
  DATA_SELECTOR,
  GDT_LIMIT,
  IDT_LIMIT,
  TSS_SELECTOR,
  descriptorTableWrites,
  gdtBytes,
  segmentFromGdtEntry,
  type Segment,
} from '../../../vmm/cpu/gdt.js';
import { applyBootLapic, LAPIC_STATE_SIZE } from '../../../vmm/cpu/lapic.js';
import { bootMsrs } from '../../../vmm/cpu/msrs.js';
import { pageTableWrites } from '../../../vmm/cpu/page-tables.js';
import { applyLongModeSregs, bootFpu, bootRegisters, type SpecialRegisters } from '../../../vmm/cpu/registers.js';
import type { GuestWrite } from '../../../vmm/boot/guest-write.js';

/** A segment register as KVM reports it after reset (real mode). */
function resetSegment(selector: number, type: number): Segment {
  return { base: BigInt(selector << 4), limit: 0xffff, selector, type, present: 1, dpl: 0, db: 0, s: 1, l: 0, g: 0, avl: 0, unusable: 0 };
}

/** Roughly what KVM_GET_SREGS returns for a fresh vCPU, with the fields the patch must not touch. */
function resetSregs(): SpecialRegisters & { apic_base: bigint; cr2: bigint; cr8: bigint; ldt: Segment } {
  return {
    cs: { ...resetSegment(0xf000, 11), base: 0xffff0000n },
    ds: resetSegment(0, 3), es: resetSegment(0, 3), fs: resetSegment(0, 3), gs: resetSegment(0, 3), ss: resetSegment(0, 3),
    tr: { ...resetSegment(0, 11), s: 0 },
    ldt: { ...resetSegment(0, 2), s: 0 },
    gdt: { base: 0n, limit: 0xffff },
    idt: { base: 0n, limit: 0xffff },
    cr0: 0x60000010n, cr2: 0n, cr3: 0n, cr4: 0n, cr8: 0n, efer: 0n,
    apic_base: 0xfee00900n,
  };
}

/** Translate a virtual address through 4-level page tables in `memory` (a guest's first MiB). */
function translate(memory: DataView, cr3: number, va: number): number | undefined {
  const pml4e = memory.getBigUint64(cr3 + 8 * ((va / 2 ** 39) & 511), true);
  if (!(pml4e & 1n)) return undefined;
  const pdpte = memory.getBigUint64(Number(pml4e & ~0xfffn) + 8 * ((va / 2 ** 30) & 511), true);
  if (!(pdpte & 1n)) return undefined;
  const pde = memory.getBigUint64(Number(pdpte & ~0xfffn) + 8 * ((va >>> 21) & 511), true);
  if (!(pde & 1n) || !(pde & 0x80n)) return undefined;
  return Number(pde & ~0x1fffffn) + (va & 0x1fffff);
}

function memoryWith(writes: GuestWrite[]): DataView {
  const memory = new Uint8Array(0x100000);
  for (const w of writes) memory.set(w.bytes, w.gpa);
  return new DataView(memory.buffer);
}

describe('vCPU state at the 64-bit entry', () => {
  it('puts the flat GDT at 0x500 and an empty IDT at 0x520', () => {
    const writes = descriptorTableWrites();
    assert.deepEqual(writes.map((w) => [w.gpa, w.bytes.length]), [[0x500, 32], [0x520, 8]]);
    const v = new DataView(gdtBytes().buffer);
    assert.deepEqual(
      [0, 1, 2, 3].map((i) => v.getBigUint64(8 * i, true)),
      [0n, 0x00af9b000000ffffn, 0x00cf93000000ffffn, 0x008f8b000000ffffn],
    );
    assert.equal(GDT_LIMIT, 31);
    assert.equal(IDT_LIMIT, 7);
    assert.ok(writes[1]!.bytes.every((b) => b === 0));
  });

  it('derives the hidden segment state from the GDT entries (64-bit code, flat data, busy TSS)', () => {
    assert.deepEqual(segmentFromGdtEntry(0x00af9b000000ffffn, 0x08), {
      base: 0n, limit: 0xffffffff, selector: 0x08, type: 0xb, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0,
    });
    assert.deepEqual(segmentFromGdtEntry(0x00cf93000000ffffn, 0x10), {
      base: 0n, limit: 0xffffffff, selector: 0x10, type: 0x3, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0,
    });
    assert.deepEqual(segmentFromGdtEntry(0x008f8b000000ffffn, 0x18), {
      base: 0n, limit: 0xffffffff, selector: 0x18, type: 0xb, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 1, avl: 0, unusable: 0,
    });
    // Base and limit bits scattered across the descriptor, G clear: byte-granular limit.
    const odd = segmentFromGdtEntry(0x12_4_3_93_345678_abcdn, 0x20);
    assert.equal(odd.base, 0x12345678n);
    assert.equal(odd.limit, 0x3abcd);
    assert.equal(odd.g, 0);
    assert.equal(segmentFromGdtEntry(0n, 0).unusable, 1);
  });

  it('identity-maps the first GiB with 2 MiB pages from PML4 0x9000, PDPT 0xA000, PD 0xB000', () => {
    const writes = pageTableWrites();
    assert.deepEqual(writes.map((w) => w.gpa), [0x9000, 0xa000, 0xb000]);
    const memory = memoryWith(writes);
    assert.equal(memory.getBigUint64(0x9000, true), 0xa003n);
    assert.equal(memory.getBigUint64(0xa000, true), 0xb003n);
    for (let i = 0; i < 512; i++) assert.equal(memory.getBigUint64(0xb000 + 8 * i, true), (BigInt(i) << 21n) | 0x83n);
    for (const va of [0, 0x7000, 0x100200, 0x1000000, 0x3fffffff]) assert.equal(translate(memory, 0x9000, va), va);
    assert.equal(translate(memory, 0x9000, 0x40000000), undefined, 'nothing mapped past 1 GiB');
  });

  it('starts at the kernel entry 0x100200 with the zero page in RSI and the stack at 0x8FF0', () => {
    assert.deepEqual(bootRegisters(), { rip: 0x100200, rsp: 0x8ff0, rbp: 0x8ff0, rsi: 0x7000, rflags: 0x2 });
    assert.deepEqual(bootFpu(), { fcw: 0x37f, mxcsr: 0x1f80 });
  });

  it('patches the special registers KVM reports into long mode and leaves the rest alone', () => {
    const sregs = applyLongModeSregs(resetSregs());
    assert.equal(sregs.cs.selector, CODE_SELECTOR);
    assert.equal(sregs.cs.l, 1);
    for (const s of [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss]) {
      assert.equal(s.selector, DATA_SELECTOR);
      assert.equal(s.limit, 0xffffffff);
      assert.equal(s.type, 3);
    }
    assert.notEqual(sregs.ds, sregs.ss, 'each segment register is its own object');
    assert.equal(sregs.tr.selector, TSS_SELECTOR);
    assert.deepEqual(sregs.gdt, { base: 0x500n, limit: 31 });
    assert.deepEqual(sregs.idt, { base: 0x520n, limit: 7 });
    assert.equal(sregs.cr0, 0x60000010n | 0x1n | 0x80000000n, 'PE | PG added to the reset value');
    assert.equal(sregs.cr3, 0x9000n);
    assert.equal(sregs.cr4, 0x20n, 'PAE');
    assert.equal(sregs.efer, 0x500n, 'LME | LMA');
    assert.equal(sregs.apic_base, 0xfee00900n);
    assert.equal(sregs.ldt.selector, 0);
  });

  it('accepts KVM values handed over as numbers', () => {
    const sregs = { ...resetSregs(), cr0: 0x60000010, cr4: 0x40, efer: 0xd01 };
    const patched = applyLongModeSregs(sregs);
    assert.equal(patched.cr4, 0x60n);
    assert.equal(patched.efer, 0xd01n | 0x500n);
  });

  it('sets the boot MSRs: syscall/sysenter cleared, TSC 0, fast strings, write-back MTRR default', () => {
    const msrs = new Map(bootMsrs().map((m) => [m.index, m.value]));
    for (const index of [0x174, 0x175, 0x176, 0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, 0xc0000102, 0x10]) {
      assert.equal(msrs.get(index), 0n, `MSR 0x${index.toString(16)}`);
    }
    assert.equal(msrs.get(0x1a0), 1n);
    assert.equal(msrs.get(0x2ff), 0x806n);
    assert.equal(msrs.size, 11);
  });

  it('routes LINT0 to ExtINT and LINT1 to NMI in the local APIC state, keeping the other bits', () => {
    const state = new Uint8Array(LAPIC_STATE_SIZE).fill(0x11);
    const v = new DataView(state.buffer);
    v.setUint32(0x350, 0x00010000, true); // masked, fixed
    v.setUint32(0x360, 0x00010300, true); // masked, some other mode
    applyBootLapic(state);
    assert.equal(v.getUint32(0x350, true), 0x00010700);
    assert.equal(v.getUint32(0x360, true), 0x00010400);
    const untouched = [...state].filter((_, i) => !(i >= 0x350 && i < 0x354) && !(i >= 0x360 && i < 0x364));
    assert.ok(untouched.every((b) => b === 0x11));
    assert.throws(() => applyBootLapic(new Uint8Array(1000)), /1024 bytes/);
  });
});
