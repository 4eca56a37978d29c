// The in-memory index: chunk id -> where its blob lives. Built from index objects; kept in typed arrays
// (and a hash table over them) so that a repository with millions of chunks costs tens of bytes per
// chunk, not hundreds, and a lookup allocates nothing.

import { CHUNK_ID_BYTES } from './constants.js';
import { PACK_INDEX_ENTRY, PACK_INDEX_HEADER, type PackIndexContents, type PackIndexHeader } from './layout.js';

export interface BlobLocation {
  id: Buffer;
  packId: string;
  offset: number;
  storedLength: number;
  rawLength: number;
  crc32: number;
  type: number;
  compression: number;
}

export interface PackInfo {
  packId: string;
  packSize: number;
  blobCount: number;
  createdMs: number;
  /** Preference when a blob is in several packs: higher wins, then the newer pack, then the higher id. */
  rank: number;
}

/** Ranks for addPack: a pack that exists beats one that is condemned, which beats one that is gone. */
export const PACK_RANK = { missing: 0, condemned: 1, present: 2 } as const;

/** The table hash of the id at id[at..]: its first 8 bytes, mixed with the index's seed. */
function idHash(id: Uint8Array, at: number, seed: number): number {
  const w = (id[at] | (id[at + 1] << 8) | (id[at + 2] << 16) | (id[at + 3] << 24)) ^ seed;
  const v = (id[at + 4] | (id[at + 5] << 8) | (id[at + 6] << 16) | (id[at + 7] << 24)) + seed;
  return Math.imul(w ^ (w >>> 15), 0x2c1b3c6d) ^ Math.imul(v ^ (v >>> 13), 0x297a2d39);
}

const u32 = (b: Uint8Array, at: number) => (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0;

/**
 * An open-addressing hash table over the blob slots: ids are (keyed) hashes, so their bytes are already
 * uniform; a per-index random seed mixes them so that crafted ids (unencrypted repositories hash
 * contents anyone may write) cannot pile up on one bucket. No string or object is made per lookup.
 */
const EMPTY = 0xffffffff;

export class ChunkIndex {
  private table = new Uint32Array(2048).fill(EMPTY);
  private mask = 2047;
  private readonly seed = (Math.random() * 0x100000000) >>> 0;
  private idBytes = Buffer.alloc(0);
  private pack = new Uint32Array(0);
  private offset = new Uint32Array(0);
  private stored = new Uint32Array(0);
  private raw = new Uint32Array(0);
  private crc = new Uint32Array(0);
  private kind = new Uint16Array(0); // type << 8 | compression
  private used = 0;
  private readonly packIds: string[] = [];
  private readonly packNumbers = new Map<string, number>();
  readonly packs = new Map<string, PackInfo>();
  /** Blobs seen more than once (kept at the location in the best pack). */
  duplicates = 0;

  get size(): number {
    return this.used;
  }

  private grow(min: number): void {
    const cap = Math.max(min, this.pack.length * 2, 1024);
    const ids = Buffer.alloc(cap * CHUNK_ID_BYTES);
    this.idBytes.copy(ids, 0, 0, this.used * CHUNK_ID_BYTES);
    this.idBytes = ids;
    const growU32 = (a: Uint32Array) => {
      const b = new Uint32Array(cap);
      b.set(a.subarray(0, this.used));
      return b;
    };
    this.pack = growU32(this.pack);
    this.offset = growU32(this.offset);
    this.stored = growU32(this.stored);
    this.raw = growU32(this.raw);
    this.crc = growU32(this.crc);
    const kind = new Uint16Array(cap);
    kind.set(this.kind.subarray(0, this.used));
    this.kind = kind;
    // Keep the table at most half full.
    if (cap * 2 > this.table.length) {
      let size = this.table.length;
      while (size < cap * 2) size *= 2;
      this.table = new Uint32Array(size).fill(EMPTY);
      this.mask = size - 1;
      for (let s = 0; s < this.used; s++) this.table[this.probe(this.idBytes, s * CHUNK_ID_BYTES)] = s;
    }
  }

  /** The table position holding the id at id[at..at+32), or the empty position where it would go. */
  private probe(id: Uint8Array, at: number): number {
    let i = idHash(id, at, this.seed) & this.mask;
    for (;;) {
      const s = this.table[i];
      if (s === EMPTY) return i;
      const base = s * CHUNK_ID_BYTES;
      let same = true;
      for (let b = 0; b < CHUNK_ID_BYTES; b++) {
        if (this.idBytes[base + b] !== id[at + b]) {
          same = false;
          break;
        }
      }
      if (same) return i;
      i = (i + 1) & this.mask;
    }
  }

  private slot(id: Uint8Array): number {
    const s = this.table[this.probe(id, 0)];
    return s === EMPTY ? -1 : s;
  }

  private better(a: PackInfo, b: PackInfo): boolean {
    if (a.rank !== b.rank) return a.rank > b.rank;
    if (a.createdMs !== b.createdMs) return a.createdMs > b.createdMs;
    return a.packId > b.packId;
  }

  /** Makes room for `blobs` more blobs at once (a loader that knows how many are coming). */
  reserve(blobs: number): void {
    if (this.used + blobs > this.pack.length) this.grow(this.used + blobs);
  }

  /** Registers a pack about to be added: its number, or -1 when it is already in the index. */
  private startPack(packIdBytes: Buffer, packSize: number, blobCount: number, createdMs: number, rank: number): { info: PackInfo; packNo: number } | null {
    const packId = packIdBytes.toString('hex');
    if (this.packs.has(packId)) return null;
    const info: PackInfo = { packId, packSize, blobCount, createdMs, rank };
    this.packs.set(packId, info);
    let packNo = this.packNumbers.get(packId);
    if (packNo === undefined) {
      packNo = this.packIds.length;
      this.packIds.push(packId);
      this.packNumbers.set(packId, packNo);
    }
    if (this.used + blobCount > this.pack.length) this.grow(this.used + blobCount);
    return { info, packNo };
  }

  /** The slot for the id at id[at..at+32) of a blob in pack `info`, or -1 when a better copy is indexed. */
  private slotFor(id: Uint8Array, at: number, info: PackInfo): number {
    const t = this.probe(id, at);
    let s = this.table[t];
    if (s !== EMPTY) {
      this.duplicates++;
      return this.better(info, this.packs.get(this.packIds[this.pack[s]])!) ? s : -1;
    }
    s = this.used++;
    this.table[t] = s;
    // Byte by byte: a view per id (subarray) costs more than the copy, ~0.5 us each before the JIT warms up.
    const ids = this.idBytes;
    for (let b = 0, to = s * CHUNK_ID_BYTES; b < CHUNK_ID_BYTES; b++) ids[to + b] = id[at + b];
    return s;
  }

  addPack(contents: PackIndexContents, rank: number = PACK_RANK.present): void {
    const started = this.startPack(contents.packId, contents.packSize, contents.entries.length, contents.createdMs, rank);
    if (!started) return;
    const { info, packNo } = started;
    for (const e of contents.entries) {
      const s = this.slotFor(e.id, 0, info);
      if (s < 0) continue;
      this.pack[s] = packNo;
      this.offset[s] = e.offset;
      this.stored[s] = e.storedLength;
      this.raw[s] = e.rawLength;
      this.crc[s] = e.crc32;
      this.kind[s] = (e.type << 8) | e.compression;
    }
  }

  /**
   * addPack() straight from a pack index's plaintext (checked with packIndexHeader first): no object or
   * view per entry, which is most of what loading a large index costs.
   */
  addPackIndex(plain: Buffer, header: PackIndexHeader, rank: number = PACK_RANK.present): void {
    const started = this.startPack(header.packId, header.packSize, header.count, header.createdMs, rank);
    if (!started) return;
    const { info, packNo } = started;
    const E = PACK_INDEX_ENTRY;
    for (let i = 0, p = PACK_INDEX_HEADER.size; i < header.count; i++, p += E.size) {
      const s = this.slotFor(plain, p + E.id, info);
      if (s < 0) continue;
      this.pack[s] = packNo;
      this.offset[s] = u32(plain, p + E.offset);
      this.stored[s] = u32(plain, p + E.storedLength);
      this.raw[s] = u32(plain, p + E.rawLength);
      this.crc[s] = u32(plain, p + E.crc32);
      this.kind[s] = (plain[p + E.type] << 8) | plain[p + E.compression];
    }
  }

  /** Every blob id (views into the index: copy them to keep them). */
  *ids(): Generator<Buffer> {
    for (let s = 0; s < this.used; s++) yield this.idBytes.subarray(s * CHUNK_ID_BYTES, (s + 1) * CHUNK_ID_BYTES);
  }

  has(id: Uint8Array): boolean {
    return this.slot(id) >= 0;
  }

  /** has() for the id at bytes[at..at+32) (an extent map's records, say), without a view per lookup. */
  hasAt(bytes: Uint8Array, at: number): boolean {
    return this.table[this.probe(bytes, at)] !== EMPTY;
  }

  /** Packs the index has numbered (see packNumbersAt). */
  get packCount(): number {
    return this.packIds.length;
  }

  /** The pack with number n (see packNumbersAt). */
  packIdOf(n: number): string {
    return this.packIds[n];
  }

  /**
   * For each of the ids at bytes[first + k * stride, + 32), k < out.length, whose skip[k] is not 1: the
   * number of the pack holding it (packIdOf names it), or -1 when the index does not hold it; each such
   * pack's count in `counts` (indexed by pack number) goes up by one. Entries skipped are -2. One loop
   * for an extent map's tens of thousands of records: it runs once per command, mostly before the JIT
   * has optimised anything, so probe()'s loop is written out here instead of called per id (~7 ms of
   * an incremental's plan).
   */
  packNumbersAt(bytes: Uint8Array, first: number, stride: number, skip: Uint8Array, out: Int32Array, counts: Uint32Array): void {
    const table = this.table;
    const mask = this.mask;
    const seed = this.seed;
    const ids = this.idBytes;
    const packOfSlot = this.pack;
    for (let k = 0, at = first, n = out.length; k < n; k++, at += stride) {
      if (skip[k] === 1) {
        out[k] = -2;
        continue;
      }
      let i = idHash(bytes, at, seed) & mask;
      let found = -1;
      for (;;) {
        const s = table[i];
        if (s === EMPTY) break;
        const base = s * CHUNK_ID_BYTES;
        let b = 0;
        while (b < CHUNK_ID_BYTES && ids[base + b] === bytes[at + b]) b++;
        if (b === CHUNK_ID_BYTES) {
          found = packOfSlot[s];
          break;
        }
        i = (i + 1) & mask;
      }
      out[k] = found;
      if (found >= 0) counts[found]++;
    }
  }

  /** packOf() for the id at bytes[at..at+32). */
  packOfAt(bytes: Uint8Array, at: number): string | undefined {
    const s = this.table[this.probe(bytes, at)];
    return s === EMPTY ? undefined : this.packIds[this.pack[s]];
  }

  /** The pack holding a blob (the one get() would name), without building a location. */
  packOf(id: Uint8Array): string | undefined {
    const s = this.slot(id);
    return s < 0 ? undefined : this.packIds[this.pack[s]];
  }

  get(id: Uint8Array): BlobLocation | undefined {
    const s = this.slot(id);
    if (s < 0) return undefined;
    return {
      id: this.idBytes.subarray(s * CHUNK_ID_BYTES, (s + 1) * CHUNK_ID_BYTES),
      packId: this.packIds[this.pack[s]],
      offset: this.offset[s],
      storedLength: this.stored[s],
      rawLength: this.raw[s],
      crc32: this.crc[s],
      type: this.kind[s] >> 8,
      compression: this.kind[s] & 0xff,
    };
  }
}
