/* AP bring-up (INIT, SIPI, SIPI through the real-mode trampoline in trampoline.S) and the work
 * hand-over: the BSP writes a job into an AP's struct cpu and wakes it with an IPI. */
#include "smp.h"
#include "acpi.h"
#include "cpu.h"
#include "irq.h"
#include "layout.h"
#include "lib.h"
#include "mm.h"
#include "time.h"
#include "ring.h"

#define AP_STACK_PAGES 4

struct cpu {
  u32 apic_id, index;
  u64 kernel_stack_top;
  struct cpu_local *local;
  volatile u32 online;
  smp_work_fn fn;
  void *arg;
  u32 worker, workers;
  volatile u32 work_seq, done_seq;
};

static struct cpu cpus[MAX_CPUS];
static u32 cpu_count, bsp_apic_id;
static volatile u32 online_count = 1;

extern u8 trampoline_start[], trampoline_end[];
extern u8 t_gdt[], t_gdt_desc[], t_far32[], t_far64[], t_cr3[], t_stack[], t_arg[], t_entry[], t_code32[], t_code64[];

/* Ring 3 on an AP: run the work the BSP hands over, sleep in between (the BSP's IPI wakes us). */
static void ap_user_loop(void *arg) {
  struct cpu *c = arg;
  for (;;) {
    u64 seen = irq_event_count();
    u32 seq = __atomic_load_n(&c->work_seq, __ATOMIC_ACQUIRE);
    if (seq != c->done_seq) {
      c->fn(c->worker, c->workers, c->arg);
      __atomic_store_n(&c->done_seq, seq, __ATOMIC_RELEASE);
      continue;
    }
    wait_event(seen);
  }
}

/* Ring 0 on an AP, straight from the trampoline. */
static NORETURN void ap_main(struct cpu *c) {
  cpu_setup_kernel(c->index + 1, c->kernel_stack_top);
  lapic_enable_this_cpu();
  __atomic_store_n(&c->online, 1, __ATOMIC_RELEASE);
  __atomic_add_fetch(&online_count, 1, __ATOMIC_ACQ_REL);
  enter_user(ap_user_loop, c, c->local);
}

static void patch32(u8 *base, u8 *field, u32 v) { *(u32 *)(base + (field - trampoline_start)) = v; }
static void patch64(u8 *base, u8 *field, u64 v) { *(u64 *)(base + (field - trampoline_start)) = v; }

static bool start_ap(u8 *tramp, struct cpu *c) {
  u8 *stack = alloc_pages(AP_STACK_PAGES);
  c->local = user_stack_alloc(c->index, c->apic_id, false);
  if (!stack || !c->local) return false;
  c->kernel_stack_top = (u64)stack + AP_STACK_PAGES * PAGE_SIZE;
  patch64(tramp, t_stack, c->kernel_stack_top);
  patch64(tramp, t_arg, (u64)c);
  barrier();
  u8 page = (u8)((u64)tramp >> 12);
  lapic_send_init(c->apic_id);
  delay_us(10);
  for (int attempt = 0; attempt < 2; attempt++) {
    lapic_send_sipi(c->apic_id, page);
    /* KVM starts the AP at once; a slow host (PVM, TCG) gets up to a second before the retry. */
    u64 limit = attempt == 0 ? 10000 : 1000000;
    u64 start = time_us();
    while (time_us() - start < limit)
      if (__atomic_load_n(&c->online, __ATOMIC_ACQUIRE)) return true;
  }
  lapic_send_init(c->apic_id); /* park it again so it cannot run a trampoline we re-patch */
  if (__atomic_exchange_n(&c->online, 0, __ATOMIC_ACQ_REL)) __atomic_sub_fetch(&online_count, 1, __ATOMIC_ACQ_REL);
  return false;
}

void smp_init(void) {
  static void (*const ap_entry)(struct cpu *) = ap_main;
  bsp_apic_id = lapic_id();
  cpu_count = platform.cpu_count;
  for (u32 i = 0; i < cpu_count; i++) cpus[i].apic_id = platform.apic_ids[i], cpus[i].index = i;
  for (u32 i = 0; i < cpu_count; i++)
    if (cpus[i].apic_id == bsp_apic_id) cpus[i].online = 1;
  irq_register(VEC_WAKE, NULL);
  if (cpu_count <= 1) return;

  u64 low = mm_low_page();
  if (!low) {
    printf("warning: no free page below 1 MiB for the AP trampoline: running on the boot CPU only\n");
    return;
  }
  u8 *tramp = (u8 *)low;
  usize size = (usize)(trampoline_end - trampoline_start);
  memcpy(tramp, trampoline_start, size);
  u32 base = (u32)low;
  patch32(tramp, t_gdt_desc + 2, base + (u32)(t_gdt - trampoline_start));
  patch32(tramp, t_far32, base + (u32)(t_code32 - trampoline_start));
  patch32(tramp, t_far64, base + (u32)(t_code64 - trampoline_start));
  patch32(tramp, t_cr3, (u32)mm_cr3());
  patch64(tramp, t_entry, (u64)ap_entry);

  for (u32 i = 0; i < cpu_count; i++) {
    if (cpus[i].online) continue;
    if (!start_ap(tramp, &cpus[i])) printf("warning: cpu apic_id=%u did not start (INIT/SIPI unanswered)\n", cpus[i].apic_id);
  }
}

u32 smp_cpu_count(void) { return cpu_count ? cpu_count : 1; }
u32 smp_online_count(void) { return online_count; }

void smp_run(smp_work_fn fn, void *arg) {
  u32 workers = online_count, w = 1;
  struct cpu *used[MAX_CPUS];
  u32 n = 0;
  for (u32 i = 0; i < cpu_count && w < workers; i++) {
    struct cpu *c = &cpus[i];
    if (c->apic_id == bsp_apic_id || !c->online) continue;
    c->fn = fn, c->arg = arg, c->worker = w++, c->workers = workers;
    __atomic_store_n(&c->work_seq, c->work_seq + 1, __ATOMIC_RELEASE);
    lapic_send_ipi(c->apic_id, VEC_WAKE);
    used[n++] = c;
  }
  fn(0, workers, arg);
  for (u32 i = 0; i < n; i++)
    while (__atomic_load_n(&used[i]->done_seq, __ATOMIC_ACQUIRE) != used[i]->work_seq) cpu_relax();
}
