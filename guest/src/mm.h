/* Identity page tables over RAM (from e820) and the 3-4 GiB device hole, and a physical allocator. */
#pragma once
#include "types.h"

/* Builds and loads the kernel's page tables; returns an error message or NULL. */
const char *mm_init(void);
u64 mm_cr3(void);
/* Zeroed, physically contiguous, page-aligned memory below 4 GiB; NULL when exhausted. */
void *alloc_pages(u64 pages);
/* The same with a power-of-two alignment, optionally not zeroed (zeroing is slow in ring 0 under PVM). */
void *alloc_aligned(u64 pages, u64 align, bool zero);
/* A free page of conventional memory below 1 MiB for the AP trampoline; 0 when there is none. */
u64 mm_low_page(void);
/* The largest free RAM range not handed out (used by `mem dirty`), without allocating it. */
void mm_largest_free(u64 *start, u64 *bytes);
