// Extent maps (docs/repository-format.md §9): an image as a list of extents, each a slice of one blob's
// plaintext (or zeros), that tile the image exactly and never cross a chunk-grid cell. A full backup has
// one extent per cell (a whole chunk); an incremental splices small chunks into its parent's extents.
// Map pages hold the extents of a fixed number of cells, so a page whose cells did not change is the
// same blob as in the parent point.
//
// In memory a map keeps its extents as the map pages store them (40-byte records, MAP_EXTENT), so that
// reading pages and writing them back costs one copy, not one per extent; offsets, lengths and image
// positions are kept beside them in typed arrays.

import { CHUNK_ID_BYTES } from './constants.js';
import { FormatError, MAP_EXTENT } from './layout.js';

const E = MAP_EXTENT;

export interface ExtentMapShape {
  size: number;
  chunkSize: number;
}

export function cellCount(image: ExtentMapShape): number {
  return Math.ceil(image.size / image.chunkSize);
}

/** Typed arrays read this host's byte order; the records are little-endian. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * records[at, at + length) as little-endian 32-bit words: a view where the host is little-endian and
 * the bytes aligned (a map's records always are: decodeExtentMap allocates them), else a copy.
 */
function recordWords(records: Buffer, at: number, length: number): Uint32Array {
  if (LITTLE_ENDIAN && (records.byteOffset + at) % 4 === 0) return new Uint32Array(records.buffer, records.byteOffset + at, length >>> 2);
  const words = new Uint32Array(length >>> 2);
  for (let i = 0; i < words.length; i++) words[i] = records.readUInt32LE(at + 4 * i);
  return words;
}

/** Whether the blob id at bytes[at, at + 32) is the zero id (an extent of zeros). */
export function zeroIdAt(records: Uint8Array, at: number): boolean {
  for (let i = 0; i < CHUNK_ID_BYTES; i++) if (records[at + i] !== 0) return false;
  return true;
}

/** An image's extents in image order (a 4 GiB disk has 65536 or more). */
export class ExtentMap {
  constructor(
    readonly size: number,
    readonly chunkSize: number,
    /** The extents as map pages hold them: MAP_EXTENT records back to back. */
    readonly records: Buffer,
    readonly offsets: Uint32Array,
    readonly lengths: Uint32Array,
    /** Byte offset of each extent in the image. */
    readonly positions: Float64Array,
    /** Extents of cell c are [cellFirst[c], cellFirst[c + 1]). */
    readonly cellFirst: Uint32Array,
    /** 1 for an extent of zeros (the zero id), else 0: tested once, when the map is built or read. */
    readonly zeros: Uint8Array,
    /** stats(), when whoever built the map counted them already. */
    private readonly counted: { zeroExtents: number; dataBytes: number } | null = null,
  ) {}

  get count(): number {
    return this.lengths.length;
  }

  get cells(): number {
    return this.cellFirst.length - 1;
  }

  /** A view of extent k's blob id (copy it to keep it). */
  id(k: number): Buffer {
    return this.records.subarray(k * E.size + E.id, k * E.size + E.id + CHUNK_ID_BYTES);
  }

  /** Where extent k's blob id starts in records (for lookups that take bytes and an offset). */
  idAt(k: number): number {
    return k * E.size + E.id;
  }

  isZero(k: number): boolean {
    return this.zeros[k] === 1;
  }

  /** Counts for the manifest: extents with data and their bytes, and extents of zeros. */
  stats(): { extents: number; dataExtents: number; zeroExtents: number; dataBytes: number } {
    if (this.counted) {
      const { zeroExtents, dataBytes } = this.counted;
      return { extents: this.count, dataExtents: this.count - zeroExtents, zeroExtents, dataBytes };
    }
    let zeroExtents = 0;
    let dataBytes = 0;
    const zeros = this.zeros;
    const lengths = this.lengths;
    for (let k = 0, n = this.count; k < n; k++) {
      if (zeros[k] === 1) zeroExtents++;
      else dataBytes += lengths[k];
    }
    return { extents: this.count, dataExtents: this.count - zeroExtents, zeroExtents, dataBytes };
  }

  /** Every extent that has a blob, with its number (ids are views: copy them to keep them). */
  *dataExtents(): Generator<{ k: number; id: Buffer }> {
    for (let k = 0; k < this.count; k++) if (!this.isZero(k)) yield { k, id: this.id(k) };
  }

  /** The map page of cells [firstCell, firstCell + cells): a view of the records. */
  page(firstCell: number, cells: number): Buffer {
    const from = this.cellFirst[firstCell];
    const to = this.cellFirst[Math.min(this.cells, firstCell + cells)];
    return this.records.subarray(from * E.size, to * E.size);
  }
}

/**
 * Appends extents in image order, cell after cell, checking that none is empty or crosses a cell
 * boundary. With `merge`, adjacent extents of one cell that continue each other (zeros after zeros, or
 * the next bytes of the same blob) become one.
 */
export class ExtentMapBuilder {
  private records: Buffer;
  private offsets: Uint32Array;
  private lengths: Uint32Array;
  private positions: Float64Array;
  private zeros: Uint8Array;
  private readonly cellFirst: Uint32Array;
  private n = 0;
  private cell = 0;
  private pos = 0;
  private readonly cells: number;

  constructor(
    readonly size: number,
    readonly chunkSize: number,
    private readonly merge = true,
    capacity = Math.ceil(size / chunkSize) + 16,
  ) {
    this.cells = Math.ceil(size / chunkSize);
    this.cellFirst = new Uint32Array(this.cells + 1);
    capacity = Math.max(capacity, 16);
    this.records = Buffer.alloc(capacity * E.size);
    this.offsets = new Uint32Array(capacity);
    this.lengths = new Uint32Array(capacity);
    this.positions = new Float64Array(capacity);
    this.zeros = new Uint8Array(capacity);
  }

  /** The image offset the next extent starts at. */
  get position(): number {
    return this.pos;
  }

  private reserve(more: number): void {
    if (this.n + more <= this.lengths.length) return;
    const cap = Math.max(this.n + more, this.lengths.length * 2);
    const records = Buffer.alloc(cap * E.size);
    records.set(this.records.subarray(0, this.n * E.size));
    this.records = records;
    this.offsets = grown(this.offsets, this.n, cap);
    this.lengths = grown(this.lengths, this.n, cap);
    this.positions = grown(this.positions, this.n, cap);
    this.zeros = grown(this.zeros, this.n, cap);
  }

  private cellEnd(): number {
    return Math.min(this.size, (this.cell + 1) * this.chunkSize);
  }

  /** Throws FormatError when the extent is not well formed or crosses a cell boundary. */
  add(id: Uint8Array | null, offset: number, length: number): void {
    this.addAt(id, 0, offset, length);
  }

  /** add() of the id at idBytes[idAt, idAt + 32) (null: zeros), without a view of it. */
  addAt(idBytes: Uint8Array | null, idAt: number, offset: number, length: number): void {
    const zero = idBytes === null || zeroIdAt(idBytes, idAt);
    if (!(length > 0) || !Number.isInteger(length)) throw new FormatError(`the extent at image offset ${this.pos} has length ${length}`);
    if (zero && offset !== 0) throw new FormatError(`the zero extent at image offset ${this.pos} has blob offset ${offset}`);
    if (this.cell >= this.cells) throw new FormatError(`an extent at image offset ${this.pos} lies beyond the image's ${this.size} bytes`);
    const cellEnd = this.cellEnd();
    if (this.pos + length > cellEnd) {
      throw new FormatError(`the extent at image offset ${this.pos} (${length} bytes) crosses the chunk-grid boundary at ${cellEnd}`);
    }
    const records = this.records;
    const prev = this.n - 1;
    if (this.merge && this.n > this.cellFirst[this.cell]) {
      const prevZero = this.zeros[prev] === 1;
      const same = zero ? prevZero : !prevZero && this.offsets[prev] + this.lengths[prev] === offset && sameId(records, prev * E.size + E.id, idBytes!, idAt);
      if (same) {
        this.lengths[prev] += length;
        writeU32(records, prev * E.size + E.length, this.lengths[prev]);
        this.advance(length, cellEnd);
        return;
      }
    }
    this.reserve(1);
    const at = this.n * E.size;
    if (zero) this.records.fill(0, at + E.id, at + E.id + CHUNK_ID_BYTES);
    else for (let i = 0; i < CHUNK_ID_BYTES; i++) this.records[at + E.id + i] = idBytes![idAt + i];
    writeU32(this.records, at + E.offset, offset);
    writeU32(this.records, at + E.length, length);
    this.offsets[this.n] = offset;
    this.lengths[this.n] = length;
    this.positions[this.n] = this.pos;
    this.zeros[this.n] = zero ? 1 : 0;
    this.n++;
    this.advance(length, cellEnd);
  }

  /**
   * Copies the extents of cells [fromCell, toCell) of another map of the same grid as they are (the
   * builder must be at the start of fromCell).
   */
  copyCells(map: ExtentMap, fromCell: number, toCell: number): void {
    if (fromCell >= toCell) return;
    if (fromCell !== this.cell || this.pos !== fromCell * this.chunkSize) throw new Error(`internal: copying cell ${fromCell} at cell ${this.cell}`);
    const from = map.cellFirst[fromCell];
    const to = map.cellFirst[toCell];
    this.reserve(to - from);
    copyRange(this.records, this.n * E.size, map.records, from * E.size, to * E.size);
    copyRange(this.offsets, this.n, map.offsets, from, to);
    copyRange(this.lengths, this.n, map.lengths, from, to);
    copyRange(this.zeros, this.n, map.zeros, from, to);
    // The same grid: the cells' extents start at the same image offsets as in `map`.
    copyRange(this.positions, this.n, map.positions, from, to);
    const shift = this.n - from;
    for (let c = fromCell + 1; c <= toCell; c++) this.cellFirst[c] = map.cellFirst[c] + shift;
    this.n += to - from;
    this.cell = toCell;
    this.pos = Math.min(this.size, toCell * this.chunkSize);
  }

  private advance(length: number, cellEnd: number): void {
    this.pos += length;
    if (this.pos === cellEnd) {
      this.cell++;
      this.cellFirst[this.cell] = this.n;
    }
  }

  finish(): ExtentMap {
    if (this.pos !== this.size) throw new FormatError(`the extents cover ${this.pos} bytes of an image of ${this.size}`);
    return new ExtentMap(
      this.size,
      this.chunkSize,
      this.records.subarray(0, this.n * E.size),
      this.offsets.subarray(0, this.n),
      this.lengths.subarray(0, this.n),
      this.positions.subarray(0, this.n),
      this.cellFirst,
      this.zeros.subarray(0, this.n),
    );
  }
}

/** Whether the blob ids at a[at...] and b[bt...] are the same bytes (no views made). */
export function sameId(a: Uint8Array, at: number, b: Uint8Array, bt: number): boolean {
  for (let i = 0; i < CHUNK_ID_BYTES; i++) if (a[at + i] !== b[bt + i]) return false;
  return true;
}

/** Below this many elements a range is copied in a loop: a view per copy would cost more (an incremental copies thousands of short runs of cells). */
const COPY_LOOP_MAX = 256;

/** dst[dstAt...] = src[from, to), without a view of src for short ranges. */
function copyRange<T extends Uint8Array | Uint32Array | Float64Array>(dst: T, dstAt: number, src: T, from: number, to: number): void {
  if (to - from > COPY_LOOP_MAX) {
    dst.set(src.subarray(from, to), dstAt);
    return;
  }
  for (let i = from; i < to; i++) dst[dstAt + i - from] = src[i];
}

/** A copy of `a`'s first `used` elements in an array of the same type holding `capacity`. */
function grown<T extends Uint8Array | Uint32Array | Float64Array>(a: T, used: number, capacity: number): T {
  const b = new (a.constructor as new (length: number) => T)(capacity);
  b.set(a.subarray(0, used));
  return b;
}

function writeU32(b: Uint8Array, at: number, v: number): void {
  b[at] = v;
  b[at + 1] = v >>> 8;
  b[at + 2] = v >>> 16;
  b[at + 3] = v >>> 24;
}

/** The map pages of an image: page p holds the extents of cells [p * pageCells, (p + 1) * pageCells). */
export function encodeMapPages(map: ExtentMap, pageCells: number): Buffer[] {
  const pages: Buffer[] = [];
  for (let firstCell = 0; firstCell < map.cells; firstCell += pageCells) pages.push(map.page(firstCell, pageCells));
  return pages;
}

/**
 * Parses an image's map pages and checks that they tile the image: each page covers exactly its cells,
 * no extent is empty or crosses a cell boundary, extents of zeros have offset 0. Throws FormatError
 * naming the page and offset.
 */
export function decodeExtentMap(pages: Buffer[], image: ExtentMapShape, pageCells: number): ExtentMap {
  const cells = cellCount(image);
  const total = pages.reduce((a, p) => a + p.length, 0);
  const records = Buffer.alloc(total);
  const count = Math.floor(total / E.size);
  const offsets = new Uint32Array(count);
  const lengths = new Uint32Array(count);
  const positions = new Float64Array(count);
  const zeros = new Uint8Array(count);
  const cellFirst = new Uint32Array(cells + 1);
  // The records are read from their copy, word by word: a map has tens of thousands of extents and is
  // read once per command, mostly before the JIT has optimised anything (no closure, no call per field).
  const W = E.size >>> 2;
  const ID = E.id >>> 2;
  const OFFSET = E.offset >>> 2;
  const LENGTH = E.length >>> 2;
  let k = 0;
  let pos = 0;
  let cell = 0;
  let zeroExtents = 0;
  let dataBytes = 0;
  let cellEnd = Math.min(image.size, image.chunkSize);
  for (let i = 0; i < pages.length; i++) {
    const page = pages[i];
    if (page.length % E.size !== 0) throw new FormatError(`map page ${i} holds ${page.length} bytes, not a whole number of ${E.size}-byte extents`);
    page.copy(records, k * E.size);
    const words = recordWords(records, k * E.size, page.length);
    const base = k;
    const end = Math.min(image.size, Math.min(cells, (i + 1) * pageCells) * image.chunkSize);
    const last = k + page.length / E.size;
    let problem: string | null = null;
    for (; k < last; k++) {
      const w = (k - base) * W;
      const offset = words[w + OFFSET];
      const length = words[w + LENGTH];
      if (length === 0) problem = 'is empty';
      else if (pos + length > end) problem = `runs past the page's last byte (${end})`;
      else if (pos + length > cellEnd) problem = `(${length} bytes) crosses the chunk-grid boundary at ${cellEnd}`;
      else if ((words[w + ID] | words[w + ID + 1] | words[w + ID + 2] | words[w + ID + 3] | words[w + ID + 4] | words[w + ID + 5] | words[w + ID + 6] | words[w + ID + 7]) === 0) {
        if (offset !== 0) problem = `is zeros but has blob offset ${offset}`;
        zeros[k] = 1;
        zeroExtents++;
      } else {
        dataBytes += length;
      }
      if (problem) throw new FormatError(`map page ${i}: the extent at image offset ${pos} ${problem}`);
      offsets[k] = offset;
      lengths[k] = length;
      positions[k] = pos;
      pos += length;
      if (pos === cellEnd) {
        cell++;
        cellFirst[cell] = k + 1;
        cellEnd = Math.min(image.size, (cell + 1) * image.chunkSize);
      }
    }
    if (pos !== end) throw new FormatError(`map page ${i} covers the image up to ${pos}, not up to ${end}`);
  }
  if (pos !== image.size) throw new FormatError(`the extents cover ${pos} bytes of an image of ${image.size}`);
  return new ExtentMap(image.size, image.chunkSize, records, offsets, lengths, positions, cellFirst, zeros, { zeroExtents, dataBytes });
}
