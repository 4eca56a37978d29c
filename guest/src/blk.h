/* virtio-mmio (version 2) transport with one split virtqueue, and virtio-blk on top of it. */
#pragma once
#include "types.h"
#include "cpu.h"

#define BLK_OK 0
#define BLK_IOERR 1
#define BLK_UNSUPP 2
#define BLK_TIMEOUT 3

struct blk_slot;

struct blk_dev {
  u32 index;
  u64 mmio;
  u32 gsi;
  u8 vector;
  u64 sectors;
  bool ro, has_flush;
  u32 max_request; /* bytes per request (one data segment) */
  u16 qsize;
  struct virtq_desc *desc;
  struct virtq_avail *avail;
  struct virtq_used *used;
  u16 used_seen;
  spinlock_t lock;
  struct blk_slot *slots;
  u32 nslots;
  volatile u32 free_slots;
};

extern struct blk_dev disks[];
extern u32 disk_count;

/* Probes every LNRO0005 device from the DSDT; virtio-blk ones become disks 0, 1, ... in order. */
void blk_probe_all(void);
/* Starts a request on a free slot (waits for one when all are busy); returns the slot number.
 * type: VIRTIO_BLK_T_IN 0, OUT 1, FLUSH 4. */
int blk_submit(struct blk_dev *d, u32 type, u64 sector, void *buf, u32 len);
bool blk_done(struct blk_dev *d, int slot);
/* Waits for the slot, releases it and returns BLK_OK or an error code. */
int blk_wait(struct blk_dev *d, int slot);
/* Synchronous read/write of len bytes (any size; split into requests, several in flight). */
int blk_rw(struct blk_dev *d, bool write, u64 offset, void *buf, u64 len);
int blk_flush(struct blk_dev *d);
const char *blk_error_name(int status);
