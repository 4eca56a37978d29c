#include "boot.h"
#include "layout.h"
#include "lib.h"

/* struct boot_params (Linux arch/x86/include/uapi/asm/bootparam.h): the offsets we read or write. */
#define BP_ACPI_RSDP_ADDR 0x070 /* u64 */
#define BP_EXT_CMD_LINE_PTR 0x0C8 /* u32: high 32 bits of the command line address */
#define BP_E820_ENTRIES 0x1E8   /* u8 */
#define BP_SETUP_SECTS 0x1F1    /* start of setup_header */
#define BP_BOOT_FLAG 0x1FE      /* u16 0xAA55 */
#define BP_HEADER_MAGIC 0x202   /* "HdrS" */
#define BP_VERSION 0x206        /* u16 */
#define BP_TYPE_OF_LOADER 0x210
#define BP_CMD_LINE_PTR 0x228   /* u32 */
#define BP_CMDLINE_SIZE 0x238   /* u32 */
#define BP_E820_TABLE 0x2D0     /* E820_MAX entries of 20 bytes */
#define BP_SIZE 4096
#define LOADER_XEN_PVH 0x90 /* type_of_loader Linux's PVH path uses: "Xen" (9 << 4) */

/* hvm_start_info (Xen public/arch-x86/hvm/start_info.h). */
#define PVH_MAGIC 0x336EC578u
struct pvh_start_info {
  u32 magic, version, flags, nr_modules;
  u64 modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
  u32 memmap_entries, reserved;
} PACKED;
struct pvh_memmap_entry {
  u64 addr, size;
  u32 type, reserved;
} PACKED;

struct boot_info boot;

static u16 rd16(const u8 *p) { return (u16)(p[0] | p[1] << 8); }
static u32 rd32(const u8 *p) { return (u32)rd16(p) | (u32)rd16(p + 2) << 16; }
static u64 rd64(const u8 *p) { return (u64)rd32(p) | (u64)rd32(p + 4) << 32; }
static void wr16(u8 *p, u16 v) { p[0] = (u8)v, p[1] = (u8)(v >> 8); }
static void wr32(u8 *p, u32 v) { wr16(p, (u16)v), wr16(p + 2, (u16)(v >> 16)); }
static void wr64(u8 *p, u64 v) { wr32(p, (u32)v), wr32(p + 4, (u32)(v >> 32)); }

extern u8 pvh_boot_params[];

/* Runs on the PVH scratch stack before .bss is cleared: touches nothing but pvh_boot_params. Builds
 * the zero page a Linux loader would have built, from Xen's hvm_start_info. */
u8 *pvh_build_boot_params(u32 start_info_addr) {
  const struct pvh_start_info *si = (const struct pvh_start_info *)(uptr)start_info_addr;
  u8 *bp = pvh_boot_params;
  for (usize i = 0; i < BP_SIZE; i++) bp[i] = 0;
  wr16(bp + BP_BOOT_FLAG, 0xAA55);
  wr32(bp + BP_HEADER_MAGIC, 0x53726448);
  wr16(bp + BP_VERSION, 0x020F);
  bp[BP_TYPE_OF_LOADER] = LOADER_XEN_PVH;
  if (si->magic != PVH_MAGIC) return bp; /* kernel_main reports the empty memory map */
  wr32(bp + BP_CMD_LINE_PTR, (u32)si->cmdline_paddr);
  wr32(bp + BP_EXT_CMD_LINE_PTR, (u32)(si->cmdline_paddr >> 32));
  wr64(bp + BP_ACPI_RSDP_ADDR, si->rsdp_paddr);
  u32 n = 0;
  if (si->version >= 1 && si->memmap_paddr) {
    const struct pvh_memmap_entry *m = (const struct pvh_memmap_entry *)si->memmap_paddr;
    for (u32 i = 0; i < si->memmap_entries && n < E820_MAX; i++, n++) {
      u8 *e = bp + BP_E820_TABLE + 20 * n;
      wr64(e, m[i].addr);
      wr64(e + 8, m[i].size);
      wr32(e + 16, m[i].type);
    }
  }
  bp[BP_E820_ENTRIES] = (u8)n;
  return bp;
}

const char *boot_parse_zero_page(const u8 *zp) {
  if (rd16(zp + BP_BOOT_FLAG) != 0xAA55 || rd32(zp + BP_HEADER_MAGIC) != 0x53726448)
    return "the zero page has no setup header (boot_flag 0xAA55, \"HdrS\"): enter through the Linux 64-bit boot protocol with RSI = boot_params";
  boot.from_pvh = zp[BP_TYPE_OF_LOADER] == LOADER_XEN_PVH;
  boot.rsdp = rd64(zp + BP_ACPI_RSDP_ADDR);
  u32 n = zp[BP_E820_ENTRIES];
  if (n > E820_MAX) n = E820_MAX;
  for (u32 i = 0; i < n; i++) {
    const u8 *e = zp + BP_E820_TABLE + 20 * i;
    boot.e820[i].addr = rd64(e);
    boot.e820[i].size = rd64(e + 8);
    boot.e820[i].type = rd32(e + 16);
  }
  boot.e820_count = n;
  u64 cmd = rd32(zp + BP_CMD_LINE_PTR) | (u64)rd32(zp + BP_EXT_CMD_LINE_PTR) << 32;
  if (cmd) {
    const char *s = (const char *)cmd;
    usize i = 0;
    for (; i + 1 < CMDLINE_MAX && s[i]; i++) boot.cmdline[i] = s[i];
    boot.cmdline[i] = 0;
  }
  if (!n) return "the loader's memory map (e820) is empty";
  return NULL;
}

/* Linux-style parameters: key=value or key="value with spaces"; a quote may also open before the key. */
bool cmdline_get(const char *key, char *out, usize out_size) {
  usize klen = strlen(key);
  const char *p = boot.cmdline;
  while (*p) {
    while (*p == ' ' || *p == '\t' || *p == '\n') p++;
    if (!*p) break;
    bool quoted_param = *p == '"';
    if (quoted_param) p++;
    const char *param = p;
    bool in_quote = quoted_param;
    const char *end = p;
    while (*end && (in_quote || (*end != ' ' && *end != '\t' && *end != '\n'))) {
      if (*end == '"') in_quote = !in_quote;
      end++;
    }
    if ((usize)(end - param) > klen && strncmp(param, key, klen) == 0 && param[klen] == '=') {
      usize o = 0;
      for (const char *v = param + klen + 1; v < end && o + 1 < out_size; v++)
        if (*v != '"') out[o++] = *v;
      out[o] = 0;
      return true;
    }
    p = end;
  }
  return false;
}

u64 e820_ram_bytes(void) {
  u64 total = 0;
  for (u32 i = 0; i < boot.e820_count; i++)
    if (boot.e820[i].type == E820_RAM) total += boot.e820[i].size;
  return total;
}
