// Binary records of the repository format, declared once: field offsets and sizes, with the code that
// reads and writes them. docs/repository-format.md specifies the same tables; test/replication/layout.test.ts
// checks sizes and offsets. All integers are little-endian.

import { CHUNK_ID_BYTES, PACK_ID_BYTES } from './constants.js';

export const PACK_TRAILER = {
  size: 16,
  indexLength: 0, // u32: bytes of the stored (sealed) pack index just before the trailer
  indexCrc32: 4, // u32: CRC-32 of those stored bytes
  version: 8, // u32: RECORD_VERSION
  magic: 12, // 4 bytes "LBPK"
} as const;
export const PACK_TRAILER_MAGIC = Buffer.from('LBPK', 'latin1');

export const PACK_INDEX_HEADER = {
  size: 48,
  magic: 0, // 4 bytes "LBIX"
  version: 4, // u16
  reserved0: 6, // u16, zero
  entryCount: 8, // u32
  reserved1: 12, // u32, zero
  packId: 16, // 16 bytes
  packSize: 32, // u64: total bytes of the pack object
  createdMs: 40, // u64: milliseconds since the Unix epoch when the pack was closed
} as const;
export const PACK_INDEX_MAGIC = Buffer.from('LBIX', 'latin1');

export const PACK_INDEX_ENTRY = {
  size: 56,
  id: 0, // 32 bytes: chunk id
  offset: 32, // u32: byte offset of the stored blob in the pack
  storedLength: 36, // u32: bytes stored in the pack
  rawLength: 40, // u32: bytes of the plaintext
  crc32: 44, // u32: CRC-32 of the stored bytes
  type: 48, // u8: BlobType
  compression: 49, // u8: Compression
  reserved0: 50, // u16, zero
  reserved1: 52, // u32, zero
} as const;

export const INDEX_OBJECT_HEADER = {
  size: 16,
  magic: 0, // 4 bytes "LBIF"
  version: 4, // u16
  reserved0: 6, // u16, zero
  packCount: 8, // u32
  reserved1: 12, // u32, zero
} as const;
export const INDEX_OBJECT_MAGIC = Buffer.from('LBIF', 'latin1');

export const INDEX_OBJECT_RECORD = {
  size: 24, // followed by storedLength bytes: the stored pack index, identical to the pack's tail
  packId: 0, // 16 bytes
  storedLength: 16, // u32
  crc32: 20, // u32: CRC-32 of the stored pack index
} as const;

/**
 * One extent of an extent map (a map page is these, back to back): `length` bytes of the image taken
 * from the plaintext of blob `id` starting at `offset`. The zero id (no blob) stands for zeros.
 */
export const MAP_EXTENT = {
  size: 40,
  id: 0, // 32 bytes: blob id, or 32 zero bytes for zeros
  offset: 32, // u32: where the extent starts in the blob's plaintext (0 for zeros)
  length: 36, // u32: bytes of the image the extent covers (> 0)
} as const;

/** Change bitmap input (produced by the VMM's change tracking, consumed by `lifeboat backup --bitmap`). */
export const CHANGE_BITMAP_HEADER = {
  size: 72, // followed by ceil(granuleCount / 8) bytes of bits, least significant bit first
  magic: 0, // 8 bytes "LBCHGMAP"
  version: 8, // u32: 1
  granularity: 12, // u32: bytes per bit, a power of two >= 512
  diskSize: 16, // u64: bytes of the disk the bitmap describes
  granuleCount: 24, // u64: ceil(diskSize / granularity)
  baseEpoch: 32, // 16 bytes: tracking epoch the bits are relative to (all zero: unspecified)
  epoch: 48, // 16 bytes: tracking epoch that began when this bitmap was frozen (all zero: unspecified)
  flags: 64, // u32: CHANGE_BITMAP_FLAG_*
  reserved: 68, // u32: zero
} as const;
export const CHANGE_BITMAP_MAGIC = Buffer.from('LBCHGMAP', 'latin1');
export const CHANGE_BITMAP_VERSION = 2;
/** The image backed up with this bitmap holds only the granules it sets (the rest are holes, not the disk). */
export const CHANGE_BITMAP_FLAG_CHANGED_ONLY = 1;
export const TRACKING_EPOCH_BYTES = 16;

/** Additional authenticated data prefixes for sealed objects (see "Encryption" in the format document). */
export const AAD_PACK_INDEX = Buffer.from('LBIX', 'latin1');
export const AAD_POINT = Buffer.from('LBPT', 'latin1');
export const AAD_KEY = Buffer.from('LBKY', 'latin1');

// ---------------------------------------------------------------------------------------------------

export interface PackIndexEntry {
  id: Buffer;
  offset: number;
  storedLength: number;
  rawLength: number;
  crc32: number;
  type: number;
  compression: number;
}

export interface PackIndexContents {
  packId: Buffer;
  packSize: number;
  createdMs: number;
  entries: PackIndexEntry[];
}

export function encodePackIndex(index: PackIndexContents, version: number): Buffer {
  const H = PACK_INDEX_HEADER;
  const E = PACK_INDEX_ENTRY;
  const out = Buffer.alloc(H.size + index.entries.length * E.size);
  PACK_INDEX_MAGIC.copy(out, H.magic);
  out.writeUInt16LE(version, H.version);
  out.writeUInt32LE(index.entries.length, H.entryCount);
  index.packId.copy(out, H.packId);
  out.writeBigUInt64LE(BigInt(index.packSize), H.packSize);
  out.writeBigUInt64LE(BigInt(index.createdMs), H.createdMs);
  let p = H.size;
  for (const e of index.entries) {
    e.id.copy(out, p + E.id);
    out.writeUInt32LE(e.offset, p + E.offset);
    out.writeUInt32LE(e.storedLength, p + E.storedLength);
    out.writeUInt32LE(e.rawLength, p + E.rawLength);
    out.writeUInt32LE(e.crc32, p + E.crc32);
    out.writeUInt8(e.type, p + E.type);
    out.writeUInt8(e.compression, p + E.compression);
    p += E.size;
  }
  return out;
}

/** Throws FormatError naming what is wrong. */
/** What a pack index's header says (PACK_INDEX_HEADER), read without decoding its entries. */
export interface PackIndexHeader {
  packId: Buffer;
  packSize: number;
  createdMs: number;
  count: number;
}

/**
 * The header of a pack index's plaintext, with the record checked as a whole: magic, version, and a
 * length that holds exactly its entries. Throws FormatError.
 */
export function packIndexHeader(buf: Buffer, version: number): PackIndexHeader {
  const H = PACK_INDEX_HEADER;
  if (buf.length < H.size || !buf.subarray(H.magic, H.magic + 4).equals(PACK_INDEX_MAGIC)) {
    throw new FormatError('not a pack index (bad magic)');
  }
  const v = buf.readUInt16LE(H.version);
  if (v !== version) throw new FormatError(`pack index version ${v} is not supported (expected ${version})`);
  const count = buf.readUInt32LE(H.entryCount);
  if (buf.length !== H.size + count * PACK_INDEX_ENTRY.size) {
    throw new FormatError(`pack index holds ${buf.length} bytes, expected ${H.size + count * PACK_INDEX_ENTRY.size} for ${count} entries`);
  }
  return {
    packId: Buffer.from(buf.subarray(H.packId, H.packId + PACK_ID_BYTES)),
    packSize: Number(buf.readBigUInt64LE(H.packSize)),
    createdMs: Number(buf.readBigUInt64LE(H.createdMs)),
    count,
  };
}

export function decodePackIndex(buf: Buffer, version: number): PackIndexContents {
  const { packId, packSize, createdMs, count } = packIndexHeader(buf, version);
  const E = PACK_INDEX_ENTRY;
  const entries: PackIndexEntry[] = new Array(count);
  let p = PACK_INDEX_HEADER.size;
  for (let i = 0; i < count; i++, p += E.size) {
    entries[i] = {
      id: buf.subarray(p + E.id, p + E.id + CHUNK_ID_BYTES), // a view: the entries keep buf alive
      offset: buf.readUInt32LE(p + E.offset),
      storedLength: buf.readUInt32LE(p + E.storedLength),
      rawLength: buf.readUInt32LE(p + E.rawLength),
      crc32: buf.readUInt32LE(p + E.crc32),
      type: buf.readUInt8(p + E.type),
      compression: buf.readUInt8(p + E.compression),
    };
  }
  return { packId, packSize, createdMs, entries };
}

export interface PackTrailer {
  indexLength: number;
  indexCrc32: number;
  version: number;
}

export function encodePackTrailer(t: PackTrailer): Buffer {
  const T = PACK_TRAILER;
  const out = Buffer.alloc(T.size);
  out.writeUInt32LE(t.indexLength, T.indexLength);
  out.writeUInt32LE(t.indexCrc32, T.indexCrc32);
  out.writeUInt32LE(t.version, T.version);
  PACK_TRAILER_MAGIC.copy(out, T.magic);
  return out;
}

export function decodePackTrailer(buf: Buffer): PackTrailer {
  const T = PACK_TRAILER;
  if (buf.length !== T.size || !buf.subarray(T.magic, T.magic + 4).equals(PACK_TRAILER_MAGIC)) {
    throw new FormatError('pack trailer is damaged (bad magic)');
  }
  return {
    indexLength: buf.readUInt32LE(T.indexLength),
    indexCrc32: buf.readUInt32LE(T.indexCrc32),
    version: buf.readUInt32LE(T.version),
  };
}

export interface IndexObjectRecord {
  packId: Buffer;
  crc32: number;
  /** The stored (sealed) pack index, byte for byte the same as the pack's tail. */
  stored: Buffer;
}

export function encodeIndexObject(records: IndexObjectRecord[], version: number): Buffer {
  const H = INDEX_OBJECT_HEADER;
  const R = INDEX_OBJECT_RECORD;
  const header = Buffer.alloc(H.size);
  INDEX_OBJECT_MAGIC.copy(header, H.magic);
  header.writeUInt16LE(version, H.version);
  header.writeUInt32LE(records.length, H.packCount);
  const parts: Buffer[] = [header];
  for (const r of records) {
    const rh = Buffer.alloc(R.size);
    r.packId.copy(rh, R.packId);
    rh.writeUInt32LE(r.stored.length, R.storedLength);
    rh.writeUInt32LE(r.crc32, R.crc32);
    parts.push(rh, r.stored);
  }
  return Buffer.concat(parts);
}

export function decodeIndexObject(buf: Buffer, version: number): IndexObjectRecord[] {
  const H = INDEX_OBJECT_HEADER;
  const R = INDEX_OBJECT_RECORD;
  if (buf.length < H.size || !buf.subarray(H.magic, H.magic + 4).equals(INDEX_OBJECT_MAGIC)) {
    throw new FormatError('not an index object (bad magic)');
  }
  const v = buf.readUInt16LE(H.version);
  if (v !== version) throw new FormatError(`index object version ${v} is not supported (expected ${version})`);
  const count = buf.readUInt32LE(H.packCount);
  const records: IndexObjectRecord[] = [];
  let p = H.size;
  for (let i = 0; i < count; i++) {
    if (p + R.size > buf.length) throw new FormatError('index object is truncated');
    const len = buf.readUInt32LE(p + R.storedLength);
    if (p + R.size + len > buf.length) throw new FormatError('index object is truncated');
    records.push({
      packId: Buffer.from(buf.subarray(p + R.packId, p + R.packId + PACK_ID_BYTES)),
      crc32: buf.readUInt32LE(p + R.crc32),
      stored: buf.subarray(p + R.size, p + R.size + len),
    });
    p += R.size + len;
  }
  if (p !== buf.length) throw new FormatError('index object has trailing bytes');
  return records;
}

/** A stored record that does not parse: the object is damaged or not what its name says. */
export class FormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FormatError';
  }
}
