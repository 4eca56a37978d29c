// What a VM is made of, and its complete validation before anything touches a disk image: kernel and
// initrd readable and well-formed, disks present with a size that is a multiple of 512 (opened
// read-only here; only the virtio device opens them for writing, when the VM starts), memory and
// vCPU counts within what the host can give.
import { closeSync, constants, accessSync, fstatSync, openSync, readFileSync, statSync } from 'node:fs';
import { freemem, totalmem } from 'node:os';
import { resolve } from 'node:path';
import { MAX_VCPUS as ACPI_MAX_VCPUS } from './acpi/tables.js';
import { readKernelImage, type KernelImage } from './boot/bzimage.js';
import { BootError } from './boot/errors.js';
import { encodeCmdline } from './boot/zero-page.js';
import { VmmError } from './kvm/errors.js';
import { MAX_MEMORY_MIB, MMIO_HOLE_START, VIRTIO_FIRST_GSI, VIRTIO_LAST_GSI } from './layout.js';

export const SECTOR_SIZE = 512;
export const MIN_MEMORY_MIB = 16;
export const DEFAULT_MEMORY_MIB = 256;
export const DEFAULT_VCPUS = 1;
export const MAX_DISKS = VIRTIO_LAST_GSI - VIRTIO_FIRST_GSI + 1;
/**
 * The base command line: serial console, keyboard-controller reboot, no PCI, no i8042 probing (Linux);
 * the Lifeboat guest ignores what it does not know.
 */
export const DEFAULT_CMDLINE = 'console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd cryptomgr.notests quiet';

export interface DiskSpec {
  path: string;
  readOnly: boolean;
}

export interface VmConfig {
  kernelPath: string;
  initrdPath?: string;
  /** The full kernel command line, before `lifeboat.tsc_khz=` is added at boot. */
  cmdline: string;
  vcpus: number;
  memoryMib: number;
  disks: DiskSpec[];
}

export interface ValidatedDisk extends DiskSpec {
  /** Absolute path. */
  path: string;
  sizeBytes: number;
}

export interface ValidatedConfig {
  kernel: KernelImage;
  kernelPath: string;
  initrd?: Uint8Array;
  cmdline: string;
  vcpus: number;
  memoryBytes: number;
  disks: ValidatedDisk[];
}

/** Parses `PATH[,ro]` (the --disk syntax). */
export function parseDiskSpec(text: string): DiskSpec {
  const parts = text.split(',');
  const path = parts.shift()!;
  if (!path) throw new VmmError(`--disk '${text}': missing path (use --disk PATH or --disk PATH,ro)`, 2);
  let readOnly = false;
  for (const opt of parts) {
    if (opt === 'ro') readOnly = true;
    else if (opt === 'rw') readOnly = false;
    else throw new VmmError(`--disk '${text}': unknown option '${opt}' (only 'ro' and 'rw')`, 2);
  }
  return { path, readOnly };
}

/** Quotes a value for the kernel command line (`key="value"`); the kernel has no escape for '"'. */
export function cmdlineValue(value: string): string {
  if (value.includes('"')) throw new VmmError(`a kernel command-line value cannot contain a double quote: ${value}`, 2);
  return /[\s;]/.test(value) || value === '' ? `"${value}"` : value;
}

/**
 * Checks everything that can be checked without KVM. `maxVcpus` (the host's limit) is checked by the
 * caller once KVM is open (checkVcpuLimit).
 */
export function validateConfig(config: VmConfig): ValidatedConfig {
  if (!Number.isInteger(config.vcpus) || config.vcpus < 1) throw new VmmError(`--vcpus must be a whole number of at least 1, got ${config.vcpus}`, 2);
  const memoryBytes = checkMemory(config.memoryMib);
  const kernel = readKernel(config.kernelPath);
  const initrd = config.initrdPath === undefined ? undefined : readInitrd(config.initrdPath);
  try {
    encodeCmdline(config.cmdline, kernel.cmdlineMax);
  } catch (err) {
    throw new VmmError((err as Error).message);
  }
  if (config.disks.length > MAX_DISKS) throw new VmmError(`${config.disks.length} disks given; a VM has at most ${MAX_DISKS}`, 2);
  const disks = config.disks.map(checkDisk);
  const seen = new Map<string, ValidatedDisk>();
  for (const d of disks) {
    const other = seen.get(d.path);
    if (other && (!other.readOnly || !d.readOnly)) throw new VmmError(`disk ${d.path} is given twice; a writable disk can be attached only once`);
    seen.set(d.path, d);
  }
  return { kernel, kernelPath: resolve(config.kernelPath), initrd, cmdline: config.cmdline, vcpus: config.vcpus, memoryBytes, disks };
}

/** The vCPU count against this host's KVM limit (and the 254 the MADT's one-byte APIC ids allow). */
export function checkVcpuLimit(vcpus: number, hostMax: number): void {
  const max = Math.min(hostMax, ACPI_MAX_VCPUS);
  if (vcpus > max) {
    const why = hostMax <= ACPI_MAX_VCPUS ? `this host's KVM allows at most ${hostMax} per VM` : `xAPIC ids allow at most ${ACPI_MAX_VCPUS}`;
    throw new VmmError(`--vcpus ${vcpus} is too many: ${why}`, 2);
  }
}

function checkMemory(mib: number): number {
  if (!Number.isInteger(mib) || mib < MIN_MEMORY_MIB) throw new VmmError(`--mem must be a whole number of MiB, at least ${MIN_MEMORY_MIB}, got ${mib}`, 2);
  const bytes = mib * 1024 * 1024;
  const available = freemem();
  if (bytes > available) {
    throw new VmmError(`--mem ${mib} MiB is more than this host can give: ${Math.floor(available / 2 ** 20)} MiB available of ${Math.floor(totalmem() / 2 ** 20)} MiB; ask for less`, 2);
  }
  if (mib > MAX_MEMORY_MIB) {
    throw new VmmError(`--mem ${mib} MiB is more than this VMM supports: at most ${MAX_MEMORY_MIB} MiB (guest memory is one view, and Node 20's views stop below 4 GiB); ask for less`, 2);
  }
  if (bytes > MMIO_HOLE_START && bytes % (2 * 1024 * 1024) !== 0) {
    throw new VmmError(`--mem above ${MMIO_HOLE_START / 2 ** 20} MiB must be a multiple of 2 MiB`, 2);
  }
  return bytes;
}

function readKernel(path: string): KernelImage {
  try {
    return readKernelImage(path);
  } catch (err) {
    if (err instanceof BootError) throw new VmmError(err.message);
    throw err;
  }
}

function readInitrd(path: string): Uint8Array {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new VmmError(code === 'ENOENT' ? `initrd ${path} does not exist` : `cannot read initrd ${path}: ${(err as Error).message}`);
  }
  if (bytes.length === 0) throw new VmmError(`initrd ${path} is empty; pass a non-empty initramfs file`);
  return bytes;
}

/** Opens the image read-only to check it; never writes. */
function checkDisk(spec: DiskSpec): ValidatedDisk {
  const path = resolve(spec.path);
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new VmmError(`disk image ${spec.path} does not exist (create one with: truncate -s 1G ${spec.path})`);
    if (code === 'EACCES') throw new VmmError(`disk image ${spec.path} is not readable: permission denied`);
    throw new VmmError(`cannot open disk image ${spec.path}: ${(err as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw new VmmError(`disk image ${spec.path} is a directory; pass an image file`);
    if (!st.isFile()) throw new VmmError(`disk image ${spec.path} is not a regular file (raw image files only)`);
    const sizeBytes = st.size;
    if (sizeBytes === 0) throw new VmmError(`disk image ${spec.path} is empty (give it a size, e.g. truncate -s 1G ${spec.path})`);
    if (sizeBytes % SECTOR_SIZE !== 0) {
      throw new VmmError(`disk image ${spec.path} is ${sizeBytes} bytes, not a multiple of ${SECTOR_SIZE}; resize it (e.g. truncate -s ${Math.ceil(sizeBytes / SECTOR_SIZE) * SECTOR_SIZE} ${spec.path})`);
    }
    if (!spec.readOnly) {
      try {
        accessSync(path, constants.W_OK);
      } catch {
        throw new VmmError(`disk image ${spec.path} is not writable; fix its permissions or attach it read-only (--disk ${spec.path},ro)`);
      }
    }
    return { path, readOnly: spec.readOnly, sizeBytes };
  } finally {
    closeSync(fd);
  }
}

export function fileExists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}
