#include "blk.h"
#include "acpi.h"
#include "irq.h"
#include "layout.h"
#include "lib.h"
#include "mm.h"
#include "ring.h"
#include "smp.h"
#include "time.h"

/* virtio-mmio registers (virtio 1.2, 4.2.2). */
#define VIRTIO_MAGIC 0x000
#define VIRTIO_VERSION 0x004
#define VIRTIO_DEVICE_ID 0x008
#define VIRTIO_DEVICE_FEATURES 0x010
#define VIRTIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_DRIVER_FEATURES 0x020
#define VIRTIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_QUEUE_SEL 0x030
#define VIRTIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_QUEUE_NUM 0x038
#define VIRTIO_QUEUE_READY 0x044
#define VIRTIO_QUEUE_NOTIFY 0x050
#define VIRTIO_INTERRUPT_STATUS 0x060
#define VIRTIO_INTERRUPT_ACK 0x064
#define VIRTIO_STATUS 0x070
#define VIRTIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_QUEUE_AVAIL_LOW 0x090
#define VIRTIO_QUEUE_AVAIL_HIGH 0x094
#define VIRTIO_QUEUE_USED_LOW 0x0A0
#define VIRTIO_QUEUE_USED_HIGH 0x0A4
#define VIRTIO_CONFIG_GENERATION 0x0FC
#define VIRTIO_CONFIG 0x100
#define VIRTIO_MAGIC_VALUE 0x74726976

#define VSTATUS_ACKNOWLEDGE 1
#define VSTATUS_DRIVER 2
#define VSTATUS_DRIVER_OK 4
#define VSTATUS_FEATURES_OK 8
#define VSTATUS_FAILED 0x80

#define VIRTIO_ID_BLOCK 2
#define F_VERSION_1 (1UL << 32)
#define BLK_F_SIZE_MAX (1UL << 1)
#define BLK_F_SEG_MAX (1UL << 2)
#define BLK_F_RO (1UL << 5)
#define BLK_F_BLK_SIZE (1UL << 6)
#define BLK_F_FLUSH (1UL << 9)
#define BLK_CFG_CAPACITY 0x00
#define BLK_CFG_SIZE_MAX 0x08

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define USED_F_NO_NOTIFY 1

#define QUEUE_SIZE_WANTED 128
#define DEFAULT_MAX_REQUEST (128u << 10)
/* Counted in LAPIC ticks, not TSC time: the TSC jumps when a VM snapshot is restored later. */
#define REQUEST_TIMEOUT_TICKS (30UL * TICK_HZ)

struct virtq_desc { u64 addr; u32 len; u16 flags, next; } PACKED;
struct virtq_avail { u16 flags, idx, ring[]; } PACKED;
struct virtq_used_elem { u32 id, len; } PACKED;
struct virtq_used { u16 flags, idx; struct virtq_used_elem ring[]; } PACKED;

struct blk_req_hdr { u32 type, reserved; u64 sector; } PACKED;
struct blk_slot {
  struct blk_req_hdr hdr;
  volatile u8 status;
  volatile u8 done;
  u8 busy;
} ALIGNED(32);

struct blk_dev disks[MAX_DISKS];
u32 disk_count;

static u32 rd(struct blk_dev *d, u32 reg) { return mmio_read32(d->mmio + reg); }
static void wr(struct blk_dev *d, u32 reg, u32 v) { mmio_write32(d->mmio + reg, v); }

static void reap(struct blk_dev *d) {
  spin_lock(&d->lock);
  for (;;) {
    u16 idx = __atomic_load_n(&d->used->idx, __ATOMIC_ACQUIRE);
    if (idx == d->used_seen) break;
    u32 head = d->used->ring[d->used_seen % d->qsize].id;
    d->used_seen++;
    u32 s = head / 3;
    if (s < d->nslots) __atomic_store_n(&d->slots[s].done, 1, __ATOMIC_RELEASE);
  }
  spin_unlock(&d->lock);
}

/* Ring 0: acknowledge (a level-triggered line must drop before the EOI); the waiter in ring 3
 * reaps the used ring itself, so no lock is shared with interrupt context. */
static void blk_irq(u32 vector) {
  for (u32 k = 0; k < MAX_DISKS; k++) {
    struct blk_dev *d = &disks[k];
    if (!d->mmio || d->vector != vector) continue;
    u32 st = rd(d, VIRTIO_INTERRUPT_STATUS);
    if (st) wr(d, VIRTIO_INTERRUPT_ACK, st);
  }
}

static const char *setup(struct blk_dev *d, const struct acpi_device *a, char *why, usize n) {
  wr(d, VIRTIO_STATUS, 0);
  for (int i = 0; i < 1000 && rd(d, VIRTIO_STATUS) != 0; i++) cpu_relax();
  wr(d, VIRTIO_STATUS, VSTATUS_ACKNOWLEDGE);
  wr(d, VIRTIO_STATUS, VSTATUS_ACKNOWLEDGE | VSTATUS_DRIVER);
  wr(d, VIRTIO_DEVICE_FEATURES_SEL, 0);
  u64 features = rd(d, VIRTIO_DEVICE_FEATURES);
  wr(d, VIRTIO_DEVICE_FEATURES_SEL, 1);
  features |= (u64)rd(d, VIRTIO_DEVICE_FEATURES) << 32;
  if (!(features & F_VERSION_1)) return "it does not offer VIRTIO_F_VERSION_1";
  u64 want = features & (F_VERSION_1 | BLK_F_SIZE_MAX | BLK_F_SEG_MAX | BLK_F_RO | BLK_F_BLK_SIZE | BLK_F_FLUSH);
  wr(d, VIRTIO_DRIVER_FEATURES_SEL, 0);
  wr(d, VIRTIO_DRIVER_FEATURES, (u32)want);
  wr(d, VIRTIO_DRIVER_FEATURES_SEL, 1);
  wr(d, VIRTIO_DRIVER_FEATURES, (u32)(want >> 32));
  wr(d, VIRTIO_STATUS, VSTATUS_ACKNOWLEDGE | VSTATUS_DRIVER | VSTATUS_FEATURES_OK);
  if (!(rd(d, VIRTIO_STATUS) & VSTATUS_FEATURES_OK)) return "it refused our feature set (FEATURES_OK not kept)";
  d->ro = (want & BLK_F_RO) != 0;
  d->has_flush = (want & BLK_F_FLUSH) != 0;

  u32 gen, capacity_lo, capacity_hi;
  do {
    gen = rd(d, VIRTIO_CONFIG_GENERATION);
    capacity_lo = rd(d, VIRTIO_CONFIG + BLK_CFG_CAPACITY);
    capacity_hi = rd(d, VIRTIO_CONFIG + BLK_CFG_CAPACITY + 4);
  } while (gen != rd(d, VIRTIO_CONFIG_GENERATION));
  d->sectors = capacity_lo | (u64)capacity_hi << 32;
  d->max_request = DEFAULT_MAX_REQUEST;
  if (want & BLK_F_SIZE_MAX) {
    u32 size_max = rd(d, VIRTIO_CONFIG + BLK_CFG_SIZE_MAX) & ~(u32)(SECTOR_SIZE - 1);
    if (size_max && size_max < d->max_request) d->max_request = size_max;
  }

  wr(d, VIRTIO_QUEUE_SEL, 0);
  if (rd(d, VIRTIO_QUEUE_READY)) return "queue 0 is already live after reset";
  u32 max = rd(d, VIRTIO_QUEUE_NUM_MAX);
  if (max < 3) return "queue 0 is too small (QueueNumMax < 3)";
  u32 q = 1;
  while (q * 2 <= MIN(max, (u32)QUEUE_SIZE_WANTED)) q *= 2;
  d->qsize = (u16)q;
  d->desc = alloc_pages(1);
  d->avail = alloc_pages(1);
  d->used = alloc_pages(1);
  d->nslots = q / 3;
  d->slots = alloc_pages(ALIGN_UP(d->nslots * sizeof(struct blk_slot), PAGE_SIZE) / PAGE_SIZE);
  if (!d->desc || !d->avail || !d->used || !d->slots) return "out of memory for its virtqueue";
  d->free_slots = d->nslots;
  for (u32 s = 0; s < d->nslots; s++) {
    d->desc[3 * s].addr = (u64)&d->slots[s].hdr;
    d->desc[3 * s].len = sizeof(struct blk_req_hdr);
  }
  wr(d, VIRTIO_QUEUE_NUM, q);
  wr(d, VIRTIO_QUEUE_DESC_LOW, (u32)(u64)d->desc);
  wr(d, VIRTIO_QUEUE_DESC_HIGH, (u32)((u64)d->desc >> 32));
  wr(d, VIRTIO_QUEUE_AVAIL_LOW, (u32)(u64)d->avail);
  wr(d, VIRTIO_QUEUE_AVAIL_HIGH, (u32)((u64)d->avail >> 32));
  wr(d, VIRTIO_QUEUE_USED_LOW, (u32)(u64)d->used);
  wr(d, VIRTIO_QUEUE_USED_HIGH, (u32)((u64)d->used >> 32));
  wr(d, VIRTIO_QUEUE_READY, 1);

  if (a->irq.present) {
    irq_register(d->vector, blk_irq);
    if (!ioapic_route(a->irq.gsi, d->vector, a->irq.level, a->irq.active_low, lapic_id())) {
      snprintf(why, n, "no IOAPIC in the MADT covers its GSI %u (completions will be polled)", a->irq.gsi);
      printf("warning: virtio-mmio device at 0x%lx: %s\n", d->mmio, why);
    }
  }
  wr(d, VIRTIO_STATUS, VSTATUS_ACKNOWLEDGE | VSTATUS_DRIVER | VSTATUS_FEATURES_OK | VSTATUS_DRIVER_OK);
  return NULL;
}

void blk_probe_all(void) {
  char why[128];
  for (u32 i = 0; i < platform.virtio_count && disk_count < MAX_DISKS; i++) {
    const struct acpi_device *a = &platform.virtio[i];
    if (a->mmio_size < 0x200) {
      printf("warning: ACPI device %s (LNRO0005) has a %lu-byte MMIO window, too small for virtio-mmio\n", a->name, a->mmio_size);
      continue;
    }
    struct blk_dev *d = &disks[disk_count];
    memset(d, 0, sizeof *d);
    d->mmio = a->mmio_base;
    if (mmio_read32(d->mmio + VIRTIO_MAGIC) != VIRTIO_MAGIC_VALUE) {
      printf("warning: ACPI device %s at 0x%lx is not virtio-mmio (bad magic)\n", a->name, a->mmio_base);
      continue;
    }
    u32 version = rd(d, VIRTIO_VERSION), id = rd(d, VIRTIO_DEVICE_ID);
    if (id == 0) continue; /* an empty transport slot */
    if (id != VIRTIO_ID_BLOCK) continue;
    if (version != 2) {
      printf("warning: virtio-blk at 0x%lx is a legacy (version %u) virtio-mmio device; Lifeboat's guest needs version 2"
             " (QEMU: -global virtio-mmio.force-legacy=false)\n", d->mmio, version);
      continue;
    }
    d->index = disk_count;
    d->gsi = a->irq.gsi;
    d->vector = (u8)(VEC_VIRTIO_FIRST + disk_count);
    why[0] = 0;
    const char *err = setup(d, a, why, sizeof why);
    if (err) {
      wr(d, VIRTIO_STATUS, VSTATUS_FAILED);
      printf("warning: virtio-blk at 0x%lx not used: %s\n", d->mmio, err);
      continue;
    }
    if (!d->sectors) printf("warning: disk %u (virtio-blk at 0x%lx) has capacity 0: an empty image\n", d->index, d->mmio);
    disk_count++;
  }
}

const char *blk_error_name(int status) {
  switch (status) {
    case BLK_OK: return "ok";
    case BLK_IOERR: return "I/O error reported by the device";
    case BLK_UNSUPP: return "request type not supported by the device";
    case BLK_TIMEOUT: return "no completion within 30 s";
    default: return "unknown device status";
  }
}

static int claim_slot(struct blk_dev *d) {
  for (;;) {
    spin_lock(&d->lock);
    for (u32 s = 0; s < d->nslots; s++)
      if (!d->slots[s].busy) {
        d->slots[s].busy = 1;
        d->slots[s].done = 0;
        spin_unlock(&d->lock);
        return (int)s;
      }
    spin_unlock(&d->lock);
    reap(d);
    cpu_relax();
  }
}

int blk_submit(struct blk_dev *d, u32 type, u64 sector, void *buf, u32 len) {
  int s = claim_slot(d);
  struct blk_slot *slot = &d->slots[s];
  slot->hdr = (struct blk_req_hdr){type, 0, sector};
  slot->status = 0xFF;
  struct virtq_desc *hd = &d->desc[3 * s], *dd = hd + 1, *sd = hd + 2;
  sd->addr = (u64)&slot->status;
  sd->len = 1;
  sd->flags = DESC_F_WRITE;
  sd->next = 0;
  if (len) {
    dd->addr = (u64)buf;
    dd->len = len;
    dd->flags = DESC_F_NEXT | (type == 0 ? DESC_F_WRITE : 0);
    dd->next = (u16)(3 * s + 2);
    hd->next = (u16)(3 * s + 1);
  } else {
    hd->next = (u16)(3 * s + 2);
  }
  hd->flags = DESC_F_NEXT;
  spin_lock(&d->lock);
  u16 idx = d->avail->idx;
  d->avail->ring[idx % d->qsize] = (u16)(3 * s);
  __atomic_store_n(&d->avail->idx, (u16)(idx + 1), __ATOMIC_RELEASE);
  mfence(); /* the index must be visible before we read the device's notification suppression flag */
  bool notify = !(__atomic_load_n(&d->used->flags, __ATOMIC_ACQUIRE) & USED_F_NO_NOTIFY);
  spin_unlock(&d->lock);
  if (notify) wr(d, VIRTIO_QUEUE_NOTIFY, 0);
  return s;
}

bool blk_done(struct blk_dev *d, int s) {
  if (!__atomic_load_n(&d->slots[s].done, __ATOMIC_ACQUIRE)) reap(d);
  return __atomic_load_n(&d->slots[s].done, __ATOMIC_ACQUIRE) != 0;
}

int blk_wait(struct blk_dev *d, int s) {
  struct blk_slot *slot = &d->slots[s];
  u64 start = ticks();
  /* Device interrupts go to the BSP: it sleeps until one (or the 100 Hz tick); other CPUs poll. */
  bool sleep = this_cpu()->bsp;
  for (;;) {
    u64 seen = irq_event_count();
    if (blk_done(d, s)) break;
    if (ticks() - start > REQUEST_TIMEOUT_TICKS) return BLK_TIMEOUT; /* the slot stays busy: the device may still write */
    if (sleep) wait_event(seen);
    else cpu_relax();
  }
  int status = slot->status;
  spin_lock(&d->lock);
  slot->busy = 0;
  spin_unlock(&d->lock);
  return status;
}

int blk_rw(struct blk_dev *d, bool write, u64 offset, void *buf, u64 len) {
  int inflight[64];
  u32 n = 0, max_inflight = MIN(d->nslots, (u32)ARRAY_SIZE(inflight));
  int result = BLK_OK;
  u8 *p = buf;
  while (len || n) {
    if (len && n < max_inflight) {
      u32 chunk = (u32)MIN(len, (u64)d->max_request);
      inflight[n++] = blk_submit(d, write ? 1 : 0, offset / SECTOR_SIZE, p, chunk);
      offset += chunk, p += chunk, len -= chunk;
      continue;
    }
    int st = blk_wait(d, inflight[0]);
    if (st != BLK_OK && result == BLK_OK) result = st;
    for (u32 i = 1; i < n; i++) inflight[i - 1] = inflight[i];
    n--;
    if (result != BLK_OK && st == BLK_TIMEOUT) return result;
  }
  return result;
}

int blk_flush(struct blk_dev *d) {
  if (!d->has_flush) return BLK_OK; /* without VIRTIO_BLK_F_FLUSH the device writes through */
  return blk_wait(d, blk_submit(d, 4, 0, NULL, 0));
}
