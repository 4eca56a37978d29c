// Builds the zero page (boot_params) and the command line for the 64-bit boot protocol, and decides
// where the initrd goes. Pure: returns bytes and addresses; the VMM writes them into guest memory.

import {
  CMDLINE_ADDR,
  CMDLINE_MAX_SIZE,
  HIGH_MEMORY_START,
  PAGE_SIZE,
  RSDP_ADDR,
  ZERO_PAGE_ADDR,
} from '../layout.js';
import {
  BOOT_FLAG_MAGIC,
  BOOT_PARAMS_SIZE,
  E820_ENTRY_SIZE,
  E820_MAX_ENTRIES,
  LOADFLAG_LOADED_HIGH,
  SETUP_HEADER_MAGIC,
  TYPE_OF_LOADER_UNDEFINED,
  bootParams,
} from './boot-params.js';
import type { KernelImage } from './bzimage.js';
import { buildE820, lowRamEnd, type E820Entry } from './e820.js';
import { BootError } from './errors.js';
import type { GuestWrite } from './guest-write.js';

export interface ZeroPageInput {
  readonly kernel: KernelImage;
  /** Guest RAM in bytes (a whole number of pages). */
  readonly memorySize: number;
  readonly cmdline: string;
  /** Size of the initrd in bytes, when there is one. */
  readonly initrdSize?: number;
}

export interface ZeroPagePlan {
  /** 4096 bytes for ZERO_PAGE_ADDR (RSI at the 64-bit entry points here). */
  readonly zeroPage: Uint8Array;
  /** The NUL-terminated command line for CMDLINE_ADDR. */
  readonly cmdline: Uint8Array;
  /** Where the caller must copy the initrd's bytes (undefined without an initrd). */
  readonly initrdAddress: number | undefined;
  readonly e820: readonly E820Entry[];
  /** Zero page and command line as guest writes (the kernel payload and initrd are the caller's). */
  readonly writes: readonly GuestWrite[];
}

export function buildZeroPage(input: ZeroPageInput): ZeroPagePlan {
  const { kernel, memorySize } = input;
  const e820 = buildE820(memorySize);
  const kernelEnd = kernelMemoryEnd(kernel);
  const ramEnd = lowRamEnd(memorySize);
  if (kernelEnd > ramEnd) {
    throw new BootError(
      `guest memory of ${mib(memorySize)} is too small for this kernel, which needs memory up to ${mib(kernelEnd)} to start; give the VM more memory (--mem)`,
    );
  }
  const cmdline = encodeCmdline(input.cmdline, kernel.cmdlineMax);
  const initrdAddress = input.initrdSize === undefined ? undefined : placeInitrd(kernel, memorySize, input.initrdSize);

  const zp = new Uint8Array(BOOT_PARAMS_SIZE);
  bootParams.setBytes(zp, 'setupHeader', kernel.setupHeader);
  bootParams.set(zp, 'bootFlag', BOOT_FLAG_MAGIC);
  bootParams.set(zp, 'header', SETUP_HEADER_MAGIC);
  bootParams.set(zp, 'typeOfLoader', TYPE_OF_LOADER_UNDEFINED);
  bootParams.set(zp, 'loadflags', kernel.loadflags | LOADFLAG_LOADED_HIGH);
  setSplit(zp, 'cmdLinePtr', 'extCmdLinePtr', CMDLINE_ADDR);
  if (initrdAddress !== undefined) {
    setSplit(zp, 'ramdiskImage', 'extRamdiskImage', initrdAddress);
    setSplit(zp, 'ramdiskSize', 'extRamdiskSize', input.initrdSize!);
  }
  bootParams.set(zp, 'acpiRsdpAddr', RSDP_ADDR);
  writeE820(zp, e820);

  return {
    zeroPage: zp,
    cmdline,
    initrdAddress,
    e820,
    writes: [
      { gpa: ZERO_PAGE_ADDR, bytes: zp },
      { gpa: CMDLINE_ADDR, bytes: cmdline },
    ],
  };
}

/**
 * End of the memory the kernel needs at boot: its payload at 1 MiB, and init_size bytes from where it
 * runs. A relocatable Linux decompresses itself to max(align_up(load, kernel_alignment), pref_address),
 * 16 MiB for stock kernels, so init_size counts from there.
 */
export function kernelMemoryEnd(kernel: KernelImage): number {
  const pref = Number(kernel.prefAddress);
  const runtimeStart = kernel.relocatable
    ? Math.max(alignUp(HIGH_MEMORY_START, Math.max(kernel.kernelAlignment, 1)), pref)
    : pref || HIGH_MEMORY_START;
  return Math.max(HIGH_MEMORY_START + kernel.payload.length, runtimeStart + kernel.initSize);
}

/**
 * The initrd goes as high as it can: at the top of the RAM below the MMIO hole, page aligned down, with
 * its last byte at or below initrd_addr_max, and above the kernel.
 */
export function placeInitrd(kernel: KernelImage, memorySize: number, initrdSize: number): number {
  if (!Number.isSafeInteger(initrdSize) || initrdSize <= 0) throw new BootError('the initrd is empty; pass a non-empty initramfs file');
  const top = Math.min(lowRamEnd(memorySize), kernel.initrdAddrMax + 1);
  const address = alignDown(top - initrdSize, PAGE_SIZE);
  const floor = alignUp(kernelMemoryEnd(kernel), PAGE_SIZE);
  if (address < floor) {
    throw new BootError(
      `the initrd (${mib(initrdSize)}) does not fit in guest memory of ${mib(memorySize)} above the kernel (which needs up to ${mib(floor)}) and below ${mib(top)}; give the VM more memory (--mem)`,
    );
  }
  return address;
}

/** UTF-8 bytes plus NUL; the kernel's cmdline_size and our 2048-byte slot (NUL included) both bound it. */
export function encodeCmdline(cmdline: string, kernelCmdlineMax = CMDLINE_MAX_SIZE - 1): Uint8Array {
  const text = new TextEncoder().encode(cmdline);
  if (text.includes(0)) throw new BootError('the kernel command line contains a NUL character');
  const max = Math.min(CMDLINE_MAX_SIZE - 1, kernelCmdlineMax || CMDLINE_MAX_SIZE - 1);
  if (text.length > max) {
    throw new BootError(
      `the kernel command line is ${text.length} bytes; at most ${max} fit (${max + 1} with the terminating NUL); shorten it`,
    );
  }
  const out = new Uint8Array(text.length + 1);
  out.set(text);
  return out;
}

function writeE820(zp: Uint8Array, entries: readonly E820Entry[]): void {
  if (entries.length > E820_MAX_ENTRIES) throw new Error(`${entries.length} e820 entries; the zero page holds ${E820_MAX_ENTRIES}`);
  const table = bootParams.getBytes(zp, 'e820Table');
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  entries.forEach((e, i) => {
    const at = i * E820_ENTRY_SIZE;
    view.setBigUint64(at, BigInt(e.addr), true);
    view.setBigUint64(at + 8, BigInt(e.size), true);
    view.setUint32(at + 16, e.type, true);
  });
  bootParams.set(zp, 'e820Entries', entries.length);
}

type SplitField = 'cmdLinePtr' | 'extCmdLinePtr' | 'ramdiskImage' | 'extRamdiskImage' | 'ramdiskSize' | 'extRamdiskSize';

/** 64-bit values the header stores as a low u32 plus an ext_* high u32 elsewhere in boot_params. */
function setSplit(zp: Uint8Array, low: SplitField, high: SplitField, value: number): void {
  bootParams.set(zp, low, value % 0x1_0000_0000);
  bootParams.set(zp, high, Math.floor(value / 0x1_0000_0000));
}

function alignDown(value: number, alignment: number): number {
  return value - (value % alignment);
}

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

function mib(bytes: number): string {
  const m = bytes / 0x100000;
  return `${Number.isInteger(m) ? m : m.toFixed(1)} MiB`;
}
