// The repository seen as the catalog sees it: a point's manifest and extent maps as a PointRecord, and
// the whole repository as a RebuildSource, so that the catalog can always be rebuilt from the target.

import type { RebuildSource } from '../../catalog/rebuild.js';
import type { ChunkReference, PointRecord, TargetRecord } from '../../catalog/records.js';
import type { ChunkIndex } from './chunk-index.js';
import { readCondemned } from './condemned.js';
import type { ExtentMap } from './extent-map.js';
import { MissingObjectError } from './errors.js';
import { pointImages, type PointManifest } from './manifest.js';
import type { Repository } from './repository.js';

function reference(index: ChunkIndex, id: Buffer, context: string): ChunkReference {
  const loc = index.get(id);
  if (!loc) throw new MissingObjectError(`${context}: blob ${id.toString('hex').slice(0, 16)}... is in no pack`);
  return { id: id.toString('hex'), size: loc.rawLength, storedSize: loc.storedLength, pack: loc.packId };
}

/**
 * The catalog record of a committed point. Its chunks are every blob the point needs: the blob of each
 * extent with data of each image (once per extent, in image order), then the map pages, then the device
 * state. Extents of zeros have no blob and are not listed.
 */
export async function pointRecord(
  repo: Repository,
  pointId: string,
  manifest: PointManifest,
  index: ChunkIndex,
  targetId: string,
  /** The images' extent maps, in pointImages order, when the caller has them (a backup just built them). */
  maps?: ExtentMap[],
): Promise<PointRecord> {
  const chunks: ChunkReference[] = [];
  for (const [i, { label, image }] of pointImages(manifest).entries()) {
    const context = `point ${pointId} ${label}`;
    const map = maps?.[i] ?? (await repo.readExtentMap(image, index, context));
    for (const { id } of map.dataExtents()) chunks.push(reference(index, id, context));
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
 * present and, if there is one, not condemned (the copy a backup uses: it never reuses condemned
 * packs). A point recorded as it is committed and the same point found by a rebuild use this view, so
 * both name the same pack for each chunk (unless another backup stored the same blob again meanwhile).
 */
export async function catalogIndex(repo: Repository): Promise<ChunkIndex> {
  const condemned = await readCondemned(repo.target);
  return repo.loadIndex({ present: await repo.listPacks(), avoid: new Set(condemned?.packs ?? []) });
}

/**
 * The catalog record of a point just committed. `known`: what the backup that wrote it already holds,
 * its extent maps and its index (which has the point's new packs), so that nothing is read again;
 * without it the index is loaded afresh.
 */
export async function committedPointRecord(
  repo: Repository,
  pointId: string,
  manifest: PointManifest,
  targetId: string,
  known?: { maps: ExtentMap[]; index: ChunkIndex },
): Promise<PointRecord> {
  return pointRecord(repo, pointId, manifest, known?.index ?? (await catalogIndex(repo)), targetId, known?.maps);
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
