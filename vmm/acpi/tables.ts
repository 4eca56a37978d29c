// Builds the ACPI tables the guest discovers its platform from: RSDP v2 -> XSDT -> {FADT -> DSDT, MADT}.
// Hardware-reduced ACPI (no legacy PM blocks, no SCI), like Firecracker: the MADT gives the CPUs and the
// IOAPIC, the DSDT gives COM1 and the virtio-mmio devices, the FADT's sleep registers give power-off.

import { asciiField } from '../boot/struct.js';
import type { GuestWrite } from '../boot/guest-write.js';
import {
  ACPI_SLEEP_CONTROL_PORT,
  ACPI_SLEEP_STATUS_PORT,
  ACPI_TABLES_END,
  ACPI_TABLES_START,
  IOAPIC_ADDR,
  IOAPIC_PIN_COUNT,
  LAPIC_ADDR,
  RSDP_ADDR,
} from '../layout.js';
import { S5_SLEEP_TYPE, dsdtBody, type VirtioMmioDeviceInfo } from './dsdt.js';
import {
  DSDT_REVISION,
  FADT_HW_REDUCED_ACPI,
  FADT_MINOR_REVISION,
  FADT_PWR_BUTTON,
  FADT_REVISION,
  FADT_SIZE,
  FADT_SLP_BUTTON,
  GAS_ACCESS_BYTE,
  GAS_SIZE,
  GAS_SPACE_SYSTEM_IO,
  IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT,
  IAPC_BOOT_ARCH_VGA_NOT_PRESENT,
  MADT_LOCAL_APIC_ENABLED,
  MADT_REVISION,
  MADT_TYPE_IO_APIC,
  MADT_TYPE_LOCAL_APIC,
  RSDP_SIZE,
  RSDP_V1_CHECKSUM_LENGTH,
  TABLE_HEADER_SIZE,
  XSDT_REVISION,
  fadt,
  genericAddress,
  madtHeader,
  madtIoApic,
  madtLocalApic,
  rsdp,
  tableHeader,
} from './layouts.js';

export type { VirtioMmioDeviceInfo } from './dsdt.js';

export const OEM_ID = 'LIFEBT';
export const OEM_TABLE_ID = 'LIFEBOAT';
export const CREATOR_ID = 'LFBT';
export const HYPERVISOR_VENDOR_ID = 'LIFEBOAT';
/** Tables start on 8-byte boundaries (the XSDT holds u64 pointers). */
const TABLE_ALIGNMENT = 8;
/**
 * The byte Linux writes to the sleep control port (ACPI_SLEEP_CONTROL_PORT) to power off:
 * SLP_TYP (5, from \_S5_) in bits 4:2 and SLP_EN (bit 5).
 */
export const ACPI_POWER_OFF_VALUE = (S5_SLEEP_TYPE << 2) | (1 << 5);
/** xAPIC ids and the MADT's processor uids are one byte; 0xFF is the broadcast id. */
export const MAX_VCPUS = 254;

/**
 * Deliberate defects for the VMM's negative tests of a guest (does it refuse a bad checksum, does it
 * cope with no devices). Never set outside tests.
 */
export interface AcpiTestFaultInjection {
  /** Add 1 to this table's checksum byte so its bytes no longer sum to 0. */
  readonly corruptChecksumOf?: 'rsdp' | 'xsdt' | 'fadt' | 'madt' | 'dsdt';
  /** Leave this table out of the XSDT (it is still written to memory, but nothing points to it). */
  readonly omitFromXsdt?: 'fadt' | 'madt';
  /** Build the DSDT without the virtio-mmio devices (COM1 stays). */
  readonly omitDsdtDevices?: boolean;
}

export interface AcpiTablesInput {
  readonly vcpus: number;
  readonly virtioDevices: readonly VirtioMmioDeviceInfo[];
  readonly testFaultInjection?: AcpiTestFaultInjection;
}

export interface AcpiTableInfo {
  readonly signature: string;
  readonly gpa: number;
  readonly length: number;
}

export interface AcpiTables {
  /** Everything to copy into guest memory, RSDP included. */
  readonly writes: GuestWrite[];
  readonly rsdpAddress: number;
  /** Where each table went (for logs and tests). */
  readonly tables: AcpiTableInfo[];
}

export function buildAcpiTables(input: AcpiTablesInput): AcpiTables {
  checkInput(input);
  const fault = input.testFaultInjection ?? {};
  const devices = fault.omitDsdtDevices ? [] : input.virtioDevices;

  // Sizes do not depend on addresses: lay the tables out first fit, then fill in the pointers.
  const dsdtBytes = buildDsdt(devices);
  const madtBytes = buildMadt(input.vcpus);
  const xsdtEntries = fault.omitFromXsdt ? 1 : 2;
  const xsdtSize = TABLE_HEADER_SIZE + 8 * xsdtEntries;
  let next = ACPI_TABLES_START;
  const place = (size: number) => {
    const gpa = alignUp(next, TABLE_ALIGNMENT);
    next = gpa + size;
    if (next > ACPI_TABLES_END) throw new Error(`ACPI tables need more than the ${ACPI_TABLES_END - ACPI_TABLES_START} bytes reserved for them`);
    return gpa;
  };
  const dsdtAddress = place(dsdtBytes.length);
  const fadtAddress = place(FADT_SIZE);
  const madtAddress = place(madtBytes.length);
  const xsdtAddress = place(xsdtSize);

  const fadtBytes = buildFadt(dsdtAddress);
  const xsdtBytes = buildXsdt(
    fault.omitFromXsdt === 'fadt' ? [madtAddress] : fault.omitFromXsdt === 'madt' ? [fadtAddress] : [fadtAddress, madtAddress],
  );
  const rsdpBytes = buildRsdp(xsdtAddress);

  if (fault.corruptChecksumOf === 'dsdt') breakChecksum(dsdtBytes, 9);
  if (fault.corruptChecksumOf === 'madt') breakChecksum(madtBytes, 9);
  if (fault.corruptChecksumOf === 'fadt') breakChecksum(fadtBytes, 9);
  if (fault.corruptChecksumOf === 'xsdt') breakChecksum(xsdtBytes, 9);
  if (fault.corruptChecksumOf === 'rsdp') breakChecksum(rsdpBytes, rsdp.offset('checksum'));

  return {
    writes: [
      { gpa: dsdtAddress, bytes: dsdtBytes },
      { gpa: fadtAddress, bytes: fadtBytes },
      { gpa: madtAddress, bytes: madtBytes },
      { gpa: xsdtAddress, bytes: xsdtBytes },
      { gpa: RSDP_ADDR, bytes: rsdpBytes },
    ],
    rsdpAddress: RSDP_ADDR,
    tables: [
      { signature: 'DSDT', gpa: dsdtAddress, length: dsdtBytes.length },
      { signature: 'FACP', gpa: fadtAddress, length: fadtBytes.length },
      { signature: 'APIC', gpa: madtAddress, length: madtBytes.length },
      { signature: 'XSDT', gpa: xsdtAddress, length: xsdtBytes.length },
      { signature: 'RSD PTR ', gpa: RSDP_ADDR, length: rsdpBytes.length },
    ],
  };
}

/** Sum of the bytes mod 256 (0 for a valid table). */
export function byteSum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return sum;
}

export function buildRsdp(xsdtAddress: number): Uint8Array {
  const out = new Uint8Array(RSDP_SIZE);
  rsdp.setBytes(out, 'signature', asciiField('RSD PTR ', 8));
  rsdp.setBytes(out, 'oemId', asciiField(OEM_ID, 6));
  rsdp.set(out, 'revision', 2);
  rsdp.set(out, 'rsdtAddress', 0);
  rsdp.set(out, 'length', RSDP_SIZE);
  rsdp.set(out, 'xsdtAddress', xsdtAddress);
  rsdp.set(out, 'checksum', checksumFor(out.subarray(0, RSDP_V1_CHECKSUM_LENGTH)));
  rsdp.set(out, 'extendedChecksum', checksumFor(out));
  return out;
}

export function buildXsdt(entries: readonly number[]): Uint8Array {
  const out = newTable('XSDT', XSDT_REVISION, TABLE_HEADER_SIZE + 8 * entries.length);
  const view = new DataView(out.buffer);
  entries.forEach((address, i) => view.setBigUint64(TABLE_HEADER_SIZE + 8 * i, BigInt(address), true));
  return sealTable(out);
}

export function buildFadt(dsdtAddress: number): Uint8Array {
  const out = newTable('FACP', FADT_REVISION, FADT_SIZE);
  fadt.set(out, 'dsdt', 0); // X_DSDT only
  fadt.set(out, 'xDsdt', dsdtAddress);
  fadt.set(out, 'iapcBootArch', IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT);
  fadt.set(out, 'flags', FADT_HW_REDUCED_ACPI | FADT_PWR_BUTTON | FADT_SLP_BUTTON);
  fadt.set(out, 'minorRevision', FADT_MINOR_REVISION);
  fadt.setBytes(out, 'sleepControlReg', ioPortGas(ACPI_SLEEP_CONTROL_PORT));
  fadt.setBytes(out, 'sleepStatusReg', ioPortGas(ACPI_SLEEP_STATUS_PORT));
  fadt.setBytes(out, 'hypervisorVendorId', asciiField(HYPERVISOR_VENDOR_ID, 8));
  return sealTable(out);
}

export function buildMadt(vcpus: number): Uint8Array {
  const IOAPIC_ENTRY = 12;
  const LAPIC_ENTRY = 8;
  const out = newTable('APIC', MADT_REVISION, madtHeader.size + IOAPIC_ENTRY + LAPIC_ENTRY * vcpus);
  madtHeader.set(out, 'localApicAddress', LAPIC_ADDR);
  madtHeader.set(out, 'flags', 0); // no dual 8259 (PCAT_COMPAT clear)
  let at = madtHeader.size;
  const ioapic = out.subarray(at, at + IOAPIC_ENTRY);
  madtIoApic.set(ioapic, 'type', MADT_TYPE_IO_APIC);
  madtIoApic.set(ioapic, 'length', IOAPIC_ENTRY);
  madtIoApic.set(ioapic, 'ioApicId', 0);
  madtIoApic.set(ioapic, 'address', IOAPIC_ADDR);
  madtIoApic.set(ioapic, 'gsiBase', 0);
  at += IOAPIC_ENTRY;
  for (let i = 0; i < vcpus; i++, at += LAPIC_ENTRY) {
    const lapic = out.subarray(at, at + LAPIC_ENTRY);
    madtLocalApic.set(lapic, 'type', MADT_TYPE_LOCAL_APIC);
    madtLocalApic.set(lapic, 'length', LAPIC_ENTRY);
    madtLocalApic.set(lapic, 'processorUid', i);
    madtLocalApic.set(lapic, 'apicId', i);
    madtLocalApic.set(lapic, 'flags', MADT_LOCAL_APIC_ENABLED);
  }
  return sealTable(out);
}

export function buildDsdt(virtioDevices: readonly VirtioMmioDeviceInfo[]): Uint8Array {
  const body = dsdtBody(virtioDevices);
  const out = newTable('DSDT', DSDT_REVISION, TABLE_HEADER_SIZE + body.length);
  out.set(body, TABLE_HEADER_SIZE);
  return sealTable(out);
}

function newTable(signature: string, revision: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  tableHeader.setBytes(out, 'signature', asciiField(signature, 4));
  tableHeader.set(out, 'length', length);
  tableHeader.set(out, 'revision', revision);
  tableHeader.setBytes(out, 'oemId', asciiField(OEM_ID, 6));
  tableHeader.setBytes(out, 'oemTableId', asciiField(OEM_TABLE_ID, 8));
  tableHeader.set(out, 'oemRevision', 1);
  tableHeader.setBytes(out, 'creatorId', asciiField(CREATOR_ID, 4));
  tableHeader.set(out, 'creatorRevision', 1);
  return out;
}

function sealTable(table: Uint8Array): Uint8Array {
  tableHeader.set(table, 'checksum', 0);
  tableHeader.set(table, 'checksum', checksumFor(table));
  return table;
}

/** The byte that makes `bytes` (with its checksum byte still 0) sum to 0. */
function checksumFor(bytes: Uint8Array): number {
  return (0x100 - byteSum(bytes)) & 0xff;
}

function breakChecksum(bytes: Uint8Array, checksumOffset: number): void {
  bytes[checksumOffset] = (bytes[checksumOffset]! + 1) & 0xff;
}

function ioPortGas(port: number): Uint8Array {
  const gas = new Uint8Array(GAS_SIZE);
  genericAddress.set(gas, 'addressSpaceId', GAS_SPACE_SYSTEM_IO);
  genericAddress.set(gas, 'registerBitWidth', 8);
  genericAddress.set(gas, 'registerBitOffset', 0);
  genericAddress.set(gas, 'accessSize', GAS_ACCESS_BYTE);
  genericAddress.set(gas, 'address', port);
  return gas;
}

function checkInput(input: AcpiTablesInput): void {
  if (!Number.isInteger(input.vcpus) || input.vcpus < 1 || input.vcpus > MAX_VCPUS) {
    throw new Error(`vcpus must be 1..${MAX_VCPUS}, got ${input.vcpus}`);
  }
  input.virtioDevices.forEach((d, i) => {
    if (d.gsi < 0 || d.gsi >= IOAPIC_PIN_COUNT) throw new Error(`virtio device ${i}: GSI ${d.gsi} is not an IOAPIC pin (0..${IOAPIC_PIN_COUNT - 1})`);
    if (d.base < 0 || d.size <= 0 || d.base + d.size > 0x1_0000_0000) throw new Error(`virtio device ${i}: window 0x${d.base.toString(16)}+0x${d.size.toString(16)} is not below 4 GiB`);
  });
}

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}
