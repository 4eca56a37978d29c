/* What the loader told us: memory map, command line, ACPI RSDP. Copied out of the zero page
 * (Linux boot protocol) before anything can overwrite low memory. */
#pragma once
#include "types.h"

#define E820_MAX 128
#define E820_RAM 1
#define E820_RESERVED 2
#define E820_ACPI 3
#define E820_NVS 4
#define CMDLINE_MAX 4096

struct e820_entry {
  u64 addr, size;
  u32 type;
} PACKED;

struct boot_info {
  struct e820_entry e820[E820_MAX];
  u32 e820_count;
  char cmdline[CMDLINE_MAX];
  u64 rsdp;            /* 0 when the loader gave none: then we scan like Linux does */
  bool from_pvh;       /* entered through the PVH note (QEMU) rather than the 64-bit boot protocol */
  u64 entry_tsc;
};

extern struct boot_info boot;

/* Returns an error message, or NULL. */
const char *boot_parse_zero_page(const u8 *zero_page);
/* Value of `key=` on the command line (quotes removed) copied into out; false when absent. */
bool cmdline_get(const char *key, char *out, usize out_size);
u64 e820_ram_bytes(void);
