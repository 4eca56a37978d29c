#pragma once
#include "types.h"

/* Prints `lifeboat: poweroff status=N`, writes N to the exit-status port, then tries ACPI S5. */
NORETURN void power_off(u32 status);
NORETURN void power_off_unlocked(u32 status); /* for panics: no console lock */
NORETURN void reboot(void);
