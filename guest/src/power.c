#include "power.h"
#include "acpi.h"
#include "console.h"
#include "cpu.h"
#include "layout.h"
#include "lib.h"

#define SLP_EN (1u << 5)

static NORETURN void halt_forever(void) {
  for (;;) {
    cli();
    hlt();
  }
}

static NORETURN void do_power_off(u32 status, bool locked) {
  if (!cpu_in_kernel()) {
    syscall3(SYS_POWEROFF, status, 0, 0);
    __builtin_unreachable();
  }
  char line[64];
  snprintf(line, sizeof line, "lifeboat: poweroff status=%u\n", status);
  if (locked) console_write(line);
  else console_write_unlocked(line);
  cli();
  raw_outl(EXIT_STATUS_PORT, status);
  /* Still running: no exit-status device. Hardware-reduced ACPI power-off, if the tables offer it. */
  if (platform.s5_found && platform.sleep_ctl_addr) {
    u8 v = (u8)((platform.s5_slp_typ & 7) << 2 | SLP_EN);
    if (platform.sleep_ctl_space == 1) raw_outb((u16)platform.sleep_ctl_addr, v);
    else if (platform.sleep_ctl_space == 0) *(volatile u8 *)platform.sleep_ctl_addr = v;
  }
  console_write_unlocked("lifeboat: no exit-status device answered; halted\n");
  halt_forever();
}

void power_off(u32 status) { do_power_off(status, true); }
void power_off_unlocked(u32 status) { do_power_off(status, false); }

void reboot(void) {
  if (!cpu_in_kernel()) {
    syscall3(SYS_REBOOT, 0, 0, 0);
    __builtin_unreachable();
  }
  console_write("lifeboat: reboot\n");
  cli();
  raw_outb(I8042_COMMAND_PORT, I8042_RESET_COMMAND);
  /* No i8042: a triple fault resets every PC-compatible machine. */
  static const struct { u16 limit; u64 base; } PACKED empty_idt = {0, 0};
  __asm__ volatile("lidt %0; ud2" ::"m"(empty_idt));
  halt_forever();
}
