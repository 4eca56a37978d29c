// Packs: many blobs in one object, followed by the sealed pack index and a fixed trailer. The same sealed
// index is also written as its own index object, so loading the repository index never reads pack tails.

import { randomBytes } from 'node:crypto';
import zlib from 'node:zlib';
import { RECORD_VERSION, PACK_ID_BYTES, SEAL_OVERHEAD } from './constants.js';
import type { EncodedBlob } from './blob.js';
import { AuthenticationError, type Sealer } from './crypto.js';
import {
  AAD_PACK_INDEX,
  FormatError,
  PACK_INDEX_ENTRY,
  PACK_INDEX_HEADER,
  PACK_TRAILER,
  decodePackIndex,
  decodePackTrailer,
  encodeIndexObject,
  encodePackIndex,
  encodePackTrailer,
  type PackIndexContents,
  type PackIndexEntry,
} from './layout.js';

export function newPackId(): Buffer {
  return randomBytes(PACK_ID_BYTES);
}

function packIndexAad(packId: Buffer): Buffer {
  return Buffer.concat([AAD_PACK_INDEX, packId]);
}

export interface FinishedPack {
  packId: Buffer;
  /** The pack object is these buffers back to back (the blobs' own, then its index and trailer). */
  parts: Buffer[];
  /** The parts not handed out by takeNew() (what is left to write when the pack was streamed). */
  unsent: Buffer[];
  /** Its bytes (contents.packSize). */
  size: number;
  /** The index object for this pack. */
  indexObject: Buffer;
  contents: PackIndexContents;
}

/** Collects encoded blobs until the pack is big enough, then lays out the pack and its index object. */
export class PackBuilder {
  readonly packId = newPackId();
  private readonly blobs: Buffer[] = [];
  private readonly entries: PackIndexEntry[] = [];
  private bytes = 0;
  private taken = 0;

  get dataSize(): number {
    return this.bytes;
  }

  get count(): number {
    return this.entries.length;
  }

  add(blob: EncodedBlob): void {
    this.addParts(blob, [blob.stored], blob.stored.length);
  }

  /** add() for a blob whose stored form is the concatenation of `parts` (laid out back to back). */
  addParts(blob: Omit<EncodedBlob, 'stored'>, parts: Buffer[], storedLength: number): void {
    this.entries.push({
      id: blob.id,
      offset: this.bytes,
      storedLength,
      rawLength: blob.rawLength,
      crc32: blob.crc32,
      type: blob.type,
      compression: blob.compression,
    });
    for (const p of parts) this.blobs.push(p);
    this.bytes += storedLength;
  }

  /** The blobs' buffers added since the last call (for writing the pack while it fills). */
  takeNew(): Buffer[] {
    const fresh = this.blobs.slice(this.taken);
    this.taken = this.blobs.length;
    return fresh;
  }

  /** Lays out the pack: its blobs as they were added (not copied), then its sealed index and trailer. */
  finish(sealer: Sealer): FinishedPack {
    const plainIndexLength = PACK_INDEX_HEADER.size + this.entries.length * PACK_INDEX_ENTRY.size;
    const storedIndexLength = plainIndexLength + (sealer.encrypted ? SEAL_OVERHEAD : 0);
    const contents: PackIndexContents = {
      packId: this.packId,
      packSize: this.bytes + storedIndexLength + PACK_TRAILER.size,
      createdMs: Date.now(),
      entries: this.entries,
    };
    const storedIndex = sealer.seal(encodePackIndex(contents, RECORD_VERSION), packIndexAad(this.packId));
    const indexCrc32 = zlib.crc32(storedIndex);
    const trailer = encodePackTrailer({ indexLength: storedIndex.length, indexCrc32, version: RECORD_VERSION });
    const size = this.bytes + storedIndex.length + trailer.length;
    if (size !== contents.packSize) throw new Error(`internal: pack size ${size} != ${contents.packSize}`);
    const indexObject = encodeIndexObject([{ packId: this.packId, crc32: indexCrc32, stored: storedIndex }], RECORD_VERSION);
    const parts = [...this.blobs, storedIndex, trailer];
    return { packId: this.packId, parts, unsent: parts.slice(this.taken), size, indexObject, contents };
  }
}

/** A finished pack's object as one buffer (tests and tools; a backup hands the parts to the target). */
export function packBody(pack: FinishedPack): Buffer {
  return Buffer.concat(pack.parts);
}

/** Opens a stored pack index (from a pack tail or an index object) and checks it belongs to packId. */
export function openPackIndex(stored: Buffer, crc32: number, packId: Buffer, sealer: Sealer): PackIndexContents {
  const contents = decodePackIndex(openPackIndexPlain(stored, crc32, packId, sealer), RECORD_VERSION);
  if (!contents.packId.equals(packId)) throw new FormatError('pack index names a different pack');
  return contents;
}

/**
 * The plaintext of a stored pack index, its CRC-32 and seal checked (its records are not parsed: the
 * caller checks that the header names packId).
 */
export function openPackIndexPlain(stored: Buffer, crc32: number, packId: Buffer, sealer: Sealer): Buffer {
  if (zlib.crc32(stored) !== crc32) throw new FormatError('pack index does not match its CRC-32 (damaged in storage)');
  try {
    return sealer.open(stored, packIndexAad(packId));
  } catch (err) {
    if (err instanceof AuthenticationError) throw new FormatError('pack index failed authentication (damaged, or not for this pack)');
    throw err;
  }
}

/** Reads the trailer and index from the last bytes of a pack (tail must end where the pack ends). */
export function parsePackTail(tail: Buffer, packId: Buffer, sealer: Sealer): { contents: PackIndexContents; storedIndex: Buffer } {
  if (tail.length < PACK_TRAILER.size) throw new FormatError('pack is shorter than its trailer');
  const trailer = decodePackTrailer(tail.subarray(tail.length - PACK_TRAILER.size));
  if (trailer.version !== RECORD_VERSION) throw new FormatError(`pack version ${trailer.version} is not supported`);
  const start = tail.length - PACK_TRAILER.size - trailer.indexLength;
  if (start < 0) throw new FormatError('pack tail is shorter than its index');
  const storedIndex = tail.subarray(start, tail.length - PACK_TRAILER.size);
  return { contents: openPackIndex(storedIndex, trailer.indexCrc32, packId, sealer), storedIndex };
}
