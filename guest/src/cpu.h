/* x86-64 instructions the guest needs, as inline functions. Nothing here touches SSE, XSAVE,
 * cmpxchg16b or int3: PVM (see docs/guest.md) cannot emulate them. */
#pragma once
#include "types.h"

/* The guest runs its shell and workloads in ring 3 and keeps ring 0 for boot, interrupts and a few
 * system calls (see docs/guest.md: under PVM, ring-0 code of a guest that is not PVM-aware is
 * emulated instruction by instruction while ring-3 code runs natively). The privileged primitives
 * below work in both rings: in ring 3 they become system calls. */
static inline bool cpu_in_kernel(void) {
  u16 cs;
  __asm__ volatile("mov %%cs, %0" : "=r"(cs));
  return (cs & 3) == 0;
}

enum syscall_nr {
  SYS_CONSOLE_WRITE = 1, /* rdi = NUL-terminated string */
  SYS_WAIT,              /* rdi = event count seen; sleeps until the next interrupt unless it moved */
  SYS_POWEROFF,          /* rdi = status */
  SYS_REBOOT,
  SYS_OUTB,              /* rdi = port, rsi = value */
  SYS_OUTL,
  SYS_INB,               /* rdi = port; returns the byte */
  SYS_RDMSR,             /* rdi = msr; returns the value */
  SYS_WRMSR,             /* rdi = msr, rsi = value */
  SYS_CPUID,             /* rdi = leaf, rsi = subleaf, rdx = struct cpuid_regs * */
};
/* A system call is `ud2` executed in ring 3 (rax = number): every hypervisor delivers the #UD to the
 * guest's IDT, which PVM's bootstrap mode does not promise for SYSCALL or INT n. */
static inline u64 syscall3(u64 nr, u64 a, u64 b, u64 c) {
  u64 r;
  __asm__ volatile("ud2" : "=a"(r) : "a"(nr), "D"(a), "S"(b), "d"(c) : "memory");
  return r;
}

static inline void raw_outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void raw_outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 raw_inb(u16 port) {
  u8 v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline void outb(u16 port, u8 v) {
  if (cpu_in_kernel()) raw_outb(port, v);
  else syscall3(SYS_OUTB, port, v, 0);
}
static inline void outl(u16 port, u32 v) {
  if (cpu_in_kernel()) raw_outl(port, v);
  else syscall3(SYS_OUTL, port, v, 0);
}
static inline u8 inb(u16 port) { return cpu_in_kernel() ? raw_inb(port) : (u8)syscall3(SYS_INB, port, 0, 0); }

static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline u8 mmio_read8(u64 addr) { return *(volatile u8 *)addr; }

static inline u64 rdtsc(void) {
  u32 lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((u64)hi << 32) | lo;
}

static inline u64 raw_rdmsr(u32 msr) {
  u32 lo, hi;
  __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
  return ((u64)hi << 32) | lo;
}
static inline void raw_wrmsr(u32 msr, u64 v) {
  __asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}
static inline u64 rdmsr(u32 msr) { return cpu_in_kernel() ? raw_rdmsr(msr) : syscall3(SYS_RDMSR, msr, 0, 0); }
static inline void wrmsr(u32 msr, u64 v) {
  if (cpu_in_kernel()) raw_wrmsr(msr, v);
  else syscall3(SYS_WRMSR, msr, v, 0);
}

struct cpuid_regs { u32 eax, ebx, ecx, edx; };
static inline struct cpuid_regs raw_cpuid(u32 leaf, u32 subleaf) {
  struct cpuid_regs r;
  __asm__ volatile("cpuid" : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx) : "a"(leaf), "c"(subleaf));
  return r;
}
/* In ring 3 a hypervisor may answer CPUID with the host's values (PVM does without CPUID
 * faulting), so ask ring 0. */
static inline struct cpuid_regs cpuid(u32 leaf, u32 subleaf) {
  if (cpu_in_kernel()) return raw_cpuid(leaf, subleaf);
  struct cpuid_regs r;
  syscall3(SYS_CPUID, leaf, subleaf, (u64)&r);
  return r;
}

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void mfence(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
/* sti takes effect after the next instruction, so no interrupt can slip in between the two. */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }
static inline void hlt(void) { __asm__ volatile("hlt" ::: "memory"); }

static inline u64 read_cr2(void) {
  u64 v;
  __asm__ volatile("mov %%cr2, %0" : "=r"(v));
  return v;
}
static inline void write_cr3(u64 v) { __asm__ volatile("mov %0, %%cr3" ::"r"(v) : "memory"); }

typedef struct { volatile u32 locked; } spinlock_t;
static inline void spin_lock(spinlock_t *l) {
  while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
    while (__atomic_load_n(&l->locked, __ATOMIC_RELAXED)) cpu_relax();
}
static inline void spin_unlock(spinlock_t *l) { __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE); }
