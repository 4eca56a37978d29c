// Backup: disk (and memory) image files -> a recovery point. Reads every chunk (full), only what a change
// bitmap names (incremental with a bitmap), or every chunk but uploads only those whose id the
// repository does not hold (incremental by hash comparison). With a bitmap finer than the chunk size,
// only the runs of changed granules are read and stored, as small chunks spliced into the parent's
// extent map (extent-map.ts); in a cell that would hold too many extents the runs take in the shortest
// gaps of unchanged bytes between or around them until it does not (fittedRuns). Pieces go
// through the worker pool (hash, then compress + seal for new ones) into packs; packs and their index
// objects are durable before the point's map pages and, last, its manifest are written.

import { open, type FileHandle } from 'node:fs/promises';
import type { ChunkIndex } from './chunk-index.js';
import { ChangeBitmapError, dirtyChunks, granuleCount, type ChangeBitmap } from './change-bitmap.js';
import { Semaphore } from './concurrency.js';
import { readCondemned } from './condemned.js';
import { BlobType, CHUNK_ID_BYTES, MAP_PAGE_CELLS, MAX_EXTENTS_PER_CELL } from './constants.js';
import { ExtentMapBuilder, encodeMapPages, zeroIdAt, type ExtentMap } from './extent-map.js';
import { InputError, PointNotFoundError, RepositoryError } from './errors.js';
import { MAP_EXTENT } from './layout.js';
import { Lease } from './leases.js';
import {
  imageMapKey,
  newManifest,
  type Consistency,
  type DiskEntry,
  type ImageEntry,
  type MemoryEntry,
  type PointManifest,
} from './manifest.js';
import { PackBuilder, type FinishedPack } from './pack.js';
import type { ObjectWriter } from '../target.js';
import type { Repository } from './repository.js';
import { ChunkWorkers, WorkerError, defaultWorkerCount } from './worker-pool.js';

export interface BackupImageInput {
  /** A disk or memory image file. */
  path: string;
  /** Granules written since the parent point; without one, every chunk is read. */
  bitmap?: ChangeBitmap | null;
}

export interface BackupDiskInput extends BackupImageInput {
  name: string;
  /** Stable disk identity (defaults to the name). */
  id?: string;
}

export interface BackupOptions {
  vm: { name: string; id?: string };
  disks: BackupDiskInput[];
  memory?: BackupImageInput & { deviceState?: Buffer };
  /** 'auto' (default): the latest point of this VM; null: none (full); else a point id, prefix or 'latest'. */
  parent?: string | null;
  consistency?: Consistency;
  labels?: Record<string, string>;
  onProgress?: (p: BackupProgress) => void;
  leaseTtlMs?: number;
  workers?: number;
  /**
   * Chunk workers already started without keys (new ChunkWorkers(undefined, null,
   * earlyWorkerCount(workers))), e.g. while the repository was being opened; the backup configures
   * them, adds its last lane (see LOCAL_LANE_MAX_BYTES) and closes them when it ends. Without it, the
   * backup starts them itself. Either way `workers` (default: one per core) is the number of lanes.
   */
  workerPool?: ChunkWorkers;
}

export interface BackupProgress {
  /** Bytes of chunks examined so far / to examine in all. */
  bytesDone: number;
  bytesTotal: number;
  /** Bytes written to the target so far. */
  bytesAdded: number;
}

export type ImageMode = 'full' | 'bitmap' | 'hash-compare';

export interface BackupResult {
  pointId: string;
  manifest: PointManifest;
  parent: string | null;
  /** Bytes read from the image files. */
  bytesRead: number;
  /** Bytes written to the target: packs, index objects and the manifest. */
  bytesAdded: number;
  /** Blobs this backup stored (chunks, map pages, device state). */
  chunksNew: number;
  /** Chunks read that the repository already held, and extents taken over from the parent. */
  chunksReused: number;
  /** Pieces read that were all zero, and extents of zeros taken over from the parent. */
  zeroChunks: number;
  packsWritten: number;
  durationMs: number;
  /** chunks: cells of the chunk grid; chunksRead: pieces read (whole cells, or runs of changed granules). */
  images: { label: string; mode: ImageMode; chunks: number; chunksRead: number; note?: string }[];
  /** The extent map of each image (disks, then memory), as stored. */
  maps: ExtentMap[];
  /**
   * The index as this backup used it, its own packs included: every blob the point needs is in it, in
   * a pack that is present and not condemned (what the catalog records, see catalog-source.ts).
   */
  index: ChunkIndex;
  /** The parent's extent maps this backup read, by `imageMapKey` of the parent's image. */
  parentMaps: Map<string, ExtentMap>;
  /** The parent's manifest (null for a full backup). */
  parentManifest: PointManifest | null;
  /**
   * Per image (disks, then memory): the parent image (its `imageMapKey`) the map was spliced from and
   * the cells whose extents may differ from it; every other cell holds the parent's extents byte for
   * byte. null when the image was not built on a parent map (full or hash-compare).
   */
  changedCells: ({ parentKey: string; cells: Uint32Array } | null)[];
}

/** LIFEBOAT_TRACE=1: each phase of a backup on stderr, in ms since the backup began (for profiling). */
function tracer(started: number): (phase: string) => void {
  if (!process.env.LIFEBOAT_TRACE) return () => undefined;
  return (phase) => process.stderr.write(`lifeboat backup: ${String(Date.now() - started).padStart(6)} ms ${phase}\n`);
}

/** Chunks are read and handed to workers in batches of about this many bytes. */
const BATCH_BYTES = 4 * 1024 * 1024;
/**
 * Up to this many bytes to read, this thread hashes and seals batches itself instead of starting its
 * last worker: an incremental of a few percent of a disk is done before a worker would have loaded
 * (measured: docs/benchmarks.md, "Repository (issue 5)").
 */
const LOCAL_LANE_MAX_BYTES = 256 * 1024 * 1024;

/** Workers a backup with `lanes` lanes starts before it knows how much it will read. */
export function earlyWorkerCount(lanes: number): number {
  return Math.max(1, lanes - 1);
}

/** Packs uploading at once. */
const UPLOAD_CONCURRENCY = 3;
const PROGRESS_INTERVAL_MS = 200;

/** What a backup does with one chunk-grid cell of an image. */
const enum CellAction {
  /** Take the parent's extents of the cell as they are. */
  Copy = 0,
  /** Read the whole cell: one piece, one extent. */
  Whole = 1,
  /** Read the changed runs (pieces) and splice them into the parent's extents of the cell. */
  Splice = 2,
}

interface ImagePlan {
  label: string;
  path: string;
  file: FileHandle;
  size: number;
  cells: number;
  mode: ImageMode;
  cellAction: Uint8Array;
  /** The cells whose action is not Copy, in image order (every cell without a parent map). */
  acted: number[];
  /** Pieces to read, in image order: whole cells, or runs of changed granules inside one cell. */
  piecePos: number[];
  pieceLen: number[];
  /** 1 for a run of changed granules: such pieces are stored together, several to a chunk. */
  pieceJoin: number[];
  /** Filled while reading: per piece, the id of the chunk holding it (the zero id: all zero) and where in it. */
  pieceIds: Buffer;
  pieceOffsets: Uint32Array;
  /** The parent's extents (for Copy and Splice cells), and the parent image they map. */
  parentMap: ExtentMap | null;
  parentImage: ImageEntry | null;
  /** Per extent of the parent map: the number of the index's pack holding its blob (-1: none; -2: zeros). */
  parentPacks: Int32Array | null;
  /**
   * Per pack number: the parent's extents the new map takes from the pack, whole (Copy cells) or in
   * part (spliced cells, counted as the map is assembled). The packs the point needs are these and
   * those of the pieces read.
   */
  packUses: Uint32Array | null;
  /** The parent's extents the new map takes over as they are (they count as reused, or zero). */
  copied: { zero: number; data: number };
  /** The new point's extents: assembled while the pieces are read, finished once all are. */
  assembler: MapAssembler | null;
  map: ExtentMap | null;
  trackingEpoch: string | null;
  /** Why a given bitmap was not used, if it was not. */
  note: string | null;
}

interface Batch {
  plan: ImagePlan;
  /** Pieces [first, first + count) of the plan. */
  first: number;
  count: number;
  bytes: number;
}

class BackupRun {
  private readonly workers: ChunkWorkers;
  private readonly uploads = new Semaphore(UPLOAD_CONCURRENCY);
  private readonly uploading = new Set<Promise<void>>();
  private dataPack: PackBuilder;
  /** Where the data pack's blobs are written as they are added (a local target), or null. */
  private dataWriter: ObjectWriter | null = null;
  private metaPack: PackBuilder;
  /** Ids being written in this run but not yet durable. */
  private readonly inFlight = new Set<string>();
  private failure: unknown = null;
  private lastProgress = 0;

  bytesRead = 0;
  bytesAdded = 0;
  bytesDone = 0;
  bytesTotal = 0;
  chunksNew = 0;
  chunksReused = 0;
  zeroChunks = 0;
  packsWritten = 0;

  constructor(
    private readonly repo: Repository,
    private readonly index: ChunkIndex,
    private readonly options: BackupOptions,
    workers: ChunkWorkers,
  ) {
    this.workers = workers;
    this.dataPack = new PackBuilder();
    this.metaPack = new PackBuilder();
  }

  /** Resolves once no upload of this run is in flight. */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.uploading]);
    // After a failure, the data pack being filled is dropped (its temporary file removed).
    const writer = this.dataWriter;
    this.dataWriter = null;
    await writer?.abort().catch(() => undefined);
  }

  private known(id: Buffer): boolean {
    return this.index.has(id) || this.inFlight.has(id.toString('latin1'));
  }

  private progress(force = false): void {
    const cb = this.options.onProgress;
    if (!cb) return;
    const now = Date.now();
    if (!force && now - this.lastProgress < PROGRESS_INTERVAL_MS) return;
    this.lastProgress = now;
    cb({ bytesDone: this.bytesDone, bytesTotal: this.bytesTotal, bytesAdded: this.bytesAdded });
  }

  private async flush(builder: PackBuilder, writer: ObjectWriter | null = null): Promise<void> {
    if (builder.count === 0) {
      await writer?.abort();
      return;
    }
    await this.uploads.acquire();
    // The pack goes to the target from its blobs' own buffers (Target.putParts, or the rest of it through
    // the writer that got its blobs as they were added): no body is laid out.
    const pack: FinishedPack = builder.finish(this.repo.sealer);
    const upload = (async () => {
      try {
        await this.repo.writePack(pack, writer);
        this.index.addPack(pack.contents);
        for (const e of pack.contents.entries) this.inFlight.delete(e.id.toString('latin1'));
        this.bytesAdded += pack.size + pack.indexObject.length;
        this.packsWritten++;
        this.progress();
      } catch (err) {
        this.failure ??= err;
      } finally {
        this.uploads.release();
      }
    })();
    this.uploading.add(upload);
    void upload.finally(() => this.uploading.delete(upload));
  }

  private checkFailure(): void {
    if (this.failure) throw this.failure;
  }

  /** Hands the data pack's new blobs to its writer (opened with the pack's first blobs) if the target streams. */
  private streamData(): void {
    if (this.dataPack.count === 0) return;
    this.dataWriter ??= this.repo.openPackWriter(this.dataPack.packId);
    this.dataWriter?.write(this.dataPack.takeNew());
  }

  /** Takes the data pack (and its writer) out to be flushed; a new one starts. */
  private takeDataPack(): { pack: PackBuilder; writer: ObjectWriter | null } {
    const taken = { pack: this.dataPack, writer: this.dataWriter };
    this.dataPack = new PackBuilder();
    this.dataWriter = null;
    return taken;
  }

  private async addData(blobs: { id: Buffer; parts: Buffer[]; storedLength: number; rawLength: number; crc32: number; compression: number }[]): Promise<void> {
    for (const b of blobs) {
      this.dataPack.addParts({ id: b.id, rawLength: b.rawLength, crc32: b.crc32, compression: b.compression, type: BlobType.Chunk }, b.parts, b.storedLength);
      if (this.dataPack.dataSize >= this.repo.packSize) {
        const full = this.takeDataPack();
        // More is coming: the next pack's file is opened now, to be ready when its blobs are.
        if (full.writer) this.dataWriter = this.repo.openPackWriter(this.dataPack.packId);
        await this.flush(full.pack, full.writer);
      }
    }
    this.streamData();
  }

  /** Stores a map page or metadata blob (small; encoded on this thread). */
  async addMeta(plain: Buffer, type: BlobType): Promise<string> {
    const id = this.repo.sealer.chunkId(plain);
    if (!this.known(id)) {
      this.inFlight.add(id.toString('latin1'));
      const blob = this.repo.encodeBlob(plain, type);
      this.metaPack.add(blob);
      this.chunksNew++;
      if (this.metaPack.dataSize >= this.repo.packSize) {
        const full = this.metaPack;
        this.metaPack = new PackBuilder();
        await this.flush(full);
      }
    }
    return id.toString('hex');
  }

  private async processBatch(batch: Batch): Promise<void> {
    const { plan } = batch;
    const runs: { position: number; length: number }[] = [];
    const lengths = plan.pieceLen.slice(batch.first, batch.first + batch.count);
    for (let j = 0; j < batch.count; j++) {
      const pos = plan.piecePos[batch.first + j];
      const last = runs[runs.length - 1];
      if (last && last.position + last.length === pos) last.length += lengths[j];
      else runs.push({ position: pos, length: lengths[j] });
    }
    // Runs of changed granules are stored several to a chunk (up to a chunk's size): one blob, one
    // index entry and one seal for many small runs. Whole cells are a chunk each.
    const joinable = Uint8Array.from(plan.pieceJoin.slice(batch.first, batch.first + batch.count));
    let hashed;
    try {
      hashed = await this.workers.readAndHash(plan.file.fd, runs, lengths, { joinable, limit: this.repo.chunkSize });
    } catch (err) {
      if (err instanceof WorkerError) throw new InputError(`cannot read ${plan.path}: ${err.message}`);
      throw err;
    }
    this.bytesRead += batch.bytes;
    const { ids, chunkLengths, pieceChunk, pieceOffset } = hashed;
    for (let j = 0; j < batch.count; j++) {
      const c = pieceChunk[j];
      if (c < 0) {
        this.zeroChunks++;
        continue;
      }
      plan.pieceIds.set(ids.subarray(c * CHUNK_ID_BYTES, (c + 1) * CHUNK_ID_BYTES), (batch.first + j) * CHUNK_ID_BYTES);
      plan.pieceOffsets[batch.first + j] = pieceOffset[j];
    }
    const fresh: number[] = [];
    const freshIds: Buffer[] = [];
    for (let c = 0; c < chunkLengths.length; c++) {
      const id = ids.subarray(c * CHUNK_ID_BYTES, (c + 1) * CHUNK_ID_BYTES);
      if (this.known(id)) {
        this.chunksReused++;
      } else {
        this.inFlight.add(id.toString('latin1'));
        fresh.push(c);
        freshIds.push(id);
        this.chunksNew++;
      }
    }
    if (fresh.length) {
      const encoded = await this.workers.encode(hashed, fresh, Buffer.concat(freshIds), BlobType.Chunk);
      this.checkFailure();
      const blobs = fresh.map((j, k) => ({
        id: freshIds[k],
        parts: encoded.parts[k],
        storedLength: encoded.lengths[k],
        rawLength: chunkLengths[j],
        crc32: encoded.crc32[k],
        compression: encoded.compression[k],
      }));
      await this.addData(blobs);
    } else {
      await this.workers.release(hashed);
    }
    this.bytesDone += batch.bytes;
    this.progress();
  }

  private *batches(plan: ImagePlan): Generator<Batch> {
    let batch: Batch = { plan, first: 0, count: 0, bytes: 0 };
    for (let i = 0; i < plan.piecePos.length; i++) {
      const len = plan.pieceLen[i];
      if (batch.bytes + len > BATCH_BYTES && batch.count) {
        yield batch;
        batch = { plan, first: i, count: 0, bytes: 0 };
      }
      batch.count++;
      batch.bytes += len;
    }
    if (batch.count) yield batch;
  }

  async readImages(plans: ImagePlan[]): Promise<void> {
    // Enough batches in flight to keep every worker busy while the main thread packs and uploads.
    const window = new Semaphore(2 * this.workers.size + 2);
    const running = new Set<Promise<void>>();
    for (const plan of plans) {
      // Batches finish out of order; the map is assembled up to the first piece not read yet.
      const inOrder: Batch[] = [];
      const finished = new Set<Batch>();
      let issuedEnd = 0;
      const assembled = (batch: Batch) => {
        finished.add(batch);
        while (inOrder.length && finished.has(inOrder[0])) finished.delete(inOrder.shift()!);
        plan.assembler!.advance(inOrder.length ? inOrder[0].first : issuedEnd);
      };
      for (const batch of this.batches(plan)) {
        await window.acquire();
        if (this.failure) {
          window.release();
          break;
        }
        inOrder.push(batch);
        issuedEnd = batch.first + batch.count;
        const task = this.processBatch(batch)
          .then(() => assembled(batch))
          .catch((err) => {
            this.failure ??= err;
          })
          .finally(() => window.release());
        running.add(task);
        void task.finally(() => running.delete(task));
      }
    }
    await Promise.all([...running]);
    this.checkFailure();
  }

  /** Starts writing the last data pack (its upload runs while the maps are assembled). */
  async flushData(): Promise<void> {
    const last = this.takeDataPack();
    await this.flush(last.pack, last.writer);
  }

  /** Flushes the last packs and waits until every pack of this run is durable. */
  async finishPacks(): Promise<void> {
    await this.flushData();
    await this.flush(this.metaPack);
    this.metaPack = new PackBuilder();
    await Promise.all([...this.uploading]);
    this.checkFailure();
  }
}

async function resolveParent(repo: Repository, options: BackupOptions): Promise<{ id: string; manifest: PointManifest } | null> {
  const ref = options.parent === undefined ? 'auto' : options.parent;
  if (ref === null) return null;
  if (ref === 'auto') {
    const points = (await repo.listPoints(() => undefined)).filter((p) => p.manifest.vm.name === options.vm.name);
    return points.length ? points[points.length - 1] : null;
  }
  const id = await repo.resolvePoint(ref);
  return { id, manifest: await repo.readManifest(id) };
}

/** Why `bitmap` cannot stand for the changes since `parentImage` (null: it can). */
function untrustedBecause(bitmap: ChangeBitmap, parentImage: ImageEntry | null, chunkSize: number): string | null {
  if (!parentImage) return 'there is no parent point to apply it to (a first or --full backup)';
  if (parentImage.chunkSize !== chunkSize) return 'the parent point used another chunk size';
  if (!bitmap.baseEpoch) return 'the bitmap is not trusted (its base epoch is unspecified)';
  if (!parentImage.trackingEpoch) return `the bitmap counts changes since epoch ${bitmap.baseEpoch} but the parent point recorded no tracking epoch`;
  if (bitmap.baseEpoch !== parentImage.trackingEpoch) {
    return `the bitmap counts changes since epoch ${bitmap.baseEpoch} but the parent point is at epoch ${parentImage.trackingEpoch}`;
  }
  return null;
}

const sizeText = (n: number) => (n % 1024 === 0 ? `${n / 1024} KiB` : `${n} bytes`);

/**
 * Why an image holding only `bitmap`'s granules (the rest holes) cannot make a point on top of
 * `parentImage` (null: it can). Each chunk to read must lie whole inside a set granule.
 */
function changedOnlyUnusable(bitmap: ChangeBitmap, parentImage: ImageEntry | null, chunkSize: number, size: number): string | null {
  const why = untrustedBecause(bitmap, parentImage, chunkSize);
  if (why || !parentImage) return why;
  if (bitmap.granularity < chunkSize) {
    return `it names ${sizeText(bitmap.granularity)} granules and this repository reads ${sizeText(chunkSize)} chunks, so the chunks to read would be partly holes`;
  }
  if (size !== parentImage.size) return 'the disk size changed since the parent point';
  return null;
}

function addPiece(plan: ImagePlan, position: number, length: number, joinable: boolean): void {
  plan.piecePos.push(position);
  plan.pieceLen.push(length);
  plan.pieceJoin.push(joinable ? 1 : 0);
}

/** Cell c is read whole: one piece, one chunk, one extent. */
function wholeCell(plan: ImagePlan, c: number, chunkSize: number): void {
  plan.cellAction[c] = CellAction.Whole;
  plan.acted.push(c);
  addPiece(plan, c * chunkSize, Math.min(chunkSize, plan.size - c * chunkSize), false);
}

/**
 * Puts into `runs` the runs of set granules inside cell c, as [start, end) byte ranges clipped to the
 * image; false when they cover the whole cell.
 */
function changedRuns(bitmap: ChangeBitmap, c: number, chunkSize: number, size: number, runs: CellRuns): boolean {
  const g = bitmap.granularity;
  const cellStart = c * chunkSize;
  const cellEnd = Math.min(size, cellStart + chunkSize);
  const bits = bitmap.bits;
  const stop = Math.min(granuleCount(bitmap.diskSize, g), Math.ceil(cellEnd / g));
  const at = runs.at;
  let n = 0;
  for (let gr = cellStart / g; gr < stop; gr++) {
    // Eight granules at a time where the bitmap's byte is zero (most of a cell is unchanged).
    if ((gr & 7) === 0 && gr + 8 <= stop && bits[gr >> 3] === 0) {
      gr += 7;
      continue;
    }
    if (!(bits[gr >> 3] & (1 << (gr & 7)))) continue;
    const start = gr * g;
    const end = Math.min(cellEnd, start + g);
    if (n > 0 && at[2 * n - 1] === start) at[2 * n - 1] = end;
    else {
      at[2 * n] = start;
      at[2 * n + 1] = end;
      n++;
    }
  }
  runs.n = n;
  return !coversCell(runs, cellStart, cellEnd);
}

/** The runs of one cell, as changedRuns finds them: run r is the bytes [at[2r], at[2r + 1]). */
interface CellRuns {
  at: Float64Array;
  n: number;
}

/** Whether `runs` is one run over the whole cell [cellStart, cellEnd). */
function coversCell(runs: CellRuns, cellStart: number, cellEnd: number): boolean {
  return runs.n === 1 && runs.at[0] === cellStart && runs.at[1] === cellEnd;
}

/** How many of the parent's extents of cell c overlap the bytes [a, b). */
function overlapping(parent: ExtentMap, c: number, a: number, b: number): number {
  let n = 0;
  if (a >= b) return 0;
  for (let k = parent.cellFirst[c], end = parent.cellFirst[c + 1]; k < end; k++) {
    const p = parent.positions[k];
    if (p < b && p + parent.lengths[k] > a) n++;
  }
  return n;
}

/** Extents cell c ([cellStart, cellEnd)) would hold with `runs` spliced into the parent's extents of the cell. */
function splicedCount(parent: ExtentMap, c: number, runs: CellRuns, cellStart: number, cellEnd: number): number {
  const { at, n: count } = runs;
  if (parent.cellFirst[c + 1] === parent.cellFirst[c] + 1) {
    // One extent covers the cell (as in a full backup): it shows in every gap that is not empty, and
    // the gaps between runs never are.
    return 2 * count - 1 + (at[0] > cellStart ? 1 : 0) + (at[2 * count - 1] < cellEnd ? 1 : 0);
  }
  // Each run, and the parent's extents overlapping each gap between runs (and before the first, after the last).
  let n = count + overlapping(parent, c, cellStart, at[0]) + overlapping(parent, c, at[2 * count - 1], cellEnd);
  for (let i = 1; i < count; i++) n += overlapping(parent, c, at[2 * i - 1], at[2 * i]);
  return n;
}

/**
 * Fits `runs` (the runs to read in cell c) so that splicing them into the parent's extents leaves at
 * most MAX_EXTENTS_PER_CELL extents: the changed runs are widened over the shortest gaps of unchanged
 * bytes (read again and stored with the run) until the cell fits. False when they end up covering the
 * whole cell (it is read whole). A cell whose runs are a granule or two of a 64 KiB chunk reads a few
 * KiB more instead of the whole chunk.
 */
function fittedRuns(parent: ExtentMap, c: number, runs: CellRuns, cellStart: number, cellEnd: number): boolean {
  const at = runs.at;
  while (splicedCount(parent, c, runs, cellStart, cellEnd) > MAX_EXTENTS_PER_CELL) {
    // Gap g lies before run g; gap runs.n after the last run. Every gap that is not empty overlaps
    // at least one parent extent, so closing one always lowers the count.
    const n = runs.n;
    let best = -1;
    let bestLength = Infinity;
    for (let g = 0; g <= n; g++) {
      const a = g === 0 ? cellStart : at[2 * g - 1];
      const b = g === n ? cellEnd : at[2 * g];
      if (b > a && b - a < bestLength) {
        best = g;
        bestLength = b - a;
      }
    }
    if (best === 0) at[0] = cellStart;
    else if (best === n) at[2 * n - 1] = cellEnd;
    else {
      // Run best joins run best - 1; the later runs move down one.
      at[2 * best - 1] = at[2 * best + 1];
      for (let i = best; i < n - 1; i++) {
        at[2 * i] = at[2 * i + 2];
        at[2 * i + 1] = at[2 * i + 3];
      }
      runs.n = n - 1;
    }
  }
  return !coversCell(runs, cellStart, cellEnd);
}

/**
 * The cells holding an extent whose blob the index does not hold (packs[k] === -1: its pack is gone or
 * condemned), in image order.
 */
function cellsMissingBlobs(parent: ExtentMap, packs: Int32Array): number[] {
  const cells: number[] = [];
  for (let k = 0, n = packs.length; k < n; k++) {
    if (packs[k] !== -1) continue;
    const c = Math.floor(parent.positions[k] / parent.chunkSize);
    if (cells[cells.length - 1] !== c) cells.push(c);
  }
  return cells;
}

/**
 * Takes the parent's extents of cell c off packUses and plan.copied (the cell is not copied as it is).
 */
function dropParentCell(plan: ImagePlan, c: number): void {
  const parent = plan.parentMap!;
  const packs = plan.parentPacks!;
  const uses = plan.packUses!;
  const copied = plan.copied;
  for (let k = parent.cellFirst[c], end = parent.cellFirst[c + 1]; k < end; k++) {
    const n = packs[k];
    if (n === -2) copied.zero--;
    else {
      copied.data--;
      if (n >= 0) uses[n]--;
    }
  }
}

async function planImage(
  repo: Repository,
  index: ChunkIndex,
  label: string,
  input: BackupImageInput,
  parentImage: ImageEntry | null,
  parentContext: string,
): Promise<ImagePlan> {
  let file: FileHandle;
  try {
    file = await open(input.path, 'r');
  } catch (err) {
    throw new InputError(`cannot open ${label} image ${input.path}: ${(err as Error).message}`);
  }
  const st = await file.stat();
  if (!st.isFile()) {
    await file.close();
    throw new InputError(`${input.path} is not a regular file (give a disk image file)`);
  }
  const cs = repo.chunkSize;
  const size = st.size;
  const cells = Math.ceil(size / cs);
  const bitmap = input.bitmap ?? null;
  if (bitmap && bitmap.diskSize !== size) {
    await file.close();
    throw new ChangeBitmapError(`the change bitmap for ${label} describes ${bitmap.diskSize} bytes but ${input.path} holds ${size}`);
  }
  const plan: ImagePlan = {
    label,
    path: input.path,
    file,
    size,
    cells,
    mode: 'full',
    cellAction: new Uint8Array(cells),
    acted: [],
    piecePos: [],
    pieceLen: [],
    pieceJoin: [],
    pieceIds: Buffer.alloc(0),
    pieceOffsets: new Uint32Array(0),
    parentMap: null,
    parentImage: null,
    parentPacks: null,
    packUses: null,
    copied: { zero: 0, data: 0 },
    assembler: null,
    map: null,
    trackingEpoch: bitmap?.epoch ?? null,
    note: null,
  };
  const finish = () => {
    plan.pieceIds = Buffer.alloc(plan.piecePos.length * CHUNK_ID_BYTES);
    plan.pieceOffsets = new Uint32Array(plan.piecePos.length);
    plan.assembler = new MapAssembler(plan, cs);
    return plan;
  };
  // A bitmap is trusted only when it counts changes from exactly the instant the parent point was taken:
  // its base epoch must be the tracking epoch the parent recorded. Otherwise every chunk is read: that
  // is always correct for an image of the whole disk, and never for one that holds only the changed
  // blocks (the rest are holes, which would be stored as zeros): such an image is refused.
  const why = bitmap ? untrustedBecause(bitmap, parentImage, cs) : null;
  const partial = bitmap?.changedOnly ? changedOnlyUnusable(bitmap, parentImage, cs, size) : null;
  if (partial) {
    await file.close();
    throw new ChangeBitmapError(
      `${label}: ${input.path} holds only the changed blocks (exported --changed-only) but its change bitmap cannot be used: ${partial}; ` +
        'export the whole point (lifeboat point export --out IMAGE --bitmap FILE, without --changed-only) and back that up',
    );
  }
  if (!parentImage || !bitmap || why) {
    plan.mode = parentImage ? 'hash-compare' : 'full';
    if (parentImage && why) plan.note = `${label}: change bitmap not used (${why}); chunks compared by hash`;
    for (let c = 0; c < cells; c++) wholeCell(plan, c, cs);
    return finish();
  }
  plan.mode = 'bitmap';
  const parent = await repo.readExtentMap(parentImage, index, parentContext);
  plan.parentMap = parent;
  plan.parentImage = parentImage;
  // Where each of the parent's extents' blob is, looked up once for the whole map.
  const packs = new Int32Array(parent.count);
  const uses = new Uint32Array(index.packCount);
  index.packNumbersAt(parent.records, MAP_EXTENT.id, MAP_EXTENT.size, parent.zeros, packs, uses);
  plan.parentPacks = packs;
  plan.packUses = uses;
  // A resized disk: every cell from the first one whose extent changed is read whole.
  const firstChanged = size === parentImage.size ? cells : Math.floor(Math.min(size, parentImage.size) / cs);
  // Granules finer than the chunk grid: only the changed runs are read (an image holding only the
  // changed blocks never gets here: its granules are at least a chunk, see changedOnlyUnusable).
  const fine = bitmap.granularity < cs && !bitmap.changedOnly;
  // One cell's runs at a time (a cell of G granules has at most G / 2 + 1 runs).
  const runs: CellRuns = { at: new Float64Array(2 * (Math.ceil(cs / bitmap.granularity) + 2)), n: 0 };
  // Only the cells the bitmap marks and those naming a blob the index no longer holds (its pack is
  // gone or condemned; such a cell is read again, whole) are visited: every other cell takes the
  // parent's extents as they are (CellAction.Copy).
  const dirty = dirtyChunks(bitmap, cs);
  const unusable = cellsMissingBlobs(parent, packs);
  for (let d = 0, u = 0; ; ) {
    const dc = d < dirty.length ? dirty[d] : Infinity;
    const uc = u < unusable.length ? unusable[u] : Infinity;
    const c = Math.min(dc, uc);
    if (c >= firstChanged) break;
    const reusable = uc !== c;
    if (!reusable) u++;
    if (dc !== c) {
      wholeCell(plan, c, cs);
      continue;
    }
    d++;
    if (!(fine && reusable && changedRuns(bitmap, c, cs, size, runs) && fittedRuns(parent, c, runs, c * cs, Math.min(size, (c + 1) * cs)))) {
      wholeCell(plan, c, cs);
      continue;
    }
    plan.cellAction[c] = CellAction.Splice;
    plan.acted.push(c);
    for (let r = 0; r < runs.n; r++) addPiece(plan, runs.at[2 * r], runs.at[2 * r + 1] - runs.at[2 * r], true);
  }
  for (let c = firstChanged; c < cells; c++) wholeCell(plan, c, cs);
  // What is taken over from the parent: its counts (checked against its map when it was read) less
  // those of the cells not copied, which are few.
  plan.copied = { zero: parentImage.zeroExtents, data: parentImage.extents - parentImage.zeroExtents };
  const parentCells = parent.cells;
  for (const c of plan.acted) if (c < parentCells) dropParentCell(plan, c);
  for (let c = cells; c < parentCells; c++) dropParentCell(plan, c);
  return finish();
}

/**
 * The new point's extent map: the parent's extents with the pieces read put in their place. Cells are
 * assembled in image order as soon as every piece they take is read (`advance`), so that most of the
 * work is done while later batches are still being read and hashed.
 */
class MapAssembler {
  private readonly b: ExtentMapBuilder;
  /** The next cell to assemble, its first piece, and the next entry of plan.acted. */
  private c = 0;
  private i = 0;
  private a = 0;

  constructor(
    private readonly plan: ImagePlan,
    private readonly chunkSize: number,
  ) {
    this.b = new ExtentMapBuilder(plan.size, chunkSize, true, plan.cells + 2 * plan.piecePos.length + 16);
  }

  /** Assembles the cells whose pieces are all among the first `pieces` (their ids are known). */
  advance(pieces: number): void {
    const { plan, b, chunkSize } = this;
    const parent = plan.parentMap;
    const acted = plan.acted;
    while (this.c < plan.cells) {
      const c = this.c;
      const next = this.a < acted.length ? acted[this.a] : plan.cells;
      if (c < next) {
        b.copyCells(parent!, c, next);
        this.c = next;
        continue;
      }
      const action = plan.cellAction[c];
      const cellEnd = Math.min(plan.size, (c + 1) * chunkSize);
      let last = this.i + 1;
      if (action === CellAction.Splice) while (last < plan.piecePos.length && plan.piecePos[last] < cellEnd) last++;
      if (last > pieces) return;
      if (action === CellAction.Whole) {
        this.addPiece(this.i);
      } else {
        let cursor = c * chunkSize;
        for (let i = this.i; i < last; i++) {
          this.parentRange(c, cursor, plan.piecePos[i]);
          this.addPiece(i);
          cursor = plan.piecePos[i] + plan.pieceLen[i];
        }
        this.parentRange(c, cursor, cellEnd);
      }
      this.i = last;
      this.a++;
      this.c = c + 1;
    }
  }

  finish(): ExtentMap {
    this.advance(this.plan.piecePos.length);
    return this.b.finish();
  }

  private addPiece(i: number): void {
    // An all-zero piece has the zero id and offset 0: addAt stores it as zeros.
    this.b.addAt(this.plan.pieceIds, i * CHUNK_ID_BYTES, this.plan.pieceOffsets[i], this.plan.pieceLen[i]);
  }

  /** The parent's bytes [a, end) of cell c, as slices of its extents. */
  private parentRange(c: number, a: number, end: number): void {
    const parent = this.plan.parentMap!;
    const packs = this.plan.parentPacks!;
    const uses = this.plan.packUses!;
    for (let k = parent.cellFirst[c]; k < parent.cellFirst[c + 1]; k++) {
      const p = parent.positions[k];
      const lo = Math.max(a, p);
      const hi = Math.min(end, p + parent.lengths[k]);
      if (lo >= hi) continue;
      if (parent.isZero(k)) this.b.addAt(null, 0, 0, hi - lo);
      else {
        this.b.addAt(parent.records, parent.idAt(k), parent.offsets[k] + (lo - p), hi - lo);
        if (packs[k] >= 0) uses[packs[k]]++;
      }
    }
  }
}

/**
 * Before committing: every pack the point needs is still on the target. Only a gc that judged this
 * backup's lease dead (refreshes failing for a whole lease period) could have removed one.
 */
async function checkPacksStillThere(repo: Repository, index: ChunkIndex, plans: ImagePlan[], images: ImageEntry[], extra: string[]): Promise<void> {
  const listing = repo.listPacks();
  listing.catch(() => undefined); // awaited below; a failure is reported there
  const needed = new Set<string>();
  const need = (bytes: Uint8Array, at: number) => {
    const pack = index.packOfAt(bytes, at);
    if (!pack) throw new RepositoryError(`internal: chunk ${Buffer.from(bytes.subarray(at, at + CHUNK_ID_BYTES)).toString('hex')} of this backup is in no pack`);
    needed.add(pack);
  };
  // A point's extents are the parent's (their packs counted in packUses) and the pieces read.
  for (const p of plans) {
    const uses = p.packUses;
    if (uses) for (let n = 0; n < uses.length; n++) if (uses[n] > 0) needed.add(index.packIdOf(n));
    const ids = p.pieceIds;
    const offsets = p.pieceOffsets;
    // A piece that does not start its chunk (runs joined into one) is in the chunk of an earlier piece
    // that does: only those are looked up.
    for (let i = 0, at = 0, n = p.piecePos.length; i < n; i++, at += CHUNK_ID_BYTES) {
      if (offsets[i] === 0 && !zeroIdAt(ids, at)) need(ids, at);
    }
  }
  for (const img of images) for (const page of img.pages) need(Buffer.from(page, 'hex'), 0);
  for (const id of extra) need(Buffer.from(id, 'hex'), 0);
  const present = await listing;
  for (const packId of needed) {
    if (!present.has(packId)) {
      throw new RepositoryError(`pack ${packId}, which this backup uses, was deleted while it ran (its lease had lapsed); run the backup again`);
    }
  }
}

function bytesToRead(plan: ImagePlan): number {
  return plan.pieceLen.reduce((a, b) => a + b, 0);
}

function validateOptions(options: BackupOptions): void {
  if (!options.vm.name) throw new InputError('a backup needs a VM name');
  if (options.disks.length === 0 && !options.memory) throw new InputError('nothing to back up: give at least one disk image');
  const names = new Set<string>();
  for (const d of options.disks) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(d.name)) throw new InputError(`disk name '${d.name}' is not valid (letters, digits, . _ -)`);
    if (names.has(d.name)) throw new InputError(`disk name '${d.name}' is given twice; name each disk (--disk NAME)`);
    names.add(d.name);
  }
}

export async function backup(repo: Repository, options: BackupOptions): Promise<BackupResult> {
  validateOptions(options);
  const started = Date.now();
  const trace = tracer(started);
  // Workers start now (or started before the repository was opened): a thread takes ~100 ms of CPU to
  // load its code, which runs beside the index load and the plan instead of after them. All but one
  // start early; the last becomes a worker or, for a small job, this thread (see planned below).
  const lanes = options.workers ?? defaultWorkerCount();
  const workers = (options.workerPool ?? new ChunkWorkers(undefined, null, earlyWorkerCount(lanes))).configure(repo.keys, repo.compressionQuality);
  const plans: ImagePlan[] = [];
  let run: BackupRun | null = null;
  let lease: Lease | null = null;
  try {
    lease = await Lease.acquire(repo.target, 'backup', options.leaseTtlMs);
    trace('lease created');
    // The condemned record is read after the lease exists (see gc.ts): chunks in condemned packs are
    // never reused, and packs that are missing or the wrong size are left out of the index.
    const condemned = await readCondemned(repo.target);
    const index = await repo.loadIndex({ exclude: new Set(condemned?.packs ?? []), present: repo.listPacks(), onlyPresent: true });
    trace(`index loaded (${index.size} blobs)`);
    const parent = await resolveParent(repo, options);
    trace('parent chosen');

    for (const d of options.disks) {
      const pd = parent?.manifest.disks.find((x) => x.id === (d.id ?? d.name)) ?? parent?.manifest.disks.find((x) => x.name === d.name) ?? null;
      plans.push(await planImage(repo, index, `disk ${d.name}`, d, pd, `parent point ${parent?.id} disk ${d.name}`));
    }
    if (options.memory) {
      plans.push(await planImage(repo, index, 'memory', options.memory, parent?.manifest.memory ?? null, `parent point ${parent?.id} memory`));
    }

    trace('images planned');
    const bytesTotal = plans.reduce((a, p) => a + bytesToRead(p), 0);
    if (bytesTotal <= LOCAL_LANE_MAX_BYTES && lanes > workers.size) workers.addLocalLane();
    else workers.grow(lanes);
    trace(`planned (${workers.size} lanes)`);
    run = new BackupRun(repo, index, options, workers);
    run.bytesTotal = bytesTotal;
    for (const p of plans) {
      run.zeroChunks += p.copied.zero;
      run.chunksReused += p.copied.data;
    }
    await run.readImages(plans);
    await run.flushData();
    trace('images read');

    const images: ImageEntry[] = [];
    const parentMaps = new Map<string, ExtentMap>();
    const changedCells: BackupResult['changedCells'] = [];
    for (const p of plans) {
      p.map = p.assembler!.finish();
      p.assembler = null;
      trace(`${p.label}: map assembled (${p.map.count} extents)`);
      if (p.parentMap && p.parentImage) {
        parentMaps.set(imageMapKey(p.parentImage), p.parentMap);
        // The cells that do not take the parent's extents as they are.
        changedCells.push({ parentKey: imageMapKey(p.parentImage), cells: Uint32Array.from(p.acted) });
      } else {
        changedCells.push(null);
      }
      p.parentMap = null;
      const pages: string[] = [];
      for (const page of encodeMapPages(p.map, MAP_PAGE_CELLS)) pages.push(await run.addMeta(page, BlobType.MapPage));
      images.push({
        size: p.size,
        chunkSize: repo.chunkSize,
        pageCells: MAP_PAGE_CELLS,
        pages,
        ...p.map.stats(),
        ...(p.trackingEpoch ? { trackingEpoch: p.trackingEpoch } : {}),
      });
    }
    let deviceState: string | undefined;
    if (options.memory?.deviceState) deviceState = await run.addMeta(options.memory.deviceState, BlobType.Metadata);
    trace('maps assembled');
    await run.finishPacks();
    trace('packs durable');
    await checkPacksStillThere(repo, index, plans, images, deviceState ? [deviceState] : []);
    lease.assertFresh();

    const disks: DiskEntry[] = options.disks.map((d, i) => ({ name: d.name, id: d.id ?? d.name, ...images[i] }));
    const memory: MemoryEntry | null = options.memory ? { ...images[options.disks.length], ...(deviceState ? { deviceState } : {}) } : null;
    const stats = {
      bytesRead: run.bytesRead,
      bytesAdded: run.bytesAdded,
      chunksNew: run.chunksNew,
      chunksReused: run.chunksReused,
      durationMs: Date.now() - started,
    };
    const manifest = newManifest({
      repository: repo.id,
      parent: parent?.id ?? null,
      vm: { name: options.vm.name, id: options.vm.id ?? options.vm.name },
      consistency: options.consistency ?? 'crash',
      disks,
      memory,
      stats,
      labels: options.labels ?? {},
    });
    const { pointId, bytes } = await repo.writeManifest(manifest);
    trace('manifest written');
    run.bytesAdded += bytes;
    const durationMs = Date.now() - started;
    return {
      pointId,
      manifest,
      parent: parent?.id ?? null,
      bytesRead: run.bytesRead,
      bytesAdded: run.bytesAdded,
      chunksNew: run.chunksNew,
      chunksReused: run.chunksReused,
      zeroChunks: run.zeroChunks,
      packsWritten: run.packsWritten,
      durationMs,
      images: plans.map((p) => ({ label: p.label, mode: p.mode, chunks: p.cells, chunksRead: p.piecePos.length, ...(p.note ? { note: p.note } : {}) })),
      maps: plans.map((p) => p.map!),
      index,
      parentMaps,
      parentManifest: parent?.manifest ?? null,
      changedCells,
    };
  } catch (err) {
    if (err instanceof PointNotFoundError) throw new InputError(`parent ${err.message}`);
    throw err;
  } finally {
    // Side by side: stopping the workers, closing the images, and releasing the lease once no upload is
    // in flight any more (after a success there is none: the manifest is written).
    await Promise.all([
      workers.close(),
      ...plans.map((p) => p.file.close().catch(() => undefined)),
      (run?.settled() ?? Promise.resolve()).then(() => lease?.release().catch(() => undefined)),
    ]);
  }
}
