// Backup: disk (and memory) image files -> a recovery point. Reads every chunk (full), only the chunks a
// change bitmap names (incremental with a bitmap), or every chunk but uploads only those whose id the
// repository does not hold (incremental by hash comparison). Chunks go through the worker pool (hash,
// then compress + seal for new ones) into packs; packs and their index objects are durable before the
// point's map pages and, last, its manifest are written.

import { open, type FileHandle } from 'node:fs/promises';
import type { ChunkIndex } from './chunk-index.js';
import { ChangeBitmapError, markDirtyChunks, type ChangeBitmap } from './change-bitmap.js';
import { Semaphore } from './concurrency.js';
import { readCondemned } from './condemned.js';
import { BlobType, CHUNK_ID_BYTES, MAP_PAGE_ENTRIES, ZERO_CHUNK_ID } from './constants.js';
import { InputError, PointNotFoundError, RepositoryError } from './errors.js';
import { Lease } from './leases.js';
import {
  newManifest,
  type Consistency,
  type DiskEntry,
  type ImageEntry,
  type MemoryEntry,
  type PointManifest,
} from './manifest.js';
import { PackBuilder, type FinishedPack } from './pack.js';
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
  chunksNew: number;
  chunksReused: number;
  zeroChunks: number;
  packsWritten: number;
  durationMs: number;
  images: { label: string; mode: ImageMode; chunks: number; chunksRead: number; note?: string }[];
}

/** Chunks are read and handed to workers in batches of about this many bytes. */
const BATCH_BYTES = 4 * 1024 * 1024;
/** Packs uploading at once. */
const UPLOAD_CONCURRENCY = 3;
const PROGRESS_INTERVAL_MS = 200;

interface ImagePlan {
  label: string;
  path: string;
  file: FileHandle;
  size: number;
  chunks: number;
  mode: ImageMode;
  /** One byte per chunk: 1 = read it. Null: read all. */
  dirty: Uint8Array | null;
  /** 32 bytes per chunk; pre-filled from the parent for chunks not read. */
  map: Buffer;
  trackingEpoch: string | null;
  /** Why a given bitmap was not used, if it was not. */
  note: string | null;
}

interface Batch {
  plan: ImagePlan;
  /** Chunk numbers, in increasing order. */
  chunks: number[];
  lengths: number[];
  bytes: number;
}

class BackupRun {
  private readonly workers: ChunkWorkers;
  private readonly uploads = new Semaphore(UPLOAD_CONCURRENCY);
  private readonly uploading = new Set<Promise<void>>();
  private dataPack: PackBuilder;
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
  ) {
    this.workers = new ChunkWorkers(repo.keys, repo.compressionQuality, options.workers ?? defaultWorkerCount());
    this.dataPack = new PackBuilder();
    this.metaPack = new PackBuilder();
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.uploading]);
    await this.workers.close();
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

  private async flush(builder: PackBuilder): Promise<void> {
    if (builder.count === 0) return;
    const pack: FinishedPack = builder.finish(this.repo.sealer);
    await this.uploads.acquire();
    const upload = (async () => {
      try {
        await this.repo.writePack(pack);
        this.index.addPack(pack.contents);
        for (const e of pack.contents.entries) this.inFlight.delete(e.id.toString('latin1'));
        this.bytesAdded += pack.body.length + pack.indexObject.length;
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

  private async addData(blobs: { id: Buffer; stored: Buffer; rawLength: number; crc32: number; compression: number }[]): Promise<void> {
    for (const b of blobs) {
      this.dataPack.add({ ...b, type: BlobType.Chunk });
      if (this.dataPack.dataSize >= this.repo.packSize) {
        const full = this.dataPack;
        this.dataPack = new PackBuilder();
        await this.flush(full);
      }
    }
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
    const cs = this.repo.chunkSize;
    const runs: { position: number; length: number }[] = [];
    batch.chunks.forEach((c, j) => {
      const last = runs[runs.length - 1];
      if (last && last.position + last.length === c * cs) last.length += batch.lengths[j];
      else runs.push({ position: c * cs, length: batch.lengths[j] });
    });
    let hashed;
    try {
      hashed = await this.workers.readAndHash(plan.file.fd, runs, batch.lengths);
    } catch (err) {
      if (err instanceof WorkerError) throw new InputError(`cannot read ${plan.path}: ${err.message}`);
      throw err;
    }
    this.bytesRead += batch.bytes;
    const { ids, zero } = hashed;
    const fresh: number[] = [];
    const freshIds: Buffer[] = [];
    for (let j = 0; j < batch.chunks.length; j++) {
      const c = batch.chunks[j];
      const id = ids.subarray(j * CHUNK_ID_BYTES, (j + 1) * CHUNK_ID_BYTES);
      if (zero[j]) {
        ZERO_CHUNK_ID.copy(plan.map, c * CHUNK_ID_BYTES);
        this.zeroChunks++;
      } else {
        id.copy(plan.map, c * CHUNK_ID_BYTES);
        if (this.known(id)) {
          this.chunksReused++;
        } else {
          this.inFlight.add(id.toString('latin1'));
          fresh.push(j);
          freshIds.push(id);
          this.chunksNew++;
        }
      }
    }
    if (fresh.length) {
      const encoded = await this.workers.encode(hashed, fresh, Buffer.concat(freshIds), BlobType.Chunk);
      this.checkFailure();
      let p = 0;
      const blobs = fresh.map((j, k) => {
        const stored = encoded.stored.subarray(p, p + encoded.lengths[k]);
        p += encoded.lengths[k];
        return { id: freshIds[k], stored, rawLength: batch.lengths[j], crc32: encoded.crc32[k], compression: encoded.compression[k] };
      });
      await this.addData(blobs);
    } else {
      await this.workers.release(hashed);
    }
    this.bytesDone += batch.bytes;
    this.progress();
  }

  private *batches(plan: ImagePlan): Generator<Batch> {
    const cs = this.repo.chunkSize;
    let batch: Batch = { plan, chunks: [], lengths: [], bytes: 0 };
    for (let c = 0; c < plan.chunks; c++) {
      if (plan.dirty && !plan.dirty[c]) continue;
      const len = Math.min(cs, plan.size - c * cs);
      if (batch.bytes + len > BATCH_BYTES && batch.chunks.length) {
        yield batch;
        batch = { plan, chunks: [], lengths: [], bytes: 0 };
      }
      batch.chunks.push(c);
      batch.lengths.push(len);
      batch.bytes += len;
    }
    if (batch.chunks.length) yield batch;
  }

  async readImages(plans: ImagePlan[]): Promise<void> {
    // Enough batches in flight to keep every worker busy while the main thread packs and uploads.
    const window = new Semaphore(2 * this.workers.size + 2);
    const running = new Set<Promise<void>>();
    for (const plan of plans) {
      for (const batch of this.batches(plan)) {
        await window.acquire();
        if (this.failure) {
          window.release();
          break;
        }
        const task = this.processBatch(batch)
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

  /** Flushes the last packs and waits until every pack of this run is durable. */
  async finishPacks(): Promise<void> {
    await this.flush(this.dataPack);
    this.dataPack = new PackBuilder();
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
  const chunks = Math.ceil(size / cs);
  const map = Buffer.alloc(chunks * CHUNK_ID_BYTES);
  const bitmap = input.bitmap ?? null;
  if (bitmap && bitmap.diskSize !== size) {
    await file.close();
    throw new ChangeBitmapError(`the change bitmap for ${label} describes ${bitmap.diskSize} bytes but ${input.path} holds ${size}`);
  }
  const base = { label, path: input.path, file, size, chunks, map, trackingEpoch: bitmap?.epoch ?? null };
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
  if (!parentImage) return { ...base, mode: 'full', dirty: null, note: null };
  if (!bitmap || why) {
    return { ...base, mode: 'hash-compare', dirty: null, note: why ? `${label}: change bitmap not used (${why}); chunks compared by hash` : null };
  }
  const parentMap = await repo.readChunkMap(parentImage, index, parentContext);
  const dirty = new Uint8Array(chunks);
  markDirtyChunks(bitmap, cs, dirty);
  const parentChunks = Math.ceil(parentImage.size / cs);
  // A resized disk: every chunk from the first one whose extent changed is read.
  const firstChanged = size === parentImage.size ? chunks : Math.floor(Math.min(size, parentImage.size) / cs);
  for (let c = 0; c < chunks; c++) {
    if (c >= firstChanged || c >= parentChunks) {
      dirty[c] = 1;
      continue;
    }
    if (dirty[c]) continue;
    const id = parentMap.subarray(c * CHUNK_ID_BYTES, (c + 1) * CHUNK_ID_BYTES);
    // A chunk the index no longer holds (its pack is gone or condemned) is read again.
    if (!id.equals(ZERO_CHUNK_ID) && !index.has(id)) dirty[c] = 1;
    else id.copy(map, c * CHUNK_ID_BYTES);
  }
  return { ...base, mode: 'bitmap', dirty, note: null };
}

/**
 * Before committing: every pack the point needs is still on the target. Only a gc that judged this
 * backup's lease dead (refreshes failing for a whole lease period) could have removed one.
 */
async function checkPacksStillThere(repo: Repository, index: ChunkIndex, plans: ImagePlan[], images: ImageEntry[], extra: string[]): Promise<void> {
  const needed = new Set<string>();
  const need = (id: Buffer) => {
    const loc = index.get(id);
    if (!loc) throw new RepositoryError(`internal: chunk ${id.toString('hex')} of this backup is in no pack`);
    needed.add(loc.packId);
  };
  for (const p of plans) {
    for (let c = 0; c < p.chunks; c++) {
      const id = p.map.subarray(c * CHUNK_ID_BYTES, (c + 1) * CHUNK_ID_BYTES);
      if (!id.equals(ZERO_CHUNK_ID)) need(id);
    }
  }
  for (const img of images) for (const page of img.pages) need(Buffer.from(page, 'hex'));
  for (const id of extra) need(Buffer.from(id, 'hex'));
  const present = await repo.listPacks();
  for (const packId of needed) {
    if (!present.has(packId)) {
      throw new RepositoryError(`pack ${packId}, which this backup uses, was deleted while it ran (its lease had lapsed); run the backup again`);
    }
  }
}

function countRead(plan: ImagePlan): number {
  if (!plan.dirty) return plan.chunks;
  let n = 0;
  for (let c = 0; c < plan.chunks; c++) n += plan.dirty[c];
  return n;
}

function bytesToRead(plan: ImagePlan, chunkSize: number): number {
  if (!plan.dirty) return plan.size;
  let n = 0;
  for (let c = 0; c < plan.chunks; c++) if (plan.dirty[c]) n += Math.min(chunkSize, plan.size - c * chunkSize);
  return n;
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
  const lease = await Lease.acquire(repo.target, 'backup', options.leaseTtlMs);
  const plans: ImagePlan[] = [];
  let run: BackupRun | null = null;
  try {
    // The condemned record is read after the lease exists (see gc.ts): chunks in condemned packs are
    // never reused, and packs that are missing or the wrong size are left out of the index.
    const condemned = await readCondemned(repo.target);
    const present = await repo.listPacks();
    const index = await repo.loadIndex({ exclude: new Set(condemned?.packs ?? []), present, onlyPresent: true });
    const parent = await resolveParent(repo, options);

    for (const d of options.disks) {
      const pd = parent?.manifest.disks.find((x) => x.id === (d.id ?? d.name)) ?? parent?.manifest.disks.find((x) => x.name === d.name) ?? null;
      plans.push(await planImage(repo, index, `disk ${d.name}`, d, pd, `parent point ${parent?.id} disk ${d.name}`));
    }
    if (options.memory) {
      plans.push(await planImage(repo, index, 'memory', options.memory, parent?.manifest.memory ?? null, `parent point ${parent?.id} memory`));
    }

    run = new BackupRun(repo, index, options);
    run.bytesTotal = plans.reduce((a, p) => a + bytesToRead(p, repo.chunkSize), 0);
    for (const p of plans) {
      // Chunks taken from the parent count as reused (or zero).
      if (!p.dirty) continue;
      for (let c = 0; c < p.chunks; c++) {
        if (p.dirty[c]) continue;
        if (p.map.subarray(c * CHUNK_ID_BYTES, (c + 1) * CHUNK_ID_BYTES).equals(ZERO_CHUNK_ID)) run.zeroChunks++;
        else run.chunksReused++;
      }
    }
    await run.readImages(plans);

    const images: ImageEntry[] = [];
    for (const p of plans) {
      const pages: string[] = [];
      for (let first = 0; first < p.chunks; first += MAP_PAGE_ENTRIES) {
        const page = p.map.subarray(first * CHUNK_ID_BYTES, Math.min(p.chunks, first + MAP_PAGE_ENTRIES) * CHUNK_ID_BYTES);
        pages.push(await run.addMeta(Buffer.from(page), BlobType.MapPage));
      }
      let zeroChunks = 0;
      for (let c = 0; c < p.chunks; c++) if (p.map.subarray(c * CHUNK_ID_BYTES, (c + 1) * CHUNK_ID_BYTES).equals(ZERO_CHUNK_ID)) zeroChunks++;
      images.push({
        size: p.size,
        chunkSize: repo.chunkSize,
        pageEntries: MAP_PAGE_ENTRIES,
        pages,
        dataChunks: p.chunks - zeroChunks,
        zeroChunks,
        ...(p.trackingEpoch ? { trackingEpoch: p.trackingEpoch } : {}),
      });
    }
    let deviceState: string | undefined;
    if (options.memory?.deviceState) deviceState = await run.addMeta(options.memory.deviceState, BlobType.Metadata);
    await run.finishPacks();
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
      images: plans.map((p) => ({ label: p.label, mode: p.mode, chunks: p.chunks, chunksRead: countRead(p), ...(p.note ? { note: p.note } : {}) })),
    };
  } catch (err) {
    if (err instanceof PointNotFoundError) throw new InputError(`parent ${err.message}`);
    throw err;
  } finally {
    await run?.close();
    await Promise.all(plans.map((p) => p.file.close().catch(() => undefined)));
    await lease.release().catch(() => undefined);
  }
}
