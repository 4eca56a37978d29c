/* info, disk write/read/verify/bench, and the seeded pattern. */
#include "acpi.h"
#include "blk.h"
#include "boot.h"
#include "commands.h"
#include "console.h"
#include "layout.h"
#include "lib.h"
#include "mm.h"
#include "sha256.h"
#include "smp.h"
#include "time.h"

u8 *io_buf;

#define BENCH_REGION_MAX (64UL << 20)
#define BENCH_SEQ_LIMIT_US (2UL * 1000 * 1000)
#define BENCH_RAND_LIMIT_US (1UL * 1000 * 1000)
#define BENCH_RAND_BLOCK 4096
#define BENCH_RAND_DEPTH 4

void commands_init(void) {
  io_buf = alloc_pages(IO_BUF_SIZE / PAGE_SIZE);
  if (!io_buf) printf("warning: no memory for the 1 MiB disk I/O buffer: disk commands will fail\n");
}

int cmd_info(int argc UNUSED, char **argv UNUSED) {
  printf("info cpus=%u online=%u mem=%lu disks=%u tsc_khz=%lu\n", smp_cpu_count(), smp_online_count(), e820_ram_bytes(),
         disk_count, tsc_khz);
  for (u32 i = 0; i < disk_count; i++)
    printf("disk %u bytes=%lu ro=%u mmio=0x%lx gsi=%u\n", i, disks[i].sectors * SECTOR_SIZE, disks[i].ro ? 1 : 0,
           disks[i].mmio, disks[i].gsi);
  return STATUS_OK;
}

void pattern_fill(void *buf, u64 seed, u64 offset, u64 len) {
  u64 base = splitmix64(seed), k = offset / 8;
  u64 *w = buf;
  for (u64 i = 0; i < len / 8; i++) w[i] = splitmix64(base ^ (k + i));
}

/* Finds the first byte that differs from the pattern; returns ~0 when all match. */
static u64 pattern_mismatch(const void *buf, u64 seed, u64 offset, u64 len) {
  u64 base = splitmix64(seed), k = offset / 8;
  const u64 *w = buf;
  for (u64 i = 0; i < len / 8; i++) {
    u64 want = splitmix64(base ^ (k + i));
    if (w[i] != want) {
      u64 diff = w[i] ^ want;
      u64 byte = 0;
      while (!(diff & 0xFF)) diff >>= 8, byte++;
      return offset + i * 8 + byte;
    }
  }
  return ~0UL;
}

/* Pattern work spread over every online CPU: each fills or checks a slice of the chunk. */
struct pattern_job {
  u8 *buf;
  u64 seed, offset, len;
  bool verify;
  u64 mismatch[MAX_CPUS];
};

static void pattern_worker(u32 worker, u32 workers, void *arg) {
  struct pattern_job *j = arg;
  u64 words = j->len / 8, per = (words + workers - 1) / workers;
  u64 first = MIN(words, per * worker), last = MIN(words, first + per);
  u64 off = first * 8, len = (last - first) * 8;
  if (j->verify) j->mismatch[worker] = pattern_mismatch(j->buf + off, j->seed, j->offset + off, len);
  else pattern_fill(j->buf + off, j->seed, j->offset + off, len);
}

static struct blk_dev *disk_arg(const char *s, int *status) {
  u64 i;
  *status = STATUS_USAGE;
  if (!arg_u64(s, "disk number I", &i)) return NULL;
  *status = STATUS_FAILED;
  if (i >= disk_count) {
    cmd_fail(STATUS_FAILED, "no disk %lu (the ACPI DSDT lists %u virtio-blk device%s)", i, disk_count, disk_count == 1 ? "" : "s");
    return NULL;
  }
  struct blk_dev *d = &disks[i];
  if (!d->sectors) {
    cmd_fail(STATUS_FAILED, "disk %lu is empty (capacity 0 bytes): give the VM a non-empty disk image", i);
    return NULL;
  }
  if (!io_buf) {
    cmd_fail(STATUS_FAILED, "no I/O buffer (out of memory at boot)");
    return NULL;
  }
  return d;
}

static bool range_args(struct blk_dev *d, char **argv, u64 *offset, u64 *len, int *status) {
  *status = STATUS_USAGE;
  if (!arg_u64(argv[0], "OFFSET", offset) || !arg_u64(argv[1], "LENGTH", len)) return false;
  if (*offset % SECTOR_SIZE || *len % SECTOR_SIZE) {
    cmd_fail(STATUS_USAGE, "OFFSET and LENGTH must be multiples of 512 (got %lu and %lu)", *offset, *len);
    return false;
  }
  if (*len == 0) {
    cmd_fail(STATUS_USAGE, "LENGTH must be at least 512");
    return false;
  }
  u64 size = d->sectors * SECTOR_SIZE;
  if (*offset > size || *len > size - *offset) {
    *status = STATUS_FAILED;
    cmd_fail(STATUS_FAILED, "disk %u: range %lu+%lu is past its end (%lu bytes)", d->index, *offset, *len, size);
    return false;
  }
  return true;
}

static int io_failed(struct blk_dev *d, const char *what, u64 offset, int st) {
  return cmd_fail(STATUS_FAILED, "disk %u: %s at offset %lu failed: %s", d->index, what, offset, blk_error_name(st));
}

static int disk_write_or_verify(struct blk_dev *d, bool verify, u64 offset, u64 len, u64 seed) {
  if (!verify && d->ro) return cmd_fail(STATUS_FAILED, "disk %u is read-only", d->index);
  struct pattern_job job = {.seed = seed, .verify = verify};
  for (u64 done = 0; done < len;) {
    if (console_interrupted()) return cmd_fail(STATUS_INTERRUPTED, "interrupted after %lu bytes", done);
    u64 chunk = MIN(len - done, IO_BUF_SIZE);
    job.buf = io_buf, job.offset = offset + done, job.len = chunk;
    if (verify) {
      int st = blk_rw(d, false, offset + done, io_buf, chunk);
      if (st) return io_failed(d, "read", offset + done, st);
      for (u32 i = 0; i < MAX_CPUS; i++) job.mismatch[i] = ~0UL;
      smp_run(pattern_worker, &job);
      u64 first = ~0UL;
      for (u32 i = 0; i < MAX_CPUS; i++) first = MIN(first, job.mismatch[i]);
      if (first != ~0UL) {
        printf("disk verify mismatch offset=%lu\n", first);
        return STATUS_FAILED;
      }
    } else {
      smp_run(pattern_worker, &job);
      int st = blk_rw(d, true, offset + done, io_buf, chunk);
      if (st) return io_failed(d, "write", offset + done, st);
    }
    done += chunk;
  }
  if (!verify) {
    int st = blk_flush(d);
    if (st) return io_failed(d, "flush", 0, st);
    printf("disk write ok\n");
  } else {
    printf("disk verify ok\n");
  }
  return STATUS_OK;
}

static int disk_read(struct blk_dev *d, u64 offset, u64 len) {
  struct sha256 h;
  sha256_init(&h);
  for (u64 done = 0; done < len;) {
    if (console_interrupted()) return cmd_fail(STATUS_INTERRUPTED, "interrupted after %lu bytes", done);
    u64 chunk = MIN(len - done, IO_BUF_SIZE);
    int st = blk_rw(d, false, offset + done, io_buf, chunk);
    if (st) return io_failed(d, "read", offset + done, st);
    sha256_update(&h, io_buf, chunk);
    done += chunk;
  }
  u8 digest[32];
  char hex[65];
  sha256_final(&h, digest);
  for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  printf("disk read sha256=%s\n", hex);
  return STATUS_OK;
}

/* ---- disk bench ---- */

struct rand_job {
  struct blk_dev *d;
  bool write;
  u64 region_start, region_blocks;
  u64 deadline_us;
  u64 ops[MAX_CPUS];
  int status[MAX_CPUS];
};

static void rand_worker(u32 worker, u32 workers UNUSED, void *arg) {
  struct rand_job *j = arg;
  u8 *bufs = io_buf + (u64)worker * BENCH_RAND_DEPTH * BENCH_RAND_BLOCK;
  int slot[BENCH_RAND_DEPTH];
  u64 rng = splitmix64(rdtsc() ^ worker), ops = 0;
  for (int i = 0; i < BENCH_RAND_DEPTH; i++) slot[i] = -1;
  /* Every worker keeps BENCH_RAND_DEPTH requests in flight; more workers than the queue can hold
   * would wait on each other's slots. */
  if (worker >= j->d->nslots / BENCH_RAND_DEPTH) return;
  bool stop = false;
  for (;;) {
    bool busy = false;
    for (int i = 0; i < BENCH_RAND_DEPTH; i++) busy |= slot[i] >= 0;
    if (stop && !busy) break;
    if (time_us() >= j->deadline_us || console_interrupted()) stop = true;
    for (int i = 0; i < BENCH_RAND_DEPTH; i++) {
      if (slot[i] >= 0) {
        if (!blk_done(j->d, slot[i])) continue;
        int st = blk_wait(j->d, slot[i]);
        if (st && !j->status[worker]) j->status[worker] = st;
        slot[i] = -1;
        ops++;
      }
      if (!stop) {
        rng = splitmix64(rng);
        u64 block = rng % j->region_blocks;
        u64 sector = (j->region_start + block * BENCH_RAND_BLOCK) / SECTOR_SIZE;
        slot[i] = blk_submit(j->d, j->write ? 1 : 0, sector, bufs + i * BENCH_RAND_BLOCK, BENCH_RAND_BLOCK);
      }
    }
    cpu_relax();
  }
  j->ops[worker] = ops;
}

static int bench_seq(struct blk_dev *d, bool write, u64 start, u64 size, u64 *mibps) {
  u64 t0 = time_us(), done = 0;
  while (done < size && time_us() - t0 < BENCH_SEQ_LIMIT_US) {
    if (console_interrupted()) return STATUS_INTERRUPTED;
    u64 chunk = MIN(size - done, IO_BUF_SIZE);
    int st = blk_rw(d, write, start + done, io_buf, chunk);
    if (st) return io_failed(d, write ? "bench write" : "bench read", start + done, st);
    done += chunk;
  }
  if (write) {
    int st = blk_flush(d);
    if (st) return io_failed(d, "bench flush", 0, st);
  }
  u64 us = MAX(time_us() - t0, 1UL);
  *mibps = done * 1000000 / us >> 20;
  return STATUS_OK;
}

static int bench_rand(struct blk_dev *d, bool write, u64 start, u64 size, u64 *iops) {
  static struct rand_job job;
  memset(&job, 0, sizeof job);
  job.d = d, job.write = write, job.region_start = start, job.region_blocks = size / BENCH_RAND_BLOCK;
  u64 t0 = time_us();
  job.deadline_us = t0 + BENCH_RAND_LIMIT_US;
  smp_run(rand_worker, &job);
  if (write) {
    int st = blk_flush(d);
    if (st) return io_failed(d, "bench flush", 0, st);
  }
  u64 us = MAX(time_us() - t0, 1UL), ops = 0;
  for (u32 i = 0; i < MAX_CPUS; i++) {
    ops += job.ops[i];
    if (job.status[i]) return io_failed(d, write ? "bench random write" : "bench random read", 0, job.status[i]);
  }
  if (console_interrupted()) return STATUS_INTERRUPTED;
  *iops = ops * 1000000 / us;
  return STATUS_OK;
}

static int disk_bench(struct blk_dev *d) {
  u64 size = d->sectors * SECTOR_SIZE;
  u64 region = ALIGN_DOWN(MIN(size, BENCH_REGION_MAX), BENCH_RAND_BLOCK);
  if (region < 64 * 1024) return cmd_fail(STATUS_FAILED, "disk %u is too small to benchmark (needs 64 KiB)", d->index);
  if (d->ro) return cmd_fail(STATUS_FAILED, "disk %u is read-only", d->index);
  u64 start = ALIGN_DOWN(size - region, BENCH_RAND_BLOCK);
  printf("disk bench: disk %u region offset=%lu bytes=%lu (overwritten)\n", d->index, start, region);
  pattern_fill(io_buf, 0xBE7C4, 0, IO_BUF_SIZE);
  u64 sw, sr, rr, rw;
  int st;
  if ((st = bench_seq(d, true, start, region, &sw)) || (st = bench_seq(d, false, start, region, &sr)) ||
      (st = bench_rand(d, false, start, region, &rr)) || (st = bench_rand(d, true, start, region, &rw))) {
    if (st == STATUS_INTERRUPTED) return cmd_fail(STATUS_INTERRUPTED, "disk bench interrupted");
    return st;
  }
  printf("disk bench seq_read_mibps=%lu seq_write_mibps=%lu rand_read_iops=%lu rand_write_iops=%lu\n", sr, sw, rr, rw);
  return STATUS_OK;
}

int cmd_disk(int argc, char **argv) {
  const char *usage = "usage: disk write|verify I OFFSET LENGTH SEED | disk read I OFFSET LENGTH | disk bench I";
  if (argc < 3) return cmd_fail(STATUS_USAGE, "%s", usage);
  const char *sub = argv[1];
  int status;
  bool rw = strcmp(sub, "write") == 0, verify = strcmp(sub, "verify") == 0;
  if (rw || verify) {
    if (argc != 6) return cmd_fail(STATUS_USAGE, "usage: disk %s I OFFSET LENGTH SEED", sub);
    struct blk_dev *d = disk_arg(argv[2], &status);
    if (!d) return status;
    u64 offset, len, seed;
    if (!range_args(d, argv + 3, &offset, &len, &status)) return status;
    if (!arg_u64(argv[5], "SEED", &seed)) return STATUS_USAGE;
    return disk_write_or_verify(d, verify, offset, len, seed);
  }
  if (strcmp(sub, "read") == 0) {
    if (argc != 5) return cmd_fail(STATUS_USAGE, "usage: disk read I OFFSET LENGTH");
    struct blk_dev *d = disk_arg(argv[2], &status);
    if (!d) return status;
    u64 offset, len;
    if (!range_args(d, argv + 3, &offset, &len, &status)) return status;
    return disk_read(d, offset, len);
  }
  if (strcmp(sub, "bench") == 0) {
    if (argc != 3) return cmd_fail(STATUS_USAGE, "usage: disk bench I");
    struct blk_dev *d = disk_arg(argv[2], &status);
    if (!d) return status;
    return disk_bench(d);
  }
  return cmd_fail(STATUS_USAGE, "unknown disk command '%s'; %s", sub, usage);
}
