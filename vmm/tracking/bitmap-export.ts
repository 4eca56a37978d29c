// Exports a frozen generation in the change-bitmap exchange format that `lifeboat backup --bitmap FILE`
// reads (docs/repository-format.md, "Change bitmap input"; vmm/ does not import replication/, so the
// header is declared here too and a test checks both sides agree).
//
// Epochs name the boundaries between generations: epoch(g) is the instant generation g was frozen (and
// g+1 began): the first 8 bytes of the tracking id followed by g as a u64, little-endian. A bitmap of
// generation g holds the changes from epoch(base) to epoch(g), where base is the generation whose freeze
// began its history (g-1, or earlier after a failed consumer merged its generation back: see
// block-bitmap.ts). An untrusted generation (history lost: a crash, an image modified behind our back, a
// first start) has an all-zero base epoch, "unspecified", so the consumer cannot mistake it for a
// complete delta and compares contents instead.
//
// Flag CHANGED_ONLY: an image holding only this generation's changed granules was exported (point export
// --changed-only); the rest of that image is holes, not the disk. A consumer may use such an image only
// together with a bitmap it trusts, never read it as a whole disk. Such a bitmap is written at the
// granularity of the exported image (at least MIN_CHANGED_ONLY_GRANULARITY), so that every granule it
// sets is whole in the image.
import { writeFileDurably } from './durable-write.js';
import { toBytes } from './bits.js';
import type { BlockChangeTracker } from './block-tracker.js';
import { uuidToBytes } from './cbt-file.js';

export const CHANGE_BITMAP_MAGIC = 'LBCHGMAP';
export const CHANGE_BITMAP_VERSION = 2;
export const CHANGE_BITMAP_HEADER = {
  size: 72,
  magic: 0, // 8 ASCII
  version: 8, // u32
  granularity: 12, // u32
  diskSize: 16, // u64
  granuleCount: 24, // u64
  baseEpoch: 32, // 16 bytes
  epoch: 48, // 16 bytes
  flags: 64, // u32: CHANGE_BITMAP_FLAG_*
  reserved: 68, // u32, zero
} as const;
/** The image exported with this bitmap holds only the granules set here; every other byte is a hole. */
export const CHANGE_BITMAP_FLAG_CHANGED_ONLY = 1;
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
  /** A changed-only image of this generation was exported: the bitmap carries CHANGE_BITMAP_FLAG_CHANGED_ONLY. */
  changedOnly: boolean;
  bytes: Buffer;
}

export function encodeGenerationBitmap(tracker: BlockChangeTracker, generation: number): ExportedBitmap {
  const H = CHANGE_BITMAP_HEADER;
  const { trusted, base: baseGeneration } = tracker.describe(generation);
  const changedOnlyGranularity = tracker.changedOnlyGranularity(generation);
  const changedOnly = changedOnlyGranularity !== undefined;
  const granularity = changedOnlyGranularity ?? tracker.granularity;
  const { words, bits: granules } = tracker.changedGranules(generation, granularity);
  const bits = toBytes(words, granules);
  const out = Buffer.alloc(H.size + bits.length);
  out.write(CHANGE_BITMAP_MAGIC, H.magic, 'ascii');
  out.writeUInt32LE(CHANGE_BITMAP_VERSION, H.version);
  out.writeUInt32LE(granularity, H.granularity);
  out.writeBigUInt64LE(BigInt(tracker.imageSize), H.diskSize);
  out.writeBigUInt64LE(BigInt(granules), H.granuleCount);
  const base = trusted ? trackingEpoch(tracker.trackingId, baseGeneration) : Buffer.alloc(EPOCH_BYTES);
  const epoch = trackingEpoch(tracker.trackingId, generation);
  base.copy(out, H.baseEpoch);
  epoch.copy(out, H.epoch);
  out.writeUInt32LE(changedOnly ? CHANGE_BITMAP_FLAG_CHANGED_ONLY : 0, H.flags);
  out.set(bits, H.size);
  return { generation, trusted, baseEpoch: trusted ? base.toString('hex') : '', epoch: epoch.toString('hex'), changedOnly, bytes: out };
}

/** Writes the bitmap of frozen `generation` to `file` (durably: temp file, fsync, rename). */
export function exportGenerationBitmap(tracker: BlockChangeTracker, generation: number, file: string): ExportedBitmap {
  const e = encodeGenerationBitmap(tracker, generation);
  writeFileDurably(file, [e.bytes]);
  return e;
}
