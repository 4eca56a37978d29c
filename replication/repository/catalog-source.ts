// The repository seen as the catalog sees it: a point's manifest and chunk maps as a PointRecord, and
// the whole repository as a RebuildSource, so that the catalog can always be rebuilt from the target.

import type { RebuildSource } from '../../catalog/rebuild.js';
import type { ChunkReference, PointRecord, TargetRecord } from '../../catalog/records.js';
import type { ChunkIndex } from './chunk-index.js';
import { CHUNK_ID_BYTES, ZERO_CHUNK_ID } from './constants.js';
import { MissingObjectError } from './errors.js';
import { pointImages, type PointManifest } from './manifest.js';
import type { Repository } from './repository.js';

function reference(index: ChunkIndex, id: Buffer, context: string): ChunkReference {
  const loc = index.get(id);
  if (!loc) throw new MissingObjectError(`${context}: blob ${id.toString('hex').slice(0, 16)}... is in no pack`);
  return { id: id.toString('hex'), size: loc.rawLength, storedSize: loc.storedLength, pack: loc.packId };
}

/**
 * The catalog record of a committed point. Its chunks are every blob the point needs: each non-zero
 * chunk of each image (once per use, in image order), then the map pages, then the device state. All-zero
 * chunks have no blob and are not listed.
 */
export async function pointRecord(repo: Repository, pointId: string, manifest: PointManifest, index: ChunkIndex, targetId: string): Promise<PointRecord> {
  const chunks: ChunkReference[] = [];
  for (const { label, image } of pointImages(manifest)) {
    const context = `point ${pointId} ${label}`;
    const map = await repo.readChunkMap(image, index, context);
    for (let p = 0; p < map.length; p += CHUNK_ID_BYTES) {
      const id = map.subarray(p, p + CHUNK_ID_BYTES);
      if (!id.equals(ZERO_CHUNK_ID)) chunks.push(reference(index, id, context));
    }
    for (const page of image.pages) chunks.push(reference(index, Buffer.from(page, 'hex'), context));
  }
  if (manifest.memory?.deviceState) chunks.push(reference(index, Buffer.from(manifest.memory.deviceState, 'hex'), `point ${pointId} memory`));
  return {
    id: pointId,
    vmId: manifest.vm.id,
    vmName: manifest.vm.name,
    targetId,
    parentId: manifest.parent,
    consistency: manifest.consistency,
    createdAt: manifest.createdAt,
    logicalBytes: manifest.disks.reduce((a, d) => a + d.size, 0),
    storedBytes: manifest.stats.bytesAdded,
    state: 'complete',
    hasMemory: manifest.memory !== null,
    disks: manifest.disks.map((d) => ({ name: d.name, sizeBytes: d.size })),
    chunks,
  };
}

/**
 * The index as the catalog sees it: every indexed pack, a blob stored twice located in a copy that is
 * present. A point recorded as it is committed and the same point found by a rebuild use this same
 * view, so both name the same pack for each chunk.
 */
export async function catalogIndex(repo: Repository): Promise<ChunkIndex> {
  return repo.loadIndex({ present: await repo.listPacks() });
}

/** The catalog record of a point just committed (loads the index afresh: the point's packs are new). */
export async function committedPointRecord(repo: Repository, pointId: string, manifest: PointManifest, targetId: string): Promise<PointRecord> {
  return pointRecord(repo, pointId, manifest, await catalogIndex(repo), targetId);
}

/** Everything a catalog rebuild needs, read from the repository alone. */
export function repositoryRebuildSource(repo: Repository, target: TargetRecord): RebuildSource {
  let loaded: Promise<ChunkIndex> | null = null;
  const index = () => (loaded ??= catalogIndex(repo));
  return {
    target,
    async *listPoints() {
      const idx = await index();
      for (const p of await repo.listPoints()) yield await pointRecord(repo, p.id, p.manifest, idx, target.id);
    },
    async *listChunks() {
      const idx = await index();
      for (const id of idx.ids()) yield reference(idx, id, 'index');
    },
  };
}
