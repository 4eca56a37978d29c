// The repository seen as the catalog sees it: a point's manifest and extent maps as a PointRecord, and
// the whole repository as a RebuildSource, so that the catalog can always be rebuilt from the target.

import type { RebuildSource } from '../../catalog/rebuild.js';
import type { ChunkReference, ChunkUseChange, PointChunkDelta, PointRecord, TargetRecord } from '../../catalog/records.js';
import type { ChunkIndex } from './chunk-index.js';
import { readCondemned } from './condemned.js';
import { sameId, type ExtentMap } from './extent-map.js';
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

/**
 * Where in map.records the blob ids of cell c's extents with data start, each id once: into out[0,
 * count), the count returned (`out` is scratch reused from cell to cell, never shortened).
 */
function cellIdOffsets(map: ExtentMap, c: number, out: number[]): number {
  const records = map.records;
  let n = 0;
  for (let k = map.cellFirst[c], end = map.cellFirst[c + 1]; k < end; k++) {
    if (map.isZero(k)) continue;
    const at = map.idAt(k);
    if (!holdsId(out, n, records, records, at)) out[n++] = at;
  }
  return n;
}

/** Whether one of the ids at offsets list[0, n) of `listRecords` is the id at `at` of `records` (a loop: no closure per test). */
function holdsId(list: readonly number[], n: number, listRecords: Buffer, records: Buffer, at: number): boolean {
  for (let i = 0; i < n; i++) if (sameId(listRecords, list[i], records, at)) return true;
  return false;
}

/** The blob id at `at` in map.records, as lowercase hex. */
function hexIdAt(map: ExtentMap, at: number): string {
  return map.records.toString('hex', at, at + CHUNK_ID_BYTES);
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
  return [...chunkUseChanges(parent, child)].map(([id]) => id);
}

/**
 * The net change of each chunk's use count from `parent` to `child` (only chunks whose count changed).
 * `child.changedCells[i]`, when given, lists the only cells of child image i that may differ from the
 * parent image whose `imageMapKey` it names (a backup knows which cells it copied from its parent):
 * only those are compared.
 */
export function chunkUseChanges(
  parent: { manifest: PointManifest; maps: ExtentMap[] },
  child: { manifest: PointManifest; maps: ExtentMap[]; changedCells?: ({ parentKey: string; cells: Uint32Array } | null)[] },
): Map<string, number> {
  const net = new Map<string, number>();
  const count = (id: string, d: number) => net.set(id, (net.get(id) ?? 0) + d);
  const idsAt: number[] = [];
  const countCell = (map: ExtentMap, c: number, d: number) => {
    const n = cellIdOffsets(map, c, idsAt);
    for (let i = 0; i < n; i++) count(hexIdAt(map, idsAt[i]), d);
  };
  const wasAt: number[] = [];
  const nowAt: number[] = [];
  const parentImages = new Map(pointImages(parent.manifest).map(({ label, image }, i) => [label, { map: parent.maps[i], key: imageMapKey(image) }]));
  const matched = new Set<string>();
  for (const [i, { label }] of pointImages(child.manifest).entries()) {
    const map = child.maps[i];
    const { map: before, key } = parentImages.get(label) ?? { map: undefined, key: '' };
    if (before && before.size === map.size && before.chunkSize === map.chunkSize) {
      matched.add(label);
      const hint = child.changedCells?.[i];
      const cells = hint && hint.parentKey === key ? hint.cells : null;
      const compare = (c: number) => {
        if (sameCell(map, before, c)) return;
        // Only the blobs named in one cell and not the other change count (a spliced cell keeps its
        // parent's blob beside the new one): compared as bytes, formatted only when they differ.
        const was = cellIdOffsets(before, c, wasAt);
        const now = cellIdOffsets(map, c, nowAt);
        for (let i = 0; i < was; i++) if (!holdsId(nowAt, now, map.records, before.records, wasAt[i])) count(hexIdAt(before, wasAt[i]), -1);
        for (let i = 0; i < now; i++) if (!holdsId(wasAt, was, before.records, map.records, nowAt[i])) count(hexIdAt(map, nowAt[i]), +1);
      };
      if (cells) for (let j = 0; j < cells.length; j++) compare(cells[j]);
      else for (let c = 0; c < map.cells; c++) compare(c);
    } else {
      for (let c = 0; c < map.cells; c++) countCell(map, c, +1);
    }
  }
  for (const [label, { map }] of parentImages) if (!matched.has(label)) for (let c = 0; c < map.cells; c++) countCell(map, c, -1);
  for (const id of pageIds(parent.manifest)) count(id, -1);
  for (const id of pageIds(child.manifest)) count(id, +1);
  for (const [id, d] of net) if (d === 0) net.delete(id);
  return net;
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
  const idsAt: number[] = [];
  for (const [i, { label, image }] of pointImages(manifest).entries()) {
    const context = `point ${pointId} ${label}`;
    const map = maps[i];
    for (let c = 0; c < map.cells; c++) {
      const n = cellIdOffsets(map, c, idsAt);
      for (let j = 0; j < n; j++) chunks.push(reference(index, map.records.subarray(idsAt[j], idsAt[j] + CHUNK_ID_BYTES), context));
    }
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
  known?: {
    maps: ExtentMap[];
    index: ChunkIndex;
    parentMaps?: ReadonlyMap<string, ExtentMap>;
    /** The parent's manifest, when the backup read it (else it is read again). */
    parentManifest?: PointManifest | null;
    /** BackupResult.changedCells: which cells of each image the backup did not copy from the parent. */
    changedCells?: ({ parentKey: string; cells: Uint32Array } | null)[];
  },
): Promise<PointRecord> {
  const index = known?.index ?? (await catalogIndex(repo));
  const maps = known?.maps ?? (await Promise.all(pointImages(manifest).map(({ label, image }) => repo.readExtentMap(image, index, `point ${pointId} ${label}`))));
  if (manifest.parent) {
    const parentId = manifest.parent;
    let net: Map<string, number> | undefined;
    try {
      const parent = known?.parentManifest ?? (await repo.readManifest(parentId));
      const parentMaps = await Promise.all(
        pointImages(parent).map(({ label, image }) => known?.parentMaps?.get(imageMapKey(image)) ?? repo.readExtentMap(image, index, `point ${parentId} ${label}`)),
      );
      net = chunkUseChanges({ manifest: parent, maps: parentMaps }, { manifest, maps, changedCells: known?.changedCells });
    } catch {
      // The parent is gone or unreadable: the catalog works the delta out from its own rows.
    }
    if (net) {
      const changed = [...net.keys()];
      const changes: ChunkUseChange[] = [];
      for (const [id, change] of net) {
        const loc = index.get(Buffer.from(id, 'hex'));
        // A chunk whose count grew is one the point uses: the index holds it (reference() says so if not).
        if (change > 0 && !loc) reference(index, Buffer.from(id, 'hex'), `point ${pointId}`);
        changes.push(loc ? { id, change, location: { size: loc.rawLength, storedSize: loc.storedLength, pack: loc.packId } } : { id, change });
      }
      const delta: PointChunkDelta = { baseId: parentId, changed, changes };
      // The references to the changed chunks, for a catalog that trusts the delta but not its counts.
      let references: ChunkReference[] | undefined;
      Object.defineProperty(delta, 'references', {
        enumerable: true,
        get: () => (references ??= chunkReferencesTo(changed, pointId, manifest, maps, index)),
      });
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
