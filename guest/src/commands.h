/* Shell commands. Each returns its exit status (layout.h STATUS_*). */
#pragma once
#include "types.h"

#define MAX_ARGS 16

/* Prints "error: MESSAGE" and returns status. */
int cmd_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parses a number argument or prints a usage error naming it. */
bool arg_u64(const char *s, const char *what, u64 *out);
/* Shared I/O buffer for disk commands (IO_BUF_SIZE bytes, physically contiguous). */
#define IO_BUF_SIZE (1UL << 20)
extern u8 *io_buf;
void commands_init(void);

int cmd_info(int argc, char **argv);
int cmd_disk(int argc, char **argv);
int cmd_mem(int argc, char **argv);
int cmd_counter(int argc, char **argv);
int cmd_ledger(int argc, char **argv);

/* The seeded pattern (docs/guest.md): the 64-bit LE word at disk byte offset 8k is
 * splitmix64(splitmix64(seed) ^ k). offset and len are multiples of 8. */
void pattern_fill(void *buf, u64 seed, u64 offset, u64 len);
