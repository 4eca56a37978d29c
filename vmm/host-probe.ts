// What this host offers a VMM: whether /dev/kvm is there and usable, which KVM it is (PVM, i.e. KVM
// without hardware virtualization, or VT-x/AMD-V), CPUs and memory, and the KVM API details `lifeboat
// doctor` reports. Also decides whether a kernel image is stock Linux, which PVM cannot boot.

import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import type { KernelImage } from './boot/bzimage.js';
import * as ioc from './kvm/ioctls.js';
import { kvmDevicePath } from './kvm/system.js';
import * as libc from './sys/libc.js';

/** What /dev/kvm is backed by. */
export type KvmFlavour = 'pvm' | 'hardware' | 'unknown' | 'none';

export interface HostInfo {
  readonly kvm: {
    readonly path: string;
    readonly present: boolean;
    /** Openable for reading and writing by this process. */
    readonly accessible: boolean;
  };
  readonly flavour: KvmFlavour;
  /** Loaded KVM vendor modules among kvm_pvm, kvm_intel, kvm_amd. */
  readonly kvmModules: readonly string[];
  /** The CPU's own virtualization extension as /proc/cpuinfo shows it (absent inside most VMs). */
  readonly cpuVirtualization: 'vmx' | 'svm' | undefined;
  readonly cpuCount: number;
  readonly memoryTotalBytes: number;
  readonly memoryAvailableBytes: number;
}

/** Where probeHost looks; tests point these at a fabricated tree to stand in for another kind of host. */
export interface HostPaths {
  kvmDevice: string;
  sysModuleDir: string;
  cpuinfo: string;
  meminfo: string;
}

export const PVM_MODULE = 'kvm_pvm';
const VENDOR_MODULES = [PVM_MODULE, 'kvm_intel', 'kvm_amd'];

export function probeHost(paths: Partial<HostPaths> = {}): HostInfo {
  const p: HostPaths = {
    kvmDevice: kvmDevicePath(),
    sysModuleDir: '/sys/module',
    cpuinfo: '/proc/cpuinfo',
    meminfo: '/proc/meminfo',
    ...paths,
  };
  const present = existsSync(p.kvmDevice);
  let accessible = false;
  if (present) {
    try {
      accessSync(p.kvmDevice, constants.R_OK | constants.W_OK);
      accessible = true;
    } catch {
      accessible = false;
    }
  }
  const kvmModules = VENDOR_MODULES.filter((m) => existsSync(join(p.sysModuleDir, m)));
  const cpuVirtualization = readCpuVirtualization(p.cpuinfo);
  const meminfo = readMeminfo(p.meminfo);
  return {
    kvm: { path: p.kvmDevice, present, accessible },
    flavour: kvmFlavour(present, kvmModules, cpuVirtualization),
    kvmModules,
    cpuVirtualization,
    cpuCount: readCpuCount(p.cpuinfo),
    memoryTotalBytes: meminfo.MemTotal ?? 0,
    memoryAvailableBytes: meminfo.MemAvailable ?? meminfo.MemFree ?? 0,
  };
}

function kvmFlavour(present: boolean, modules: readonly string[], cpu: 'vmx' | 'svm' | undefined): KvmFlavour {
  if (!present) return 'none';
  // PVM registers /dev/kvm instead of the hardware vendor module; its presence decides.
  if (modules.includes(PVM_MODULE)) return 'pvm';
  if (modules.includes('kvm_intel') || modules.includes('kvm_amd') || cpu) return 'hardware';
  return 'unknown';
}

function readCpuVirtualization(cpuinfoPath: string): 'vmx' | 'svm' | undefined {
  const text = readOptional(cpuinfoPath);
  const flags = /^flags\s*:(.*)$/m.exec(text)?.[1]?.split(/\s+/) ?? [];
  if (flags.includes('vmx')) return 'vmx';
  if (flags.includes('svm')) return 'svm';
  return undefined;
}

function readCpuCount(cpuinfoPath: string): number {
  const processors = readOptional(cpuinfoPath).match(/^processor\s*:/gm)?.length ?? 0;
  return processors || availableParallelism();
}

function readMeminfo(path: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of readOptional(path).matchAll(/^(\w+):\s+(\d+) kB$/gm)) out[m[1]!] = Number(m[2]) * 1024;
  return out;
}

function readOptional(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

// ---- Which guest a kernel image is ----

export type GuestKernelKind = 'lifeboat-guest' | 'linux' | 'unknown';

/** The Lifeboat guest's setup header kernel_version string ("Lifeboat guest", guest/src/bzimage-header.S). */
const LIFEBOAT_GUEST_VERSION = /^lifeboat[- ]guest\b/i;

/**
 * From the bzImage header's kernel_version string: "Lifeboat guest ..." (or "lifeboat-guest ...") is our
 * guest; a string starting with a digit ("6.1.0-56-cloud-amd64 (debian-kernel@...) #1 SMP ...") is Linux;
 * anything else unknown.
 */
export function classifyKernel(image: Pick<KernelImage, 'kernelVersion'>): GuestKernelKind {
  const version = image.kernelVersion;
  if (version === undefined) return 'unknown';
  if (LIFEBOAT_GUEST_VERSION.test(version)) return 'lifeboat-guest';
  if (/^\d/.test(version)) return 'linux';
  return 'unknown';
}

/**
 * The one-line reason to refuse booting `image` on this host, or undefined to go ahead. Stock Linux
 * dies on PVM (emulation failures at cmpxchg16b, xrstor, int3) after a long silent boot, so we refuse
 * up front, before touching any disk.
 */
export function refuseLinuxOnPvm(image: Pick<KernelImage, 'kernelVersion'>, host: Pick<HostInfo, 'flavour'>): string | undefined {
  if (host.flavour !== 'pvm' || classifyKernel(image) !== 'linux') return undefined;
  const release = image.kernelVersion!.split(' ')[0];
  return (
    `this host's /dev/kvm is PVM (KVM without hardware virtualization, module ${PVM_MODULE}); stock Linux kernels ` +
    `(this one is ${release}) do not boot on it. Use the Lifeboat guest (the default kernel) here, or run on a host with VT-x/AMD-V.`
  );
}

// ---- KVM API details (for `lifeboat doctor`) ----

export interface KvmCapabilityReport {
  readonly name: string;
  readonly cap: number;
  /** KVM_CHECK_EXTENSION's answer: 0 = absent, otherwise present (some return a count or mask). */
  readonly value: number;
  /** The VMM refuses to start without it. */
  readonly required: boolean;
}

export interface KvmApiInfo {
  readonly apiVersion: number;
  readonly capabilities: readonly KvmCapabilityReport[];
  /** KVM_CAP_NR_VCPUS: recommended most vCPUs per VM. */
  readonly recommendedVcpus: number;
  /** KVM_CAP_MAX_VCPUS: hard limit of vCPUs per VM. */
  readonly maxVcpus: number;
  /** The TSC frequency a new vCPU gets (KVM_GET_TSC_KHZ), if KVM would say. */
  readonly tscKhz: number | undefined;
}

// Capability ids not (yet) in vmm/kvm/ioctls.ts, from <linux/kvm.h>.
const KVM_CAP_SYNC_MMU = 16;
const KVM_CAP_TSC_CONTROL = 60;
const KVM_CAP_TSC_DEADLINE_TIMER = 72;
const KVM_CAP_SIGNAL_MSI = 77;
const KVM_CAP_READONLY_MEM = 81;
const KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168;
const KVM_CAP_DIRTY_LOG_RING = 192;

/** Used when present: snapshots, dirty tracking, timekeeping. */
const OPTIONAL_CAPS: ReadonlyArray<readonly [number, string]> = [
  [ioc.KVM_CAP_GET_TSC_KHZ, 'GET_TSC_KHZ'],
  [KVM_CAP_TSC_CONTROL, 'TSC_CONTROL'],
  [KVM_CAP_TSC_DEADLINE_TIMER, 'TSC_DEADLINE_TIMER'],
  [ioc.KVM_CAP_KVMCLOCK_CTRL, 'KVMCLOCK_CTRL'],
  [ioc.KVM_CAP_XSAVE2, 'XSAVE2'],
  [KVM_CAP_SIGNAL_MSI, 'SIGNAL_MSI'],
  [KVM_CAP_READONLY_MEM, 'READONLY_MEM'],
  [KVM_CAP_SYNC_MMU, 'SYNC_MMU'],
  [KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, 'MANUAL_DIRTY_LOG_PROTECT2'],
  [KVM_CAP_DIRTY_LOG_RING, 'DIRTY_LOG_RING'],
];

/** Thrown when /dev/kvm cannot be opened or is not KVM; the message says why. */
export class KvmProbeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KvmProbeError';
  }
}

/**
 * Asks KVM for its API version, capabilities and vCPU limits (KVM_GET_API_VERSION, KVM_CHECK_EXTENSION
 * on /dev/kvm), and the TSC frequency from a throwaway VM. Unlike opening the VMM's Kvm, a missing
 * capability is reported, not thrown.
 */
export function probeKvmApi(path = kvmDevicePath()): KvmApiInfo {
  let fd: number;
  try {
    fd = libc.open(path, libc.O_RDWR);
  } catch (err) {
    throw new KvmProbeError(`cannot open ${path}: ${(err as Error).message}`);
  }
  try {
    let apiVersion: number;
    try {
      apiVersion = libc.ioctlInt(fd, ioc.KVM_GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
    } catch {
      throw new KvmProbeError(`${path} is not a KVM device (KVM_GET_API_VERSION failed)`);
    }
    const check = (cap: number) => Math.max(0, libc.ioctlRaw(fd, ioc.KVM_CHECK_EXTENSION, cap));
    const capabilities = [
      ...ioc.REQUIRED_CAPS.map(([cap, name]) => ({ name, cap, value: check(cap), required: true })),
      ...OPTIONAL_CAPS.map(([cap, name]) => ({ name, cap, value: check(cap), required: false })),
    ];
    const recommendedVcpus = check(ioc.KVM_CAP_NR_VCPUS);
    return {
      apiVersion,
      capabilities,
      recommendedVcpus,
      maxVcpus: check(ioc.KVM_CAP_MAX_VCPUS) || recommendedVcpus,
      tscKhz: readTscKhz(fd),
    };
  } finally {
    libc.close(fd);
  }
}

/** KVM_GET_TSC_KHZ is a vCPU ioctl (also a VM ioctl on newer kernels): ask a throwaway VM. */
function readTscKhz(kvmFd: number): number | undefined {
  const vm = libc.ioctlRaw(kvmFd, ioc.KVM_CREATE_VM, 0);
  if (vm < 0) return undefined;
  try {
    const fromVm = libc.ioctlRaw(vm, ioc.KVM_GET_TSC_KHZ, 0);
    if (fromVm > 0) return fromVm;
    const vcpu = libc.ioctlRaw(vm, ioc.KVM_CREATE_VCPU, 0);
    if (vcpu < 0) return undefined;
    try {
      const khz = libc.ioctlRaw(vcpu, ioc.KVM_GET_TSC_KHZ, 0);
      return khz > 0 ? khz : undefined;
    } finally {
      libc.close(vcpu);
    }
  } finally {
    libc.close(vm);
  }
}
