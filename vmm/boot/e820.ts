// The guest's RAM ranges and the e820 memory map that describes them to the guest.

import {
  ACPI_TABLES_START,
  HIGH_MEMORY_START,
  MMIO_HOLE_SIZE,
  MMIO_HOLE_START,
  PAGE_SIZE,
} from '../layout.js';
import { E820_RAM, E820_RESERVED } from './boot-params.js';
import { BootError } from './errors.js';

export interface E820Entry {
  readonly addr: number;
  readonly size: number;
  /** E820_RAM (1) or E820_RESERVED (2). */
  readonly type: number;
}

export interface RamRange {
  /** Guest physical address. */
  readonly gpa: number;
  readonly size: number;
}

const FOUR_GIB = MMIO_HOLE_START + MMIO_HOLE_SIZE;
/** Smallest guest that can hold the low-memory boot structures and a kernel at 1 MiB. */
export const MIN_MEMORY_SIZE = 2 * HIGH_MEMORY_START;

/**
 * Where guest RAM lives for `memorySize` bytes: one range from 0 up to the MMIO hole, and the rest
 * (if any) from 4 GiB. These are the KVM memory slots.
 */
export function guestRamRanges(memorySize: number): RamRange[] {
  checkMemorySize(memorySize);
  const low = Math.min(memorySize, MMIO_HOLE_START);
  const ranges: RamRange[] = [{ gpa: 0, size: low }];
  if (memorySize > MMIO_HOLE_START) ranges.push({ gpa: FOUR_GIB, size: memorySize - MMIO_HOLE_START });
  return ranges;
}

/** End (exclusive) of the RAM below the MMIO hole. */
export function lowRamEnd(memorySize: number): number {
  return Math.min(memorySize, MMIO_HOLE_START);
}

/**
 * RAM [0, 0x9FC00), reserved [0x9FC00, 1 MiB) (ACPI tables, RSDP), RAM [1 MiB, min(end, 3 GiB)), and the
 * RAM beyond 3 GiB placed from 4 GiB.
 */
export function buildE820(memorySize: number): E820Entry[] {
  const ranges = guestRamRanges(memorySize);
  const entries: E820Entry[] = [
    { addr: 0, size: ACPI_TABLES_START, type: E820_RAM },
    { addr: ACPI_TABLES_START, size: HIGH_MEMORY_START - ACPI_TABLES_START, type: E820_RESERVED },
    { addr: HIGH_MEMORY_START, size: ranges[0]!.size - HIGH_MEMORY_START, type: E820_RAM },
  ];
  if (ranges[1]) entries.push({ addr: ranges[1].gpa, size: ranges[1].size, type: E820_RAM });
  return entries;
}

function checkMemorySize(memorySize: number): void {
  if (!Number.isSafeInteger(memorySize) || memorySize % PAGE_SIZE !== 0) {
    throw new BootError(`guest memory size ${memorySize} is not a whole number of 4 KiB pages`);
  }
  if (memorySize < MIN_MEMORY_SIZE) {
    throw new BootError(`guest memory of ${memorySize} bytes is too small: at least ${MIN_MEMORY_SIZE / 0x100000} MiB`);
  }
}
