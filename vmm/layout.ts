// The one home of the guest physical layout, port numbers and GSIs (see docs/guest.md for the
// guest's side of this contract). Linux's x86-64 boot protocol and Firecracker's layout.

export const PAGE_SIZE = 4096;

export const GDT_ADDR = 0x500;
export const IDT_ADDR = 0x520;
export const ZERO_PAGE_ADDR = 0x7000;
export const BOOT_STACK_POINTER = 0x8ff0;
export const PML4_ADDR = 0x9000;
export const PDPT_ADDR = 0xa000;
export const PD_ADDR = 0xb000;
export const CMDLINE_ADDR = 0x20000;
export const CMDLINE_MAX_SIZE = 2048;

/** End of conventional low RAM; [EBDA_START, HIGH_MEMORY_START) is reserved (ACPI tables live here). */
export const EBDA_START = 0x9fc00;
export const ACPI_TABLES_START = 0x9fc00;
export const ACPI_TABLES_END = 0xe0000;
export const RSDP_ADDR = 0xe0000;
export const HIGH_MEMORY_START = 0x100000;
/** The protected-mode kernel is loaded at HIGH_MEMORY_START; its 64-bit entry is this far in. */
export const KERNEL_64BIT_ENTRY_OFFSET = 0x200;

/** A 1 GiB hole below 4 GiB for MMIO devices; RAM above it is split around the hole. */
export const MMIO_HOLE_START = 0xc0000000;
/**
 * Most guest memory a VM can have: guest memory is one memfd that every thread sees as one typed-array
 * view, and Node 20's typed arrays stop short of 4 GiB (2^32 - 1 elements); above the MMIO hole memory
 * also comes in 2 MiB steps.
 */
export const MAX_MEMORY_MIB = 4094;
export const MMIO_HOLE_SIZE = 0x40000000;
export const VIRTIO_MMIO_BASE = 0xc0001000;
export const VIRTIO_MMIO_STRIDE = 0x1000;
export const VIRTIO_MMIO_SIZE = 0x1000;
/** GSIs handed to virtio-mmio devices, in order (IOAPIC pins 5..23). */
export const VIRTIO_FIRST_GSI = 5;
export const VIRTIO_LAST_GSI = 23;

export const IOAPIC_ADDR = 0xfec00000;
export const LAPIC_ADDR = 0xfee00000;
export const KVM_TSS_ADDR = 0xfffbd000;

export const COM1_PORT = 0x3f8;
export const COM1_PORT_COUNT = 8;
export const COM1_GSI = 4;
export const I8042_DATA_PORT = 0x60;
export const I8042_COMMAND_PORT = 0x64;
/** 0xFE written to the i8042 command port resets the machine (Linux `reboot=k`). */
export const I8042_RESET_COMMAND = 0xfe;
/**
 * Exit-status port: a 32-bit OUT of STATUS powers the machine off and the VMM exits with STATUS.
 * Same port and width as QEMU's `isa-debug-exit,iobase=0xf4,iosize=0x04` (QEMU exits with STATUS*2+1).
 */
export const EXIT_STATUS_PORT = 0xf4;
export const EXIT_STATUS_PORT_COUNT = 4;

export function virtioMmioBase(index: number): number {
  return VIRTIO_MMIO_BASE + VIRTIO_MMIO_STRIDE * index;
}

export function virtioGsi(index: number): number {
  const gsi = VIRTIO_FIRST_GSI + index;
  if (gsi > VIRTIO_LAST_GSI) throw new Error(`too many virtio devices: at most ${VIRTIO_LAST_GSI - VIRTIO_FIRST_GSI + 1}`);
  return gsi;
}

/**
 * ACPI hardware-reduced sleep registers (FADT SLEEP_CONTROL_REG / SLEEP_STATUS_REG), one byte each.
 * Linux's `poweroff` writes ACPI_POWER_OFF_VALUE (vmm/acpi/tables.ts) to the control port.
 */
export const ACPI_SLEEP_CONTROL_PORT = 0x600;
export const ACPI_SLEEP_STATUS_PORT = 0x601;
/** The IOAPIC's input pins: GSIs 0..23. */
export const IOAPIC_PIN_COUNT = 24;
