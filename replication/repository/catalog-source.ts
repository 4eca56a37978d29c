// The repository seen as the catalog sees it: a point's manifest and extent maps as a PointRecord, and
// the whole repository as a RebuildSource, so that the catalog can always be rebuilt from the target.

import type { RebuildSource } from '../../catalog/rebuild.js';
import type { ChunkReference, PointRecord, TargetRecord } from '../../catalog/records.js';
import type { ChunkIndex } from './chunk-index.js';
import { readCondemned } from './condemned.js';
import type { ExtentMap } from './extent-map.js';
import { MAP_EXTENT } from './layout.js';
import { MissingObjectError } from './errors.js';
import { imageMapKey, pointImages, type PointManifest } from './manifest.js';
import type { Repository } from './repository.js';

function reference(index: ChunkIndex, id: Buffer, context: string): ChunkReference {
  const loc = index.get(id);
  if (!loc) throw new MissingObjectError(`${context}: blob ${id.toString('hex').slice(0, 16)}... is in no pack`);
  return { id: id.toString('hex'), size: loc.rawLength, storedSize: loc.storedLength, pack: loc.packId };
}

/** The blob ids of cell c's extents with data, each once (a cell has at most a few extents). */
function cellIds(map: ExtentMap, c: number): Buffer[] {
  const ids: Buffer[] = [];
  for (let k = map.cellFirst[c]; k < map.cellFirst[c + 1]; k++) {
    if (map.isZero(k)) continue;
    const id = map.id(k);
    if (!ids.some((seen) => seen.equals(id))) ids.push(id);
  }
  return ids;
}

/** Map page and device-state ids of a manifest, as lowercase hex. */
function pageIds(manifest: PointManifest): string[] {
  const ids = pointImages(manifest).flatMap(({ image }) => image.pages.map((p) => Buffer.from(p, 'hex').toString('hex')));
  if (manifest.memory?.deviceState) ids.push(Buffer.from(manifest.memory.deviceState, 'hex').toString('hex'));
  return ids;
}

/**
 * Which chunks' use counts (as `pointRecord` lists them) differ between a parent and its child: only
 * the cells whose extents differ are looked at, and the map pages and device state. O(cells) in
 * memory, O(changed cells) in ids produced, which is what lets the catalog record an incremental in
 * proportion to what it changed.
 */
export function chunkDelta(parent: { manifest: PointManifest; maps: ExtentMap[] }, child: { manifest: PointManifest; maps: ExtentMap[] }): string[] {
  const net = new Map<string, number>();
  const count = (id: string, d: number) => net.set(id, (net.get(id) ?? 0) + d);
  const countCell = (map: ExtentMap, c: number, d: number) => {
    for (const id of cellIds(map, c)) count(id.toString('hex'), d);
  };
  const parentImages = new Map(pointImages(parent.manifest).map(({ label }, i) => [label, parent.maps[i]]));
  const matched = new Set<string>();
  for (const [i, { label }] of pointImages(child.manifest).entries()) {
    const map = child.maps[i];
    const before = parentImages.get(label);
    if (before && before.size === map.size && before.chunkSize === map.chunkSize) {
      matched.add(label);
      const R = MAP_EXTENT.size;
      for (let c = 0; c < map.cells; c++) {
        const same =
          map.records.compare(before.records, before.cellFirst[c] * R, before.cellFirst[c + 1] * R, map.cellFirst[c] * R, map.cellFirst[c + 1] * R) === 0;
        if (same) continue;
        countCell(before, c, -1);
        countCell(map, c, +1);
      }
    } else {
      for (let c = 0; c < map.cells; c++) countCell(map, c, +1);
    }
  }
  for (const [label, map] of parentImages) if (!matched.has(label)) for (let c = 0; c < map.cells; c++) countCell(map, c, -1);
  for (const id of pageIds(parent.manifest)) count(id, -1);
  for (const id of pageIds(child.manifest)) count(id, +1);
  return [...net].filter(([, d]) => d !== 0).map(([id]) => id);
}

/**
 * The catalog record of a committed point. Its chunks are every blob the point needs, listed once per
 * place that needs it: each blob with data in a chunk-grid cell (once per cell, however many extents of
 * the cell name it; cells in image order), then the map pages, then the device state. Extents of zeros
 * have no blob and are not listed. Counting per cell, not per extent, keeps a blob's count unchanged
 * when an incremental splices a run into the middle of its extent.
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
    for (let c = 0; c < map.cells; c++) for (const id of cellIds(map, c)) chunks.push(reference(index, id, context));
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
 * without it the index is loaded afresh. An incremental's record carries its delta against the parent
 * (from `known.parentMaps`, or the parent's maps read again), so that the catalog writes only what
 * changed; if the parent cannot be read the record goes without (the catalog then diffs it in full).
 */
export async function committedPointRecord(
  repo: Repository,
  pointId: string,
  manifest: PointManifest,
  targetId: string,
  known?: { maps: ExtentMap[]; index: ChunkIndex; parentMaps?: ReadonlyMap<string, ExtentMap> },
): Promise<PointRecord> {
  const index = known?.index ?? (await catalogIndex(repo));
  const record = await pointRecord(repo, pointId, manifest, index, targetId, known?.maps);
  if (manifest.parent) {
    const parentId = manifest.parent;
    try {
      const parent = await repo.readManifest(parentId);
      const parentMaps = await Promise.all(
        pointImages(parent).map(({ label, image }) => known?.parentMaps?.get(imageMapKey(image)) ?? repo.readExtentMap(image, index, `point ${parentId} ${label}`)),
      );
      const maps = known?.maps ?? (await Promise.all(pointImages(manifest).map(({ label, image }) => repo.readExtentMap(image, index, `point ${pointId} ${label}`))));
      record.delta = { baseId: parentId, changed: chunkDelta({ manifest: parent, maps: parentMaps }, { manifest, maps }) };
    } catch {
      // The parent is gone or unreadable: the catalog works the delta out from its own rows.
    }
  }
  return record;
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
