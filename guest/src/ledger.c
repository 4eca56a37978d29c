/* A crash-consistent append-only ledger on a virtio disk (layout in docs/guest.md).
 * Sector 0 holds the header; record seq (1-based) lives in sector seq. A record counts only if its
 * CRC, epoch, position and link to the previous record all check out, so a torn tail, stale records
 * from an earlier format (other epoch) or from an earlier run of this one (broken link) end the
 * ledger instead of extending it. Records are durable once written and flushed. */
#include "blk.h"
#include "commands.h"
#include "console.h"
#include "layout.h"
#include "lib.h"
#include "time.h"

#define LEDGER_MAGIC "LBLEDGER"
#define LEDGER_VERSION 1
#define RECORD_MAGIC 0x4345524Cu /* "LREC" */
#define RECORD_PAYLOAD_MAX 468
#define BATCH_MAX 32             /* records per write+flush */
#define BATCH_DEFAULT 8          /* without RATE */
#define LOOKAHEAD 64             /* records checked past the end for signs of lost durable data */
#define READ_BATCH (IO_BUF_SIZE / SECTOR_SIZE)

struct ledger_header {
  char magic[8];
  u32 version, record_size;
  u64 epoch, first_sector, capacity, created_us;
  u8 reserved[460];
  u32 crc;
} PACKED;
STATIC_ASSERT(sizeof(struct ledger_header) == 512, "ledger header is one sector");

struct ledger_record {
  u32 magic, payload_len;
  u64 epoch, seq, timestamp_us;
  u32 prev_crc, reserved;
  u8 payload[RECORD_PAYLOAD_MAX];
  u32 crc;
} PACKED;
STATIC_ASSERT(sizeof(struct ledger_record) == 512, "ledger record is one sector");

struct ledger {
  struct blk_dev *d;
  struct ledger_header h;
  u64 last;      /* last valid seq */
  u32 last_crc;  /* its crc (0 when last == 0) */
  u64 first_bad; /* position where a durable-looking record follows the end, or 0 */
};

static u32 header_crc(const struct ledger_header *h) { return crc32(0, h, offsetof(struct ledger_header, crc)); }
static u32 record_crc(const struct ledger_record *r) { return crc32(0, r, offsetof(struct ledger_record, crc)); }

static u32 payload_len(u64 epoch, u64 seq) { return 16 + (u32)(splitmix64(epoch ^ seq) % (RECORD_PAYLOAD_MAX - 15)); }

static void payload_fill(u8 *p, u64 epoch, u64 seq, u32 len) {
  u64 x = splitmix64(epoch + seq);
  for (u32 i = 0; i < len; i++) {
    if (i % 8 == 0) x = splitmix64(x);
    p[i] = (u8)(x >> (8 * (i % 8)));
  }
}

static bool record_valid(const struct ledger_record *r, u64 epoch, u64 seq, bool check_payload) {
  if (r->magic != RECORD_MAGIC || r->epoch != epoch || r->seq != seq || r->crc != record_crc(r)) return false;
  if (r->payload_len > RECORD_PAYLOAD_MAX) return false;
  if (!check_payload) return true;
  u8 want[RECORD_PAYLOAD_MAX];
  u32 len = payload_len(epoch, seq);
  if (r->payload_len != len) return false;
  payload_fill(want, epoch, seq, len);
  return memcmp(want, r->payload, len) == 0;
}

static int disk_option(int *argc, char **argv, u64 *disk) {
  *disk = 0;
  for (int i = 0; i < *argc; i++) {
    if (strcmp(argv[i], "--disk") != 0) continue;
    if (i + 1 >= *argc) return cmd_fail(STATUS_USAGE, "--disk needs a disk number");
    if (!arg_u64(argv[i + 1], "disk number", disk)) return STATUS_USAGE;
    for (int k = i; k + 2 <= *argc; k++) argv[k] = argv[k + 2];
    *argc -= 2;
    return STATUS_OK;
  }
  return STATUS_OK;
}

static int open_disk(u64 i, bool write, struct ledger *l) {
  memset(l, 0, sizeof *l);
  if (i >= disk_count)
    return cmd_fail(STATUS_FAILED, "no disk %lu (the ACPI DSDT lists %u virtio-blk device%s)", i, disk_count, disk_count == 1 ? "" : "s");
  l->d = &disks[i];
  if (l->d->sectors == 0) return cmd_fail(STATUS_FAILED, "disk %lu is empty (capacity 0 bytes): give the VM a non-empty disk image", i);
  if (l->d->sectors < 2) return cmd_fail(STATUS_FAILED, "disk %lu is too small for a ledger (needs 1 KiB)", i);
  if (write && l->d->ro) return cmd_fail(STATUS_FAILED, "disk %lu is read-only", i);
  if (!io_buf) return cmd_fail(STATUS_FAILED, "no I/O buffer (out of memory at boot)");
  return STATUS_OK;
}

/* Reads the header; false when there is no valid one. */
static bool read_header(struct ledger *l, int *io_status) {
  *io_status = blk_rw(l->d, false, 0, io_buf, SECTOR_SIZE);
  if (*io_status) return false;
  memcpy(&l->h, io_buf, sizeof l->h);
  const struct ledger_header *h = &l->h;
  return memcmp(h->magic, LEDGER_MAGIC, 8) == 0 && h->version == LEDGER_VERSION && h->record_size == SECTOR_SIZE &&
         h->crc == header_crc(h) && h->first_sector == 1 && h->capacity <= l->d->sectors - 1;
}

/* Finds the last valid record, then looks past it for records that should not be there. */
static int scan(struct ledger *l) {
  u64 seq = 1, prev_crc = 0;
  bool end = false;
  while (!end && seq <= l->h.capacity) {
    if (console_interrupted()) return cmd_fail(STATUS_INTERRUPTED, "interrupted while reading the ledger at seq=%lu", seq);
    u64 n = MIN((u64)READ_BATCH, l->h.capacity - seq + 1);
    int st = blk_rw(l->d, false, (l->h.first_sector + seq - 1) * SECTOR_SIZE, io_buf, n * SECTOR_SIZE);
    if (st) return cmd_fail(STATUS_FAILED, "disk %u: ledger read failed: %s", l->d->index, blk_error_name(st));
    for (u64 i = 0; i < n; i++, seq++) {
      const struct ledger_record *r = (const struct ledger_record *)(io_buf + i * SECTOR_SIZE);
      if (!record_valid(r, l->h.epoch, seq, true) || r->prev_crc != prev_crc) {
        end = true;
        break;
      }
      prev_crc = r->crc;
      l->last = seq;
    }
  }
  l->last_crc = (u32)prev_crc;
  /* A flush separates every batch from the next, so a valid record more than a batch past the end
   * was written after the end became durable: something destroyed durable records. */
  u64 from = l->last + 1 + BATCH_MAX, to = MIN(l->h.capacity, l->last + BATCH_MAX + LOOKAHEAD);
  if (from <= to) {
    u64 n = to - from + 1;
    int st = blk_rw(l->d, false, (l->h.first_sector + from - 1) * SECTOR_SIZE, io_buf, n * SECTOR_SIZE);
    if (st) return cmd_fail(STATUS_FAILED, "disk %u: ledger read failed: %s", l->d->index, blk_error_name(st));
    for (u64 i = 0; i < n; i++)
      if (record_valid((const struct ledger_record *)(io_buf + i * SECTOR_SIZE), l->h.epoch, from + i, false)) {
        l->first_bad = from + i;
        break;
      }
  }
  return STATUS_OK;
}

static int format(struct ledger *l) {
  struct ledger_header *h = &l->h;
  memset(h, 0, sizeof *h);
  memcpy(h->magic, LEDGER_MAGIC, 8);
  h->version = LEDGER_VERSION;
  h->record_size = SECTOR_SIZE;
  h->epoch = splitmix64(rdtsc() ^ splitmix64(l->d->mmio) ^ (u64)l->d->sectors << 20);
  h->first_sector = 1;
  h->capacity = l->d->sectors - 1;
  h->created_us = time_us();
  h->crc = header_crc(h);
  memset(io_buf, 0, SECTOR_SIZE);
  memcpy(io_buf, h, sizeof *h);
  int st = blk_rw(l->d, true, 0, io_buf, SECTOR_SIZE);
  if (!st) st = blk_flush(l->d);
  if (st) return cmd_fail(STATUS_FAILED, "disk %u: writing the ledger header failed: %s", l->d->index, blk_error_name(st));
  l->last = 0, l->last_crc = 0;
  printf("ledger: formatted disk %u epoch=0x%016lx capacity=%lu\n", l->d->index, h->epoch, h->capacity);
  return STATUS_OK;
}

static int ledger_check(u64 disk) {
  struct ledger l;
  int st = open_disk(disk, false, &l);
  if (st) return st;
  if (!read_header(&l, &st)) {
    if (st) return cmd_fail(STATUS_FAILED, "disk %lu: reading the ledger header failed: %s", disk, blk_error_name(st));
    printf("ledger corrupt: no valid ledger header on disk %lu (a fresh disk? 'ledger run' creates one)\n", disk);
    return STATUS_FAILED;
  }
  if ((st = scan(&l))) return st;
  if (l.first_bad) {
    printf("ledger corrupt: records end after seq=%lu but a valid record seq=%lu follows\n", l.last, l.first_bad);
    return STATUS_FAILED;
  }
  printf("ledger: disk %lu epoch=0x%016lx records=%lu capacity=%lu\n", disk, l.h.epoch, l.last, l.h.capacity);
  printf("ledger ok last=%lu\n", l.last);
  return STATUS_OK;
}

static int ledger_format(u64 disk) {
  struct ledger l;
  int st = open_disk(disk, true, &l);
  return st ? st : format(&l);
}

static int ledger_run(u64 disk, u64 rate) {
  struct ledger l;
  int st = open_disk(disk, true, &l);
  if (st) return st;
  if (read_header(&l, &st)) {
    if ((st = scan(&l))) return st;
    if (l.first_bad) {
      printf("ledger corrupt: records end after seq=%lu but a valid record seq=%lu follows; not appending\n", l.last, l.first_bad);
      return STATUS_FAILED;
    }
    printf("ledger: disk %lu epoch=0x%016lx resuming after seq=%lu\n", disk, l.h.epoch, l.last);
  } else {
    if (st) return cmd_fail(STATUS_FAILED, "disk %lu: reading the ledger header failed: %s", disk, blk_error_name(st));
    if ((st = format(&l))) return st;
  }
  u64 t0 = ticks(), appended = 0;
  while (!console_interrupted()) {
    u64 n = BATCH_DEFAULT;
    if (rate) {
      u64 due = (ticks() - t0) * rate / TICK_HZ;
      if (due <= appended) {
        wait_for_interrupt();
        continue;
      }
      n = MIN(due - appended, (u64)BATCH_MAX);
    }
    if (l.last + n > l.h.capacity) n = l.h.capacity - l.last;
    if (!n) return cmd_fail(STATUS_FAILED, "ledger full at seq=%lu (disk %lu holds %lu records)", l.last, disk, l.h.capacity);
    for (u64 i = 0; i < n; i++) {
      struct ledger_record *r = (struct ledger_record *)(io_buf + i * SECTOR_SIZE);
      memset(r, 0, sizeof *r);
      u64 seq = l.last + 1 + i;
      r->magic = RECORD_MAGIC;
      r->epoch = l.h.epoch;
      r->seq = seq;
      r->timestamp_us = time_us();
      r->prev_crc = i ? ((struct ledger_record *)(io_buf + (i - 1) * SECTOR_SIZE))->crc : l.last_crc;
      r->payload_len = payload_len(l.h.epoch, seq);
      payload_fill(r->payload, l.h.epoch, seq, r->payload_len);
      r->crc = record_crc(r);
    }
    st = blk_rw(l.d, true, (l.h.first_sector + l.last) * SECTOR_SIZE, io_buf, n * SECTOR_SIZE);
    if (!st) st = blk_flush(l.d);
    if (st) return cmd_fail(STATUS_FAILED, "disk %lu: ledger append failed: %s", disk, blk_error_name(st));
    l.last_crc = ((struct ledger_record *)(io_buf + (n - 1) * SECTOR_SIZE))->crc;
    l.last += n;
    appended += n;
    printf("ledger durable seq=%lu\n", l.last);
  }
  printf("ledger: stopped at seq=%lu\n", l.last);
  return STATUS_OK;
}

int cmd_ledger(int argc, char **argv) {
  u64 disk, rate = 0;
  int st = disk_option(&argc, argv, &disk);
  if (st) return st;
  if (argc >= 2 && strcmp(argv[1], "run") == 0 && argc <= 3) {
    if (argc == 3 && !arg_u64(argv[2], "RATE", &rate)) return STATUS_USAGE;
    return ledger_run(disk, rate);
  }
  if (argc == 2 && strcmp(argv[1], "check") == 0) return ledger_check(disk);
  if (argc == 2 && strcmp(argv[1], "format") == 0) return ledger_format(disk);
  return cmd_fail(STATUS_USAGE, "usage: ledger run [RATE] | ledger check | ledger format   [--disk I]");
}
