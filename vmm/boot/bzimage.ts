// Parses a kernel image in the bzImage layout (a Linux kernel, or the Lifeboat guest's
// guest/build/lifeboat-guest.bin) for the 64-bit boot protocol: validates the setup header and splits the
// file into the header (copied into the zero page) and the protected-mode payload (loaded at 1 MiB).

import { readFileSync } from 'node:fs';
import { BootError } from './errors.js';
import {
  BOOT_FLAG_MAGIC,
  SETUP_HEADER_END,
  SETUP_HEADER_MAGIC,
  SETUP_HEADER_OFFSET,
  XLF_KERNEL_64,
  bootParams,
} from './boot-params.js';

/** Protocol 2.12 (Linux 3.8) added xloadflags and with it the documented 64-bit entry. */
export const MIN_BOOT_PROTOCOL = 0x020c;
const SECTOR = 512;
/** setup_sects = 0 means 4 (for very old kernels; still honoured). */
const DEFAULT_SETUP_SECTS = 4;
const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46];

/** A kernel image the VMM cannot boot; the message is one line naming the problem and the fix. */
export class KernelImageError extends BootError {
  constructor(message: string) {
    super(message);
    this.name = 'KernelImageError';
  }
}

export interface KernelImage {
  /** Bytes [0x1F1, 0x26C) of the file: copy into the zero page at the same offset. */
  readonly setupHeader: Uint8Array;
  /** The protected-mode kernel: load at HIGH_MEMORY_START; the 64-bit entry is at +0x200. */
  readonly payload: Uint8Array;
  /** e.g. 0x020F for 2.15. */
  readonly protocolVersion: number;
  /** Real-mode setup sectors after the boot sector (0 in the file is reported as 4). */
  readonly setupSects: number;
  readonly loadflags: number;
  readonly xloadflags: number;
  /** Highest address the initrd's last byte may occupy. */
  readonly initrdAddrMax: number;
  readonly kernelAlignment: number;
  readonly relocatable: boolean;
  /** Preferred load address of a relocatable kernel (u64). */
  readonly prefAddress: bigint;
  /** Bytes of memory the kernel needs from its load address before it has set up its own. */
  readonly initSize: number;
  /** Longest command line the kernel accepts, excluding the NUL (header field cmdline_size). */
  readonly cmdlineMax: number;
  /** The header's kernel_version string (e.g. "6.1.0-56-cloud-amd64 (...)"), if it has one. */
  readonly kernelVersion: string | undefined;
}

export function isElf(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && ELF_MAGIC.every((b, i) => bytes[i] === b);
}

/** Reads and parses a kernel image file; errors name the file. */
export function readKernelImage(path: string): KernelImage {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new KernelImageError(`kernel image ${path} does not exist`);
    if (code === 'EISDIR') throw new KernelImageError(`kernel image ${path} is a directory; pass the bzImage file`);
    throw new KernelImageError(`cannot read kernel image ${path}: ${(err as Error).message}`);
  }
  return parseKernelImage(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), path);
}

export function parseKernelImage(bytes: Uint8Array, name = 'the kernel image'): KernelImage {
  if (isElf(bytes)) {
    throw new KernelImageError(
      `${name} is an ELF file (vmlinux or lifeboat-guest.elf), not a bzImage; pass a bzImage (arch/x86/boot/bzImage or guest/build/lifeboat-guest.bin)`,
    );
  }
  if (bytes.length < SETUP_HEADER_END) {
    throw new KernelImageError(`${name} is truncated or not a kernel: ${bytes.length} bytes, too short for a bzImage setup header`);
  }
  const bootFlag = bootParams.get(bytes, 'bootFlag');
  const magic = bootParams.get(bytes, 'header');
  if (bootFlag !== BOOT_FLAG_MAGIC || magic !== SETUP_HEADER_MAGIC) {
    throw new KernelImageError(
      `${name} is not a bzImage (no 0xAA55 boot flag and "HdrS" setup header); pass a bzImage (arch/x86/boot/bzImage or guest/build/lifeboat-guest.bin)`,
    );
  }
  const version = bootParams.get(bytes, 'version');
  if (version < MIN_BOOT_PROTOCOL) {
    throw new KernelImageError(
      `${name} uses boot protocol ${formatProtocol(version)}; Lifeboat needs ${formatProtocol(MIN_BOOT_PROTOCOL)} or newer (Linux 3.8+) for the 64-bit entry`,
    );
  }
  const xloadflags = bootParams.get(bytes, 'xloadflags');
  if ((xloadflags & XLF_KERNEL_64) === 0) {
    throw new KernelImageError(`${name} has no 64-bit entry point (xloadflags bit 0 clear); Lifeboat boots x86-64 kernels only`);
  }
  const setupSects = bootParams.get(bytes, 'setupSects') || DEFAULT_SETUP_SECTS;
  const payloadStart = (setupSects + 1) * SECTOR;
  if (bytes.length <= payloadStart) {
    throw new KernelImageError(
      `${name} is truncated: ${bytes.length} bytes, but its header puts the kernel at byte ${payloadStart}; copy the image again`,
    );
  }
  const syssize = bootParams.get(bytes, 'syssize');
  // syssize counts the 16-byte paragraphs of the protected-mode code, rounded up: a file that does not
  // reach into the last paragraph lost its tail.
  const minPayload = (syssize - 1) * 16 + 1;
  if (syssize > 0 && bytes.length - payloadStart < minPayload) {
    throw new KernelImageError(
      `${name} is truncated: the kernel needs at least ${minPayload} bytes after the setup code, the file has ${bytes.length - payloadStart}; copy the image again`,
    );
  }
  return {
    setupHeader: bytes.slice(SETUP_HEADER_OFFSET, SETUP_HEADER_END),
    payload: bytes.subarray(payloadStart),
    protocolVersion: version,
    setupSects,
    loadflags: bootParams.get(bytes, 'loadflags'),
    xloadflags,
    initrdAddrMax: bootParams.get(bytes, 'initrdAddrMax'),
    kernelAlignment: bootParams.get(bytes, 'kernelAlignment'),
    relocatable: bootParams.get(bytes, 'relocatableKernel') !== 0,
    prefAddress: new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(bootParams.offset('prefAddress'), true),
    initSize: bootParams.get(bytes, 'initSize'),
    cmdlineMax: bootParams.get(bytes, 'cmdlineSize'),
    kernelVersion: readKernelVersion(bytes),
  };
}

/** kernel_version points (minus 0x200) at a NUL-terminated string inside the setup code. */
function readKernelVersion(bytes: Uint8Array): string | undefined {
  const pointer = bootParams.get(bytes, 'kernelVersion');
  if (pointer === 0) return undefined;
  const start = pointer + 0x200;
  if (start >= bytes.length) return undefined;
  let end = start;
  while (end < bytes.length && end - start < 256 && bytes[end] !== 0) end++;
  const text = new TextDecoder('latin1').decode(bytes.subarray(start, end));
  return /^[\x20-\x7e]+$/.test(text) ? text : undefined;
}

function formatProtocol(version: number): string {
  return `${version >> 8}.${(version & 0xff).toString().padStart(2, '0')}`;
}
