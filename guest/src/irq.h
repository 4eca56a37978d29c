/* IDT, exception reporting, LAPIC and IOAPIC. */
#pragma once
#include "types.h"

struct irq_frame {
  u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
  u64 vector, error, rip, cs, rflags, rsp, ss;
};

typedef void (*irq_handler_t)(u32 vector);

void idt_init(void);
void idt_load(void);
void irq_register(u8 vector, irq_handler_t fn);
/* Masks the legacy 8259 PICs (remapped out of the exception range first). */
void pic_disable(void);

void lapic_init(u64 base);
void lapic_enable_this_cpu(void);
u32 lapic_id(void);
void lapic_eoi(void);
void lapic_send_init(u32 apic_id);
void lapic_send_sipi(u32 apic_id, u8 vector_page);
void lapic_send_ipi(u32 apic_id, u8 vector);
/* Timer in periodic mode at hz; needs lapic_timer_khz. */
void lapic_timer_start_periodic(u32 hz);
/* Measures the LAPIC timer rate against the TSC (or returns the hypervisor's value). */
u64 lapic_timer_calibrate(u64 tsc_khz);
/* Counts LAPIC timer ticks over a TSC-independent interval: used only when no TSC source exists. */
u64 lapic_timer_read_current(void);
void lapic_timer_oneshot_max(void);
void lapic_timer_stop(void);

/* Routes GSI to vector on the BSP. Returns false when no IOAPIC covers the GSI. */
bool ioapic_route(u32 gsi, u8 vector, bool level, bool active_low, u32 dest_apic_id);
