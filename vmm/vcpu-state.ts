// The complete architectural state of a paused vCPU, read and written in the order KVM needs
// (vmm-facts "Dirty tracking and snapshots"). Called on the vCPU's own thread while it is parked.
import * as ioc from './kvm/ioctls.js';
import type { VcpuFd } from './kvm/vcpu.js';
import {
  decode, decodeArray, decodeSregs, kvmCpuid2Header, kvmCpuidEntry2, kvmMsrEntry, kvmMsrsHeader, kvmRegs, kvmSregs, KVM_DEBUGREGS_SIZE,
  KVM_LAPIC_STATE_SIZE, KVM_VCPU_EVENTS_SIZE, KVM_XCRS_SIZE, KVM_XSAVE_SIZE,
  type KvmCpuidEntry, type KvmMsr, type KvmRegs, type KvmSregs,
} from './kvm/structs.js';

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
  /** How long each read took (µs), when asked for; never saved. */
  saveTiming?: Record<string, number>;
}

const MSR_IA32_TSC = 0x10;

export function saveVcpuState(vcpu: VcpuFd, msrIndices: readonly number[], xsaveSize: number): VcpuState {
  const timing: Record<string, number> = {};
  let last = performance.now();
  const timed = <T>(name: string, read: () => T): T => {
    const v = read();
    const now = performance.now();
    timing[name] = Math.round((now - last) * 1000);
    last = now;
    return v;
  };
  return {
    mpState: timed('MP_STATE', () => vcpu.getMpState()),
    regs: timed('REGS', () => vcpu.getRegs()),
    sregs: timed('SREGS', () => vcpu.getSregs()),
    xsave: timed('XSAVE', () => vcpu.getXsave(xsaveSize)),
    xcrs: timed('XCRS', () => vcpu.getXcrs()),
    debugregs: timed('DEBUGREGS', () => vcpu.getDebugregs()),
    lapic: timed('LAPIC', () => vcpu.getLapic()),
    tscKhz: timed('TSC_KHZ', () => vcpu.getTscKhz()),
    cpuid: timed('CPUID2', () => vcpu.getCpuid()),
    msrs: timed('MSRS', () => vcpu.getMsrs(msrIndices)),
    events: timed('VCPU_EVENTS', () => vcpu.getVcpuEvents()),
    saveTiming: timing,
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

// ---- the state area: a paused vCPU's state as raw KVM structs, in the vCPU control buffer -------------
//
// For a snapshot each vCPU thread saves its own state here (vcpu-control.ts PAUSE_SAVE): the KVM ioctls
// write straight into the shared buffer, nothing is decoded or copied on the vCPU's thread, and the main
// thread decodes it after the VM has resumed (the area is only rewritten at the next snapshot's pause).
// What cannot change once the vCPU has run (its CPUID, its TSC frequency) is read at the first save only.

/** MSRs and CPUID entries an area holds at most (KVM_GET_MSR_INDEX_LIST has 40 here; CPUID ~30). */
const AREA_MAX_MSRS = 128;
const AREA_MAX_CPUID = 256;
/** Largest XSAVE area (KVM_CAP_XSAVE2) an area holds: AMX hosts need 11008 bytes. */
export const AREA_MAX_XSAVE = 16384;

/** Slots of the area's timing array after the ioctls': wall-clock ms (timeOrigin + now) the vCPU parked, and the gate opened for it. */
export const AREA_PARKED_AT = 10;
export const AREA_GATE_OPEN_AT = 11;

/** The ioctls of a save, in order; their durations (µs) are kept in the area. */
export const AREA_TIMED = ['MP_STATE', 'REGS', 'SREGS', 'XSAVE', 'XCRS', 'DEBUGREGS', 'LAPIC', 'MSRS', 'VCPU_EVENTS', 'CPUID2+TSC_KHZ (first save)'] as const;

const ERROR_BYTES = 240;

/**
 * The area's layout: each field after the one before, at its alignment, sized from the KVM struct it
 * holds (the sizes are tested in test/vmm/kvm-structs.test.ts).
 */
const A = (() => {
  let end = 0;
  const field = (bytes: number, align = 4): number => {
    const at = Math.ceil(end / align) * align;
    end = at + bytes;
    return at;
  };
  return {
    status: field(4), // i32: 0 never saved, 1 saved, 2 failed (message below)
    staticSaved: field(4), // i32: CPUID and TSC frequency are in the area
    xsaveSize: field(4), // u32: bytes of XSAVE state saved
    errorLength: field(4), // u32
    error: field(ERROR_BYTES), // UTF-8
    timing: field((AREA_TIMED.length + 2) * 8, 8), // f64 per AREA_TIMED entry, then AREA_PARKED_AT and AREA_GATE_OPEN_AT
    mpState: field(4),
    regs: field(kvmRegs.size, 8),
    sregs: field(kvmSregs.size, 8),
    xcrs: field(KVM_XCRS_SIZE, 8),
    debugregs: field(KVM_DEBUGREGS_SIZE, 8),
    lapic: field(KVM_LAPIC_STATE_SIZE, 8),
    events: field(KVM_VCPU_EVENTS_SIZE, 8),
    tscKhz: field(8, 8),
    msrs: field(kvmMsrsHeader.size + AREA_MAX_MSRS * kvmMsrEntry.size, 8),
    cpuid: field(kvmCpuid2Header.size + AREA_MAX_CPUID * kvmCpuidEntry2.size, 8),
    xsave: field(AREA_MAX_XSAVE, 8),
  } as const;
})();

/** Bytes of one vCPU's state area. */
export const VCPU_STATE_AREA_BYTES = A.xsave + AREA_MAX_XSAVE;

const AREA_SAVED = 1;
const AREA_FAILED = 2;

/** One vCPU's state area over the control buffer (the worker writes it, the main thread reads it). */
export class VcpuStateArea {
  readonly bytes: Buffer;
  readonly words: Int32Array;
  readonly timing: Float64Array;
  private readonly part = new Map<number, Buffer>();

  constructor(sab: SharedArrayBuffer, offset: number) {
    this.bytes = Buffer.from(sab, offset, VCPU_STATE_AREA_BYTES);
    this.words = new Int32Array(sab, offset, 4);
    this.timing = new Float64Array(sab, offset + A.timing, AREA_TIMED.length + 2);
  }

  /** A window on the area (cached: the save allocates nothing). */
  at(offset: number, length: number): Buffer {
    let b = this.part.get(offset);
    if (!b || b.length !== length) this.part.set(offset, (b = this.bytes.subarray(offset, offset + length)));
    return b;
  }
}

/** The MSRs of the index list KVM can read for this thread's vCPU (a vCPU thread saves only its own). */
let readableMsrs: number[] | undefined;

/**
 * On the vCPU's thread, while it is parked: its state into `area`. Never throws: a failure is recorded
 * in the area for the main thread to report.
 */
export function saveVcpuStateInto(vcpu: VcpuFd, area: VcpuStateArea, msrIndices: readonly number[], xsaveSize: number): void {
  const w = area.words;
  try {
    if (xsaveSize > AREA_MAX_XSAVE) throw new Error(`the XSAVE state (${xsaveSize} bytes) exceeds the ${AREA_MAX_XSAVE} bytes the VMM reserves for it`);
    const t = area.timing;
    let last = performance.now();
    const lap = (i: number) => {
      const now = performance.now();
      t[i] = (now - last) * 1000;
      last = now;
    };
    vcpu.getInto(ioc.KVM_GET_MP_STATE, area.at(A.mpState, 4), 'KVM_GET_MP_STATE');
    lap(0);
    vcpu.getInto(ioc.KVM_GET_REGS, area.at(A.regs, kvmRegs.size), 'KVM_GET_REGS');
    lap(1);
    vcpu.getInto(ioc.KVM_GET_SREGS, area.at(A.sregs, kvmSregs.size), 'KVM_GET_SREGS');
    lap(2);
    const xsaveLength = Math.max(xsaveSize, KVM_XSAVE_SIZE);
    vcpu.getInto(xsaveSize > KVM_XSAVE_SIZE ? ioc.KVM_GET_XSAVE2 : ioc.KVM_GET_XSAVE, area.at(A.xsave, xsaveLength), 'KVM_GET_XSAVE');
    area.bytes.writeUInt32LE(xsaveLength, A.xsaveSize);
    lap(3);
    vcpu.getInto(ioc.KVM_GET_XCRS, area.at(A.xcrs, KVM_XCRS_SIZE), 'KVM_GET_XCRS');
    lap(4);
    vcpu.getInto(ioc.KVM_GET_DEBUGREGS, area.at(A.debugregs, KVM_DEBUGREGS_SIZE), 'KVM_GET_DEBUGREGS');
    lap(5);
    vcpu.getInto(ioc.KVM_GET_LAPIC, area.at(A.lapic, KVM_LAPIC_STATE_SIZE), 'KVM_GET_LAPIC');
    lap(6);
    saveMsrsInto(vcpu, area, msrIndices);
    lap(7);
    // Last, as in saveVcpuState: pending events as of the end of the save.
    vcpu.getInto(ioc.KVM_GET_VCPU_EVENTS, area.at(A.events, KVM_VCPU_EVENTS_SIZE), 'KVM_GET_VCPU_EVENTS');
    lap(8);
    if (Atomics.load(w, 1) === 0) {
      // Fixed once the vCPU has run (KVM refuses a different CPUID then; the TSC rate cannot be set here).
      const cpuid = area.at(A.cpuid, kvmCpuid2Header.size + AREA_MAX_CPUID * kvmCpuidEntry2.size);
      cpuid.writeUInt32LE(AREA_MAX_CPUID, 0);
      vcpu.getInto(ioc.KVM_GET_CPUID2, cpuid, 'KVM_GET_CPUID2');
      area.bytes.writeUInt32LE(vcpu.getTscKhz(), A.tscKhz);
      Atomics.store(w, 1, 1);
    }
    lap(9);
    Atomics.store(w, 0, AREA_SAVED);
  } catch (err) {
    const n = area.bytes.write((err as Error).message, A.error, ERROR_BYTES, 'utf8');
    area.bytes.writeUInt32LE(n, A.errorLength);
    Atomics.store(w, 0, AREA_FAILED);
  }
}

/**
 * Every MSR of the index list KVM can read, in one KVM_GET_MSRS: the readable ones are found at the
 * first save (KVM stops at the first it cannot read) and their indices stay in the area, where the
 * ioctl fills in the values.
 */
function saveMsrsInto(vcpu: VcpuFd, area: VcpuStateArea, msrIndices: readonly number[]): void {
  const buf = area.at(A.msrs, kvmMsrsHeader.size + AREA_MAX_MSRS * kvmMsrEntry.size);
  const prepare = (indices: readonly number[]) => {
    if (indices.length > AREA_MAX_MSRS) throw new Error(`${indices.length} MSRs exceed the ${AREA_MAX_MSRS} the VMM reserves for them`);
    buf.writeUInt32LE(indices.length, 0);
    indices.forEach((index, i) => buf.writeUInt32LE(index, kvmMsrsHeader.size + i * kvmMsrEntry.size));
  };
  if (!readableMsrs) {
    readableMsrs = vcpu.getMsrs(msrIndices).map((m) => m.index);
    prepare(readableMsrs);
  }
  const n = vcpu.getInto(ioc.KVM_GET_MSRS, buf, 'KVM_GET_MSRS');
  if (n !== readableMsrs.length) {
    // One stopped being readable: find the readable ones again.
    readableMsrs = vcpu.getMsrs(msrIndices).map((m) => m.index);
    prepare(readableMsrs);
    vcpu.getInto(ioc.KVM_GET_MSRS, buf, 'KVM_GET_MSRS');
  }
}

/** On the main thread, after the save: the state in `area` (copied out), or an error naming what failed. */
export function readVcpuStateArea(area: VcpuStateArea): VcpuState {
  const b = area.bytes;
  const status = Atomics.load(area.words, 0);
  if (status === AREA_FAILED) throw new Error(b.toString('utf8', A.error, A.error + b.readUInt32LE(A.errorLength)));
  if (status !== AREA_SAVED) throw new Error('its state was not saved');
  const copy = (offset: number, length: number) => Uint8Array.from(b.subarray(offset, offset + length));
  const nmsrs = b.readUInt32LE(A.msrs);
  const nent = b.readUInt32LE(A.cpuid);
  return {
    mpState: b.readUInt32LE(A.mpState),
    regs: decode(kvmRegs, b.subarray(A.regs, A.regs + kvmRegs.size)),
    sregs: decodeSregs(b.subarray(A.sregs, A.sregs + kvmSregs.size)),
    xsave: copy(A.xsave, b.readUInt32LE(A.xsaveSize)),
    xcrs: copy(A.xcrs, KVM_XCRS_SIZE),
    debugregs: copy(A.debugregs, KVM_DEBUGREGS_SIZE),
    lapic: copy(A.lapic, KVM_LAPIC_STATE_SIZE),
    tscKhz: b.readUInt32LE(A.tscKhz),
    cpuid: decodeArray(kvmCpuid2Header.size, kvmCpuidEntry2, b.subarray(A.cpuid), nent),
    msrs: decodeArray(kvmMsrsHeader.size, kvmMsrEntry, b.subarray(A.msrs), nmsrs).map((e) => ({ index: e.index, data: e.data })),
    events: copy(A.events, KVM_VCPU_EVENTS_SIZE),
  };
}
