#include "ring.h"
#include "console.h"
#include "cpu.h"
#include "irq.h"
#include "lib.h"
#include "mm.h"
#include "power.h"

struct tss {
  u32 reserved0;
  u64 rsp0, rsp1, rsp2;
  u64 reserved1;
  u64 ist[7];
  u64 reserved2;
  u16 reserved3, iomap_base;
} PACKED;
STATIC_ASSERT(sizeof(struct tss) == 104, "64-bit TSS is 104 bytes");

static struct tss tss[MAX_CPUS + 1] ALIGNED(16);
extern u64 gdt_tss_slots[];
extern struct { u16 limit; u64 base; } PACKED kernel_gdt_desc;
static volatile u64 events;

void cpu_setup_kernel(u32 index, u64 kernel_stack_top) {
  __asm__ volatile(
      "lgdt %0\n"
      "pushq %1\n"
      "leaq 1f(%%rip), %%rax\n"
      "pushq %%rax\n"
      "lretq\n"
      "1:\n"
      "mov %2, %%eax\n"
      "mov %%eax, %%ds\n"
      "mov %%eax, %%es\n"
      "mov %%eax, %%ss\n" ::"m"(kernel_gdt_desc),
      "i"(SEL_CODE64), "i"(SEL_DATA)
      : "rax", "memory");
  idt_load();
  struct tss *t = &tss[index];
  memset(t, 0, sizeof *t);
  t->rsp0 = kernel_stack_top;
  t->iomap_base = sizeof *t; /* no I/O bitmap: ring 3 port I/O faults */
  u64 b = (u64)t;
  gdt_tss_slots[2 * index] = (sizeof *t - 1) | (b & 0xFFFFFF) << 16 | 0x89UL << 40 | ((b >> 24) & 0xFF) << 56;
  gdt_tss_slots[2 * index + 1] = b >> 32;
  __asm__ volatile("ltr %w0" ::"r"((u16)(SEL_TSS_BASE + 16 * index)));
}

struct cpu_local *user_stack_alloc(u32 index, u32 apic_id, bool bsp) {
  struct cpu_local *c = alloc_aligned(USER_STACK_SIZE / PAGE_SIZE, USER_STACK_SIZE, false);
  if (!c) return NULL;
  c->index = index, c->apic_id = apic_id, c->bsp = bsp;
  return c;
}

void enter_user(void (*fn)(void *), void *arg, struct cpu_local *cpu) {
  u64 top = (u64)cpu + USER_STACK_SIZE - 16;
  __asm__ volatile(
      "pushq %0\n"  /* SS */
      "pushq %1\n"  /* RSP */
      "pushq $0x202\n" /* RFLAGS: IF */
      "pushq %2\n"  /* CS */
      "pushq %3\n"  /* RIP */
      "iretq\n" ::"i"(SEL_USER_DATA | RPL_USER),
      "r"(top), "i"(SEL_USER_CODE64 | RPL_USER), "r"((u64)fn), "D"(arg)
      : "memory");
  __builtin_unreachable();
}

u64 irq_event_count(void) { return __atomic_load_n(&events, __ATOMIC_ACQUIRE); }
void irq_event(void) { __atomic_add_fetch(&events, 1, __ATOMIC_ACQ_REL); }

void wait_event(u64 seen) {
  if (!cpu_in_kernel()) {
    syscall3(SYS_WAIT, seen, 0, 0);
    return;
  }
  /* Ring 0 (boot code before interrupts are on, or inside a system call with IF clear). */
  if (irq_event_count() == seen) sti_hlt();
  cli();
}

/* Ring 0 side of the system calls; f is the #UD frame of the `ud2` in ring 3. */
void sys_dispatch(struct irq_frame *f) {
  switch (f->rax) {
    case SYS_CONSOLE_WRITE: console_write((const char *)f->rdi); f->rax = 0; break;
    case SYS_WAIT: wait_event(f->rdi); f->rax = 0; break;
    case SYS_POWEROFF: power_off((u32)f->rdi);
    case SYS_REBOOT: reboot();
    case SYS_OUTB: raw_outb((u16)f->rdi, (u8)f->rsi); f->rax = 0; break;
    case SYS_OUTL: raw_outl((u16)f->rdi, (u32)f->rsi); f->rax = 0; break;
    case SYS_INB: f->rax = raw_inb((u16)f->rdi); break;
    case SYS_RDMSR: f->rax = raw_rdmsr((u32)f->rdi); break;
    case SYS_WRMSR: raw_wrmsr((u32)f->rdi, f->rsi); f->rax = 0; break;
    case SYS_CPUID: *(struct cpuid_regs *)f->rdx = raw_cpuid((u32)f->rdi, (u32)f->rsi); f->rax = 0; break;
    default: f->rax = ~0UL; break;
  }
}
