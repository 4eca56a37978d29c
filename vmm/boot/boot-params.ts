// struct boot_params (the "zero page", 4096 bytes) of Linux's x86 boot protocol
// (Documentation/arch/x86/boot.rst, arch/x86/include/uapi/asm/bootparam.h). The setup header sits at
// the same offset (0x1F1) in a bzImage file and in boot_params, so this one table serves both.

import { StructLayout } from './struct.js';

export const BOOT_PARAMS_SIZE = 4096;
export const SETUP_HEADER_OFFSET = 0x1f1;
/** sizeof(struct setup_header) up to and including kernel_info_offset (protocol 2.15). */
export const SETUP_HEADER_END = 0x26c;
export const E820_ENTRY_SIZE = 20;
/** E820_MAX_ENTRIES_ZEROPAGE */
export const E820_MAX_ENTRIES = 128;

export const BOOT_FLAG_MAGIC = 0xaa55;
/** "HdrS" read as a little-endian u32. */
export const SETUP_HEADER_MAGIC = 0x53726448;
/** type_of_loader 0xFF: "undefined" boot loader (no assigned id). */
export const TYPE_OF_LOADER_UNDEFINED = 0xff;

export const LOADFLAG_LOADED_HIGH = 1 << 0;
export const XLF_KERNEL_64 = 1 << 0;
export const XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1;

export const E820_RAM = 1;
export const E820_RESERVED = 2;

export const bootParams = new StructLayout('boot_params', BOOT_PARAMS_SIZE, {
  acpiRsdpAddr: { offset: 0x070, type: 'u64' },
  extRamdiskImage: { offset: 0x0c0, type: 'u32' },
  extRamdiskSize: { offset: 0x0c4, type: 'u32' },
  extCmdLinePtr: { offset: 0x0c8, type: 'u32' },
  e820Entries: { offset: 0x1e8, type: 'u8' },
  /** Must stay 0: a non-zero sentinel tells the kernel the loader copied junk past the header. */
  sentinel: { offset: 0x1ef, type: 'u8' },
  setupHeader: { offset: SETUP_HEADER_OFFSET, type: 'bytes', length: SETUP_HEADER_END - SETUP_HEADER_OFFSET },
  // struct setup_header
  setupSects: { offset: 0x1f1, type: 'u8' },
  syssize: { offset: 0x1f4, type: 'u32' },
  vidMode: { offset: 0x1fa, type: 'u16' },
  bootFlag: { offset: 0x1fe, type: 'u16' },
  jump: { offset: 0x200, type: 'u16' },
  header: { offset: 0x202, type: 'u32' },
  version: { offset: 0x206, type: 'u16' },
  /** Offset of a NUL-terminated version string, minus 0x200 (0 when absent). */
  kernelVersion: { offset: 0x20e, type: 'u16' },
  typeOfLoader: { offset: 0x210, type: 'u8' },
  loadflags: { offset: 0x211, type: 'u8' },
  code32Start: { offset: 0x214, type: 'u32' },
  ramdiskImage: { offset: 0x218, type: 'u32' },
  ramdiskSize: { offset: 0x21c, type: 'u32' },
  heapEndPtr: { offset: 0x224, type: 'u16' },
  cmdLinePtr: { offset: 0x228, type: 'u32' },
  initrdAddrMax: { offset: 0x22c, type: 'u32' },
  kernelAlignment: { offset: 0x230, type: 'u32' },
  relocatableKernel: { offset: 0x234, type: 'u8' },
  minAlignment: { offset: 0x235, type: 'u8' },
  xloadflags: { offset: 0x236, type: 'u16' },
  cmdlineSize: { offset: 0x238, type: 'u32' },
  hardwareSubarch: { offset: 0x23c, type: 'u32' },
  payloadOffset: { offset: 0x248, type: 'u32' },
  payloadLength: { offset: 0x24c, type: 'u32' },
  setupData: { offset: 0x250, type: 'u64' },
  prefAddress: { offset: 0x258, type: 'u64' },
  initSize: { offset: 0x260, type: 'u32' },
  handoverOffset: { offset: 0x264, type: 'u32' },
  kernelInfoOffset: { offset: 0x268, type: 'u32' },
  // end of struct setup_header
  e820Table: { offset: 0x2d0, type: 'bytes', length: E820_MAX_ENTRIES * E820_ENTRY_SIZE },
});
