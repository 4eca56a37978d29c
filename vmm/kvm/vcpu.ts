// A KVM vCPU fd: register and state ioctls. KVM serialises these per vCPU; a vCPU's own worker calls
// them while the vCPU is out of KVM_RUN (at boot, and when paused for a snapshot).
import * as libc from '../sys/libc.js';
import { VmmError } from './errors.js';
import * as ioc from './ioctls.js';
import {
  buildArray, decode, decodeArray, decodeSregs, encode, encodeSregs, kvmCpuid2Header, kvmCpuidEntry2, kvmFpu, kvmMpState, kvmMsrEntry,
  kvmMsrsHeader, kvmRegs, kvmSregs, KVM_DEBUGREGS_SIZE, KVM_LAPIC_STATE_SIZE, KVM_VCPU_EVENTS_SIZE, KVM_XCRS_SIZE, KVM_XSAVE_SIZE,
  type KvmCpuidEntry, type KvmMsr, type KvmRegs, type KvmSregs,
} from './structs.js';

/** Most MSRs passed in one KVM_GET_MSRS/KVM_SET_MSRS call. */
const MSR_CHUNK = 64;
const MAX_CPUID_ENTRIES = 256;

export class VcpuFd {
  constructor(readonly fd: number, readonly index: number) {}

  getRegs(): KvmRegs {
    const buf = Buffer.alloc(kvmRegs.size);
    libc.ioctlBuf(this.fd, ioc.KVM_GET_REGS, buf, 'KVM_GET_REGS');
    return decode(kvmRegs, buf);
  }

  setRegs(regs: Partial<KvmRegs>): void {
    const buf = Buffer.alloc(kvmRegs.size);
    encode(kvmRegs, buf, regs);
    libc.ioctlBuf(this.fd, ioc.KVM_SET_REGS, buf, 'KVM_SET_REGS');
  }

  getSregs(): KvmSregs {
    const buf = Buffer.alloc(kvmSregs.size);
    libc.ioctlBuf(this.fd, ioc.KVM_GET_SREGS, buf, 'KVM_GET_SREGS');
    return decodeSregs(buf);
  }

  setSregs(sregs: KvmSregs): void {
    libc.ioctlBuf(this.fd, ioc.KVM_SET_SREGS, encodeSregs(sregs), 'KVM_SET_SREGS');
  }

  /** kvm_fpu as bytes (416); `fpuFields` reads the named fields. */
  getFpu(): Buffer {
    const buf = Buffer.alloc(kvmFpu.size);
    libc.ioctlBuf(this.fd, ioc.KVM_GET_FPU, buf, 'KVM_GET_FPU');
    return buf;
  }

  setFpu(fpu: Uint8Array): void {
    libc.ioctlBuf(this.fd, ioc.KVM_SET_FPU, Buffer.from(fpu), 'KVM_SET_FPU');
  }

  getLapic(): Buffer {
    const buf = Buffer.alloc(KVM_LAPIC_STATE_SIZE);
    libc.ioctlBuf(this.fd, ioc.KVM_GET_LAPIC, buf, 'KVM_GET_LAPIC');
    return buf;
  }

  setLapic(state: Uint8Array): void {
    libc.ioctlBuf(this.fd, ioc.KVM_SET_LAPIC, Buffer.from(state), 'KVM_SET_LAPIC');
  }

  setCpuid(entries: readonly KvmCpuidEntry[]): void {
    const buf = buildArray(kvmCpuid2Header, { nent: entries.length }, kvmCpuidEntry2, entries);
    libc.ioctlBuf(this.fd, ioc.KVM_SET_CPUID2, buf, 'KVM_SET_CPUID2');
  }

  getCpuid(): KvmCpuidEntry[] {
    const buf = buildArray(kvmCpuid2Header, { nent: MAX_CPUID_ENTRIES }, kvmCpuidEntry2, [], MAX_CPUID_ENTRIES);
    libc.ioctlBuf(this.fd, ioc.KVM_GET_CPUID2, buf, 'KVM_GET_CPUID2');
    return decodeArray(kvmCpuid2Header.size, kvmCpuidEntry2, buf, buf.readUInt32LE(0));
  }

  /** KVM_SET_MSRS returns how many it set: anything short is an error naming the first refused MSR. */
  setMsrs(msrs: readonly KvmMsr[]): void {
    for (let i = 0; i < msrs.length; i += MSR_CHUNK) {
      const chunk = msrs.slice(i, i + MSR_CHUNK);
      const buf = buildArray(kvmMsrsHeader, { nmsrs: chunk.length }, kvmMsrEntry, chunk);
      const n = libc.ioctlBuf(this.fd, ioc.KVM_SET_MSRS, buf, 'KVM_SET_MSRS');
      if (n !== chunk.length) throw new VmmError(`KVM refused MSR 0x${chunk[n]!.index.toString(16)} on vCPU ${this.index}`);
    }
  }

  /** Reads the given MSRs; ones KVM cannot read are left out of the result. */
  getMsrs(indices: readonly number[]): KvmMsr[] {
    const out: KvmMsr[] = [];
    for (let i = 0; i < indices.length; i += MSR_CHUNK) {
      const chunk = indices.slice(i, i + MSR_CHUNK).map((index) => ({ index, data: 0n }));
      const buf = buildArray(kvmMsrsHeader, { nmsrs: chunk.length }, kvmMsrEntry, chunk);
      const n = libc.ioctlBuf(this.fd, ioc.KVM_GET_MSRS, buf, 'KVM_GET_MSRS');
      const got = decodeArray(kvmMsrsHeader.size, kvmMsrEntry, buf, n);
      out.push(...got.map((e) => ({ index: e.index, data: e.data })));
      // KVM stops at the first MSR it cannot read: skip it and go on with the rest of the chunk.
      if (n < chunk.length) {
        const rest = indices.slice(i + n + 1, i + MSR_CHUNK);
        if (rest.length) out.push(...this.getMsrs(rest));
      }
    }
    return out;
  }

  getMpState(): number {
    const buf = Buffer.alloc(kvmMpState.size);
    libc.ioctlBuf(this.fd, ioc.KVM_GET_MP_STATE, buf, 'KVM_GET_MP_STATE');
    return buf.readUInt32LE(0);
  }

  setMpState(state: number): void {
    const buf = Buffer.alloc(kvmMpState.size);
    buf.writeUInt32LE(state, 0);
    libc.ioctlBuf(this.fd, ioc.KVM_SET_MP_STATE, buf, 'KVM_SET_MP_STATE');
  }

  /** XSAVE area; `size` > 4096 uses KVM_GET_XSAVE2 (size from KVM_CAP_XSAVE2). */
  getXsave(size = KVM_XSAVE_SIZE): Buffer {
    const buf = Buffer.alloc(Math.max(size, KVM_XSAVE_SIZE));
    libc.ioctlBuf(this.fd, size > KVM_XSAVE_SIZE ? ioc.KVM_GET_XSAVE2 : ioc.KVM_GET_XSAVE, buf, 'KVM_GET_XSAVE');
    return buf;
  }

  setXsave(state: Uint8Array): void {
    libc.ioctlBuf(this.fd, ioc.KVM_SET_XSAVE, Buffer.from(state), 'KVM_SET_XSAVE');
  }

  getXcrs(): Buffer {
    return this.getBlob(ioc.KVM_GET_XCRS, KVM_XCRS_SIZE, 'KVM_GET_XCRS');
  }

  setXcrs(state: Uint8Array): void {
    libc.ioctlBuf(this.fd, ioc.KVM_SET_XCRS, Buffer.from(state), 'KVM_SET_XCRS');
  }

  getDebugregs(): Buffer {
    return this.getBlob(ioc.KVM_GET_DEBUGREGS, KVM_DEBUGREGS_SIZE, 'KVM_GET_DEBUGREGS');
  }

  setDebugregs(state: Uint8Array): void {
    libc.ioctlBuf(this.fd, ioc.KVM_SET_DEBUGREGS, Buffer.from(state), 'KVM_SET_DEBUGREGS');
  }

  getVcpuEvents(): Buffer {
    return this.getBlob(ioc.KVM_GET_VCPU_EVENTS, KVM_VCPU_EVENTS_SIZE, 'KVM_GET_VCPU_EVENTS');
  }

  setVcpuEvents(state: Uint8Array): void {
    libc.ioctlBuf(this.fd, ioc.KVM_SET_VCPU_EVENTS, Buffer.from(state), 'KVM_SET_VCPU_EVENTS');
  }

  /** The guest TSC frequency in kHz. */
  getTscKhz(): number {
    return libc.ioctlInt(this.fd, ioc.KVM_GET_TSC_KHZ, 0, 'KVM_GET_TSC_KHZ');
  }

  /** Tells the guest's kvmclock that the vCPU was paused (avoids soft-lockup warnings after resume). */
  kvmclockCtrl(): void {
    libc.ioctlInt(this.fd, ioc.KVM_KVMCLOCK_CTRL, 0, 'KVM_KVMCLOCK_CTRL');
  }

  /** A KVM_GET_* ioctl straight into `buf` (e.g. a window on shared memory); returns the ioctl's result. */
  getInto(request: number, buf: Uint8Array, name: string): number {
    return libc.ioctlBuf(this.fd, request, buf, name);
  }

  private getBlob(request: number, size: number, name: string): Buffer {
    const buf = Buffer.alloc(size);
    libc.ioctlBuf(this.fd, request, buf, name);
    return buf;
  }

  close(): void {
    libc.close(this.fd);
  }
}
