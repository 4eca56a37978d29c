/* Application processors: INIT/SIPI bring-up through a real-mode trampoline, and a way to hand
 * every online CPU a share of a job. */
#pragma once
#include "types.h"

typedef void (*smp_work_fn)(u32 worker, u32 workers, void *arg);

void smp_init(void);
u32 smp_cpu_count(void);    /* CPUs the MADT lists */
u32 smp_online_count(void); /* CPUs that checked in (BSP included) */
/* Runs fn on every online CPU (worker 0 is the BSP, on the caller's stack) and waits for all. */
void smp_run(smp_work_fn fn, void *arg);
