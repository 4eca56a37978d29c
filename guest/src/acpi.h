/* Platform discovery from ACPI, the way Linux does it: RSDP -> XSDT/RSDT -> FADT (-> DSDT), MADT,
 * SSDTs; devices from the DSDT/SSDT AML (see aml.c). */
#pragma once
#include "types.h"
#include "layout.h"

#define MAX_IOAPICS 8
#define MAX_OVERRIDES 16
#define MAX_MMIO_DEVICES 32

struct ioapic_info { u32 id; u64 addr; u32 gsi_base; };
struct irq_override { u8 source; u32 gsi; u16 flags; };

/* An interrupt as a device's _CRS describes it, already translated to a GSI. */
struct irq_desc { bool present; u32 gsi; bool level, active_low; };

struct acpi_device {
  char name[5];        /* the AML NameSeg, for messages */
  char hid[9];         /* _HID as a string ("LNRO0005", "PNP0501") */
  u64 mmio_base, mmio_size;
  u16 io_base;
  struct irq_desc irq;
};

struct platform {
  u64 rsdp_addr;
  char oem_id[7];
  u32 acpi_revision;
  u64 lapic_addr;
  u32 cpu_count;
  u32 apic_ids[MAX_CPUS];
  u32 ioapic_count;
  struct ioapic_info ioapics[MAX_IOAPICS];
  u32 override_count;
  struct irq_override overrides[MAX_OVERRIDES];
  bool com1_found;
  struct acpi_device com1;
  u32 virtio_count;
  struct acpi_device virtio[MAX_MMIO_DEVICES];
  /* ACPI power-off for hardware-reduced platforms (FADT sleep control register + \_S5). */
  bool s5_found;
  u8 s5_slp_typ;
  u8 sleep_ctl_space; /* 0 memory, 1 I/O */
  u64 sleep_ctl_addr;
  u32 aml_skipped;    /* AML objects the walker could not parse (reported, not fatal) */
};

extern struct platform platform;

/* Parses every table; on failure writes a one-line message to err and returns false. */
bool acpi_init(u64 rsdp_hint, char *err, usize err_size);
/* Translates an ISA IRQ (small IRQ descriptor) to a GSI using MADT interrupt source overrides. */
struct irq_desc acpi_isa_irq(u8 irq);

/* aml.c: walks one DSDT/SSDT body, filling platform.com1 / platform.virtio / platform.s5_*. */
void aml_walk_table(const u8 *aml, usize len);
