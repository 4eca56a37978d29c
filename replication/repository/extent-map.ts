// Extent maps (docs/repository-format.md §9): an image as a list of extents, each a slice of one blob's
// plaintext (or zeros), that tile the image exactly and never cross a chunk-grid cell. A full backup has
// one extent per cell (a whole chunk); an incremental splices small chunks into its parent's extents.
// Map pages hold the extents of a fixed number of cells, so a page whose cells did not change is the
// same blob as in the parent point.
//
// In memory a map keeps its extents as the map pages store them (40-byte records, MAP_EXTENT), so that
// reading pages and writing them back costs one copy, not one per extent; offsets, lengths and image
// positions are kept beside them in typed arrays.

import { CHUNK_ID_BYTES, ZERO_CHUNK_ID } from './constants.js';
import { FormatError, MAP_EXTENT } from './layout.js';

const E = MAP_EXTENT;

export interface ExtentMapShape {
  size: number;
  chunkSize: number;
}

export function cellCount(image: ExtentMapShape): number {
  return Math.ceil(image.size / image.chunkSize);
}

function zeroAt(records: Buffer, at: number): boolean {
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
    return zeroAt(this.records, k * E.size + E.id);
  }

  /** Counts for the manifest: extents with data and their bytes, and extents of zeros. */
  stats(): { extents: number; dataExtents: number; zeroExtents: number; dataBytes: number } {
    let zeroExtents = 0;
    let dataBytes = 0;
    for (let k = 0; k < this.count; k++) {
      if (this.isZero(k)) zeroExtents++;
      else dataBytes += this.lengths[k];
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
    const o = new Uint32Array(cap);
    o.set(this.offsets.subarray(0, this.n));
    this.offsets = o;
    const l = new Uint32Array(cap);
    l.set(this.lengths.subarray(0, this.n));
    this.lengths = l;
    const p = new Float64Array(cap);
    p.set(this.positions.subarray(0, this.n));
    this.positions = p;
  }

  private cellEnd(): number {
    return Math.min(this.size, (this.cell + 1) * this.chunkSize);
  }

  /** Throws FormatError when the extent is not well formed or crosses a cell boundary. */
  add(id: Uint8Array | null, offset: number, length: number): void {
    const zero = id === null || ZERO_CHUNK_ID.equals(id);
    if (!(length > 0) || !Number.isInteger(length)) throw new FormatError(`the extent at image offset ${this.pos} has length ${length}`);
    if (zero && offset !== 0) throw new FormatError(`the zero extent at image offset ${this.pos} has blob offset ${offset}`);
    if (this.cell >= this.cells) throw new FormatError(`an extent at image offset ${this.pos} lies beyond the image's ${this.size} bytes`);
    const cellEnd = this.cellEnd();
    if (this.pos + length > cellEnd) {
      throw new FormatError(`the extent at image offset ${this.pos} (${length} bytes) crosses the chunk-grid boundary at ${cellEnd}`);
    }
    const prev = this.n - 1;
    if (this.merge && this.n > this.cellFirst[this.cell]) {
      const at = prev * E.size + E.id;
      const prevZero = zeroAt(this.records, at);
      const same = zero ? prevZero : !prevZero && this.offsets[prev] + this.lengths[prev] === offset && this.records.compare(id!, 0, CHUNK_ID_BYTES, at, at + CHUNK_ID_BYTES) === 0;
      if (same) {
        this.lengths[prev] += length;
        this.records.writeUInt32LE(this.lengths[prev], prev * E.size + E.length);
        this.advance(length, cellEnd);
        return;
      }
    }
    this.reserve(1);
    const at = this.n * E.size;
    if (zero) this.records.fill(0, at + E.id, at + E.id + CHUNK_ID_BYTES);
    else for (let i = 0; i < CHUNK_ID_BYTES; i++) this.records[at + E.id + i] = id![i];
    this.records.writeUInt32LE(offset, at + E.offset);
    this.records.writeUInt32LE(length, at + E.length);
    this.offsets[this.n] = offset;
    this.lengths[this.n] = length;
    this.positions[this.n] = this.pos;
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
    this.records.set(map.records.subarray(from * E.size, to * E.size), this.n * E.size);
    this.offsets.set(map.offsets.subarray(from, to), this.n);
    this.lengths.set(map.lengths.subarray(from, to), this.n);
    const shift = this.n - from;
    for (let k = from; k < to; k++) this.positions[k + shift] = map.positions[k];
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
    );
  }
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
  const cellFirst = new Uint32Array(cells + 1);
  let k = 0;
  let pos = 0;
  let cell = 0;
  let cellEnd = Math.min(image.size, image.chunkSize);
  pages.forEach((page, i) => {
    if (page.length % E.size !== 0) throw new FormatError(`map page ${i} holds ${page.length} bytes, not a whole number of ${E.size}-byte extents`);
    page.copy(records, k * E.size);
    // The message is built only for a bad extent (a map has tens of thousands of good ones).
    const bad = (problem: string): never => {
      throw new FormatError(`map page ${i}: the extent at image offset ${pos} ${problem}`);
    };
    const end = Math.min(image.size, Math.min(cells, (i + 1) * pageCells) * image.chunkSize);
    for (let p = 0; p < page.length; p += E.size, k++) {
      const offset = page.readUInt32LE(p + E.offset);
      const length = page.readUInt32LE(p + E.length);
      if (length === 0) bad('is empty');
      if (pos + length > end) bad(`runs past the page's last byte (${end})`);
      if (pos + length > cellEnd) bad(`(${length} bytes) crosses the chunk-grid boundary at ${cellEnd}`);
      if (offset !== 0 && zeroAt(page, p + E.id)) bad(`is zeros but has blob offset ${offset}`);
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
  });
  if (pos !== image.size) throw new FormatError(`the extents cover ${pos} bytes of an image of ${image.size}`);
  return new ExtentMap(image.size, image.chunkSize, records, offsets, lengths, positions, cellFirst);
}
