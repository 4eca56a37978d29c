// The local index: one SQLite file (better-sqlite3, WAL) holding what this site knows about sites,
// targets, VMs, recovery points, chunks, jobs and events. Everything about recovery points and chunks
// is derived from the repositories on the targets and can be rebuilt (rebuild.ts); jobs and events are
// local history.

import Database from 'better-sqlite3';
import { existsSync, statSync } from 'node:fs';
import { CATALOG_APPLICATION_ID, LATEST_SCHEMA_VERSION, appliedVersion, applyMigrations } from './migrations.js';
import {
  CONSISTENCY_KINDS,
  POINT_STATES,
  TARGET_KINDS,
  type ChunkReference,
  type ChunkRow,
  type ChunkUseChange,
  type DiskRecord,
  type EventInput,
  type EventRow,
  type JobRow,
  type JobState,
  type PointChunkDelta,
  type PointChunkRow,
  type PointRecord,
  type PointRow,
  type PointState,
  type SiteRecord,
  type TargetRecord,
  type VmRecord,
} from './records.js';

/** Anything wrong with the catalog file or a request to it; the message is one line saying what to do. */
export class CatalogError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CatalogError';
  }
}

export interface OpenCatalogOptions {
  /** Clock for created_at / job / event times; tests may pin it. */
  now?: () => string;
}

export function openCatalog(path: string, options: OpenCatalogOptions = {}): Catalog {
  const now = options.now ?? (() => new Date().toISOString());
  if (existsSync(path) && statSync(path).isDirectory()) {
    throw new CatalogError(`catalog path ${path} is a directory; give the path of the catalog file (e.g. ${path}/catalog.sqlite)`);
  }
  let db: Database.Database;
  try {
    db = new Database(path);
  } catch (err) {
    throw new CatalogError(`cannot open catalog ${path}: ${(err as Error).message}`);
  }
  try {
    checkIsLifeboatCatalog(db, path);
    const mode = db.pragma('journal_mode = WAL', { simple: true });
    if (mode !== 'wal') throw new CatalogError(`catalog ${path}: cannot switch to WAL mode (got ${String(mode)}); is it on a filesystem without shared memory support?`);
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    db.pragma('synchronous = FULL');
    // Sorts and temporary B-trees (recording a point's chunk delta makes some) in memory, not in a file
    // created under /var/tmp for each: they are transient, and the catalog holds no secrets.
    db.pragma('temp_store = MEMORY');
    checkNotNewer(db, path);
    applyMigrations(db, now);
    return new Catalog(db, path, now);
  } catch (err) {
    db.close();
    throw err;
  }
}

function checkIsLifeboatCatalog(db: Database.Database, path: string): void {
  let appId: number;
  let tables: number;
  try {
    appId = db.pragma('application_id', { simple: true }) as number;
    tables = (db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table'").get() as { n: number }).n;
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT') {
      throw new CatalogError(`${path} is not a Lifeboat catalog (not an SQLite database); move it aside or choose another catalog path`);
    }
    throw new CatalogError(`cannot read catalog ${path}: ${(err as Error).message}`);
  }
  if (appId === CATALOG_APPLICATION_ID) return;
  if (appId === 0 && tables === 0) {
    db.pragma(`application_id = ${CATALOG_APPLICATION_ID}`);
    return;
  }
  throw new CatalogError(`${path} is an SQLite database but not a Lifeboat catalog; move it aside or choose another catalog path`);
}

function checkNotNewer(db: Database.Database, path: string): void {
  const hasTable = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").get();
  if (!hasTable) return;
  const version = appliedVersion(db);
  if (version > LATEST_SCHEMA_VERSION) {
    throw new CatalogError(
      `catalog ${path} was written by a newer Lifeboat (schema version ${version}, this Lifeboat knows up to ${LATEST_SCHEMA_VERSION}); upgrade Lifeboat, or rebuild a catalog for this version from the targets`,
    );
  }
}

// Row shapes as SQLite returns them (snake_case).
interface PointSqlRow {
  id: string;
  vm_id: string;
  target_id: string;
  parent_id: string | null;
  consistency: PointRow['consistency'];
  created_at: string;
  logical_bytes: number;
  stored_bytes: number;
  state: PointState;
  has_memory: 0 | 1;
}
interface ChunkSqlRow {
  target_id: string;
  id: string;
  size: number;
  stored_size: number;
  pack: string | null;
  refcount: number;
}
interface JobSqlRow {
  id: number;
  kind: string;
  vm_id: string | null;
  target_id: string | null;
  state: JobState;
  started_at: string;
  finished_at: string | null;
  progress_done: number;
  progress_total: number | null;
  error: string | null;
}
interface EventSqlRow {
  id: number;
  time: string;
  level: EventRow['level'];
  kind: string;
  message: string;
  details: string | null;
  vm_id: string | null;
  job_id: number | null;
}

const pointRow = (r: PointSqlRow): PointRow => ({
  id: r.id,
  vmId: r.vm_id,
  targetId: r.target_id,
  parentId: r.parent_id,
  consistency: r.consistency,
  createdAt: r.created_at,
  logicalBytes: r.logical_bytes,
  storedBytes: r.stored_bytes,
  state: r.state,
  hasMemory: r.has_memory === 1,
});
const chunkRow = (r: ChunkSqlRow): ChunkRow => ({
  targetId: r.target_id,
  id: r.id,
  size: r.size,
  storedSize: r.stored_size,
  pack: r.pack,
  refcount: r.refcount,
});
const jobRow = (r: JobSqlRow): JobRow => ({
  id: r.id,
  kind: r.kind,
  vmId: r.vm_id,
  targetId: r.target_id,
  state: r.state,
  startedAt: r.started_at,
  finishedAt: r.finished_at,
  progressDone: r.progress_done,
  progressTotal: r.progress_total,
  error: r.error,
});
const eventRow = (r: EventSqlRow): EventRow => ({
  id: r.id,
  time: r.time,
  level: r.level,
  kind: r.kind,
  message: r.message,
  details: r.details === null ? null : JSON.parse(r.details),
  vmId: r.vm_id,
  jobId: r.job_id,
});

export interface RecordPointResult {
  /** false when the same point was already recorded (nothing changed). */
  recorded: boolean;
}

export class Catalog {
  /** @internal rebuild.ts and tests use the connection directly; other callers use the methods. */
  constructor(
    readonly db: Database.Database,
    readonly path: string,
    private readonly now: () => string,
  ) {}

  close(): void {
    if (this.db.open) this.db.close();
  }

  schemaVersion(): number {
    return appliedVersion(this.db);
  }

  /** Runs `fn` in one IMMEDIATE transaction (nested calls become savepoints). */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  // ---- sites, targets, VMs, disks (configuration the agent registers) ----

  upsertSite(site: SiteRecord): void {
    this.db
      .prepare(`INSERT INTO sites (id, name, url, created_at) VALUES (?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET name = excluded.name, url = excluded.url`)
      .run(site.id, site.name, site.url, this.now());
  }

  listSites(): SiteRecord[] {
    return this.db.prepare('SELECT id, name, url FROM sites ORDER BY id').all() as SiteRecord[];
  }

  upsertTarget(target: TargetRecord): void {
    if (!(TARGET_KINDS as readonly string[]).includes(target.kind)) {
      throw new CatalogError(`target ${target.id}: unknown kind '${target.kind}' (expected one of ${TARGET_KINDS.join(', ')})`);
    }
    this.db
      .prepare(`INSERT INTO targets (id, kind, location, site_id, created_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, location = excluded.location, site_id = excluded.site_id`)
      .run(target.id, target.kind, target.location, target.siteId, this.now());
  }

  getTarget(id: string): TargetRecord | undefined {
    return this.db.prepare('SELECT id, kind, location, site_id AS siteId FROM targets WHERE id = ?').get(id) as TargetRecord | undefined;
  }

  listTargets(): TargetRecord[] {
    return this.db.prepare('SELECT id, kind, location, site_id AS siteId FROM targets ORDER BY id').all() as TargetRecord[];
  }

  upsertVm(vm: VmRecord): void {
    this.db
      .prepare(`INSERT INTO vms (id, name, site_id, created_at) VALUES (?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET name = excluded.name, site_id = excluded.site_id`)
      .run(vm.id, vm.name, vm.siteId, this.now());
  }

  getVm(id: string): VmRecord | undefined {
    return this.db.prepare('SELECT id, name, site_id AS siteId FROM vms WHERE id = ?').get(id) as VmRecord | undefined;
  }

  listVms(): VmRecord[] {
    return this.db.prepare('SELECT id, name, site_id AS siteId FROM vms ORDER BY id').all() as VmRecord[];
  }

  upsertDisk(disk: DiskRecord): void {
    if (!this.getVm(disk.vmId)) throw new CatalogError(`disk ${disk.name}: VM ${disk.vmId} is not in the catalog; add the VM first`);
    this.db
      .prepare(`INSERT INTO disks (vm_id, name, size_bytes) VALUES (?, ?, ?)
                ON CONFLICT (vm_id, name) DO UPDATE SET size_bytes = excluded.size_bytes`)
      .run(disk.vmId, disk.name, disk.sizeBytes);
  }

  listDisks(vmId: string): DiskRecord[] {
    return this.db
      .prepare('SELECT vm_id AS vmId, name, size_bytes AS sizeBytes FROM disks WHERE vm_id = ? ORDER BY name')
      .all(vmId) as DiskRecord[];
  }

  // ---- recovery points and chunks (derived from the repository) ----
  //
  // A chunk's use by the points of one lineage (a VM on a target) is stored as spans: "used N times by
  // the points numbered [from, to)". A point recorded after its lineage's newest point writes only the
  // chunks whose use count changed, so an incremental costs rows in proportion to what it changed, not
  // to the size of its disks. Per-point chunk lists and reference counts are queries (the views
  // point_chunks and chunk_refcounts) over the spans and the points that are still there.

  /**
   * Records a whole point in one transaction: the point row, its disks, and its chunks as changes to
   * its lineage's spans. Recording the same point again changes nothing; recording a different point
   * under an existing id is an error.
   */
  recordPoint(point: PointRecord): RecordPointResult {
    validatePoint(point);
    return this.transaction(() => {
      const existing = this.getPoint(point.id);
      if (existing) {
        if (!samePoint(existing, point)) {
          throw new CatalogError(`recovery point ${point.id} is already in the catalog with different contents; rebuild the catalog from target ${point.targetId}`);
        }
        return { recorded: false };
      }
      if (!this.getTarget(point.targetId)) {
        throw new CatalogError(`recovery point ${point.id}: target ${point.targetId} is not in the catalog; register the target first`);
      }
      const lineage = this.db
        .prepare('SELECT last_seq AS lastSeq, head_point AS head FROM lineages WHERE target_id = ? AND vm_id = ?')
        .get(point.targetId, point.vmId) as { lastSeq: number; head: string | null } | undefined;
      const seq = (lineage?.lastSeq ?? 0) + 1;
      this.db.prepare('INSERT OR IGNORE INTO vms (id, name, site_id, created_at) VALUES (?, ?, NULL, ?)').run(point.vmId, point.vmName ?? point.vmId, this.now());
      this.db
        .prepare(`INSERT INTO recovery_points (id, vm_id, target_id, parent_id, consistency, created_at, logical_bytes, stored_bytes, state, has_memory, seq)
                  VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
        .run(point.id, point.vmId, point.targetId, point.parentId, point.consistency, point.createdAt, point.logicalBytes, point.storedBytes, point.state, point.hasMemory ? 1 : 0, seq);
      const disk = this.db.prepare('INSERT INTO point_disks (point_id, name, size_bytes) VALUES (?, ?, ?)');
      for (const d of point.disks) disk.run(point.id, d.name, d.sizeBytes);

      let trusted = lineage && point.delta && lineage.head !== null && point.delta.baseId === lineage.head ? new Set(point.delta.changed) : null;
      // The point's count of each chunk (with a trusted delta, of the changed chunks only: from the
      // base's counts and the changes when it has them, else a lookup per reference).
      let uses = trusted && point.delta!.changes ? this.countsFromBase(point.targetId, point.vmId, trusted, point.delta!.changes) : null;
      // Counts that do not add up (a count below zero, a new chunk without its location) mean the delta
      // does not fit the lineage after all: the point is diffed in full.
      if (trusted && point.delta!.changes && !uses) trusted = null;
      if (!uses) {
        uses = new Map();
        const references = trusted ? point.delta!.references : undefined;
        for (const ref of references ?? point.chunks) {
          if (trusted && !trusted.has(ref.id)) continue;
          const seen = uses.get(ref.id);
          if (seen) seen.uses++;
          else uses.set(ref.id, { ref, uses: 1 });
        }
      }
      // The chunks whose count differs from the lineage's newest point (what its open spans hold).
      let changed: Iterable<string>;
      if (trusted) {
        changed = trusted;
      } else if (!lineage) {
        changed = uses.keys();
      } else {
        const open = this.db
          .prepare('SELECT chunk_id AS id, uses FROM chunk_spans WHERE target_id = ? AND vm_id = ? AND to_seq IS NULL')
          .all(point.targetId, point.vmId) as { id: string; uses: number }[];
        const differ: string[] = [];
        const before = new Set<string>();
        for (const r of open) {
          before.add(r.id);
          if (uses.get(r.id)?.uses !== r.uses) differ.push(r.id);
        }
        for (const id of uses.keys()) if (!before.has(id)) differ.push(id);
        changed = differ;
      }
      const close = this.db.prepare('UPDATE chunk_spans SET to_seq = ? WHERE target_id = ? AND vm_id = ? AND chunk_id = ? AND to_seq IS NULL');
      const insertChunk = this.db.prepare('INSERT OR IGNORE INTO chunks (target_id, id, size, stored_size, pack) VALUES (?, ?, ?, ?, ?)');
      const open = this.db.prepare('INSERT INTO chunk_spans (target_id, vm_id, chunk_id, from_seq, to_seq, uses) VALUES (?, ?, ?, ?, NULL, ?)');
      // In id order: the rows land in the B-trees (all keyed by chunk id) page after page, instead of
      // at random over a file much larger than SQLite's page cache.
      for (const id of [...changed].sort()) {
        if (lineage) close.run(seq, point.targetId, point.vmId, id);
        const now = uses.get(id);
        if (!now) continue;
        insertChunk.run(point.targetId, id, now.ref.size, now.ref.storedSize, now.ref.pack);
        open.run(point.targetId, point.vmId, id, seq, now.uses);
      }
      this.db
        .prepare(`INSERT INTO lineages (target_id, vm_id, last_seq, head_point) VALUES (?, ?, ?, ?)
                  ON CONFLICT (target_id, vm_id) DO UPDATE SET last_seq = excluded.last_seq, head_point = excluded.head_point`)
        .run(point.targetId, point.vmId, seq, point.id);
      return { recorded: true };
    });
  }

  /**
   * The counts of the changed chunks after a trusted delta's changes: the lineage's open spans (the
   * base point's counts) plus each change. Only chunks still used are in the map; null when the changes
   * do not fit the spans.
   */
  private countsFromBase(
    targetId: string,
    vmId: string,
    changed: Set<string>,
    changes: readonly ChunkUseChange[],
  ): Map<string, { ref: ChunkReference; uses: number }> | null {
    if (changes.length !== changed.size) return null;
    const openUses = this.db.prepare('SELECT uses FROM chunk_spans WHERE target_id = ? AND vm_id = ? AND chunk_id = ? AND to_seq IS NULL').pluck();
    const out = new Map<string, { ref: ChunkReference; uses: number }>();
    for (const c of changes) {
      if (!changed.has(c.id) || !Number.isInteger(c.change) || c.change === 0) return null;
      const now = ((openUses.get(targetId, vmId, c.id) as number | undefined) ?? 0) + c.change;
      if (now < 0 || (now > 0 && !c.location)) return null;
      if (now > 0) out.set(c.id, { ref: { id: c.id, ...c.location! }, uses: now });
    }
    return out;
  }

  getPoint(id: string): PointRow | undefined {
    const r = this.db.prepare('SELECT * FROM recovery_points WHERE id = ?').get(id) as PointSqlRow | undefined;
    return r && pointRow(r);
  }

  /** Points, oldest first. */
  listPoints(filter: { vmId?: string; targetId?: string } = {}): PointRow[] {
    const rows = this.db
      .prepare(`SELECT * FROM recovery_points
                WHERE (@vmId IS NULL OR vm_id = @vmId) AND (@targetId IS NULL OR target_id = @targetId)
                ORDER BY created_at, id`)
      .all({ vmId: filter.vmId ?? null, targetId: filter.targetId ?? null }) as PointSqlRow[];
    return rows.map(pointRow);
  }

  pointDisks(pointId: string): { name: string; sizeBytes: number }[] {
    return this.db.prepare('SELECT name, size_bytes AS sizeBytes FROM point_disks WHERE point_id = ? ORDER BY name').all(pointId) as {
      name: string;
      sizeBytes: number;
    }[];
  }

  pointChunks(pointId: string): PointChunkRow[] {
    return this.db
      .prepare('SELECT point_id AS pointId, chunk_id AS chunkId, uses FROM point_chunks WHERE point_id = ? ORDER BY chunk_id')
      .all(pointId) as PointChunkRow[];
  }

  setPointState(id: string, state: PointState): void {
    if (!(POINT_STATES as readonly string[]).includes(state)) throw new CatalogError(`unknown point state '${state}'`);
    const info = this.db.prepare('UPDATE recovery_points SET state = ? WHERE id = ?').run(state, id);
    if (info.changes === 0) throw new CatalogError(`recovery point ${id} is not in the catalog`);
  }

  /**
   * Removes a point (retention) in one transaction. Its spans stay: they count the points that are
   * still there, so its chunks' counts drop by one. Chunks no point uses any more stay listed until
   * `deleteUnreferencedChunks` (garbage collection) removes them. Returns how many chunks became
   * unreferenced. Forgetting an absent point returns 0.
   */
  forgetPoint(id: string): number {
    return this.transaction(() => {
      const point = this.getPoint(id);
      if (!point) return 0;
      const chunks = this.pointChunks(id).map((r) => r.chunkId);
      this.db.prepare('DELETE FROM recovery_points WHERE id = ?').run(id);
      const count = this.db.prepare('SELECT refcount FROM chunk_refcounts WHERE target_id = ? AND id = ?').pluck();
      return chunks.filter((chunk) => count.get(point.targetId, chunk) === 0).length;
    });
  }

  getChunk(targetId: string, chunkId: string): ChunkRow | undefined {
    const r = this.db.prepare('SELECT * FROM chunk_refcounts WHERE target_id = ? AND id = ?').get(targetId, chunkId) as ChunkSqlRow | undefined;
    return r && chunkRow(r);
  }

  listChunks(targetId: string): ChunkRow[] {
    return (this.db.prepare('SELECT * FROM chunk_refcounts WHERE target_id = ? ORDER BY id').all(targetId) as ChunkSqlRow[]).map(chunkRow);
  }

  /** Chunks no point references any more: what garbage collection may delete from the target. */
  unreferencedChunks(targetId: string): ChunkRow[] {
    // Stops at the first point found for each chunk, instead of counting them all as chunk_refcounts does.
    return (
      this.db
        .prepare(
          `SELECT c.*, 0 AS refcount FROM chunks c
           WHERE c.target_id = ? AND NOT EXISTS (
             SELECT 1 FROM chunk_spans s
             JOIN recovery_points p ON p.target_id = s.target_id AND p.vm_id = s.vm_id AND p.seq >= s.from_seq AND (s.to_seq IS NULL OR p.seq < s.to_seq)
             WHERE s.target_id = c.target_id AND s.chunk_id = c.id)
           ORDER BY c.id`,
        )
        .all(targetId) as ChunkSqlRow[]
    ).map(chunkRow);
  }

  /** Records a stored chunk that no point references yet (e.g. found in a pack index); no-op when known. */
  addChunk(targetId: string, chunk: ChunkReference): void {
    this.db
      .prepare('INSERT OR IGNORE INTO chunks (target_id, id, size, stored_size, pack) VALUES (?, ?, ?, ?, ?)')
      .run(targetId, chunk.id, chunk.size, chunk.storedSize, chunk.pack);
  }

  /**
   * Forgets chunks garbage collection removed from the target, with their spans (which only forgotten
   * points lie in). Refuses (and changes nothing) if any is still referenced.
   */
  deleteUnreferencedChunks(targetId: string, chunkIds: readonly string[]): number {
    return this.transaction(() => {
      const count = this.db.prepare('SELECT refcount FROM chunk_refcounts WHERE target_id = ? AND id = ?').pluck();
      // A lineage whose newest point lost a chunk here no longer matches that point: its next point is
      // diffed in full against the open spans instead of trusting a delta against that point.
      const unlink = this.db.prepare(
        `UPDATE lineages SET head_point = NULL WHERE target_id = @target AND vm_id IN
           (SELECT vm_id FROM chunk_spans WHERE target_id = @target AND chunk_id = @chunk AND to_seq IS NULL)`,
      );
      const spans = this.db.prepare('DELETE FROM chunk_spans WHERE target_id = ? AND chunk_id = ?');
      const del = this.db.prepare('DELETE FROM chunks WHERE target_id = ? AND id = ?');
      let deleted = 0;
      for (const id of chunkIds) {
        const refcount = count.get(targetId, id) as number | undefined;
        if (refcount === undefined) continue;
        if (refcount > 0) throw new CatalogError(`chunk ${id} on target ${targetId} is still referenced; garbage collection must not delete it`);
        unlink.run({ target: targetId, chunk: id });
        spans.run(targetId, id);
        deleted += del.run(targetId, id).changes;
      }
      return deleted;
    });
  }

  /** Moves chunks to another pack (repacking). */
  moveChunks(targetId: string, chunkIds: readonly string[], pack: string | null): void {
    this.transaction(() => {
      const move = this.db.prepare('UPDATE chunks SET pack = ? WHERE target_id = ? AND id = ?');
      for (const id of chunkIds) move.run(pack, targetId, id);
    });
  }

  // ---- jobs ----

  startJob(job: { kind: string; vmId?: string | null; targetId?: string | null; progressTotal?: number | null; state?: 'queued' | 'running' }): number {
    const info = this.db
      .prepare('INSERT INTO jobs (kind, vm_id, target_id, state, started_at, progress_total) VALUES (?, ?, ?, ?, ?, ?)')
      .run(job.kind, job.vmId ?? null, job.targetId ?? null, job.state ?? 'running', this.now(), job.progressTotal ?? null);
    return Number(info.lastInsertRowid);
  }

  updateJobProgress(id: number, done: number, total?: number | null): void {
    const info = this.db
      .prepare(`UPDATE jobs SET state = 'running', progress_done = ?, progress_total = coalesce(?, progress_total)
                WHERE id = ? AND state IN ('queued', 'running')`)
      .run(done, total ?? null, id);
    if (info.changes === 0) throw new CatalogError(`job ${id} is not queued or running`);
  }

  finishJob(id: number, outcome: { state: 'succeeded' } | { state: 'failed' | 'cancelled'; error: string }): void {
    const error = outcome.state === 'succeeded' ? null : outcome.error;
    const info = this.db
      .prepare(`UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ? AND state IN ('queued', 'running')`)
      .run(outcome.state, this.now(), error, id);
    if (info.changes === 0) throw new CatalogError(`job ${id} is not queued or running`);
  }

  getJob(id: number): JobRow | undefined {
    const r = this.db.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as JobSqlRow | undefined;
    return r && jobRow(r);
  }

  /** Newest first. */
  listJobs(filter: { state?: JobState; limit?: number } = {}): JobRow[] {
    const rows = this.db
      .prepare('SELECT * FROM jobs WHERE (@state IS NULL OR state = @state) ORDER BY id DESC LIMIT @limit')
      .all({ state: filter.state ?? null, limit: filter.limit ?? -1 }) as JobSqlRow[];
    return rows.map(jobRow);
  }

  // ---- events ----

  addEvent(event: EventInput): number {
    const details = event.details === undefined ? null : JSON.stringify(event.details);
    const info = this.db
      .prepare('INSERT INTO events (time, level, kind, message, details, vm_id, job_id) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(event.time ?? this.now(), event.level, event.kind, event.message, details, event.vmId ?? null, event.jobId ?? null);
    return Number(info.lastInsertRowid);
  }

  /** Oldest first; `since` is inclusive. */
  listEvents(filter: { since?: string; kind?: string; limit?: number } = {}): EventRow[] {
    const rows = this.db
      .prepare(`SELECT * FROM events WHERE (@since IS NULL OR time >= @since) AND (@kind IS NULL OR kind = @kind)
                ORDER BY time, id LIMIT @limit`)
      .all({ since: filter.since ?? null, kind: filter.kind ?? null, limit: filter.limit ?? -1 }) as EventSqlRow[];
    return rows.map(eventRow);
  }
}

function samePoint(row: PointRow, p: PointRecord): boolean {
  return (
    row.vmId === p.vmId &&
    row.targetId === p.targetId &&
    row.parentId === p.parentId &&
    row.consistency === p.consistency &&
    row.createdAt === p.createdAt &&
    row.logicalBytes === p.logicalBytes &&
    row.storedBytes === p.storedBytes &&
    row.hasMemory === p.hasMemory
  );
}

function validatePoint(p: PointRecord): void {
  const bad = (what: string) => new CatalogError(`recovery point ${p.id || '(no id)'}: ${what}`);
  if (!p.id) throw bad('empty id');
  if (!p.vmId) throw bad('empty VM id');
  if (!p.targetId) throw bad('empty target id');
  if (!(CONSISTENCY_KINDS as readonly string[]).includes(p.consistency)) {
    throw bad(`unknown consistency '${p.consistency}' (expected one of ${CONSISTENCY_KINDS.join(', ')})`);
  }
  if (typeof p.hasMemory !== 'boolean') throw bad('hasMemory must be true or false');
  if (!(POINT_STATES as readonly string[]).includes(p.state)) throw bad(`unknown state '${p.state}' (expected one of ${POINT_STATES.join(', ')})`);
  if (Number.isNaN(Date.parse(p.createdAt))) throw bad(`createdAt '${p.createdAt}' is not an ISO-8601 time`);
  for (const n of [p.logicalBytes, p.storedBytes]) if (!Number.isSafeInteger(n) || n < 0) throw bad(`size ${n} is not a non-negative integer`);
}
