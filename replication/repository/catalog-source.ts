// The repository seen as the catalog sees it: a point's manifest and extent maps as a PointRecord, and
// the whole repository as a RebuildSource, so that the catalog can always be rebuilt from the target.

import type { RebuildSource } from '../../catalog/rebuild.js';
import type { ChunkReference, PointChunkDelta, PointRecord, TargetRecord } from '../../catalog/records.js';
import type { ChunkIndex } from './chunk-index.js';
import { readCondemned } from './condemned.js';
import type { ExtentMap } from './extent-map.js';
import { CHUNK_ID_BYTES } from './constants.js';
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

/** `cellIds` as lowercase hex, into `out` (cleared first): no Buffer per extent. */
function cellHexIds(map: ExtentMap, c: number, out: string[]): string[] {
  out.length = 0;
  for (let k = map.cellFirst[c]; k < map.cellFirst[c + 1]; k++) {
    if (map.isZero(k)) continue;
    const at = map.idAt(k);
    const id = map.records.toString('hex', at, at + CHUNK_ID_BYTES);
    if (!out.includes(id)) out.push(id);
  }
  return out;
}

/** Whether cell c has the same extents in both maps (a loop in JS: most cells are one 40-byte record). */
function sameCell(a: ExtentMap, b: ExtentMap, c: number): boolean {
  const n = (a.cellFirst[c + 1] - a.cellFirst[c]) * MAP_EXTENT.size;
  if (n !== (b.cellFirst[c + 1] - b.cellFirst[c]) * MAP_EXTENT.size) return false;
  const ra = a.records;
  const rb = b.records;
  const pa = a.cellFirst[c] * MAP_EXTENT.size;
  const pb = b.cellFirst[c] * MAP_EXTENT.size;
  for (let i = 0; i < n; i++) if (ra[pa + i] !== rb[pb + i]) return false;
  return true;
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
  const ids: string[] = [];
  const countCell = (map: ExtentMap, c: number, d: number) => {
    for (const id of cellHexIds(map, c, ids)) count(id, d);
  };
  const parentImages = new Map(pointImages(parent.manifest).map(({ label }, i) => [label, parent.maps[i]]));
  const matched = new Set<string>();
  for (const [i, { label }] of pointImages(child.manifest).entries()) {
    const map = child.maps[i];
    const before = parentImages.get(label);
    if (before && before.size === map.size && before.chunkSize === map.chunkSize) {
      matched.add(label);
      for (let c = 0; c < map.cells; c++) {
        if (sameCell(map, before, c)) continue;
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
 * A committed point's chunks as the catalog counts them: every blob the point needs, listed once per
 * place that needs it: each blob with data in a chunk-grid cell (once per cell, however many extents of
 * the cell name it; cells in image order), then the map pages, then the device state. Extents of zeros
 * have no blob and are not listed. Counting per cell, not per extent, keeps a blob's count unchanged
 * when an incremental splices a run into the middle of its extent.
 */
function chunkReferences(pointId: string, manifest: PointManifest, maps: ExtentMap[], index: ChunkIndex): ChunkReference[] {
  const chunks: ChunkReference[] = [];
  for (const [i, { label, image }] of pointImages(manifest).entries()) {
    const context = `point ${pointId} ${label}`;
    const map = maps[i];
    for (let c = 0; c < map.cells; c++) for (const id of cellIds(map, c)) chunks.push(reference(index, id, context));
    for (const page of image.pages) chunks.push(reference(index, Buffer.from(page, 'hex'), context));
  }
  if (manifest.memory?.deviceState) chunks.push(reference(index, Buffer.from(manifest.memory.deviceState, 'hex'), `point ${pointId} memory`));
  return chunks;
}

/**
 * The references of `chunkReferences` to the chunks `ids` only (as many of each, in no particular
 * order). Every extent is still looked at, but an id is formatted only when its first three bytes are
 * those of one of `ids`: an incremental's delta names a few percent of a disk's blobs, and formatting
 * and looking up the others is most of what the full list costs.
 */
export function chunkReferencesTo(ids: readonly string[], pointId: string, manifest: PointManifest, maps: ExtentMap[], index: ChunkIndex): ChunkReference[] {
  // First three bytes of each id: small integers, so the test per extent stays cheap.
  const prefixes = new Set(ids.map((id) => Number.parseInt(id.slice(0, 6), 16)));
  // One reference object per chunk, pushed once per use (a changed blob can be used by many cells).
  const wanted = new Map<string, ChunkReference | null>(ids.map((id) => [id, null]));
  const refs: ChunkReference[] = [];
  const use = (id: string, bytes: Buffer, context: string): boolean => {
    const known = wanted.get(id);
    if (known === undefined) return false;
    refs.push(known ?? wanted.set(id, reference(index, bytes, context)).get(id)!);
    return true;
  };
  const inCell: string[] = [];
  for (const [i, { label, image }] of pointImages(manifest).entries()) {
    const context = `point ${pointId} ${label}`;
    const map = maps[i];
    const records = map.records;
    const cellFirst = map.cellFirst;
    let inCellCount = 0;
    for (let c = 0, cells = map.cells; c < cells; c++) {
      const end = cellFirst[c + 1];
      inCellCount = 0;
      for (let k = cellFirst[c]; k < end; k++) {
        const at = map.idAt(k);
        if (!prefixes.has((records[at] << 16) | (records[at + 1] << 8) | records[at + 2]) || map.isZero(k)) continue;
        const id = records.toString('hex', at, at + CHUNK_ID_BYTES);
        if (inCellCount > 0 && inCell.slice(0, inCellCount).includes(id)) continue;
        if (use(id, map.id(k), context)) inCell[inCellCount++] = id;
      }
    }
    for (const page of image.pages) {
      const id = Buffer.from(page, 'hex');
      use(id.toString('hex'), id, context);
    }
  }
  const state = manifest.memory?.deviceState;
  if (state) {
    const id = Buffer.from(state, 'hex');
    use(id.toString('hex'), id, `point ${pointId} memory`);
  }
  return refs;
}

/** A point's record around its chunk list (built only when first read, if `chunks` is a function). */
function recordOf(pointId: string, manifest: PointManifest, targetId: string, chunks: ChunkReference[] | (() => ChunkReference[])): PointRecord {
  let list = typeof chunks === 'function' ? undefined : chunks;
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
    get chunks() {
      return (list ??= (chunks as () => ChunkReference[])());
    },
  };
}

/** The catalog record of a committed point (its chunks: `chunkReferences`). */
export async function pointRecord(
  repo: Repository,
  pointId: string,
  manifest: PointManifest,
  index: ChunkIndex,
  targetId: string,
  /** The images' extent maps, in pointImages order, when the caller has them (a backup just built them). */
  maps?: ExtentMap[],
): Promise<PointRecord> {
  const all = maps ?? (await Promise.all(pointImages(manifest).map(({ label, image }) => repo.readExtentMap(image, index, `point ${pointId} ${label}`))));
  return recordOf(pointId, manifest, targetId, chunkReferences(pointId, manifest, all, index));
}

/**
 * The catalog record of a point just committed. `known`: what the backup that wrote it already holds,
 * its extent maps and its index (which has the point's new packs), so that nothing is read again;
 * without it the index is loaded afresh. An incremental's record carries its delta against the parent
 * (from `known.parentMaps`, or the parent's maps read again) with the point's references to the
 * changed chunks, so that the catalog writes only what changed; its full chunk list is then built only
 * if the catalog reads it (when it cannot use the delta). If the parent cannot be read the record goes
 * without a delta (the catalog then diffs the full list).
 */
export async function committedPointRecord(
  repo: Repository,
  pointId: string,
  manifest: PointManifest,
  targetId: string,
  known?: { maps: ExtentMap[]; index: ChunkIndex; parentMaps?: ReadonlyMap<string, ExtentMap> },
): Promise<PointRecord> {
  const index = known?.index ?? (await catalogIndex(repo));
  const maps = known?.maps ?? (await Promise.all(pointImages(manifest).map(({ label, image }) => repo.readExtentMap(image, index, `point ${pointId} ${label}`))));
  if (manifest.parent) {
    const parentId = manifest.parent;
    let changed: string[] | undefined;
    try {
      const parent = await repo.readManifest(parentId);
      const parentMaps = await Promise.all(
        pointImages(parent).map(({ label, image }) => known?.parentMaps?.get(imageMapKey(image)) ?? repo.readExtentMap(image, index, `point ${parentId} ${label}`)),
      );
      changed = chunkDelta({ manifest: parent, maps: parentMaps }, { manifest, maps });
    } catch {
      // The parent is gone or unreadable: the catalog works the delta out from its own rows.
    }
    if (changed) {
      const delta: PointChunkDelta = { baseId: parentId, changed, references: chunkReferencesTo(changed, pointId, manifest, maps, index) };
      const record = recordOf(pointId, manifest, targetId, () => chunkReferences(pointId, manifest, maps, index));
      record.delta = delta;
      return record;
    }
  }
  return recordOf(pointId, manifest, targetId, chunkReferences(pointId, manifest, maps, index));
}

/**
 * The index as the catalog sees it: every indexed pack, a blob stored twice located in a copy that is
 * present and, if there is one, not condemned (the copy a backup uses: it never reuses condemned
 * packs). A point recorded as it is committed and the same point found by a rebuild use this view, so
 * both name the same pack for each chunk (unless another backup stored the same blob again meanwhile).
 */
export async function catalogIndex(repo: Repository): Promise<ChunkIndex> {
  const condemned = await readCondemned(repo.target);
  return repo.loadIndex({ present: repo.listPacks(), avoid: new Set(condemned?.packs ?? []) });
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
