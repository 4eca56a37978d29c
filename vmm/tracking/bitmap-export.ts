// Exports a frozen generation in the change-bitmap exchange format that `lifeboat backup --bitmap FILE`
// reads (docs/repository-format.md, "Change bitmap input"; vmm/ does not import replication/, so the
// 64-byte header is declared here too and a test checks both sides agree).
//
// Epochs name the boundaries between generations: epoch(g) is the instant generation g was frozen (and
// g+1 began): the first 8 bytes of the tracking id followed by g as a u64, little-endian. A bitmap of
// generation g holds the changes from epoch(g-1) to epoch(g). An untrusted generation (history lost: a
// crash, an image modified behind our back, a first start) has an all-zero base epoch, "unspecified",
// so the consumer cannot mistake it for a complete delta and compares contents instead.
import { writeFileDurably } from './durable-write.js';
import { toBytes } from './bits.js';
import type { BlockChangeTracker } from './block-tracker.js';
import { uuidToBytes } from './cbt-file.js';

export const CHANGE_BITMAP_MAGIC = 'LBCHGMAP';
export const CHANGE_BITMAP_VERSION = 1;
export const CHANGE_BITMAP_HEADER = {
  size: 64,
  magic: 0, // 8 ASCII
  version: 8, // u32
  granularity: 12, // u32
  diskSize: 16, // u64
  granuleCount: 24, // u64
  baseEpoch: 32, // 16 bytes
  epoch: 48, // 16 bytes
} as const;
export const EPOCH_BYTES = 16;

export function trackingEpoch(trackingId: string, generation: number): Buffer {
  const e = Buffer.alloc(EPOCH_BYTES);
  uuidToBytes(trackingId).copy(e, 0, 0, 8);
  e.writeBigUInt64LE(BigInt(generation), 8);
  return e;
}

export interface ExportedBitmap {
  generation: number;
  trusted: boolean;
  /** Hex of the base epoch ('' when unspecified, i.e. untrusted) and of the epoch. */
  baseEpoch: string;
  epoch: string;
  bytes: Buffer;
}

export function encodeGenerationBitmap(tracker: BlockChangeTracker, generation: number): ExportedBitmap {
  const H = CHANGE_BITMAP_HEADER;
  const map = tracker.bitmap.generationMap(tracker.bitmap.frozenSlot(generation));
  const trusted = tracker.bitmap.slotTrusted(tracker.bitmap.frozenSlot(generation));
  const granules = tracker.bitmap.granules;
  const bits = toBytes(map, granules);
  const out = Buffer.alloc(H.size + bits.length);
  out.write(CHANGE_BITMAP_MAGIC, H.magic, 'ascii');
  out.writeUInt32LE(CHANGE_BITMAP_VERSION, H.version);
  out.writeUInt32LE(tracker.granularity, H.granularity);
  out.writeBigUInt64LE(BigInt(tracker.imageSize), H.diskSize);
  out.writeBigUInt64LE(BigInt(granules), H.granuleCount);
  const base = trusted ? trackingEpoch(tracker.trackingId, generation - 1) : Buffer.alloc(EPOCH_BYTES);
  const epoch = trackingEpoch(tracker.trackingId, generation);
  base.copy(out, H.baseEpoch);
  epoch.copy(out, H.epoch);
  out.set(bits, H.size);
  return { generation, trusted, baseEpoch: trusted ? base.toString('hex') : '', epoch: epoch.toString('hex'), bytes: out };
}

/** Writes the bitmap of frozen `generation` to `file` (durably: temp file, fsync, rename). */
export function exportGenerationBitmap(tracker: BlockChangeTracker, generation: number, file: string): ExportedBitmap {
  const e = encodeGenerationBitmap(tracker, generation);
  writeFileDurably(file, [e.bytes]);
  return e;
}
