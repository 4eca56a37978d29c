#include "lib.h"
#include "console.h"

/* gcc may call these for struct copies; keep them byte/word loops (no vector code). */
void *memset(void *d, int c, usize n) {
  u8 *p = d;
  if (n >= 16 && ((uptr)p & 7) == 0) {
    u64 v = (u8)c;
    v |= v << 8;
    v |= v << 16;
    v |= v << 32;
    usize words = n / 8;
    __asm__ volatile("rep stosq" : "+D"(p), "+c"(words) : "a"(v) : "memory");
    n &= 7;
  }
  while (n--) *p++ = (u8)c;
  return d;
}

void *memcpy(void *d, const void *s, usize n) {
  void *ret = d;
  __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n)::"memory");
  return ret;
}

void *memmove(void *d, const void *s, usize n) {
  u8 *dp = d;
  const u8 *sp = s;
  if (dp == sp || n == 0) return d;
  if (dp < sp || dp >= sp + n) return memcpy(d, s, n);
  while (n--) dp[n] = sp[n];
  return d;
}

int memcmp(const void *a, const void *b, usize n) {
  const u8 *x = a, *y = b;
  for (usize i = 0; i < n; i++)
    if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
  return 0;
}

usize strlen(const char *s) {
  usize n = 0;
  while (s[n]) n++;
  return n;
}

int strcmp(const char *a, const char *b) {
  while (*a && *a == *b) a++, b++;
  return (u8)*a - (u8)*b;
}

int strncmp(const char *a, const char *b, usize n) {
  for (usize i = 0; i < n; i++) {
    if (a[i] != b[i]) return (u8)a[i] - (u8)b[i];
    if (!a[i]) return 0;
  }
  return 0;
}

char *strchr(const char *s, int c) {
  for (; *s; s++)
    if (*s == (char)c) return (char *)s;
  return c == 0 ? (char *)s : NULL;
}

bool str_starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

struct outbuf { char *buf; usize size, len; };

static void out_char(struct outbuf *o, char c) {
  if (o->len + 1 < o->size) o->buf[o->len] = c;
  o->len++;
}

static void out_number(struct outbuf *o, u64 v, unsigned base, bool upper, bool negative, int width, bool zero) {
  char tmp[24];
  int n = 0;
  const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  do {
    tmp[n++] = digits[v % base];
    v /= base;
  } while (v);
  int len = n + (negative ? 1 : 0);
  if (negative && zero) out_char(o, '-');
  for (; len < width; len++) out_char(o, zero ? '0' : ' ');
  if (negative && !zero) out_char(o, '-');
  while (n) out_char(o, tmp[--n]);
}

int vsnprintf(char *buf, usize size, const char *fmt, va_list ap) {
  struct outbuf o = {buf, size, 0};
  for (; *fmt; fmt++) {
    if (*fmt != '%') {
      out_char(&o, *fmt);
      continue;
    }
    fmt++;
    bool zero = false;
    int width = 0, longs = 0;
    if (*fmt == '0') zero = true, fmt++;
    while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
    while (*fmt == 'l') longs++, fmt++;
    switch (*fmt) {
      case 'd':
      case 'i': {
        s64 v = longs ? va_arg(ap, s64) : va_arg(ap, int);
        out_number(&o, v < 0 ? (u64)-v : (u64)v, 10, false, v < 0, width, zero);
        break;
      }
      case 'u':
        out_number(&o, longs ? va_arg(ap, u64) : va_arg(ap, unsigned), 10, false, false, width, zero);
        break;
      case 'x':
      case 'X':
        out_number(&o, longs ? va_arg(ap, u64) : va_arg(ap, unsigned), 16, *fmt == 'X', false, width, zero);
        break;
      case 'p':
        out_char(&o, '0');
        out_char(&o, 'x');
        out_number(&o, (u64)va_arg(ap, void *), 16, false, false, width, zero);
        break;
      case 's': {
        const char *s = va_arg(ap, const char *);
        if (!s) s = "(null)";
        int len = (int)strlen(s);
        for (; len < width; len++) out_char(&o, ' ');
        while (*s) out_char(&o, *s++);
        break;
      }
      case 'c':
        out_char(&o, (char)va_arg(ap, int));
        break;
      case '%':
        out_char(&o, '%');
        break;
      default:
        out_char(&o, '%');
        if (*fmt) out_char(&o, *fmt);
        else fmt--;
    }
  }
  if (size) buf[o.len < size ? o.len : size - 1] = 0;
  return (int)o.len;
}

int snprintf(char *buf, usize size, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, size, fmt, ap);
  va_end(ap);
  return n;
}

void printf(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  console_write(buf);
}

bool parse_u64(const char *s, u64 *out) {
  u64 v = 0;
  unsigned base = 10;
  if (!s || !*s) return false;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s += 2;
    if (!*s) return false;
  }
  for (; *s; s++) {
    unsigned d;
    char c = *s;
    if (c >= '0' && c <= '9') d = (unsigned)(c - '0');
    else if (base == 16 && c >= 'a' && c <= 'f') d = (unsigned)(c - 'a' + 10);
    else if (base == 16 && c >= 'A' && c <= 'F') d = (unsigned)(c - 'A' + 10);
    else break;
    if (v > (~0UL - d) / base) return false;
    v = v * base + d;
  }
  if (*s) return false;
  *out = v;
  return true;
}

u32 crc32(u32 crc, const void *data, usize len) {
  static u32 table[256];
  static volatile bool ready;
  if (!ready) {
    for (u32 i = 0; i < 256; i++) {
      u32 c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    ready = true;
  }
  const u8 *p = data;
  crc = ~crc;
  while (len--) crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
  return ~crc;
}
