/* TSC frequency, the BSP's LAPIC tick, and delays. */
#pragma once
#include "types.h"

extern u64 tsc_khz;
extern const char *tsc_source;

/* Chooses the TSC frequency (see docs/guest.md for the order) and starts the tick on this CPU. */
void time_init(u64 cmdline_tsc_khz);
/* Starts the periodic LAPIC timer on the calling CPU (the BSP). */
void time_start_tick(void);
u64 time_us(void);         /* microseconds since the guest's entry */
void delay_us(u64 us);     /* busy wait */
u64 ticks(void);           /* LAPIC timer interrupts on the BSP since boot (TICK_HZ per second) */
void timer_irq(void);
/* Halts until the next interrupt (with interrupts enabled); use in wait loops on the BSP. */
void wait_for_interrupt(void);
