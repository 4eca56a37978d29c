#include "time.h"
#include "boot.h"
#include "cpu.h"
#include "irq.h"
#include "layout.h"
#include "lib.h"
#include "ring.h"

#define MSR_KVM_SYSTEM_TIME 0x12
#define MSR_KVM_SYSTEM_TIME_NEW 0x4B564D01
#define KVM_FEATURE_CLOCKSOURCE (1u << 0)
#define KVM_FEATURE_CLOCKSOURCE2 (1u << 3)

u64 tsc_khz;
const char *tsc_source = "unknown";
static volatile u64 tick_count;

struct pvclock_vcpu_time_info {
  u32 version, pad0;
  u64 tsc_timestamp, system_time;
  u32 tsc_to_system_mul;
  s8 tsc_shift;
  u8 flags, pad[2];
} PACKED;
static struct pvclock_vcpu_time_info pvclock ALIGNED(64);

static bool hypervisor_is_kvm(u32 *max_leaf) {
  struct cpuid_regs r = cpuid(1, 0);
  if (!(r.ecx & (1u << 31))) return false;
  struct cpuid_regs h = cpuid(0x40000000, 0);
  *max_leaf = h.eax;
  return h.ebx == 0x4B4D564B && h.ecx == 0x564B4D56 && h.edx == 0x4D; /* "KVMKVMKVM\0\0\0" */
}

static u64 kvmclock_khz(void) {
  u32 max_leaf = 0;
  if (!hypervisor_is_kvm(&max_leaf) || max_leaf < 0x40000001) return 0;
  u32 features = cpuid(0x40000001, 0).eax;
  u32 msr;
  if (features & KVM_FEATURE_CLOCKSOURCE2) msr = MSR_KVM_SYSTEM_TIME_NEW;
  else if (features & KVM_FEATURE_CLOCKSOURCE) msr = MSR_KVM_SYSTEM_TIME;
  else return 0;
  memset(&pvclock, 0, sizeof pvclock);
  wrmsr(msr, (u64)&pvclock | 1);
  u32 mul = 0;
  s8 shift = 0;
  for (int i = 0; i < 1000000; i++) {
    u32 v = __atomic_load_n(&pvclock.version, __ATOMIC_ACQUIRE);
    if (v && !(v & 1)) {
      mul = pvclock.tsc_to_system_mul;
      shift = pvclock.tsc_shift;
      barrier();
      if (__atomic_load_n(&pvclock.version, __ATOMIC_ACQUIRE) == v) break;
    }
    cpu_relax();
  }
  wrmsr(msr, 0); /* only needed once: stop the hypervisor writing into our memory */
  if (!mul) return 0;
  u64 khz = (1000000UL << 32) / mul;
  return shift < 0 ? khz << -shift : khz >> shift;
}

static u64 cpuid_khz(const char **source) {
  struct cpuid_regs h = cpuid(0x40000000, 0);
  if ((cpuid(1, 0).ecx & (1u << 31)) && h.eax >= 0x40000010 && h.eax < 0x40010000) {
    u32 khz = cpuid(0x40000010, 0).eax;
    if (khz) {
      *source = "cpuid-0x40000010";
      return khz;
    }
  }
  u32 max = cpuid(0, 0).eax;
  if (max >= 0x15) {
    struct cpuid_regs r = cpuid(0x15, 0);
    if (r.eax && r.ebx && r.ecx) {
      *source = "cpuid-0x15";
      return (u64)r.ecx * r.ebx / r.eax / 1000;
    }
  }
  return 0;
}

/* Last resort: KVM and QEMU both run the LAPIC timer at 1 GHz; count TSC cycles across 10 ms of it. */
static u64 lapic_reference_khz(void) {
  lapic_timer_oneshot_max();
  u64 c0 = lapic_timer_read_current();
  u64 t0 = rdtsc();
  while (c0 - lapic_timer_read_current() < 10000000) cpu_relax();
  u64 t1 = rdtsc();
  lapic_timer_stop();
  return (t1 - t0) / 10;
}

void time_init(u64 cmdline_khz) {
  if (cmdline_khz) {
    tsc_khz = cmdline_khz;
    tsc_source = "cmdline";
  } else if ((tsc_khz = cpuid_khz(&tsc_source)) != 0) {
  } else if ((tsc_khz = kvmclock_khz()) != 0) {
    tsc_source = "kvmclock";
  } else {
    tsc_khz = lapic_reference_khz();
    tsc_source = "lapic-1ghz";
  }
  if (!tsc_khz) tsc_khz = 1000000, tsc_source = "assumed";
  lapic_timer_calibrate(tsc_khz);
}

void time_start_tick(void) { lapic_timer_start_periodic(TICK_HZ); }

u64 time_us(void) { return (rdtsc() - boot.entry_tsc) * 1000 / tsc_khz; }

void delay_us(u64 us) {
  u64 start = rdtsc(), cycles = us * tsc_khz / 1000;
  while (rdtsc() - start < cycles) cpu_relax();
}

u64 ticks(void) { return tick_count; }
void timer_irq(void) { tick_count++; }

void wait_for_interrupt(void) { wait_event(irq_event_count()); }
