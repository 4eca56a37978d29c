// Restore: a point's disk (or memory) image -> a file. Blobs are fetched with ranged reads grouped by
// pack, several at once, each blob once however many extents use it; workers open, decompress and check
// every blob and write the slices its extents take; zeros stay holes. The image is written to a
// temporary file beside the destination, fsynced, then renamed.

import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { open, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { BlobLocation } from './chunk-index.js';
import { mapLimit } from './concurrency.js';
import { readCondemned } from './condemned.js';
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
  /** Extents in the image's map, and those of zeros (left as holes). */
  extents: number;
  zeroExtents: number;
  /** Bytes of data written (zeros are holes and not written). */
  bytesWritten: number;
  /** Bytes fetched from the target. */
  bytesFetched: number;
  durationMs: number;
}

const DEFAULT_READ_CONCURRENCY = 6;
const PROGRESS_INTERVAL_MS = 200;
/**
 * Every this many bytes written, an fdatasync starts (on libuv's pool, one at a time) so that the disk
 * writes back while the restore goes on and the final fsync finds little left (2 GiB of dirty pages
 * take ~1 s to write back here, and the kernel starts no background write-back for them by itself).
 * Every 256 MiB slowed the writing more than it shortened the final fsync on the benchmark's VM.
 */
const SYNC_EVERY_BYTES = 512 * 1024 * 1024;

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

  const trace = process.env.LIFEBOAT_TRACE ? (m: string) => process.stderr.write(`lifeboat restore: ${String(Date.now() - started).padStart(6)} ms ${m}\n`) : () => undefined;
  const lease = await Lease.acquireIfWritable(repo.target, 'restore', options.leaseTtlMs);
  let workers: ChunkWorkers | null = null;
  let out: FileHandle | null = null;
  const temp = join(dirname(options.to), `.${basename(options.to)}.lifeboat-${randomBytes(6).toString('hex')}`);
  try {
    const manifest = await repo.readManifest(options.pointId);
    const { label, image } = selectImage(options.pointId, manifest, options.disk, options.memory);
    const context = `point ${options.pointId} ${label}`;
    const condemned = await readCondemned(repo.target);
    const index = await repo.loadIndex({ present: repo.listPacks(), avoid: new Set(condemned?.packs ?? []) });
    const map = await repo.readExtentMap(image, index, context);

    // Where each distinct blob goes: a blob is fetched and decoded once, then every extent taking bytes
    // from it is written (position, offset in the blob, length: flat triples). Zeros stay holes.
    const wanted = new Map<string, { loc: BlobLocation; writes: number[] }>();
    let bytesTotal = 0;
    for (const { k, id } of map.dataExtents()) {
      const position = map.positions[k];
      const offset = map.offsets[k];
      const length = map.lengths[k];
      const key = id.toString('latin1');
      let w = wanted.get(key);
      if (!w) {
        const loc = index.get(id);
        if (!loc) {
          throw new MissingObjectError(
            `${context}: chunk at offset ${position} (id ${id.toString('hex').slice(0, 16)}...) is in no pack the index knows; its pack is missing`,
          );
        }
        w = { loc, writes: [] };
        wanted.set(key, w);
      }
      if (offset + length > w.loc.rawLength) {
        throw new CorruptDataError(`${context}: the extent map is damaged: the chunk at offset ${position} takes bytes ${offset}..${offset + length} of a blob of ${w.loc.rawLength} bytes`);
      }
      w.writes.push(position, offset, length);
      bytesTotal += length;
    }
    const stats = map.stats();
    trace(`extent map read (${stats.extents} extents, ${wanted.size} blobs)`);

    out = await open(temp, 'wx', 0o600);
    await out.truncate(image.size);
    workers = new ChunkWorkers(repo.keys, null, options.workers ?? defaultWorkerCount());
    let bytesDone = 0;
    let bytesFetched = 0;
    let lastProgress = 0;
    let sinceSync = 0;
    let syncing: Promise<void> | null = null;
    const reads = planReads([...wanted.values()].map((w) => w.loc));
    const firstOffset = (l: BlobLocation) => wanted.get(l.id.toString('latin1'))!.writes[0];
    // An encrypted blob's GCM tag, over its id, type and compression, already proves it is the blob
    // written under that id; the keyed content hash is left to verify --read-data (format document §6).
    const checkId = !repo.sealer.encrypted;
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
        { fd: out!.fd, writes: r.blobs.map((l) => wanted.get(l.id.toString('latin1'))!.writes), checkId },
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
    trace('data written');
    await syncing;
    await out.sync();
    trace('synced');
    await out.close();
    out = null;
    await rename(temp, options.to);
    await fsyncDir(dirname(options.to));
    return {
      pointId: options.pointId,
      image: label,
      to: options.to,
      size: image.size,
      extents: stats.extents,
      zeroExtents: stats.zeroExtents,
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
  const index = await repo.loadIndex({ present: repo.listPacks(), avoid: new Set(condemned?.packs ?? []) });
  const loc = index.get(Buffer.from(state, 'hex'));
  if (!loc) throw new MissingObjectError(`point ${pointId} memory: the device state blob is in no pack`);
  try {
    return (await repo.readBlobs([loc])).get(state)!;
  } catch (err) {
    throw withContext(err, `point ${pointId} memory: device state`);
  }
}
