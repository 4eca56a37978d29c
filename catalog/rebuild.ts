// Rebuilding the derived part of the catalog from a repository, and a canonical dump to compare two
// catalogs ("the catalog rebuilt from the target equals the original").

import { CatalogError, type Catalog } from './catalog.js';
import type { ChunkRecord, PointRecord, TargetRecord } from './records.js';

/**
 * What a repository offers a rebuild. The replication side adapts its manifests and pack indexes to
 * these plain records; the catalog knows nothing about the repository format.
 */
export interface RebuildSource {
  /** The target whose points are re-indexed; registered (or updated) in the catalog. */
  readonly target: TargetRecord;
  /** Every complete recovery point in the repository, in any order. */
  listPoints(): AsyncIterable<PointRecord>;
  /** Every stored chunk, referenced or not (pack indexes). Optional: without it only referenced chunks are known. */
  listChunks?(): AsyncIterable<ChunkRecord>;
}

export interface RebuildSummary {
  points: number;
  chunks: number;
}

/**
 * Clears the derived rows of `source.target` (its recovery points, their disks and chunk references,
 * its chunks) and recomputes them from the source, in one transaction: readers see either the old
 * index or the new one. Rows of other targets, and the local history (jobs, events), are untouched.
 * The source is read completely before the transaction starts, so a failing source changes nothing.
 */
export async function rebuildCatalog(catalog: Catalog, source: RebuildSource): Promise<RebuildSummary> {
  const targetId = source.target.id;
  const points: PointRecord[] = [];
  for await (const p of source.listPoints()) {
    if (p.targetId !== targetId) {
      throw new CatalogError(`rebuild of target ${targetId}: the source listed point ${p.id} of target ${p.targetId}`);
    }
    points.push(p);
  }
  const stored: ChunkRecord[] = [];
  if (source.listChunks) for await (const c of source.listChunks()) stored.push(c);
  // Recording in creation order makes the result independent of the order the source lists points.
  points.sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0));

  return catalog.transaction(() => {
    const db = catalog.db;
    db.prepare('DELETE FROM chunk_spans WHERE target_id = ?').run(targetId);
    db.prepare('DELETE FROM lineages WHERE target_id = ?').run(targetId);
    db.prepare('DELETE FROM recovery_points WHERE target_id = ?').run(targetId); // point_disks cascade
    db.prepare('DELETE FROM chunks WHERE target_id = ?').run(targetId);
    catalog.upsertTarget(source.target);
    for (const c of stored) catalog.addChunk(targetId, c);
    for (const p of points) catalog.recordPoint(p);
    const chunks = (db.prepare('SELECT count(*) AS n FROM chunks WHERE target_id = ?').get(targetId) as { n: number }).n;
    return { points: points.length, chunks };
  });
}

/**
 * The tables a rebuild recomputes: what must be equal between an original and a rebuilt catalog.
 * `point_chunks` and `chunks` (with its computed refcount) are compared as the views show them: the
 * spans underneath depend on which points were recorded before and since forgotten, the views do not.
 */
export const DERIVED_TABLES = ['recovery_points', 'point_disks', 'point_chunks', 'chunks'] as const;
/** Every table a dump can hold, with the columns that order its rows. */
const TABLE_ORDER: Record<string, string> = {
  sites: 'id',
  targets: 'id',
  vms: 'id',
  disks: 'vm_id, name',
  recovery_points: 'id',
  point_disks: 'point_id, name',
  point_chunks: 'point_id, chunk_id',
  chunks: 'target_id, id',
  chunk_spans: 'target_id, chunk_id, vm_id, from_seq',
  lineages: 'target_id, vm_id',
  jobs: 'id',
  events: 'id',
};
/** What a dump of a table reads: `chunks` with its computed reference count. */
const TABLE_SOURCE: Record<string, string> = { chunks: 'chunk_refcounts' };
/** Columns that record when a row was written locally, not what the repository says. */
const LOCAL_COLUMNS = new Set(['created_at']);
/** A point's number in its lineage depends on the points recorded before it, forgotten ones included. */
const RECORDING_COLUMNS = new Set(['seq']);

export interface CatalogDump {
  schemaVersion: number;
  tables: Record<string, Record<string, unknown>[]>;
}

/**
 * A canonical, JSON-ready dump: rows ordered by primary key, columns in alphabetical order. By default
 * only the derived tables; `tables` picks others. Local bookkeeping columns (created_at of sites,
 * targets and VMs, a point's number in its lineage) are left out so that dumps of two catalogs built at different times compare equal.
 */
export function dumpCatalog(catalog: Catalog, options: { tables?: readonly string[] } = {}): CatalogDump {
  const tables = options.tables ?? DERIVED_TABLES;
  const out: CatalogDump = { schemaVersion: catalog.schemaVersion(), tables: {} };
  for (const table of tables) {
    const order = TABLE_ORDER[table];
    if (!order) throw new CatalogError(`cannot dump unknown table '${table}' (known: ${Object.keys(TABLE_ORDER).join(', ')})`);
    const rows = catalog.db.prepare(`SELECT * FROM ${TABLE_SOURCE[table] ?? table} ORDER BY ${order}`).all() as Record<string, unknown>[];
    out.tables[table] = rows.map((row) => {
      const sorted: Record<string, unknown> = {};
      for (const col of Object.keys(row).sort()) {
        if (table !== 'recovery_points' && LOCAL_COLUMNS.has(col)) continue;
        if (table === 'recovery_points' && RECORDING_COLUMNS.has(col)) continue;
        sorted[col] = row[col];
      }
      return sorted;
    });
  }
  return out;
}

export interface CatalogDifference {
  table: string;
  /** The row as JSON in `a` (null when only `b` has it). */
  a: string | null;
  b: string | null;
}

/** Row-level differences between two catalogs' dumps (empty when they are equal). */
export function compareCatalogs(a: Catalog, b: Catalog, options: { tables?: readonly string[]; limit?: number } = {}): CatalogDifference[] {
  const da = dumpCatalog(a, options);
  const db = dumpCatalog(b, options);
  const limit = options.limit ?? 20;
  const diffs: CatalogDifference[] = [];
  for (const table of Object.keys(da.tables)) {
    const left = new Set(da.tables[table].map((r) => JSON.stringify(r)));
    const right = new Set(db.tables[table].map((r) => JSON.stringify(r)));
    for (const r of left) if (!right.has(r) && diffs.length < limit) diffs.push({ table, a: r, b: null });
    for (const r of right) if (!left.has(r) && diffs.length < limit) diffs.push({ table, a: null, b: r });
  }
  return diffs;
}
