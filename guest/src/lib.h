/* Freestanding replacements for the bits of libc the guest uses, plus console printing. */
#pragma once
#include "types.h"

void *memset(void *d, int c, usize n);
void *memcpy(void *d, const void *s, usize n);
void *memmove(void *d, const void *s, usize n);
int memcmp(const void *a, const void *b, usize n);
usize strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, usize n);
char *strchr(const char *s, int c);
bool str_starts_with(const char *s, const char *prefix);

/* Formatted output: %d %i %u %x %X %p %s %c with l/ll, width and 0 flag. */
int vsnprintf(char *buf, usize size, const char *fmt, va_list ap);
int snprintf(char *buf, usize size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Parses decimal or 0x-prefixed hex into *out; false on anything else or overflow. */
bool parse_u64(const char *s, u64 *out);

u32 crc32(u32 crc, const void *data, usize len);

static inline u64 splitmix64(u64 x) {
  u64 z = x + 0x9E3779B97F4A7C15UL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
  return z ^ (z >> 31);
}
