/* mem dirty and counter: workloads for memory replication and snapshot tests. */
#include "commands.h"
#include "console.h"
#include "cpu.h"
#include "layout.h"
#include "lib.h"
#include "mm.h"
#include "smp.h"
#include "time.h"

struct dirty_job {
  u8 *base;
  u64 pages, generation;
};

static void touch_page(u8 *page, u64 generation, u64 k) {
  /* Two words per page: enough to dirty it, and different in every round. */
  ((volatile u64 *)page)[0] = generation << 32 | k;
  ((volatile u64 *)page)[PAGE_SIZE / 16] = ~(generation << 32 | k);
}

static void dirty_worker(u32 worker, u32 workers, void *arg) {
  struct dirty_job *j = arg;
  u64 per = (j->pages + workers - 1) / workers;
  u64 first = MIN(j->pages, per * worker), last = MIN(j->pages, first + per);
  for (u64 k = first; k < last; k++) touch_page(j->base + k * PAGE_SIZE, j->generation, k);
}

int cmd_mem(int argc, char **argv) {
  static u64 generation;
  if (argc < 3 || argc > 4 || strcmp(argv[1], "dirty") != 0) return cmd_fail(STATUS_USAGE, "usage: mem dirty PAGES [RATE]");
  u64 pages, rate = 0;
  if (!arg_u64(argv[2], "PAGES", &pages)) return STATUS_USAGE;
  if (argc == 4 && !arg_u64(argv[3], "RATE", &rate)) return STATUS_USAGE;
  if (!pages) return cmd_fail(STATUS_USAGE, "PAGES must be at least 1");
  u64 start, bytes;
  mm_largest_free(&start, &bytes);
  if (pages > bytes / PAGE_SIZE)
    return cmd_fail(STATUS_FAILED, "mem dirty: %lu pages do not fit in free memory (%lu pages free); give the VM more memory",
                    pages, bytes / PAGE_SIZE);
  struct dirty_job job = {(u8 *)start, pages, ++generation};
  if (!rate) {
    smp_run(dirty_worker, &job);
    printf("mem dirty pages=%lu\n", pages);
    return STATUS_OK;
  }
  /* Paced on the BSP: RATE pages per second, cycling through the region, until Ctrl-C. */
  u64 t0 = ticks(), written = 0, next = 0;
  while (!console_interrupted()) {
    u64 due = (ticks() - t0) * rate / TICK_HZ;
    if (written >= due) {
      wait_for_interrupt();
      continue;
    }
    for (; written < due && !console_interrupted(); written++) {
      touch_page(job.base + next * PAGE_SIZE, job.generation + written / pages, next);
      if (++next == pages) next = 0;
    }
  }
  printf("mem dirty pages=%lu\n", written);
  return STATUS_OK;
}

int cmd_counter(int argc, char **argv UNUSED) {
  if (argc != 1) return cmd_fail(STATUS_USAGE, "usage: counter");
  const u64 period = TICK_HZ / COUNTER_HZ;
  u64 n = 0, next = ticks() + period;
  while (!console_interrupted()) {
    u64 now = ticks();
    if (now < next) {
      wait_for_interrupt();
      continue;
    }
    printf("counter %lu\n", ++n);
    /* After a long stall (a paused or restored VM) resynchronise instead of printing a burst. */
    next = now - next > period ? now + period : next + period;
  }
  return STATUS_OK;
}
