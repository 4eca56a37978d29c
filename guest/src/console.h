/* The serial console: an 8250/16550 UART (COM1), polled output, interrupt-driven input. */
#pragma once
#include "types.h"

void console_init(u16 port);
/* Prints a string under the console lock ("\n" becomes "\r\n" on the wire). */
void console_write(const char *s);
/* Lock-free output for panics; may interleave with other CPUs. */
void console_write_unlocked(const char *s);
/* Enables the receive interrupt once the IOAPIC routes the UART's interrupt to us. */
void console_enable_rx_interrupt(void);
void console_irq(void);
/* Next input byte, or -1 when none is buffered (never blocks). */
int console_try_getc(void);
/* Ctrl-C (0x03) received since the last console_clear_interrupt(). */
bool console_interrupted(void);
void console_clear_interrupt(void);
u16 console_port(void);
