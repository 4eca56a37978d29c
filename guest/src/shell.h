#pragma once
#include "types.h"

/* Runs one command line; returns its status. */
int shell_execute(char *line);
/* Runs `lifeboat.exec` commands, then powers off or (after `shell`) returns. */
void shell_run_exec(const char *script);
NORETURN void shell_interactive(void);
