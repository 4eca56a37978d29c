/* Ring 0 / ring 3 split. Ring 0 (the "supervisor") boots, takes interrupts and serves the system
 * calls in cpu.h; everything else, the shell and the workloads, runs in ring 3 in the same identity
 * address space (all pages user-accessible). */
#pragma once
#include "types.h"
#include "layout.h"

/* Lives at the base of each CPU's ring-3 stack, so ring-3 code finds it from its stack pointer. */
struct cpu_local {
  u32 index;
  u32 apic_id;
  bool bsp;
};

static inline struct cpu_local *this_cpu(void) {
  u64 sp;
  __asm__ volatile("mov %%rsp, %0" : "=r"(sp));
  return (struct cpu_local *)(sp & ~(USER_STACK_SIZE - 1));
}

/* Ring 0: loads the kernel GDT, the IDT and TSS slot `slot` (0 = BSP, 1 + i = AP i; interrupts from ring 3 switch to
 * kernel_stack_top). */
void cpu_setup_kernel(u32 slot, u64 kernel_stack_top);
/* Allocates a ring-3 stack for CPU index, cpu_local at its base (NULL when out of memory). */
struct cpu_local *user_stack_alloc(u32 index, u32 apic_id, bool bsp);
/* Ring 0: drops to ring 3 and calls fn(arg) on the stack whose base holds cpu. */
NORETURN void enter_user(void (*fn)(void *), void *arg, struct cpu_local *cpu);

/* Interrupt bookkeeping shared by both rings: every external interrupt bumps the count. */
u64 irq_event_count(void);
void irq_event(void);
/* Sleeps until an interrupt arrives unless the count already moved past seen (no lost wake-ups). */
void wait_event(u64 seen);
