#pragma once
#include "types.h"

struct sha256 {
  u32 h[8];
  u8 block[64];
  u64 total;
  u32 used;
};
void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, usize len);
void sha256_final(struct sha256 *s, u8 out[32]);
