// The change-tracking file kept beside a disk image (`IMAGE.lifeboat-cbt`, docs/change-tracking.md):
// a 128-byte header (magic, version, state, granularity, the image's identity, the tracking id, the
// generation the saved history starts from) and, after a clean shutdown, the bitmap of every change not
// yet consumed. Checksummed (CRC-32).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { writeFileDurably } from './durable-write.js';

export const CBT_SUFFIX = '.lifeboat-cbt';
export const CBT_MAGIC = 'LBCBTMAP';
export const CBT_VERSION = 2;
export const CBT_HEADER_SIZE = 128;

/** Byte offsets of the header fields (little-endian). */
export const CBT_HEADER = {
  magic: 0, // 8 ASCII bytes
  version: 8, // u32
  state: 12, // u32: CBT_STATE_*
  granularity: 16, // u32, bytes
  flags: 20, // u32: CBT_FLAG_*
  imageSize: 24, // u64
  imageDev: 32, // u64 st_dev
  imageIno: 40, // u64 st_ino
  imageMtimeNs: 48, // u64
  imageCtimeNs: 56, // u64
  trackingId: 64, // 16 bytes (a UUID)
  nextGeneration: 80, // u64
  granules: 88, // u64
  bitmapLength: 96, // u64, bytes following the header
  bitmapCrc: 104, // u32, CRC-32 of the bitmap bytes
  baseGeneration: 108, // u64: the saved bitmap holds every change since this generation was frozen
  // 116..124 reserved, zero
  headerCrc: 124, // u32, CRC-32 of header bytes [0, 124)
} as const;

/** A VMM is (or was, if it crashed) serving writes to the image: the bitmap on disk is not complete. */
export const CBT_STATE_IN_USE = 1;
/** Written at clean shutdown, after the image was flushed: the bitmap holds every unconsumed change. */
export const CBT_STATE_CLEAN = 2;
/** The saved bitmap is complete. Clear when the run that saved it had itself started untrusted. */
export const CBT_FLAG_TRUSTED = 1;

export interface ImageIdentity {
  size: bigint;
  dev: bigint;
  ino: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

export interface CbtRecord {
  state: typeof CBT_STATE_IN_USE | typeof CBT_STATE_CLEAN;
  granularity: number;
  trusted: boolean;
  identity: ImageIdentity;
  trackingId: string;
  nextGeneration: number;
  /** The saved bitmap holds every granule written since generation `baseGeneration` was frozen (< nextGeneration). */
  baseGeneration: number;
  granules: number;
  /** Little-endian bit per granule (empty for an in-use record). */
  bitmap: Uint8Array;
}

export function cbtPath(imagePath: string): string {
  return imagePath + CBT_SUFFIX;
}

export function imageIdentity(imagePath: string): ImageIdentity {
  const st = statSync(imagePath, { bigint: true });
  return { size: st.size, dev: st.dev, ino: st.ino, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs };
}

/** The first identity field that differs, or undefined when both describe the same, unmodified image. */
export function identityMismatch(saved: ImageIdentity, now: ImageIdentity): string | undefined {
  if (saved.dev !== now.dev || saved.ino !== now.ino) return 'the image is a different file (device/inode changed)';
  if (saved.size !== now.size) return `the image size changed (${saved.size} -> ${now.size} bytes)`;
  if (saved.mtimeNs !== now.mtimeNs || saved.ctimeNs !== now.ctimeNs) return 'the image was modified while no VMM was running (mtime/ctime changed)';
  return undefined;
}

export function uuidToBytes(uuid: string): Buffer {
  const hex = uuid.replace(/-/g, '');
  if (!/^[0-9a-f]{32}$/i.test(hex)) throw new Error(`not a UUID: ${uuid}`);
  return Buffer.from(hex, 'hex');
}

export function bytesToUuid(b: Uint8Array): string {
  const h = Buffer.from(b).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function encodeCbt(r: CbtRecord): Buffer[] {
  const h = Buffer.alloc(CBT_HEADER_SIZE);
  h.write(CBT_MAGIC, CBT_HEADER.magic, 'ascii');
  h.writeUInt32LE(CBT_VERSION, CBT_HEADER.version);
  h.writeUInt32LE(r.state, CBT_HEADER.state);
  h.writeUInt32LE(r.granularity, CBT_HEADER.granularity);
  h.writeUInt32LE(r.trusted ? CBT_FLAG_TRUSTED : 0, CBT_HEADER.flags);
  h.writeBigUInt64LE(r.identity.size, CBT_HEADER.imageSize);
  h.writeBigUInt64LE(r.identity.dev, CBT_HEADER.imageDev);
  h.writeBigUInt64LE(r.identity.ino, CBT_HEADER.imageIno);
  h.writeBigUInt64LE(r.identity.mtimeNs, CBT_HEADER.imageMtimeNs);
  h.writeBigUInt64LE(r.identity.ctimeNs, CBT_HEADER.imageCtimeNs);
  uuidToBytes(r.trackingId).copy(h, CBT_HEADER.trackingId);
  h.writeBigUInt64LE(BigInt(r.nextGeneration), CBT_HEADER.nextGeneration);
  h.writeBigUInt64LE(BigInt(r.granules), CBT_HEADER.granules);
  h.writeBigUInt64LE(BigInt(r.baseGeneration), CBT_HEADER.baseGeneration);
  h.writeBigUInt64LE(BigInt(r.bitmap.length), CBT_HEADER.bitmapLength);
  h.writeUInt32LE(crc32(r.bitmap), CBT_HEADER.bitmapCrc);
  h.writeUInt32LE(crc32(h.subarray(0, CBT_HEADER.headerCrc)), CBT_HEADER.headerCrc);
  return [h, Buffer.from(r.bitmap.buffer, r.bitmap.byteOffset, r.bitmap.byteLength)];
}

export class CbtFormatError extends Error {}

export function decodeCbt(data: Buffer, path = 'change-tracking file'): CbtRecord {
  if (data.length < CBT_HEADER_SIZE) throw new CbtFormatError(`${path} is truncated (${data.length} bytes)`);
  if (data.toString('ascii', 0, 8) !== CBT_MAGIC) throw new CbtFormatError(`${path} is not a Lifeboat change-tracking file (bad magic)`);
  const version = data.readUInt32LE(CBT_HEADER.version);
  if (version !== CBT_VERSION) throw new CbtFormatError(`${path} has version ${version}; this Lifeboat reads version ${CBT_VERSION}`);
  if (crc32(data.subarray(0, CBT_HEADER.headerCrc)) !== data.readUInt32LE(CBT_HEADER.headerCrc)) throw new CbtFormatError(`${path}: header checksum mismatch`);
  const state = data.readUInt32LE(CBT_HEADER.state);
  if (state !== CBT_STATE_IN_USE && state !== CBT_STATE_CLEAN) throw new CbtFormatError(`${path}: unknown state ${state}`);
  const bitmapLength = Number(data.readBigUInt64LE(CBT_HEADER.bitmapLength));
  if (data.length !== CBT_HEADER_SIZE + bitmapLength) throw new CbtFormatError(`${path}: bitmap is ${data.length - CBT_HEADER_SIZE} bytes, header says ${bitmapLength}`);
  const bitmap = data.subarray(CBT_HEADER_SIZE);
  if (crc32(bitmap) !== data.readUInt32LE(CBT_HEADER.bitmapCrc)) throw new CbtFormatError(`${path}: bitmap checksum mismatch`);
  const granules = Number(data.readBigUInt64LE(CBT_HEADER.granules));
  if (state === CBT_STATE_CLEAN && bitmapLength !== Math.ceil(granules / 8)) throw new CbtFormatError(`${path}: bitmap of ${bitmapLength} bytes cannot hold ${granules} granules`);
  const nextGeneration = Number(data.readBigUInt64LE(CBT_HEADER.nextGeneration));
  const baseGeneration = Number(data.readBigUInt64LE(CBT_HEADER.baseGeneration));
  if (baseGeneration >= nextGeneration) throw new CbtFormatError(`${path}: base generation ${baseGeneration} is not before the next generation ${nextGeneration}`);
  return {
    state,
    granularity: data.readUInt32LE(CBT_HEADER.granularity),
    trusted: (data.readUInt32LE(CBT_HEADER.flags) & CBT_FLAG_TRUSTED) !== 0,
    identity: {
      size: data.readBigUInt64LE(CBT_HEADER.imageSize),
      dev: data.readBigUInt64LE(CBT_HEADER.imageDev),
      ino: data.readBigUInt64LE(CBT_HEADER.imageIno),
      mtimeNs: data.readBigUInt64LE(CBT_HEADER.imageMtimeNs),
      ctimeNs: data.readBigUInt64LE(CBT_HEADER.imageCtimeNs),
    },
    trackingId: bytesToUuid(data.subarray(CBT_HEADER.trackingId, CBT_HEADER.trackingId + 16)),
    nextGeneration,
    baseGeneration,
    granules,
    bitmap,
  };
}

/** undefined when there is no file. Throws CbtFormatError when it exists but cannot be trusted as a file. */
export function readCbt(path: string): CbtRecord | undefined {
  if (!existsSync(path)) return undefined;
  return decodeCbt(readFileSync(path), path);
}

export function writeCbt(path: string, record: CbtRecord): void {
  writeFileDurably(path, encodeCbt(record));
}
