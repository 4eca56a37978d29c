#include "mm.h"
#include "boot.h"
#include "layout.h"
#include "lib.h"
#include "cpu.h"

#define PTE_P 0x1UL
#define PTE_W 0x2UL
#define PTE_U 0x4UL /* every page is reachable from ring 3: one address space, see ring.h */
#define PTE_PWT 0x8UL
#define PTE_PCD 0x10UL
#define PTE_PS 0x80UL
#define TWO_MIB (2UL << 20)
#define ONE_GIB (1UL << 30)
#define FOUR_GIB (4UL << 30)
#define LOW_MEMORY_END 0x100000UL

extern u8 __image_start[], __image_end[];

static u64 pml4[512] ALIGNED(4096);
static u64 pdpt[512] ALIGNED(4096);
static u64 pd_low[4][512] ALIGNED(4096); /* 0-4 GiB */

struct range { u64 start, end; };
static struct range free_ranges[E820_MAX];
static u32 free_count;

static void add_free(u64 start, u64 end) {
  if (end <= start || free_count == E820_MAX) return;
  free_ranges[free_count++] = (struct range){start, end};
}

static void build_free_list(void) {
  u64 img_start = (u64)__image_start, img_end = (u64)__image_end;
  for (u32 i = 0; i < boot.e820_count; i++) {
    const struct e820_entry *e = &boot.e820[i];
    if (e->type != E820_RAM) continue;
    u64 start = ALIGN_UP(MAX(e->addr, LOW_MEMORY_END), PAGE_SIZE);
    u64 end = ALIGN_DOWN(e->addr + e->size, PAGE_SIZE);
    if (end <= start) continue;
    if (img_start < end && start < img_end) {
      add_free(start, img_start);
      add_free(img_end, end);
    } else {
      add_free(start, end);
    }
  }
  /* Sort by address so the allocator hands out low memory first. */
  for (u32 i = 1; i < free_count; i++)
    for (u32 j = i; j > 0 && free_ranges[j - 1].start > free_ranges[j].start; j--) {
      struct range t = free_ranges[j];
      free_ranges[j] = free_ranges[j - 1];
      free_ranges[j - 1] = t;
    }
}

void *alloc_aligned(u64 pages, u64 align, bool zero) {
  u64 bytes = pages * PAGE_SIZE;
  for (u32 i = 0; i < free_count; i++) {
    struct range *r = &free_ranges[i];
    u64 start = ALIGN_UP(r->start, align);
    if (start < r->end && r->end - start >= bytes && start + bytes <= FOUR_GIB) {
      r->start = start + bytes; /* the alignment gap is given up: allocations happen only at boot */
      if (zero) memset((void *)start, 0, bytes);
      return (void *)start;
    }
  }
  return NULL;
}

void *alloc_pages(u64 pages) { return alloc_aligned(pages, PAGE_SIZE, true); }

void mm_largest_free(u64 *start, u64 *bytes) {
  *start = 0, *bytes = 0;
  for (u32 i = 0; i < free_count; i++)
    if (free_ranges[i].end - free_ranges[i].start > *bytes)
      *start = free_ranges[i].start, *bytes = free_ranges[i].end - free_ranges[i].start;
}

u64 mm_low_page(void) {
  /* Avoid the real-mode IVT/BDA page, the loader's zero page and boot page tables (0x7000-0xBFFF)
   * and the EBDA and BIOS areas (0x9FC00 up). */
  for (u64 page = 0x1000; page + PAGE_SIZE <= 0x9F000; page += PAGE_SIZE) {
    if (page >= 0x7000 && page < 0xC000) continue;
    for (u32 i = 0; i < boot.e820_count; i++) {
      const struct e820_entry *e = &boot.e820[i];
      if (e->type == E820_RAM && e->addr <= page && page + PAGE_SIZE <= e->addr + e->size) return page;
    }
  }
  return 0;
}

u64 mm_cr3(void) { return (u64)pml4; }

const char *mm_init(void) {
  build_free_list();
  if (!free_count) return "no usable RAM above 1 MiB in the e820 memory map";

  pml4[0] = (u64)pdpt | PTE_P | PTE_W | PTE_U;
  /* 0-4 GiB: everything uncached (the MMIO hole, IOAPIC, LAPIC), then RAM back to write-back.
   * Kept to simple loops: under PVM this ring-0 code is emulated instruction by instruction. */
  u64 *pde = &pd_low[0][0];
  for (u64 i = 0, v = PTE_P | PTE_W | PTE_U | PTE_PS | PTE_PCD | PTE_PWT; i < 2048; i++, v += TWO_MIB) pde[i] = v;
  for (u64 g = 0; g < 4; g++) pdpt[g] = (u64)pd_low[g] | PTE_P | PTE_W | PTE_U;
  for (u32 k = 0; k < boot.e820_count; k++) {
    const struct e820_entry *e = &boot.e820[k];
    if (e->type != E820_RAM && e->type != E820_ACPI && e->type != E820_NVS) continue;
    u64 end = MIN(e->addr + e->size, FOUR_GIB);
    for (u64 a = ALIGN_DOWN(e->addr, TWO_MIB); a < end; a += TWO_MIB) pde[a / TWO_MIB] &= ~(PTE_PCD | PTE_PWT);
  }
  /* RAM above 4 GiB, one page directory per GiB that holds some. */
  for (u32 i = 0; i < boot.e820_count; i++) {
    const struct e820_entry *e = &boot.e820[i];
    if (e->type != E820_RAM || e->addr + e->size <= FOUR_GIB) continue;
    u64 start = ALIGN_DOWN(MAX(e->addr, FOUR_GIB), TWO_MIB);
    u64 end = ALIGN_UP(e->addr + e->size, TWO_MIB);
    if (end > 512 * ONE_GIB) return "RAM above 512 GiB is not supported";
    for (u64 addr = start; addr < end; addr += TWO_MIB) {
      u64 slot = addr / ONE_GIB;
      if (!pdpt[slot]) {
        u64 *pd = alloc_pages(1);
        if (!pd) return "out of memory for page tables";
        pdpt[slot] = (u64)pd | PTE_P | PTE_W | PTE_U;
      }
      u64 *pd = (u64 *)(pdpt[slot] & ~0xFFFUL);
      pd[(addr / TWO_MIB) % 512] = addr | PTE_P | PTE_W | PTE_U | PTE_PS;
    }
  }
  write_cr3((u64)pml4);
  return NULL;
}
