// The change bitmap input format (docs/repository-format.md, "Change bitmap input"): which granules of a
// disk were written since a tracking epoch began. The VMM's change tracking writes it; an incremental
// backup reads only the chunks it names.

import { InputError } from './errors.js';
import { CHANGE_BITMAP_FLAG_CHANGED_ONLY, CHANGE_BITMAP_HEADER, CHANGE_BITMAP_MAGIC, CHANGE_BITMAP_VERSION, TRACKING_EPOCH_BYTES } from './layout.js';

export interface ChangeBitmap {
  granularity: number;
  diskSize: number;
  /** Hex, or null when unspecified (all zero). */
  baseEpoch: string | null;
  epoch: string | null;
  /**
   * The image this bitmap accompanies holds only the granules set (an export of the changed blocks;
   * the rest are holes, not the disk): usable only as an incremental on a trusted parent, never whole.
   */
  changedOnly?: boolean;
  /** ceil(diskSize / granularity) bits, least significant bit first. */
  bits: Uint8Array;
}

/** A change bitmap that is damaged or does not fit the disk or parent it is used with. */
export class ChangeBitmapError extends InputError {}

function epochHex(buf: Buffer): string | null {
  return buf.every((b) => b === 0) ? null : buf.toString('hex');
}

export function granuleCount(diskSize: number, granularity: number): number {
  return Math.ceil(diskSize / granularity);
}

export function decodeChangeBitmap(buf: Buffer, name = 'change bitmap'): ChangeBitmap {
  const H = CHANGE_BITMAP_HEADER;
  if (buf.length < H.size || !buf.subarray(H.magic, H.magic + 8).equals(CHANGE_BITMAP_MAGIC)) {
    throw new ChangeBitmapError(`${name} is not a Lifeboat change bitmap (bad magic)`);
  }
  const version = buf.readUInt32LE(H.version);
  if (version !== CHANGE_BITMAP_VERSION) throw new ChangeBitmapError(`${name} has version ${version}; this Lifeboat reads version ${CHANGE_BITMAP_VERSION}`);
  const granularity = buf.readUInt32LE(H.granularity);
  if (granularity < 512 || (granularity & (granularity - 1)) !== 0) {
    throw new ChangeBitmapError(`${name} has granularity ${granularity}; it must be a power of two of at least 512`);
  }
  const diskSize = Number(buf.readBigUInt64LE(H.diskSize));
  const count = Number(buf.readBigUInt64LE(H.granuleCount));
  if (count !== granuleCount(diskSize, granularity)) {
    throw new ChangeBitmapError(`${name} is damaged: ${count} granules do not cover ${diskSize} bytes at ${granularity} per granule`);
  }
  const want = H.size + Math.ceil(count / 8);
  if (buf.length !== want) throw new ChangeBitmapError(`${name} holds ${buf.length} bytes; its header implies ${want} (truncated or damaged)`);
  const flags = buf.readUInt32LE(H.flags);
  // An unknown flag may change what the image holds: refuse rather than guess.
  if ((flags & ~CHANGE_BITMAP_FLAG_CHANGED_ONLY) !== 0) throw new ChangeBitmapError(`${name} has unknown flags 0x${flags.toString(16)}; it was written by a newer Lifeboat`);
  return {
    granularity,
    diskSize,
    baseEpoch: epochHex(buf.subarray(H.baseEpoch, H.baseEpoch + TRACKING_EPOCH_BYTES)),
    epoch: epochHex(buf.subarray(H.epoch, H.epoch + TRACKING_EPOCH_BYTES)),
    changedOnly: (flags & CHANGE_BITMAP_FLAG_CHANGED_ONLY) !== 0,
    bits: buf.subarray(H.size),
  };
}

export function encodeChangeBitmap(b: ChangeBitmap): Buffer {
  const H = CHANGE_BITMAP_HEADER;
  const count = granuleCount(b.diskSize, b.granularity);
  const out = Buffer.alloc(H.size + Math.ceil(count / 8));
  CHANGE_BITMAP_MAGIC.copy(out, H.magic);
  out.writeUInt32LE(CHANGE_BITMAP_VERSION, H.version);
  out.writeUInt32LE(b.granularity, H.granularity);
  out.writeBigUInt64LE(BigInt(b.diskSize), H.diskSize);
  out.writeBigUInt64LE(BigInt(count), H.granuleCount);
  if (b.baseEpoch) Buffer.from(b.baseEpoch, 'hex').copy(out, H.baseEpoch);
  if (b.epoch) Buffer.from(b.epoch, 'hex').copy(out, H.epoch);
  out.writeUInt32LE(b.changedOnly ? CHANGE_BITMAP_FLAG_CHANGED_ONLY : 0, H.flags);
  out.set(b.bits.subarray(0, Math.ceil(count / 8)), H.size);
  return out;
}

/** A bitmap with the granules covering the given byte ranges set (for tests, benchmarks and tools). */
export function changeBitmapFromRanges(diskSize: number, granularity: number, ranges: Iterable<{ offset: number; length: number }>): ChangeBitmap {
  const bits = new Uint8Array(Math.ceil(granuleCount(diskSize, granularity) / 8));
  for (const r of ranges) {
    if (r.length <= 0) continue;
    const last = Math.min(granuleCount(diskSize, granularity) - 1, Math.floor((r.offset + r.length - 1) / granularity));
    for (let g = Math.floor(r.offset / granularity); g <= last; g++) bits[g >> 3] |= 1 << (g & 7);
  }
  return { granularity, diskSize, baseEpoch: null, epoch: null, bits };
}

/** Marks in `dirty` (one byte per chunk) every chunk that overlaps a set granule. */
export function markDirtyChunks(bitmap: ChangeBitmap, chunkSize: number, dirty: Uint8Array): void {
  for (const c of dirtyChunks(bitmap, chunkSize)) if (c < dirty.length) dirty[c] = 1;
}

/** The chunks (of `chunkSize` bytes) that overlap a set granule, in ascending order, each once. */
export function dirtyChunks(bitmap: ChangeBitmap, chunkSize: number): Uint32Array {
  const count = granuleCount(bitmap.diskSize, bitmap.granularity);
  const chunks = Math.ceil(bitmap.diskSize / chunkSize);
  const bits = bitmap.bits;
  const granularity = bitmap.granularity;
  let out = new Uint32Array(64);
  let n = 0;
  const add = (byte: number, v: number): void => {
    for (let bit = 0; bit < 8; bit++) {
      if (!(v & (1 << bit))) continue;
      const g = byte * 8 + bit;
      if (g >= count) break;
      const start = g * granularity;
      const end = Math.min(bitmap.diskSize, start + granularity);
      const lastChunk = Math.min(chunks - 1, Math.floor((end - 1) / chunkSize));
      let c = Math.floor(start / chunkSize);
      if (n > 0 && out[n - 1] >= c) c = out[n - 1] + 1;
      for (; c <= lastChunk; c++) {
        if (n === out.length) {
          const grown = new Uint32Array(out.length * 2);
          grown.set(out);
          out = grown;
        }
        out[n++] = c;
      }
    }
  };
  // Most of a bitmap is zero: one test per 32-bit word (per byte before the first aligned word and
  // after the last), then the bits of the few bytes that are not zero.
  const bytes = Math.min(bits.length, Math.ceil(count / 8));
  const head = Math.min(bytes, (4 - (bits.byteOffset % 4)) % 4);
  const words = new Uint32Array(bits.buffer, bits.byteOffset + head, (bytes - head) >>> 2);
  const tail = head + words.length * 4;
  for (let byte = 0; byte < head; byte++) if (bits[byte] !== 0) add(byte, bits[byte]);
  for (let w = 0, nw = words.length; w < nw; w++) {
    if (words[w] === 0) continue;
    for (let byte = head + 4 * w, last = byte + 4; byte < last; byte++) if (bits[byte] !== 0) add(byte, bits[byte]);
  }
  for (let byte = tail; byte < bytes; byte++) if (bits[byte] !== 0) add(byte, bits[byte]);
  return out.subarray(0, n);
}
