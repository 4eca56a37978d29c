// Byte layouts of the ACPI structures we write (ACPI 6.5 chapter 5.2): RSDP, the common table header,
// FADT, MADT and its entries, and the Generic Address Structure. One declared table each.

import { StructLayout } from '../boot/struct.js';

export const RSDP_SIZE = 36;
/** Bytes of the RSDP covered by the ACPI 1.0 checksum. */
export const RSDP_V1_CHECKSUM_LENGTH = 20;

export const rsdp = new StructLayout('RSDP', RSDP_SIZE, {
  signature: { offset: 0, type: 'bytes', length: 8 },
  checksum: { offset: 8, type: 'u8' },
  oemId: { offset: 9, type: 'bytes', length: 6 },
  revision: { offset: 15, type: 'u8' },
  rsdtAddress: { offset: 16, type: 'u32' },
  length: { offset: 20, type: 'u32' },
  xsdtAddress: { offset: 24, type: 'u64' },
  extendedChecksum: { offset: 32, type: 'u8' },
});

export const TABLE_HEADER_SIZE = 36;

export const tableHeader = new StructLayout('ACPI table header', TABLE_HEADER_SIZE, {
  signature: { offset: 0, type: 'bytes', length: 4 },
  length: { offset: 4, type: 'u32' },
  revision: { offset: 8, type: 'u8' },
  checksum: { offset: 9, type: 'u8' },
  oemId: { offset: 10, type: 'bytes', length: 6 },
  oemTableId: { offset: 16, type: 'bytes', length: 8 },
  oemRevision: { offset: 24, type: 'u32' },
  creatorId: { offset: 28, type: 'bytes', length: 4 },
  creatorRevision: { offset: 32, type: 'u32' },
});

export const GAS_SIZE = 12;

/** Generic Address Structure. */
export const genericAddress = new StructLayout('GAS', GAS_SIZE, {
  addressSpaceId: { offset: 0, type: 'u8' },
  registerBitWidth: { offset: 1, type: 'u8' },
  registerBitOffset: { offset: 2, type: 'u8' },
  accessSize: { offset: 3, type: 'u8' },
  address: { offset: 4, type: 'u64' },
});
export const GAS_SPACE_SYSTEM_IO = 1;
export const GAS_ACCESS_BYTE = 1;

export const FADT_SIZE = 276;
export const FADT_REVISION = 6;
export const FADT_MINOR_REVISION = 5;

/** The fields we set; all others stay zero (no legacy PM blocks in a hardware-reduced platform). */
export const fadt = new StructLayout('FADT', FADT_SIZE, {
  firmwareCtrl: { offset: 36, type: 'u32' },
  dsdt: { offset: 40, type: 'u32' },
  preferredPmProfile: { offset: 45, type: 'u8' },
  sciInt: { offset: 46, type: 'u16' },
  iapcBootArch: { offset: 109, type: 'u16' },
  flags: { offset: 112, type: 'u32' },
  resetReg: { offset: 116, type: 'bytes', length: GAS_SIZE },
  resetValue: { offset: 128, type: 'u8' },
  armBootArch: { offset: 129, type: 'u16' },
  minorRevision: { offset: 131, type: 'u8' },
  xFirmwareCtrl: { offset: 132, type: 'u64' },
  xDsdt: { offset: 140, type: 'u64' },
  sleepControlReg: { offset: 244, type: 'bytes', length: GAS_SIZE },
  sleepStatusReg: { offset: 256, type: 'bytes', length: GAS_SIZE },
  hypervisorVendorId: { offset: 268, type: 'bytes', length: 8 },
});

/** FADT flags */
export const FADT_PWR_BUTTON = 1 << 4;
export const FADT_SLP_BUTTON = 1 << 5;
export const FADT_HW_REDUCED_ACPI = 1 << 20;

/** IAPC_BOOT_ARCH bits. We leave LEGACY_DEVICES (0) and 8042 (1) clear so Linux skips the i8042 probe. */
export const IAPC_BOOT_ARCH_8042 = 1 << 1;
export const IAPC_BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2;
export const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT = 1 << 5;

export const MADT_REVISION = 6;

export const madtHeader = new StructLayout('MADT', TABLE_HEADER_SIZE + 8, {
  localApicAddress: { offset: 36, type: 'u32' },
  flags: { offset: 40, type: 'u32' },
});

export const MADT_TYPE_LOCAL_APIC = 0;
export const MADT_TYPE_IO_APIC = 1;
export const MADT_LOCAL_APIC_ENABLED = 1;

export const madtLocalApic = new StructLayout('MADT Processor Local APIC', 8, {
  type: { offset: 0, type: 'u8' },
  length: { offset: 1, type: 'u8' },
  processorUid: { offset: 2, type: 'u8' },
  apicId: { offset: 3, type: 'u8' },
  flags: { offset: 4, type: 'u32' },
});

export const madtIoApic = new StructLayout('MADT I/O APIC', 12, {
  type: { offset: 0, type: 'u8' },
  length: { offset: 1, type: 'u8' },
  ioApicId: { offset: 2, type: 'u8' },
  address: { offset: 4, type: 'u32' },
  gsiBase: { offset: 8, type: 'u32' },
});

export const XSDT_REVISION = 1;
export const DSDT_REVISION = 2;
