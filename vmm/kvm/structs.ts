// Every KVM struct the VMM passes to an ioctl, declared once as a byte layout (offsets from
// <linux/kvm.h> on x86-64) and read/written through a DataView. Sizes and offsets are tested in
// test/vmm/kvm-structs.test.ts. 64-bit fields are bigint, narrower ones number.

export type FieldType = 'u8' | 'u16' | 'u32' | 'i32' | 'u64';
type FieldSpec = readonly [offset: number, type: FieldType];
type ValueOf<T extends FieldType> = T extends 'u64' ? bigint : number;

export interface StructLayout<F extends Record<string, FieldSpec>> {
  readonly name: string;
  readonly size: number;
  readonly fields: F;
}

export type StructValue<F extends Record<string, FieldSpec>> = { -readonly [K in keyof F]: ValueOf<F[K][1]> };

export function layout<const F extends Record<string, FieldSpec>>(name: string, size: number, fields: F): StructLayout<F> {
  for (const [field, [offset, type]] of Object.entries(fields)) {
    if (offset + FIELD_SIZE[type] > size) throw new Error(`${name}.${field} overruns the struct`);
  }
  return { name, size, fields };
}

export const FIELD_SIZE: Readonly<Record<FieldType, number>> = { u8: 1, u16: 2, u32: 4, i32: 4, u64: 8 };

function dataView(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function readField(view: DataView, base: number, [offset, type]: FieldSpec): number | bigint {
  const at = base + offset;
  switch (type) {
    case 'u8': return view.getUint8(at);
    case 'u16': return view.getUint16(at, true);
    case 'u32': return view.getUint32(at, true);
    case 'i32': return view.getInt32(at, true);
    case 'u64': return view.getBigUint64(at, true);
  }
}

export function writeField(view: DataView, base: number, [offset, type]: FieldSpec, value: number | bigint): void {
  const at = base + offset;
  switch (type) {
    case 'u8': return view.setUint8(at, Number(value));
    case 'u16': return view.setUint16(at, Number(value), true);
    case 'u32': return view.setUint32(at, Number(value) >>> 0, true);
    case 'i32': return view.setInt32(at, Number(value), true);
    case 'u64': return view.setBigUint64(at, BigInt.asUintN(64, BigInt(value)), true);
  }
}

/** Decodes a struct at `base` of `bytes` into a plain object. */
export function decode<F extends Record<string, FieldSpec>>(l: StructLayout<F>, bytes: Uint8Array, base = 0): StructValue<F> {
  const view = dataView(bytes);
  const out: Record<string, number | bigint> = {};
  for (const [name, spec] of Object.entries(l.fields)) out[name] = readField(view, base, spec);
  return out as StructValue<F>;
}

/** Encodes the given fields of `value` into `bytes` at `base` (fields not given are left as they are). */
export function encode<F extends Record<string, FieldSpec>>(l: StructLayout<F>, bytes: Uint8Array, value: Partial<StructValue<F>>, base = 0): void {
  const view = dataView(bytes);
  for (const [name, v] of Object.entries(value)) {
    const spec = l.fields[name];
    if (!spec) throw new Error(`${l.name} has no field '${name}'`);
    writeField(view, base, spec, v as number | bigint);
  }
}

/** A zeroed buffer the size of the struct, with `value` encoded. */
export function build<F extends Record<string, FieldSpec>>(l: StructLayout<F>, value: Partial<StructValue<F>> = {}): Buffer {
  const buf = Buffer.alloc(l.size);
  encode(l, buf, value);
  return buf;
}

// ---- kvm_run (the vCPU's shared page; mmap is larger than the struct) -------------------------------

export const kvmRun = layout('kvm_run', 2352, {
  request_interrupt_window: [0, 'u8'],
  immediate_exit: [1, 'u8'],
  exit_reason: [8, 'u32'],
  ready_for_interrupt_injection: [12, 'u8'],
  if_flag: [13, 'u8'],
  flags: [14, 'u16'],
  cr8: [16, 'u64'],
  apic_base: [24, 'u64'],
  // union @32: io exit
  io_direction: [32, 'u8'],
  io_size: [33, 'u8'],
  io_port: [34, 'u16'],
  io_count: [36, 'u32'],
  io_data_offset: [40, 'u64'],
  // union @32: mmio exit (data[8] @40)
  mmio_phys_addr: [32, 'u64'],
  mmio_data: [40, 'u64'],
  mmio_len: [48, 'u32'],
  mmio_is_write: [52, 'u8'],
  // union @32: system_event
  system_event_type: [32, 'u32'],
  system_event_ndata: [36, 'u32'],
  // union @32: internal error (data u64[16] @40)
  internal_suberror: [32, 'u32'],
  internal_ndata: [36, 'u32'],
  internal_data0: [40, 'u64'],
  // union @32: fail_entry
  fail_entry_reason: [32, 'u64'],
  fail_entry_cpu: [40, 'u32'],
  kvm_valid_regs: [288, 'u64'],
  kvm_dirty_regs: [296, 'u64'],
});
export const KVM_RUN_MMIO_DATA_OFFSET = 40;
export const KVM_RUN_INTERNAL_DATA_OFFSET = 40;
export const KVM_RUN_INTERNAL_DATA_MAX = 16;

// ---- registers ----------------------------------------------------------------------------------------

export const kvmRegs = layout('kvm_regs', 144, {
  rax: [0, 'u64'], rbx: [8, 'u64'], rcx: [16, 'u64'], rdx: [24, 'u64'],
  rsi: [32, 'u64'], rdi: [40, 'u64'], rsp: [48, 'u64'], rbp: [56, 'u64'],
  r8: [64, 'u64'], r9: [72, 'u64'], r10: [80, 'u64'], r11: [88, 'u64'],
  r12: [96, 'u64'], r13: [104, 'u64'], r14: [112, 'u64'], r15: [120, 'u64'],
  rip: [128, 'u64'], rflags: [136, 'u64'],
});
export type KvmRegs = StructValue<typeof kvmRegs.fields>;

export const kvmSegment = layout('kvm_segment', 24, {
  base: [0, 'u64'], limit: [8, 'u32'], selector: [12, 'u16'], type: [14, 'u8'], present: [15, 'u8'],
  dpl: [16, 'u8'], db: [17, 'u8'], s: [18, 'u8'], l: [19, 'u8'], g: [20, 'u8'], avl: [21, 'u8'],
  unusable: [22, 'u8'],
});
export type KvmSegment = StructValue<typeof kvmSegment.fields>;

export const kvmDtable = layout('kvm_dtable', 16, { base: [0, 'u64'], limit: [8, 'u16'] });
export type KvmDtable = StructValue<typeof kvmDtable.fields>;

export const SREGS_SEGMENTS = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
export const SREGS_DTABLES = ['gdt', 'idt'] as const;
export const kvmSregs = layout('kvm_sregs', 312, {
  cr0: [224, 'u64'], cr2: [232, 'u64'], cr3: [240, 'u64'], cr4: [248, 'u64'], cr8: [256, 'u64'],
  efer: [264, 'u64'], apic_base: [272, 'u64'],
  interrupt_bitmap0: [280, 'u64'], interrupt_bitmap1: [288, 'u64'], interrupt_bitmap2: [296, 'u64'], interrupt_bitmap3: [304, 'u64'],
});
/** Offsets of the kvm_segment / kvm_dtable members of kvm_sregs. */
export const SREGS_MEMBER_OFFSET: Readonly<Record<(typeof SREGS_SEGMENTS)[number] | (typeof SREGS_DTABLES)[number], number>> = {
  cs: 0, ds: 24, es: 48, fs: 72, gs: 96, ss: 120, tr: 144, ldt: 168, gdt: 192, idt: 208,
};

/** kvm_sregs as a plain object: segments and descriptor tables nested, control registers flat. */
export type KvmSregs = StructValue<typeof kvmSregs.fields> &
  { [K in (typeof SREGS_SEGMENTS)[number]]: KvmSegment } & { [K in (typeof SREGS_DTABLES)[number]]: KvmDtable };

export function decodeSregs(bytes: Uint8Array): KvmSregs {
  const out = decode(kvmSregs, bytes) as Record<string, unknown>;
  for (const s of SREGS_SEGMENTS) out[s] = decode(kvmSegment, bytes, SREGS_MEMBER_OFFSET[s]);
  for (const d of SREGS_DTABLES) out[d] = decode(kvmDtable, bytes, SREGS_MEMBER_OFFSET[d]);
  return out as KvmSregs;
}

export function encodeSregs(value: KvmSregs, bytes: Uint8Array = Buffer.alloc(kvmSregs.size)): Uint8Array {
  const flat: Record<string, unknown> = {};
  for (const k of Object.keys(kvmSregs.fields)) flat[k] = (value as Record<string, unknown>)[k];
  encode(kvmSregs, bytes, flat as Partial<StructValue<typeof kvmSregs.fields>>);
  for (const s of SREGS_SEGMENTS) encode(kvmSegment, bytes, value[s], SREGS_MEMBER_OFFSET[s]);
  for (const d of SREGS_DTABLES) encode(kvmDtable, bytes, value[d], SREGS_MEMBER_OFFSET[d]);
  return bytes;
}

export const kvmFpu = layout('kvm_fpu', 416, {
  fcw: [128, 'u16'], fsw: [130, 'u16'], ftwx: [132, 'u8'], last_opcode: [134, 'u16'],
  last_ip: [136, 'u64'], last_dp: [144, 'u64'], mxcsr: [408, 'u32'],
});
export const KVM_FPU_FPR_OFFSET = 0;
export const KVM_FPU_XMM_OFFSET = 152;

// ---- memory, interrupts, events -----------------------------------------------------------------------

export const kvmUserspaceMemoryRegion = layout('kvm_userspace_memory_region', 32, {
  slot: [0, 'u32'], flags: [4, 'u32'], guest_phys_addr: [8, 'u64'], memory_size: [16, 'u64'], userspace_addr: [24, 'u64'],
});

export const kvmIrqLevel = layout('kvm_irq_level', 8, { irq: [0, 'u32'], level: [4, 'u32'] });

export const kvmIrqfd = layout('kvm_irqfd', 32, { fd: [0, 'u32'], gsi: [4, 'u32'], flags: [8, 'u32'], resamplefd: [12, 'u32'] });

export const kvmIoeventfd = layout('kvm_ioeventfd', 64, {
  datamatch: [0, 'u64'], addr: [8, 'u64'], len: [16, 'u32'], fd: [20, 'i32'], flags: [24, 'u32'],
});

export const kvmPitConfig = layout('kvm_pit_config', 64, { flags: [0, 'u32'] });

export const kvmDirtyLog = layout('kvm_dirty_log', 16, { slot: [0, 'u32'], dirty_bitmap: [8, 'u64'] });

export const kvmClearDirtyLog = layout('kvm_clear_dirty_log', 24, {
  slot: [0, 'u32'], num_pages: [4, 'u32'], first_page: [8, 'u64'], dirty_bitmap: [16, 'u64'],
});

export const kvmEnableCap = layout('kvm_enable_cap', 104, {
  cap: [0, 'u32'], flags: [4, 'u32'], arg0: [8, 'u64'], arg1: [16, 'u64'], arg2: [24, 'u64'], arg3: [32, 'u64'],
});

// ---- variable-length arrays: a header then entries ----------------------------------------------------

export const kvmCpuid2Header = layout('kvm_cpuid2', 8, { nent: [0, 'u32'] });
export const kvmCpuidEntry2 = layout('kvm_cpuid_entry2', 40, {
  function: [0, 'u32'], index: [4, 'u32'], flags: [8, 'u32'], eax: [12, 'u32'], ebx: [16, 'u32'], ecx: [20, 'u32'], edx: [24, 'u32'],
});
export type KvmCpuidEntry = StructValue<typeof kvmCpuidEntry2.fields>;

export const kvmMsrsHeader = layout('kvm_msrs', 8, { nmsrs: [0, 'u32'] });
export const kvmMsrEntry = layout('kvm_msr_entry', 16, { index: [0, 'u32'], data: [8, 'u64'] });
export interface KvmMsr { index: number; data: bigint }

export const kvmMsrListHeader = layout('kvm_msr_list', 4, { nmsrs: [0, 'u32'] });

/** A header followed by `entries` fixed-size entries. */
export function buildArray<H extends Record<string, FieldSpec>, E extends Record<string, FieldSpec>>(
  header: StructLayout<H>, headerValue: Partial<StructValue<H>>, entry: StructLayout<E>, entries: ReadonlyArray<Partial<StructValue<E>>>, capacity = entries.length,
): Buffer {
  const buf = Buffer.alloc(header.size + entry.size * capacity);
  encode(header, buf, headerValue);
  entries.forEach((e, i) => encode(entry, buf, e, header.size + i * entry.size));
  return buf;
}

export function decodeArray<E extends Record<string, FieldSpec>>(headerSize: number, entry: StructLayout<E>, bytes: Uint8Array, count: number): StructValue<E>[] {
  const out: StructValue<E>[] = [];
  for (let i = 0; i < count; i++) out.push(decode(entry, bytes, headerSize + i * entry.size));
  return out;
}

// ---- opaque state blobs (saved and restored whole; snapshots copy the bytes) --------------------------

export const KVM_LAPIC_STATE_SIZE = 1024;
/** LVT registers in kvm_lapic_state (the APIC register page layout). */
export const LAPIC_LVT0_OFFSET = 0x350;
export const LAPIC_LVT1_OFFSET = 0x360;
export const KVM_MP_STATE_SIZE = 4;
export const KVM_XSAVE_SIZE = 4096;
export const KVM_XCRS_SIZE = 392;
export const KVM_DEBUGREGS_SIZE = 128;
export const KVM_VCPU_EVENTS_SIZE = 64;
export const KVM_CLOCK_DATA_SIZE = 48;
export const KVM_PIT_STATE2_SIZE = 112;
export const KVM_IRQCHIP_SIZE = 520;

export const kvmClockData = layout('kvm_clock_data', KVM_CLOCK_DATA_SIZE, { clock: [0, 'u64'], flags: [8, 'u32'] });
export const kvmIrqchip = layout('kvm_irqchip', KVM_IRQCHIP_SIZE, { chip_id: [0, 'u32'] });
export const kvmMpState = layout('kvm_mp_state', KVM_MP_STATE_SIZE, { mp_state: [0, 'u32'] });
