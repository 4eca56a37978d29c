/* The boot sequence: kernel_main (ring 0, at the bottom) takes what the loader gave us, builds page
 * tables and the IDT and drops to ring 3; user_main then reads ACPI, sets up interrupts, time,
 * CPUs and disks, and runs the command line's commands or the shell. */
#include "acpi.h"
#include "blk.h"
#include "boot.h"
#include "commands.h"
#include "console.h"
#include "cpu.h"
#include "irq.h"
#include "layout.h"
#include "lib.h"
#include "mm.h"
#include "power.h"
#include "shell.h"
#include "smp.h"
#include "time.h"
#include "ring.h"

static NORETURN void boot_fail(const char *msg) {
  printf("error: %s\n", msg);
  power_off(STATUS_PLATFORM);
}

static void serial_irq(u32 vector UNUSED) { console_irq(); }
static void tick_irq(u32 vector UNUSED) { timer_irq(); }

static u64 cmdline_number(const char *key) {
  char value[32];
  u64 v = 0;
  if (!cmdline_get(key, value, sizeof value)) return 0;
  if (!parse_u64(value, &v)) {
    printf("warning: ignoring %s=%s (not a number)\n", key, value);
    return 0;
  }
  return v;
}

/* Ring 3 on the BSP: everything after the supervisor is up. */
static NORETURN void user_main(void *arg UNUSED) {
  char err[256];
  if (!acpi_init(boot.rsdp, err, sizeof err)) boot_fail(err);

  pic_disable();
  lapic_init(platform.lapic_addr);
  irq_register(VEC_TIMER, tick_irq);
  time_init(cmdline_number("lifeboat.tsc_khz"));

  if (platform.com1_found && platform.com1.io_base && platform.com1.io_base != console_port()) console_init(platform.com1.io_base);
  struct irq_desc com1_irq = platform.com1_found && platform.com1.irq.present ? platform.com1.irq : acpi_isa_irq(COM1_DEFAULT_IRQ);
  if (!platform.com1_found) printf("warning: no COM1 (PNP0501) in the ACPI DSDT: assuming port 0x3f8, IRQ 4\n");
  irq_register(VEC_SERIAL, serial_irq);
  if (!ioapic_route(com1_irq.gsi, VEC_SERIAL, com1_irq.level, com1_irq.active_low, lapic_id()))
    printf("warning: no IOAPIC covers the serial port's GSI %u: console input will not work\n", com1_irq.gsi);
  console_enable_rx_interrupt();

  smp_init();
  commands_init();
  blk_probe_all();
  time_start_tick();

  printf("lifeboat: ready in %lu us (cpus=%u/%u mem=%lu MiB disks=%u tsc_khz=%lu from %s%s)\n", time_us(), smp_online_count(),
         smp_cpu_count(), e820_ram_bytes() >> 20, disk_count, tsc_khz, tsc_source,
         platform.aml_skipped ? ", some AML skipped" : "");
  static char script[CMDLINE_MAX];
  if (cmdline_get("lifeboat.exec", script, sizeof script)) shell_run_exec(script);
  shell_interactive();
}

/* Ring 0 on the BSP, from entry64 (interrupts off): the least that must run privileged, kept short
 * because PVM emulates it. */
void kernel_main(const u8 *zero_page, u64 entry_tsc) {
  extern u8 boot_stack_top[];
  console_init(COM1_DEFAULT_PORT);
  const char *e = boot_parse_zero_page(zero_page);
  boot.entry_tsc = entry_tsc;
  printf("lifeboat: guest starting (entry=%s)\n", boot.from_pvh ? "pvh" : "linux64");
  if (e) boot_fail(e);
  if ((e = mm_init())) boot_fail(e);
  idt_init();
  cpu_setup_kernel(0, (u64)boot_stack_top); /* this frame is abandoned: ring-3 interrupts reuse the stack */
  struct cpu_local *bsp = user_stack_alloc(0, 0, true);
  if (!bsp) boot_fail("out of memory for the boot CPU's stack");
  enter_user(user_main, NULL, bsp);
}
