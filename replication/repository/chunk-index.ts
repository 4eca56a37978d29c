// The in-memory index: chunk id -> where its blob lives. Built from index objects; kept in typed arrays
// (and a hash table over them) so that a repository with millions of chunks costs tens of bytes per
// chunk, not hundreds, and a lookup allocates nothing.

import { CHUNK_ID_BYTES } from './constants.js';
import type { PackIndexContents } from './layout.js';

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

  private hash(id: Uint8Array, at: number): number {
    const w = (id[at] | (id[at + 1] << 8) | (id[at + 2] << 16) | (id[at + 3] << 24)) ^ this.seed;
    const v = (id[at + 4] | (id[at + 5] << 8) | (id[at + 6] << 16) | (id[at + 7] << 24)) + this.seed;
    return Math.imul(w ^ (w >>> 15), 0x2c1b3c6d) ^ Math.imul(v ^ (v >>> 13), 0x297a2d39);
  }

  /** The table position holding the id at id[at..at+32), or the empty position where it would go. */
  private probe(id: Uint8Array, at: number): number {
    let i = this.hash(id, at) & this.mask;
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

  addPack(contents: PackIndexContents, rank: number = PACK_RANK.present): void {
    const packId = contents.packId.toString('hex');
    if (this.packs.has(packId)) return;
    const info: PackInfo = { packId, packSize: contents.packSize, blobCount: contents.entries.length, createdMs: contents.createdMs, rank };
    this.packs.set(packId, info);
    let packNo = this.packNumbers.get(packId);
    if (packNo === undefined) {
      packNo = this.packIds.length;
      this.packIds.push(packId);
      this.packNumbers.set(packId, packNo);
    }
    if (this.used + contents.entries.length > this.pack.length) this.grow(this.used + contents.entries.length);
    for (const e of contents.entries) {
      const t = this.probe(e.id, 0);
      let s = this.table[t];
      if (s !== EMPTY) {
        this.duplicates++;
        if (!this.better(info, this.packs.get(this.packIds[this.pack[s]])!)) continue;
      } else {
        s = this.used++;
        this.table[t] = s;
        this.idBytes.set(e.id, s * CHUNK_ID_BYTES);
      }
      this.pack[s] = packNo;
      this.offset[s] = e.offset;
      this.stored[s] = e.storedLength;
      this.raw[s] = e.rawLength;
      this.crc[s] = e.crc32;
      this.kind[s] = (e.type << 8) | e.compression;
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
