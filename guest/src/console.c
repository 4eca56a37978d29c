#include "console.h"
#include "cpu.h"
#include "layout.h"

#define UART_RBR 0
#define UART_THR 0
#define UART_IER 1
#define UART_DLL 0
#define UART_DLM 1
#define UART_FCR 2
#define UART_IIR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20
#define IIR_FIFOS_ENABLED 0xC0
#define UART_TX_FIFO_SIZE 16 /* 16550A */
#define CTRL_C 0x03

static u16 port = COM1_DEFAULT_PORT;
/* Bytes the UART takes per "THR empty": 16 with the 16550A's FIFO on (its transmit FIFO is empty when
 * LSR says THRE), else 1. Each LSR poll is a VM exit, so output polls once per 16 bytes, not per byte. */
static u32 tx_burst = 1;
static u32 tx_room; /* bytes that may still be written before the next LSR poll */
static spinlock_t lock;
static volatile u8 rx_ring[1024];
static volatile u32 rx_head, rx_tail; /* head written by the IRQ handler, tail by readers */
static volatile bool interrupted;

void console_init(u16 p) {
  port = p;
  outb(port + UART_IER, 0);
  outb(port + UART_LCR, 0x80); /* DLAB: divisor 1 = 115200 baud */
  outb(port + UART_DLL, 1);
  outb(port + UART_DLM, 0);
  outb(port + UART_LCR, 0x03); /* 8N1 */
  outb(port + UART_FCR, 0x07); /* enable and clear FIFOs */
  outb(port + UART_MCR, 0x0B); /* DTR, RTS, OUT2 (routes the UART interrupt) */
  /* A 16550A reports its FIFOs on in IIR bits 7:6; an 8250/16450 has none. */
  tx_burst = (inb(port + UART_IIR) & IIR_FIFOS_ENABLED) == IIR_FIFOS_ENABLED ? UART_TX_FIFO_SIZE : 1;
  tx_room = 0;
}

u16 console_port(void) { return port; }

/* Ring 0 only (ring 3 prints through SYS_CONSOLE_WRITE, one system call per string). */
static void put_raw(char c) {
  if (tx_room == 0) {
    /* Bounded wait: a UART that never reports THR empty must not hang the guest. */
    for (int i = 0; i < 100000 && !(raw_inb(port + UART_LSR) & LSR_THR_EMPTY); i++) cpu_relax();
    tx_room = tx_burst;
  }
  raw_outb(port + UART_THR, (u8)c);
  tx_room--;
}

void console_write_unlocked(const char *s) {
  for (; *s; s++) {
    if (*s == '\n') put_raw('\r');
    put_raw(*s);
  }
}

void console_write(const char *s) {
  if (!cpu_in_kernel()) {
    syscall3(SYS_CONSOLE_WRITE, (u64)s, 0, 0);
    return;
  }
  /* Interrupts are off in ring 0 here (boot, or a system call), and no handler prints. */
  spin_lock(&lock);
  console_write_unlocked(s);
  spin_unlock(&lock);
}

void console_enable_rx_interrupt(void) {
  while (inb(port + UART_LSR) & LSR_DATA_READY) (void)inb(port + UART_RBR);
  outb(port + UART_IER, 0x01);
}

void console_irq(void) {
  for (int n = 0; n < 256 && (raw_inb(port + UART_LSR) & LSR_DATA_READY); n++) {
    u8 c = raw_inb(port + UART_RBR);
    if (c == CTRL_C) {
      interrupted = true;
      continue;
    }
    u32 next = (rx_head + 1) % sizeof rx_ring;
    if (next != rx_tail) {
      rx_ring[rx_head] = c;
      rx_head = next;
    }
  }
}

int console_try_getc(void) {
  if (rx_tail == rx_head) return -1;
  int c = rx_ring[rx_tail];
  rx_tail = (rx_tail + 1) % sizeof rx_ring;
  return c;
}

bool console_interrupted(void) { return interrupted; }
void console_clear_interrupt(void) { interrupted = false; }
