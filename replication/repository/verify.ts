// Verify: checks that every committed point can be restored. The structural check reads index objects
// and manifests and lists packs: every extent map tiles its image, every blob an extent of a point
// takes bytes from is in the index and long enough, every indexed pack exists
// with the size its index states. With readData, every pack is read in full: its tail must match its
// index object and every blob must open, decompress and hash to its id. Problems name the object and,
// for data, the point, image and offset that depend on it.

import { HEX_ID_PATTERN, packKey, indexKey } from './constants.js';
import type { ExtentMap } from './extent-map.js';
import { ChunkIndex } from './chunk-index.js';
import { mapLimit } from './concurrency.js';
import { RepositoryError } from './errors.js';
import { FormatError, type PackIndexContents } from './layout.js';
import { Lease } from './leases.js';
import { pointImages } from './manifest.js';
import { parsePackTail } from './pack.js';
import type { Repository } from './repository.js';
import { NotFoundError } from '../target.js';
import { ChunkWorkers, defaultWorkerCount } from './worker-pool.js';

export interface VerifyProblem {
  severity: 'error' | 'warning';
  /** The object concerned, e.g. `packs/ab/ab12...` or `points/...`. */
  object: string;
  message: string;
}

export interface VerifyOptions {
  readData?: boolean;
  onProblem?: (p: VerifyProblem) => void;
  onProgress?: (p: { phase: string; done: number; total: number }) => void;
  workers?: number;
  leaseTtlMs?: number;
}

export interface VerifyResult {
  points: number;
  packs: number;
  blobs: number;
  chunksChecked: number;
  bytesRead: number;
  errors: number;
  warnings: number;
  problems: VerifyProblem[];
}

/** Problems reported per image before the rest are summarised. */
const PER_IMAGE_REPORT_LIMIT = 5;
const PACK_READ_CONCURRENCY = 3;

export async function verify(repo: Repository, options: VerifyOptions = {}): Promise<VerifyResult> {
  const problems: VerifyProblem[] = [];
  const report = (severity: VerifyProblem['severity'], object: string, message: string) => {
    const p = { severity, object, message };
    problems.push(p);
    options.onProblem?.(p);
  };
  const lease = await Lease.acquireIfWritable(repo.target, 'verify', options.leaseTtlMs);
  let workers: ChunkWorkers | null = null;
  let bytesRead = 0;
  let chunksChecked = 0;
  try {
    // 1. Index objects against the packs that exist.
    // Index objects before packs: a backup running meanwhile writes a pack before its index object.
    const indexIds = await repo.listIndexIds();
    const packs = await repo.listPacks();
    const packIndexes = new Map<string, { contents: PackIndexContents; indexId: string }>();
    let loaded = 0;
    await mapLimit(indexIds, 16, async (indexId) => {
      try {
        for (const contents of await repo.readIndexObject(indexId)) {
          packIndexes.set(contents.packId.toString('hex'), { contents, indexId });
        }
      } catch (err) {
        if (!(err instanceof RepositoryError)) throw err;
        report('error', indexKey(indexId), err.message);
      }
      options.onProgress?.({ phase: 'index', done: ++loaded, total: indexIds.length });
    });
    const index = new ChunkIndex();
    const badPacks = new Map<string, string>();
    for (const [packId, { contents }] of packIndexes) {
      const size = packs.get(packId);
      if (size === undefined) {
        badPacks.set(packId, 'missing');
        report('error', packKey(packId), `pack ${packId} is missing (its index lists ${contents.entries.length} blobs)`);
        continue;
      }
      if (size !== contents.packSize) {
        const what = size < contents.packSize ? 'truncated' : 'the wrong size';
        badPacks.set(packId, what);
        report('error', packKey(packId), `pack ${packId} is ${what}: ${size} bytes, its index says ${contents.packSize}`);
      }
      index.addPack(contents);
    }
    for (const packId of packs.keys()) {
      if (!packIndexes.has(packId)) {
        report('warning', packKey(packId), `pack ${packId} has no index object (left by an interrupted backup or gc); gc will remove it`);
      }
    }

    const seenIndexIds = new Set(indexIds);
    const refresh = async () => {
      const fresh = (await repo.listIndexIds()).filter((id) => !seenIndexIds.has(id));
      for (const id of fresh) {
        seenIndexIds.add(id);
        try {
          for (const contents of await repo.readIndexObject(id)) index.addPack(contents);
        } catch (err) {
          if (!(err instanceof RepositoryError)) throw err;
          report('error', indexKey(id), err.message);
        }
      }
    };

    // 2. Every point: manifest, map pages, and every chunk in the index.
    const refs = new Map<string, string>(); // chunk id (latin1) -> "point P disk D: chunk at offset O"
    const pointIds = await repo.listPointIds();
    let checkedPoints = 0;
    for (const pointId of pointIds.sort()) {
      let manifest;
      try {
        manifest = await repo.readManifest(pointId);
      } catch (err) {
        if (!(err instanceof RepositoryError)) throw err;
        report('error', `points/${pointId}`, err.message);
        continue;
      }
      for (const { label, image } of pointImages(manifest)) {
        const context = `point ${pointId} ${label}`;
        // A point committed while verify runs keeps its map pages in packs written after the listing.
        if (image.pages.some((page) => !index.has(Buffer.from(page, 'hex')))) await refresh();
        let map: ExtentMap;
        try {
          map = await repo.readExtentMap(image, index, context);
        } catch (err) {
          if (!(err instanceof RepositoryError)) throw err;
          report('error', `points/${pointId}`, err.message);
          continue;
        }
        for (const [i, page] of image.pages.entries()) {
          const loc = index.get(Buffer.from(page, 'hex'));
          if (loc && badPacks.has(loc.packId)) {
            report('error', packKey(loc.packId), `${context}: map page ${i} lies in pack ${loc.packId}, which is ${badPacks.get(loc.packId)}`);
          }
          const key = Buffer.from(page, 'hex').toString('latin1');
          if (!refs.has(key)) refs.set(key, `${context}: map page ${i}`);
        }
        let bad = 0;
        for (const { k, id } of map.dataExtents()) {
          const where = `${context}: chunk at offset ${map.positions[k]}`;
          const key = id.toString('latin1');
          if (!refs.has(key)) refs.set(key, where);
          const loc = index.get(id);
          let problem: string | null = null;
          if (!loc) problem = `${where} (id ${id.toString('hex').slice(0, 16)}...) is missing: no pack holds it`;
          else if (badPacks.has(loc.packId)) problem = `${where} lies in pack ${loc.packId}, which is ${badPacks.get(loc.packId)}`;
          else if (map.offsets[k] + map.lengths[k] > loc.rawLength) {
            problem = `${context}: the extent map is damaged: the chunk at offset ${map.positions[k]} takes bytes ${map.offsets[k]}..${map.offsets[k] + map.lengths[k]} of a blob of ${loc.rawLength} bytes`;
          }
          if (problem) {
            if (bad < PER_IMAGE_REPORT_LIMIT) report('error', `points/${pointId}`, problem);
            bad++;
          }
        }
        if (bad > PER_IMAGE_REPORT_LIMIT) {
          report('error', `points/${pointId}`, `${context}: ${bad - PER_IMAGE_REPORT_LIMIT} more chunks are missing or damaged`);
        }
      }
      const state = manifest.memory?.deviceState;
      if (state) {
        const loc = index.get(Buffer.from(state, 'hex'));
        if (!loc || badPacks.has(loc.packId)) report('error', `points/${pointId}`, `point ${pointId} memory: the device state blob is ${loc ? `in pack ${loc.packId}, which is ${badPacks.get(loc.packId)}` : 'missing'}`);
        const key = Buffer.from(state, 'hex').toString('latin1');
        if (!refs.has(key)) refs.set(key, `point ${pointId} memory: device state`);
      }
      options.onProgress?.({ phase: 'points', done: ++checkedPoints, total: pointIds.length });
    }

    // 3. Optionally, every byte of every pack.
    if (options.readData) {
      workers = new ChunkWorkers(repo.keys, null, options.workers ?? defaultWorkerCount());
      const toRead = [...packIndexes.entries()].filter(([packId]) => badPacks.get(packId) !== 'missing');
      let done = 0;
      await mapLimit(toRead, PACK_READ_CONCURRENCY, async ([packId, { contents, indexId }]) => {
        let body: Buffer;
        try {
          body = await repo.target.get(packKey(packId));
        } catch (err) {
          if (err instanceof NotFoundError) {
            report('error', packKey(packId), `pack ${packId} disappeared while verifying`);
            return;
          }
          throw err;
        }
        bytesRead += body.length;
        try {
          const tail = parsePackTail(body, contents.packId, repo.sealer);
          if (!sameEntries(tail.contents, contents)) {
            report('error', packKey(packId), `pack ${packId}: its tail index does not match index object ${indexKey(indexId)}`);
          }
        } catch (err) {
          if (!(err instanceof FormatError)) throw err;
          report('error', packKey(packId), `pack ${packId}: tail is damaged: ${err.message}`);
        }
        const entries = contents.entries.filter((e) => e.offset + e.storedLength <= body.length);
        for (const e of contents.entries) {
          if (e.offset + e.storedLength > body.length) {
            const who = refs.get(e.id.toString('latin1')) ?? `unreferenced blob ${e.id.toString('hex').slice(0, 16)}...`;
            report('error', packKey(packId), `${who} is cut off: pack ${packId} is truncated`);
          }
        }
        const decoded = await workers!.decode(
          body,
          entries.map((e) => ({ offset: e.offset, storedLength: e.storedLength, rawLength: e.rawLength, crc32: e.crc32, type: e.type, compression: e.compression, id: e.id })),
        );
        entries.forEach((e, k) => {
          chunksChecked++;
          const problem = decoded.errors[k];
          if (!problem) return;
          const who = refs.get(e.id.toString('latin1')) ?? `unreferenced blob ${e.id.toString('hex').slice(0, 16)}...`;
          report('error', packKey(packId), `${who} is corrupt: ${problem.message} (pack ${packId}, blob offset ${e.offset})`);
        });
        options.onProgress?.({ phase: 'data', done: ++done, total: toRead.length });
      });
    }

    const errors = problems.filter((p) => p.severity === 'error').length;
    return {
      points: pointIds.filter((id) => HEX_ID_PATTERN.test(id)).length,
      packs: packs.size,
      blobs: index.size,
      chunksChecked,
      bytesRead,
      errors,
      warnings: problems.length - errors,
      problems,
    };
  } finally {
    await workers?.close();
    await lease?.release().catch(() => undefined);
  }
}

function sameEntries(a: PackIndexContents, b: PackIndexContents): boolean {
  if (a.packSize !== b.packSize || a.entries.length !== b.entries.length) return false;
  return a.entries.every((e, i) => {
    const f = b.entries[i];
    return e.id.equals(f.id) && e.offset === f.offset && e.storedLength === f.storedLength && e.rawLength === f.rawLength && e.crc32 === f.crc32 && e.type === f.type && e.compression === f.compression;
  });
}
