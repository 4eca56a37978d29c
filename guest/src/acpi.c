#include "acpi.h"
#include "lib.h"

struct platform platform;

struct sdt_header {
  char signature[4];
  u32 length;
  u8 revision, checksum;
  char oem_id[6], oem_table_id[8];
  u32 oem_revision, creator_id, creator_revision;
} PACKED;
STATIC_ASSERT(sizeof(struct sdt_header) == 36, "ACPI header is 36 bytes");

/* RSDP (ACPI 6.x 5.2.5.3). */
#define RSDP_CHECKSUM_LEN 20
#define RSDP_REVISION 15
#define RSDP_RSDT 16
#define RSDP_LENGTH 20
#define RSDP_XSDT 24
#define RSDP_V2_LEN 36
/* FADT offsets. */
#define FADT_DSDT 40
#define FADT_FLAGS 112
#define FADT_X_DSDT 140
#define FADT_SLEEP_CONTROL 244 /* Generic Address Structure, 12 bytes */
#define FADT_HW_REDUCED (1u << 20)
/* MADT. */
#define MADT_LAPIC_ADDR 36
#define MADT_ENTRIES 44

static u8 sum_bytes(const u8 *p, usize n) {
  u8 s = 0;
  while (n--) s = (u8)(s + *p++);
  return s;
}
static u32 rd32(const u8 *p) { return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }
static u64 rd64(const u8 *p) { return rd32(p) | (u64)rd32(p + 4) << 32; }

static bool fail(char *err, usize n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, n, fmt, ap);
  va_end(ap);
  return false;
}

static bool rsdp_valid_at(u64 addr) {
  const u8 *p = (const u8 *)addr;
  return memcmp(p, "RSD PTR ", 8) == 0 && sum_bytes(p, RSDP_CHECKSUM_LEN) == 0;
}

/* What Linux does without a loader-supplied address: the first KiB of the EBDA, then 0xE0000-0xFFFFF. */
static u64 rsdp_scan(void) {
  u64 ebda = (u64)(*(volatile u16 *)0x40E) << 4;
  if (ebda >= 0x80000 && ebda < 0xA0000)
    for (u64 a = ebda; a < ebda + 1024; a += 16)
      if (rsdp_valid_at(a)) return a;
  for (u64 a = 0xE0000; a < 0x100000; a += 16)
    if (rsdp_valid_at(a)) return a;
  return 0;
}

static bool check_table(const struct sdt_header *h, const char *sig, u64 addr, char *err, usize n) {
  if (memcmp(h->signature, sig, 4) != 0)
    return fail(err, n, "ACPI table at 0x%lx has signature '%c%c%c%c', expected '%s'", addr, h->signature[0],
                h->signature[1], h->signature[2], h->signature[3], sig);
  if (h->length < sizeof *h || h->length > (64u << 20))
    return fail(err, n, "ACPI %s at 0x%lx has an implausible length %u", sig, addr, h->length);
  u8 s = sum_bytes((const u8 *)h, h->length);
  if (s != 0)
    return fail(err, n, "ACPI %s checksum mismatch at 0x%lx (its %u bytes sum to 0x%02x, must be 0): the tables are corrupt",
                sig, addr, h->length, s);
  return true;
}

static bool parse_madt(const struct sdt_header *h, char *err, usize n) {
  const u8 *t = (const u8 *)h;
  platform.lapic_addr = rd32(t + MADT_LAPIC_ADDR);
  for (u32 off = MADT_ENTRIES; off + 2 <= h->length;) {
    const u8 *e = t + off;
    u8 type = e[0], len = e[1];
    if (len < 2 || off + len > h->length)
      return fail(err, n, "ACPI MADT entry at offset %u has a bad length %u", off, len);
    if (type == 0 && len >= 8 && (rd32(e + 4) & 1) && platform.cpu_count < MAX_CPUS) {
      platform.apic_ids[platform.cpu_count++] = e[3];
    } else if (type == 9 && len >= 16 && (rd32(e + 8) & 1) && platform.cpu_count < MAX_CPUS) {
      platform.apic_ids[platform.cpu_count++] = rd32(e + 4);
    } else if (type == 1 && len >= 12 && platform.ioapic_count < MAX_IOAPICS) {
      platform.ioapics[platform.ioapic_count++] = (struct ioapic_info){e[2], rd32(e + 4), rd32(e + 8)};
    } else if (type == 2 && len >= 10 && platform.override_count < MAX_OVERRIDES) {
      platform.overrides[platform.override_count++] = (struct irq_override){e[3], rd32(e + 4), (u16)(e[8] | e[9] << 8)};
    } else if (type == 5 && len >= 12) {
      platform.lapic_addr = rd64(e + 4);
    }
    off += len;
  }
  if (!platform.cpu_count) return fail(err, n, "ACPI MADT lists no enabled processor (Local APIC entries)");
  if (!platform.ioapic_count) return fail(err, n, "ACPI MADT lists no IOAPIC");
  return true;
}

struct irq_desc acpi_isa_irq(u8 irq) {
  struct irq_desc d = {true, irq, false, false}; /* ISA default: edge, active high */
  for (u32 i = 0; i < platform.override_count; i++) {
    const struct irq_override *o = &platform.overrides[i];
    if (o->source != irq) continue;
    d.gsi = o->gsi;
    d.active_low = (o->flags & 3) == 3;
    d.level = ((o->flags >> 2) & 3) == 3;
  }
  return d;
}

bool acpi_init(u64 rsdp_hint, char *err, usize n) {
  u64 rsdp = rsdp_hint;
  if (rsdp) {
    const u8 *p = (const u8 *)rsdp;
    if (memcmp(p, "RSD PTR ", 8) != 0)
      return fail(err, n, "no ACPI RSDP signature at 0x%lx (acpi_rsdp_addr from the loader)", rsdp);
  } else {
    rsdp = rsdp_scan();
    if (!rsdp) return fail(err, n, "no ACPI RSDP: the loader passed no acpi_rsdp_addr and none was found in the EBDA or 0xE0000-0xFFFFF");
  }
  const u8 *r = (const u8 *)rsdp;
  u8 s = sum_bytes(r, RSDP_CHECKSUM_LEN);
  if (s) return fail(err, n, "ACPI RSDP checksum mismatch at 0x%lx (first 20 bytes sum to 0x%02x, must be 0): the tables are corrupt", rsdp, s);
  platform.rsdp_addr = rsdp;
  memcpy(platform.oem_id, r + 9, 6);
  platform.acpi_revision = r[RSDP_REVISION];
  u64 root = 0;
  bool xsdt = false;
  if (r[RSDP_REVISION] >= 2) {
    u32 len = rd32(r + RSDP_LENGTH);
    if (len < RSDP_V2_LEN || len > 4096) return fail(err, n, "ACPI RSDP at 0x%lx has a bad length %u", rsdp, len);
    s = sum_bytes(r, len);
    if (s) return fail(err, n, "ACPI RSDP extended checksum mismatch at 0x%lx (%u bytes sum to 0x%02x, must be 0): the tables are corrupt", rsdp, len, s);
    root = rd64(r + RSDP_XSDT);
    xsdt = root != 0;
  }
  if (!root) root = rd32(r + RSDP_RSDT);
  if (!root) return fail(err, n, "ACPI RSDP at 0x%lx points to neither an XSDT nor an RSDT", rsdp);
  const struct sdt_header *rt = (const struct sdt_header *)root;
  if (!check_table(rt, xsdt ? "XSDT" : "RSDT", root, err, n)) return false;

  const struct sdt_header *fadt = NULL, *madt = NULL;
  const struct sdt_header *ssdts[16];
  u32 ssdt_count = 0;
  u32 entry_size = xsdt ? 8 : 4;
  for (u32 off = sizeof *rt; off + entry_size <= rt->length; off += entry_size) {
    const u8 *e = (const u8 *)rt + off;
    u64 addr = xsdt ? rd64(e) : rd32(e);
    if (!addr) continue;
    const struct sdt_header *h = (const struct sdt_header *)addr;
    if (memcmp(h->signature, "FACP", 4) == 0) {
      if (!check_table(h, "FACP", addr, err, n)) return false;
      fadt = h;
    } else if (memcmp(h->signature, "APIC", 4) == 0) {
      if (!check_table(h, "APIC", addr, err, n)) return false;
      madt = h;
    } else if (memcmp(h->signature, "SSDT", 4) == 0 && ssdt_count < ARRAY_SIZE(ssdts)) {
      if (!check_table(h, "SSDT", addr, err, n)) return false;
      ssdts[ssdt_count++] = h;
    }
  }
  if (!madt) return fail(err, n, "ACPI MADT (signature APIC) not found in the %s", xsdt ? "XSDT" : "RSDT");
  if (!fadt) return fail(err, n, "ACPI FADT (signature FACP) not found in the %s", xsdt ? "XSDT" : "RSDT");
  if (!parse_madt(madt, err, n)) return false;

  const u8 *f = (const u8 *)fadt;
  u64 dsdt_addr = 0;
  if (fadt->length >= FADT_X_DSDT + 8) dsdt_addr = rd64(f + FADT_X_DSDT);
  if (!dsdt_addr && fadt->length >= FADT_DSDT + 4) dsdt_addr = rd32(f + FADT_DSDT);
  if (!dsdt_addr) return fail(err, n, "ACPI FADT has no DSDT address");
  const struct sdt_header *dsdt = (const struct sdt_header *)dsdt_addr;
  if (!check_table(dsdt, "DSDT", dsdt_addr, err, n)) return false;
  if (fadt->length >= FADT_SLEEP_CONTROL + 12 && (rd32(f + FADT_FLAGS) & FADT_HW_REDUCED)) {
    platform.sleep_ctl_space = f[FADT_SLEEP_CONTROL];
    platform.sleep_ctl_addr = rd64(f + FADT_SLEEP_CONTROL + 4);
  }

  aml_walk_table((const u8 *)dsdt + sizeof *dsdt, dsdt->length - sizeof *dsdt);
  for (u32 i = 0; i < ssdt_count; i++) aml_walk_table((const u8 *)ssdts[i] + sizeof *ssdts[i], ssdts[i]->length - sizeof *ssdts[i]);
  return true;
}
