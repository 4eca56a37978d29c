// /dev/kvm: API version, capabilities, host-wide queries, VM creation.
import * as libc from '../sys/libc.js';
import { VmmError } from './errors.js';
import * as ioc from './ioctls.js';
import { buildArray, decodeArray, kvmCpuid2Header, kvmCpuidEntry2, kvmMsrListHeader, type KvmCpuidEntry } from './structs.js';
import { VmFd } from './vm.js';

/** Environment variable naming the KVM device (default /dev/kvm); documented in docs/vmm.md. */
export const KVM_DEVICE_ENV = 'LIFEBOAT_KVM_DEVICE';
export const DEFAULT_KVM_DEVICE = '/dev/kvm';

export function kvmDevicePath(): string {
  return process.env[KVM_DEVICE_ENV] || DEFAULT_KVM_DEVICE;
}

const MAX_CPUID_ENTRIES = 256;
const MAX_MSR_INDICES = 1024;

export class Kvm {
  private constructor(readonly fd: number, readonly path: string) {}

  /** Opens the KVM device and checks the API version and every capability the VMM relies on. */
  static open(path = kvmDevicePath()): Kvm {
    let fd: number;
    try {
      fd = libc.open(path, libc.O_RDWR);
    } catch (err) {
      const e = err instanceof libc.SysError ? err.errno : -1;
      if (e === libc.ENOENT) throw new VmmError(`${path} does not exist: this host has no KVM (load the kvm module, or enable virtualization; ${KVM_DEVICE_ENV} names another device)`);
      if (e === libc.EACCES || e === 1) throw new VmmError(`permission denied opening ${path}: add your user to the 'kvm' group or run as root`);
      throw new VmmError(`cannot open ${path}: ${(err as Error).message}`);
    }
    const kvm = new Kvm(fd, path);
    try {
      let version: number;
      try {
        version = libc.ioctlInt(fd, ioc.KVM_GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
      } catch {
        throw new VmmError(`${path} is not a KVM device (KVM_GET_API_VERSION failed)`);
      }
      if (version !== ioc.KVM_API_VERSION) throw new VmmError(`${path} speaks KVM API version ${version}; Lifeboat needs ${ioc.KVM_API_VERSION}`);
      const missing = ioc.REQUIRED_CAPS.filter(([cap]) => kvm.checkExtension(cap) <= 0).map(([, name]) => name);
      if (missing.length) throw new VmmError(`${path} lacks KVM capabilities Lifeboat needs: ${missing.join(', ')}`);
    } catch (err) {
      kvm.close();
      throw err;
    }
    return kvm;
  }

  checkExtension(cap: number): number {
    return libc.ioctlInt(this.fd, ioc.KVM_CHECK_EXTENSION, cap, 'KVM_CHECK_EXTENSION');
  }

  /** The most vCPUs a VM may have on this host (KVM_CAP_MAX_VCPUS, else NR_VCPUS, else 4). */
  maxVcpus(): number {
    return this.checkExtension(ioc.KVM_CAP_MAX_VCPUS) || this.checkExtension(ioc.KVM_CAP_NR_VCPUS) || 4;
  }

  /** The recommended vCPU count (KVM_CAP_NR_VCPUS): more than this works but may be slow. */
  recommendedVcpus(): number {
    return this.checkExtension(ioc.KVM_CAP_NR_VCPUS) || 4;
  }

  vcpuMmapSize(): number {
    return libc.ioctlInt(this.fd, ioc.KVM_GET_VCPU_MMAP_SIZE, 0, 'KVM_GET_VCPU_MMAP_SIZE');
  }

  /** Bytes of kvm_xsave to use with KVM_GET_XSAVE2 (0 when only the 4 KiB KVM_GET_XSAVE exists). */
  xsave2Size(): number {
    return this.checkExtension(ioc.KVM_CAP_XSAVE2);
  }

  supportedCpuid(): KvmCpuidEntry[] {
    const buf = buildArray(kvmCpuid2Header, { nent: MAX_CPUID_ENTRIES }, kvmCpuidEntry2, [], MAX_CPUID_ENTRIES);
    libc.ioctlBuf(this.fd, ioc.KVM_GET_SUPPORTED_CPUID, buf, 'KVM_GET_SUPPORTED_CPUID');
    return decodeArray(kvmCpuid2Header.size, kvmCpuidEntry2, buf, buf.readUInt32LE(0));
  }

  /** Every MSR index KVM saves and restores for a vCPU. */
  msrIndexList(): number[] {
    const buf = Buffer.alloc(kvmMsrListHeader.size + 4 * MAX_MSR_INDICES);
    buf.writeUInt32LE(MAX_MSR_INDICES, 0);
    libc.ioctlBuf(this.fd, ioc.KVM_GET_MSR_INDEX_LIST, buf, 'KVM_GET_MSR_INDEX_LIST');
    const n = buf.readUInt32LE(0);
    return Array.from({ length: n }, (_, i) => buf.readUInt32LE(kvmMsrListHeader.size + 4 * i));
  }

  /** Creates a VM (KVM_CREATE_VM, retried on EINTR by ioctlInt). */
  createVm(): VmFd {
    let fd: number;
    try {
      fd = libc.ioctlInt(this.fd, ioc.KVM_CREATE_VM, 0, 'KVM_CREATE_VM');
    } catch (err) {
      throw new VmmError(`cannot create a KVM virtual machine: ${(err as Error).message}`);
    }
    return new VmFd(fd, this);
  }

  close(): void {
    libc.close(this.fd);
  }
}
