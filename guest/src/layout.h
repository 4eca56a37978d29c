/* The guest's one home for ports, vectors, selectors and exit statuses (the VMM's side of the same
 * contract is vmm/layout.ts; docs/guest.md describes both). */
#pragma once

#define KERNEL_LOAD_ADDR 0x100000UL /* where both entries expect the image (bzImage payload, ELF) */
#define ENTRY64_OFFSET 0x200        /* Linux boot protocol: 64-bit entry = payload + 0x200 */

#define EXIT_STATUS_PORT 0xF4 /* 32-bit OUT of STATUS powers off (QEMU isa-debug-exit: STATUS*2+1) */
#define I8042_COMMAND_PORT 0x64
#define I8042_RESET_COMMAND 0xFE
#define COM1_DEFAULT_PORT 0x3F8
#define COM1_DEFAULT_IRQ 4
#define PIC1_DATA_PORT 0x21
#define PIC2_DATA_PORT 0xA1

/* GDT selectors, identical in the kernel GDT and the AP trampoline GDT. */
#define SEL_CODE64 0x08
#define SEL_DATA 0x10
#define SEL_CODE32 0x18
#define SEL_USER_DATA 0x20
#define SEL_USER_CODE64 0x28
#define SEL_TSS_BASE 0x30
#define RPL_USER 3

/* Interrupt vectors. */
#define VEC_TIMER 0x20
#define VEC_SERIAL 0x21
#define VEC_VIRTIO_FIRST 0x30 /* one vector per virtio device, in discovery order */
#define VEC_VIRTIO_LAST 0x4F
#define VEC_PIC_BASE 0xE0 /* the legacy 8259s are remapped here and masked */
#define VEC_WAKE 0xF0     /* IPI that wakes an idle AP to look for work */
#define VEC_SPURIOUS 0xFF

/* Exit statuses (kept below 128 so QEMU's STATUS*2+1 fits its 8-bit exit code). */
#define STATUS_OK 0
#define STATUS_FAILED 1
#define STATUS_USAGE 2
#define STATUS_PLATFORM 3   /* discovery failed at boot: bad ACPI table, no RAM, ... */
#define STATUS_PANIC 4      /* CPU exception in the guest */
#define STATUS_INTERRUPTED 5 /* Ctrl-C stopped a command that normally ends by itself */
#define STATUS_UNKNOWN_COMMAND 127

#define USER_STACK_SIZE (64UL << 10) /* aligned to its size: struct cpu_local sits at its base */
#define KERNEL_STACK_SIZE (16UL << 10)
#define TICK_HZ 100     /* LAPIC timer interrupt rate on the BSP */
#define COUNTER_HZ 10   /* `counter` prints this many lines per second */
#define MAX_CPUS 64
#define MAX_DISKS 16
#define PAGE_SIZE 4096UL
#define SECTOR_SIZE 512UL
