// The virtio 1.x wire formats this VMM speaks, defined once: virtio-mmio v2 registers, device status and
// feature bits, the split virtqueue (descriptor, avail and used rings) and virtio-blk (request header,
// discard/write-zeroes segment, config space). Offsets are in bytes; every multi-byte field is
// little-endian. Checked against the 6.1 UAPI headers (linux/virtio_mmio.h, virtio_ring.h, virtio_blk.h).

/** virtio-mmio register offsets (32-bit accesses below CONFIG). */
export const MmioReg = {
  MAGIC_VALUE: 0x000,
  VERSION: 0x004,
  DEVICE_ID: 0x008,
  VENDOR_ID: 0x00c,
  DEVICE_FEATURES: 0x010,
  DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020,
  DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030,
  QUEUE_NUM_MAX: 0x034,
  QUEUE_NUM: 0x038,
  QUEUE_READY: 0x044,
  QUEUE_NOTIFY: 0x050,
  INTERRUPT_STATUS: 0x060,
  INTERRUPT_ACK: 0x064,
  STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080,
  QUEUE_DESC_HIGH: 0x084,
  QUEUE_AVAIL_LOW: 0x090,
  QUEUE_AVAIL_HIGH: 0x094,
  QUEUE_USED_LOW: 0x0a0,
  QUEUE_USED_HIGH: 0x0a4,
  CONFIG_GENERATION: 0x0fc,
  CONFIG: 0x100,
} as const;

/** "virt" read as a little-endian u32. */
export const MMIO_MAGIC = 0x74726976;
export const MMIO_VERSION = 2;
/** "LBVM" as a little-endian u32: Lifeboat's vendor id (guests do not match on it). */
export const MMIO_VENDOR_ID = 0x4d56424c;

export const DeviceId = { NET: 1, BLOCK: 2 } as const;

/** InterruptStatus / InterruptACK bits. */
export const Interrupt = { USED_BUFFER: 1, CONFIG_CHANGE: 2 } as const;

/** Device status bits (register STATUS). Writing 0 resets the device. */
export const Status = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const;

/** Transport feature bits (bit numbers). */
export const Feature = {
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  VERSION_1: 32,
} as const;

/** virtio-blk feature bits (bit numbers). */
export const BlkFeature = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
} as const;

/** A 64-bit feature set as a bigint built from bit numbers. */
export function featureBits(...bits: number[]): bigint {
  return bits.reduce((acc, b) => acc | (1n << BigInt(b)), 0n);
}

// ---- split virtqueue ----

/** struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; } */
export const Desc = { SIZE: 16, ADDR: 0, LEN: 8, FLAGS: 12, NEXT: 14, ALIGN: 16 } as const;
export const DescFlag = { NEXT: 1, WRITE: 2, INDIRECT: 4 } as const;

/** struct virtq_avail { le16 flags; le16 idx; le16 ring[N]; le16 used_event; } */
export const Avail = {
  FLAGS: 0,
  IDX: 2,
  RING: 4,
  ELEM_SIZE: 2,
  ALIGN: 2,
  /** Total size for a queue of `n` entries (with used_event). */
  size: (n: number) => 6 + 2 * n,
  usedEventOffset: (n: number) => 4 + 2 * n,
} as const;
export const AvailFlag = { NO_INTERRUPT: 1 } as const;

/** struct virtq_used { le16 flags; le16 idx; struct { le32 id; le32 len; } ring[N]; le16 avail_event; } */
export const Used = {
  FLAGS: 0,
  IDX: 2,
  RING: 4,
  ELEM_SIZE: 8,
  ELEM_ID: 0,
  ELEM_LEN: 4,
  ALIGN: 4,
  size: (n: number) => 6 + 8 * n,
  availEventOffset: (n: number) => 4 + 8 * n,
} as const;
export const UsedFlag = { NO_NOTIFY: 1 } as const;

/** The largest queue size the split ring format allows. */
export const MAX_QUEUE_SIZE = 32768;

// ---- virtio-blk ----

export const SECTOR_SIZE = 512;

/** struct virtio_blk_outhdr { le32 type; le32 ioprio; le64 sector; } */
export const BlkReqHeader = { SIZE: 16, TYPE: 0, IOPRIO: 4, SECTOR: 8 } as const;

export const BlkReqType = {
  IN: 0,
  OUT: 1,
  FLUSH: 4,
  GET_ID: 8,
  DISCARD: 11,
  WRITE_ZEROES: 13,
} as const;

export const BlkStatus = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;

/** Length of the GET_ID answer (a serial, NUL-padded, not necessarily NUL-terminated). */
export const BLK_ID_BYTES = 20;

/** struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors; le32 flags; } */
export const BlkDiscardSegment = { SIZE: 16, SECTOR: 0, NUM_SECTORS: 8, FLAGS: 12 } as const;
export const BlkDiscardFlag = { UNMAP: 1 } as const;

/** struct virtio_blk_config, up to the fields this device fills (write_zeroes_may_unmap + padding). */
export const BlkConfig = {
  CAPACITY: 0, // le64, in 512-byte sectors
  SIZE_MAX: 8,
  SEG_MAX: 12,
  GEOMETRY: 16, // cylinders le16, heads u8, sectors u8
  BLK_SIZE: 20,
  PHYSICAL_BLOCK_EXP: 24,
  ALIGNMENT_OFFSET: 25,
  MIN_IO_SIZE: 26,
  OPT_IO_SIZE: 28,
  WRITEBACK: 32,
  NUM_QUEUES: 34, // le16
  MAX_DISCARD_SECTORS: 36,
  MAX_DISCARD_SEG: 40,
  DISCARD_SECTOR_ALIGNMENT: 44,
  MAX_WRITE_ZEROES_SECTORS: 48,
  MAX_WRITE_ZEROES_SEG: 52,
  WRITE_ZEROES_MAY_UNMAP: 56, // u8, then 3 bytes of padding
  SIZE: 60,
} as const;
