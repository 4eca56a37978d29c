// Restore: a point's disk (or memory) image -> a file. Blobs are fetched with ranged reads grouped by
// pack, several at once; workers open, decompress and check every chunk against its id; zero chunks stay
// holes. The image is written to a temporary file beside the destination, fsynced, then renamed.

import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { open, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { BlobLocation } from './chunk-index.js';
import { mapLimit } from './concurrency.js';
import { readCondemned } from './condemned.js';
import { CHUNK_ID_BYTES, ZERO_CHUNK_ID } from './constants.js';
import { CorruptDataError, InputError, MissingObjectError } from './errors.js';
import { Lease } from './leases.js';
import { pointImages, type ImageEntry, type PointManifest } from './manifest.js';
import { planReads, withContext, type Repository } from './repository.js';
import { ChunkWorkers, defaultWorkerCount } from './worker-pool.js';

export interface RestoreOptions {
  /** A full point id (see Repository.resolvePoint). */
  pointId: string;
  /** The disk to restore (by name); may be omitted when the point has one disk. */
  disk?: string;
  /** Restore the point's memory image instead of a disk. */
  memory?: boolean;
  /** Destination file. */
  to: string;
  /** Replace an existing file. */
  force?: boolean;
  onProgress?: (p: { bytesDone: number; bytesTotal: number }) => void;
  /** Ranged reads in flight. */
  readConcurrency?: number;
  workers?: number;
  leaseTtlMs?: number;
}

export interface RestoreResult {
  pointId: string;
  image: string;
  to: string;
  size: number;
  chunks: number;
  zeroChunks: number;
  /** Bytes of chunk data written (zero chunks are holes and not written). */
  bytesWritten: number;
  /** Bytes fetched from the target. */
  bytesFetched: number;
  durationMs: number;
}

const DEFAULT_READ_CONCURRENCY = 6;
const PROGRESS_INTERVAL_MS = 200;
const SYNC_EVERY_BYTES = 256 * 1024 * 1024;

export function selectImage(pointId: string, m: PointManifest, disk?: string, memory?: boolean): { label: string; image: ImageEntry } {
  if (memory) {
    if (!m.memory) throw new InputError(`point ${pointId} has no memory image`);
    return { label: 'memory', image: m.memory };
  }
  if (disk) {
    const d = m.disks.find((x) => x.name === disk);
    if (!d) throw new InputError(`point ${pointId} has no disk '${disk}' (it has ${m.disks.map((x) => x.name).join(', ') || 'none'})`);
    return { label: `disk ${d.name}`, image: d };
  }
  if (m.disks.length !== 1) {
    throw new InputError(`point ${pointId} has ${m.disks.length} disks (${m.disks.map((x) => x.name).join(', ')}); choose one with --disk NAME`);
  }
  return pointImages(m)[0];
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function restore(repo: Repository, options: RestoreOptions): Promise<RestoreResult> {
  const started = Date.now();
  const existing = await stat(options.to).catch(() => null);
  if (existing && !options.force) throw new InputError(`${options.to} already exists; give --force to replace it`);
  if (existing && !existing.isFile()) throw new InputError(`${options.to} exists and is not a regular file`);
  const parent = await stat(dirname(options.to)).catch(() => null);
  if (!parent?.isDirectory()) throw new InputError(`cannot restore to ${options.to}: directory ${dirname(options.to)} does not exist`);

  const lease = await Lease.acquireIfWritable(repo.target, 'restore', options.leaseTtlMs);
  let workers: ChunkWorkers | null = null;
  let out: FileHandle | null = null;
  const temp = join(dirname(options.to), `.${basename(options.to)}.lifeboat-${randomBytes(6).toString('hex')}`);
  try {
    const manifest = await repo.readManifest(options.pointId);
    const { label, image } = selectImage(options.pointId, manifest, options.disk, options.memory);
    const context = `point ${options.pointId} ${label}`;
    const condemned = await readCondemned(repo.target);
    const index = await repo.loadIndex({ present: await repo.listPacks(), avoid: new Set(condemned?.packs ?? []) });
    const map = await repo.readChunkMap(image, index, context);
    const cs = image.chunkSize;
    const chunks = Math.ceil(image.size / cs);

    // Where each distinct chunk goes (a chunk may appear at many offsets).
    const wanted = new Map<string, { loc: BlobLocation; chunkNumbers: number[] }>();
    let zeroChunks = 0;
    let bytesTotal = 0;
    for (let c = 0; c < chunks; c++) {
      const id = map.subarray(c * CHUNK_ID_BYTES, (c + 1) * CHUNK_ID_BYTES);
      if (id.equals(ZERO_CHUNK_ID)) {
        zeroChunks++;
        continue;
      }
      const key = id.toString('latin1');
      const w = wanted.get(key);
      if (w) {
        w.chunkNumbers.push(c);
      } else {
        const loc = index.get(id);
        if (!loc) {
          throw new MissingObjectError(
            `${context}: chunk at offset ${c * cs} (id ${id.toString('hex').slice(0, 16)}...) is in no pack the index knows; its pack is missing`,
          );
        }
        wanted.set(key, { loc, chunkNumbers: [c] });
      }
      bytesTotal += Math.min(cs, image.size - c * cs);
    }

    out = await open(temp, 'wx', 0o600);
    await out.truncate(image.size);
    workers = new ChunkWorkers(repo.keys, null, options.workers ?? defaultWorkerCount());
    let bytesDone = 0;
    let bytesFetched = 0;
    let lastProgress = 0;
    let sinceSync = 0;
    let syncing: Promise<void> | null = null;
    const reads = planReads([...wanted.values()].map((w) => w.loc));
    const firstOffset = (l: BlobLocation) => wanted.get(l.id.toString('latin1'))!.chunkNumbers[0] * cs;
    await mapLimit(reads, options.readConcurrency ?? DEFAULT_READ_CONCURRENCY, async (r) => {
      let data: Buffer;
      try {
        data = await repo.readPackRange(r.packId, r.offset, r.length);
      } catch (err) {
        throw withContext(err, `${context}: chunk at offset ${firstOffset(r.blobs[0])}`);
      }
      bytesFetched += data.length;
      const decoded = await workers!.decode(
        data,
        r.blobs.map((l) => ({
          offset: l.offset - r.offset,
          storedLength: l.storedLength,
          rawLength: l.rawLength,
          crc32: l.crc32,
          type: l.type,
          compression: l.compression,
          id: l.id,
        })),
        { fd: out!.fd, writes: r.blobs.map((l) => wanted.get(l.id.toString('latin1'))!.chunkNumbers.map((c) => c * cs)) },
      );
      r.blobs.forEach((l, k) => {
        const problem = decoded.errors[k];
        if (problem) {
          throw new CorruptDataError(`${context}: chunk at offset ${firstOffset(l)} is corrupt: ${problem.message} (pack ${l.packId}, blob offset ${l.offset})`);
        }
      });
      bytesDone += decoded.bytesWritten;
      sinceSync += decoded.bytesWritten;
      // Start writing back early so that the final fsync does not wait for the whole image.
      if (sinceSync >= SYNC_EVERY_BYTES && !syncing) {
        sinceSync = 0;
        syncing = out!.datasync().catch(() => undefined).finally(() => (syncing = null));
      }
      const now = Date.now();
      if (options.onProgress && now - lastProgress >= PROGRESS_INTERVAL_MS) {
        lastProgress = now;
        options.onProgress({ bytesDone, bytesTotal });
      }
    });
    await syncing;
    await out.sync();
    await out.close();
    out = null;
    await rename(temp, options.to);
    await fsyncDir(dirname(options.to));
    return {
      pointId: options.pointId,
      image: label,
      to: options.to,
      size: image.size,
      chunks,
      zeroChunks,
      bytesWritten: bytesDone,
      bytesFetched,
      durationMs: Date.now() - started,
    };
  } finally {
    if (out) await out.close().catch(() => undefined);
    await unlink(temp).catch(() => undefined);
    await workers?.close();
    await lease?.release().catch(() => undefined);
  }
}

/** The VMM device state saved with a point's memory image, or null when it has none. */
export async function readDeviceState(repo: Repository, pointId: string): Promise<Buffer | null> {
  const manifest = await repo.readManifest(pointId);
  const state = manifest.memory?.deviceState;
  if (!state) return null;
  const condemned = await readCondemned(repo.target);
  const index = await repo.loadIndex({ present: await repo.listPacks(), avoid: new Set(condemned?.packs ?? []) });
  const loc = index.get(Buffer.from(state, 'hex'));
  if (!loc) throw new MissingObjectError(`point ${pointId} memory: the device state blob is in no pack`);
  try {
    return (await repo.readBlobs([loc])).get(state)!;
  } catch (err) {
    throw withContext(err, `point ${pointId} memory: device state`);
  }
}
