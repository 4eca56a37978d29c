#include "irq.h"
#include "acpi.h"
#include "cpu.h"
#include "layout.h"
#include "lib.h"
#include "console.h"
#include "power.h"
#include "ring.h"

struct idt_entry {
  u16 offset_lo, selector;
  u8 ist, type_attr;
  u16 offset_mid;
  u32 offset_hi, zero;
} PACKED;

static struct idt_entry idt[256] ALIGNED(16);
static struct { u16 limit; u64 base; } PACKED idt_desc;
static irq_handler_t handlers[256];
extern u8 isr_stubs[];

static const char *const exception_names[32] = {
    "divide error", "debug", "NMI", "breakpoint", "overflow", "bound range", "invalid opcode",
    "device not available", "double fault", "coprocessor overrun", "invalid TSS", "segment not present",
    "stack fault", "general protection", "page fault", "reserved", "x87 error", "alignment check",
    "machine check", "SIMD error", "virtualization", "control protection"};

void idt_init(void) {
  for (int v = 0; v < 256; v++) {
    u64 addr = (u64)isr_stubs + 16 * (u64)v;
    idt[v] = (struct idt_entry){(u16)addr, SEL_CODE64, 0, 0x8E, (u16)(addr >> 16), (u32)(addr >> 32), 0};
  }
  idt_desc.limit = sizeof idt - 1;
  idt_desc.base = (u64)idt;
  idt_load();
}

void idt_load(void) { __asm__ volatile("lidt %0" ::"m"(idt_desc)); }

void irq_register(u8 vector, irq_handler_t fn) { handlers[vector] = fn; }

static void panic_exception(struct irq_frame *f) {
  char line[256];
  const char *name = f->vector < 32 && exception_names[f->vector] ? exception_names[f->vector] : "exception";
  snprintf(line, sizeof line, "\nerror: guest panic: %s (vector %lu) on cpu apic_id=%u err=0x%lx rip=0x%lx rsp=0x%lx cr2=0x%lx cs=0x%lx\n",
           name, f->vector, lapic_id(), f->error, f->rip, f->rsp, read_cr2(), f->cs);
  console_write_unlocked(line);
  power_off_unlocked(STATUS_PANIC);
}

void sys_dispatch(struct irq_frame *f);

void isr_dispatch(struct irq_frame *f) {
  u64 v = f->vector;
  if (v == 6 && (f->cs & 3) == RPL_USER && *(const u16 *)f->rip == 0x0B0F) { /* ud2 from ring 3: a system call */
    sys_dispatch(f);
    f->rip += 2;
    return;
  }
  if (v < 32) panic_exception(f);
  if (v == VEC_SPURIOUS) return;
  if (v >= VEC_PIC_BASE && v < VEC_PIC_BASE + 16) return; /* a masked 8259 can still send spurious IRQ7/15 */
  if (handlers[v]) handlers[v]((u32)v);
  irq_event();
  lapic_eoi();
}

void pic_disable(void) {
  /* ICW1-4: remap both PICs to VEC_PIC_BASE.. so a stray ExtINT cannot look like an exception. */
  outb(0x20, 0x11);
  outb(0xA0, 0x11);
  outb(PIC1_DATA_PORT, VEC_PIC_BASE);
  outb(PIC2_DATA_PORT, VEC_PIC_BASE + 8);
  outb(PIC1_DATA_PORT, 4);
  outb(PIC2_DATA_PORT, 2);
  outb(PIC1_DATA_PORT, 1);
  outb(PIC2_DATA_PORT, 1);
  outb(PIC1_DATA_PORT, 0xFF);
  outb(PIC2_DATA_PORT, 0xFF);
}

/* ---- Local APIC (xAPIC MMIO) ---- */
#define LAPIC_ID 0x020
#define LAPIC_TPR 0x080
#define LAPIC_EOI 0x0B0
#define LAPIC_SVR 0x0F0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR 0x390
#define LAPIC_TIMER_DIV 0x3E0
#define LVT_MASKED (1u << 16)
#define LVT_PERIODIC (1u << 17)
#define ICR_PENDING (1u << 12)
#define MSR_APIC_BASE 0x1B

static u64 lapic_base = 0xFEE00000UL;
static u64 timer_khz;

static u32 lapic_read(u32 reg) { return mmio_read32(lapic_base + reg); }
static void lapic_write(u32 reg, u32 v) { mmio_write32(lapic_base + reg, v); }

void lapic_init(u64 base) {
  lapic_base = base;
  lapic_enable_this_cpu();
}

void lapic_enable_this_cpu(void) {
  u64 msr = rdmsr(MSR_APIC_BASE);
  if (!(msr & (1u << 11))) wrmsr(MSR_APIC_BASE, msr | (1u << 11));
  lapic_write(LAPIC_TPR, 0);
  lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
  lapic_write(LAPIC_LVT_LINT1, LVT_MASKED);
  lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
  lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
  lapic_write(LAPIC_SVR, 0x100 | VEC_SPURIOUS);
}

u32 lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }
void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }

static void icr_send(u32 apic_id, u32 lo) {
  for (int i = 0; i < 1000000 && (lapic_read(LAPIC_ICR_LO) & ICR_PENDING); i++) cpu_relax();
  lapic_write(LAPIC_ICR_HI, apic_id << 24);
  lapic_write(LAPIC_ICR_LO, lo);
  for (int i = 0; i < 1000000 && (lapic_read(LAPIC_ICR_LO) & ICR_PENDING); i++) cpu_relax();
}

void lapic_send_init(u32 apic_id) { icr_send(apic_id, 0x00004500); }
void lapic_send_sipi(u32 apic_id, u8 page) { icr_send(apic_id, 0x00004600 | page); }
void lapic_send_ipi(u32 apic_id, u8 vector) { icr_send(apic_id, 0x00004000 | vector); }

void lapic_timer_oneshot_max(void) {
  lapic_write(LAPIC_TIMER_DIV, 0xB); /* divide by 1 */
  lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
  lapic_write(LAPIC_TIMER_INIT, 0xFFFFFFFFu);
}
u64 lapic_timer_read_current(void) { return lapic_read(LAPIC_TIMER_CUR); }
void lapic_timer_stop(void) {
  lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
  lapic_write(LAPIC_TIMER_INIT, 0);
}

u64 lapic_timer_calibrate(u64 tsc_khz) {
  /* KVM's hypervisor timing leaf 0x40000010 gives the APIC bus rate in EBX when present. */
  struct cpuid_regs base = cpuid(0x40000000, 0);
  if ((cpuid(1, 0).ecx & (1u << 31)) && base.eax >= 0x40000010 && base.eax < 0x40010000) {
    struct cpuid_regs t = cpuid(0x40000010, 0);
    if (t.ebx) return timer_khz = t.ebx;
  }
  lapic_timer_oneshot_max();
  u64 t0 = rdtsc();
  u32 c0 = (u32)lapic_timer_read_current();
  u64 wait = tsc_khz * 2; /* 2 ms: KVM's and QEMU's LAPIC timers count exact nanoseconds */
  while (rdtsc() - t0 < wait) cpu_relax();
  u32 c1 = (u32)lapic_timer_read_current();
  u64 t1 = rdtsc();
  lapic_timer_stop();
  u64 ticks = c0 - c1;
  timer_khz = ticks * tsc_khz / (t1 - t0);
  if (!timer_khz) timer_khz = 1000000; /* 1 GHz, what KVM and QEMU emulate */
  return timer_khz;
}

void lapic_timer_start_periodic(u32 hz) {
  lapic_write(LAPIC_TIMER_DIV, 0xB);
  lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | VEC_TIMER);
  lapic_write(LAPIC_TIMER_INIT, (u32)(timer_khz * 1000 / hz));
}

/* ---- IOAPIC ---- */
#define IOAPIC_REGSEL 0x00
#define IOAPIC_WIN 0x10
#define IOAPIC_VER 0x01
#define IOAPIC_REDTBL 0x10

static u32 ioapic_read(u64 base, u32 reg) {
  mmio_write32(base + IOAPIC_REGSEL, reg);
  return mmio_read32(base + IOAPIC_WIN);
}
static void ioapic_write(u64 base, u32 reg, u32 v) {
  mmio_write32(base + IOAPIC_REGSEL, reg);
  mmio_write32(base + IOAPIC_WIN, v);
}

bool ioapic_route(u32 gsi, u8 vector, bool level, bool active_low, u32 dest) {
  for (u32 i = 0; i < platform.ioapic_count; i++) {
    const struct ioapic_info *io = &platform.ioapics[i];
    u32 pins = ((ioapic_read(io->addr, IOAPIC_VER) >> 16) & 0xFF) + 1;
    if (gsi < io->gsi_base || gsi >= io->gsi_base + pins) continue;
    u32 pin = gsi - io->gsi_base;
    u32 lo = vector | (level ? 1u << 15 : 0) | (active_low ? 1u << 13 : 0); /* fixed, physical */
    ioapic_write(io->addr, IOAPIC_REDTBL + 2 * pin + 1, dest << 24);
    ioapic_write(io->addr, IOAPIC_REDTBL + 2 * pin, lo);
    return true;
  }
  return false;
}
