// Numbered schema migrations. Append-only: a released migration is never edited; a change to the
// schema is a new entry with the next number. Each migration runs in its own transaction together with
// its schema_migrations row, so a crash leaves the catalog at the previous version, never in between.

import type Database from 'better-sqlite3';

export interface Migration {
  version: number;
  name: string;
  sql: string;
  /** Row conversions SQL alone cannot express; runs after `sql`, in the same transaction. */
  migrate?: (db: Database.Database) => void;
}

/** `PRAGMA application_id` of every Lifeboat catalog: "LBCT". Tells our files from other SQLite files. */
export const CATALOG_APPLICATION_ID = 0x4c424354;

/**
 * The per-point views of the spans (docs/catalog.md): \`point_chunks\` (which chunks each live point
 * uses, how often) and \`chunk_refcounts\` (every chunk with the number of live points using it).
 */
const SPAN_VIEWS = `
  CREATE VIEW point_chunks AS
    SELECT p.id AS point_id, s.target_id AS target_id, s.chunk_id AS chunk_id, s.uses AS uses
    FROM recovery_points p
    JOIN chunk_spans s ON s.target_id = p.target_id AND s.vm_id = p.vm_id AND s.from_seq <= p.seq AND (s.to_seq IS NULL OR s.to_seq > p.seq);
  CREATE VIEW chunk_refcounts AS
    SELECT c.target_id AS target_id, c.id AS id, c.size AS size, c.stored_size AS stored_size, c.pack AS pack,
      (SELECT count(*) FROM chunk_spans s
       JOIN recovery_points p ON p.target_id = s.target_id AND p.vm_id = s.vm_id AND p.seq >= s.from_seq AND (s.to_seq IS NULL OR p.seq < s.to_seq)
       WHERE s.target_id = c.target_id AND s.chunk_id = c.id) AS refcount
    FROM chunks c;
`;

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'initial schema: sites, targets, vms, disks, recovery points, chunks, jobs, events',
    sql: `
      CREATE TABLE sites (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        url        TEXT,
        created_at TEXT NOT NULL
      );
      CREATE TABLE targets (
        id         TEXT PRIMARY KEY,
        kind       TEXT NOT NULL CHECK (kind IN ('local', 's3', 'site')),
        location   TEXT NOT NULL,
        site_id    TEXT REFERENCES sites(id) ON DELETE SET NULL,
        created_at TEXT NOT NULL
      );
      CREATE TABLE vms (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        site_id    TEXT REFERENCES sites(id) ON DELETE SET NULL,
        created_at TEXT NOT NULL
      );
      CREATE TABLE disks (
        vm_id      TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        name       TEXT NOT NULL,
        size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0),
        PRIMARY KEY (vm_id, name)
      ) WITHOUT ROWID;

      -- Derived from the repository on a target (rebuildable): recovery_points, point_disks,
      -- chunks, point_chunks.
      CREATE TABLE recovery_points (
        id            TEXT PRIMARY KEY,
        vm_id         TEXT NOT NULL REFERENCES vms(id),
        target_id     TEXT NOT NULL REFERENCES targets(id),
        parent_id     TEXT,
        consistency   TEXT NOT NULL CHECK (consistency IN ('crash', 'paused', 'application', 'offline')),
        created_at    TEXT NOT NULL,
        logical_bytes INTEGER NOT NULL CHECK (logical_bytes >= 0),
        stored_bytes  INTEGER NOT NULL CHECK (stored_bytes >= 0),
        state         TEXT NOT NULL CHECK (state IN ('complete', 'deleting', 'damaged')),
        has_memory    INTEGER NOT NULL CHECK (has_memory IN (0, 1))
      );
      CREATE INDEX recovery_points_by_vm ON recovery_points(vm_id, created_at);
      CREATE INDEX recovery_points_by_target ON recovery_points(target_id);

      CREATE TABLE point_disks (
        point_id   TEXT NOT NULL REFERENCES recovery_points(id) ON DELETE CASCADE,
        name       TEXT NOT NULL,
        size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0),
        PRIMARY KEY (point_id, name)
      ) WITHOUT ROWID;

      CREATE TABLE chunks (
        target_id   TEXT NOT NULL REFERENCES targets(id) ON DELETE CASCADE,
        id          TEXT NOT NULL,
        size        INTEGER NOT NULL CHECK (size >= 0),
        stored_size INTEGER NOT NULL CHECK (stored_size >= 0),
        pack        TEXT,
        refcount    INTEGER NOT NULL DEFAULT 0 CHECK (refcount >= 0),
        PRIMARY KEY (target_id, id)
      ) WITHOUT ROWID;
      CREATE INDEX chunks_unreferenced ON chunks(target_id) WHERE refcount = 0;
      CREATE INDEX chunks_by_pack ON chunks(target_id, pack);

      CREATE TABLE point_chunks (
        point_id  TEXT NOT NULL REFERENCES recovery_points(id) ON DELETE CASCADE,
        target_id TEXT NOT NULL,
        chunk_id  TEXT NOT NULL,
        uses      INTEGER NOT NULL CHECK (uses >= 1),
        PRIMARY KEY (point_id, chunk_id),
        FOREIGN KEY (target_id, chunk_id) REFERENCES chunks(target_id, id)
      ) WITHOUT ROWID;
      CREATE INDEX point_chunks_by_chunk ON point_chunks(target_id, chunk_id);

      -- Local history (not in the repository, not rebuildable): jobs and events.
      CREATE TABLE jobs (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        kind           TEXT NOT NULL,
        vm_id          TEXT,
        target_id      TEXT,
        state          TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
        started_at     TEXT NOT NULL,
        finished_at    TEXT,
        progress_done  INTEGER NOT NULL DEFAULT 0,
        progress_total INTEGER,
        error          TEXT
      );
      CREATE INDEX jobs_by_state ON jobs(state, id);

      CREATE TABLE events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        time    TEXT NOT NULL,
        level   TEXT NOT NULL CHECK (level IN ('debug', 'info', 'warn', 'error')),
        kind    TEXT NOT NULL,
        message TEXT NOT NULL,
        details TEXT CHECK (details IS NULL OR json_valid(details)),
        vm_id   TEXT,
        job_id  INTEGER REFERENCES jobs(id) ON DELETE SET NULL
      );
      CREATE INDEX events_by_time ON events(time, id);
    `,
  },
  {
    version: 2,
    name: 'chunk spans along each lineage instead of a row per point and chunk; reference counts are computed',
    sql: `
      -- One lineage per (target, VM): its points are numbered 1, 2, ... in the order they are recorded.
      CREATE TABLE lineages (
        target_id  TEXT NOT NULL REFERENCES targets(id) ON DELETE CASCADE,
        vm_id      TEXT NOT NULL,
        last_seq   INTEGER NOT NULL CHECK (last_seq >= 1),
        -- The point recorded at last_seq (even if forgotten since); NULL when the open spans no longer
        -- hold its chunks (garbage collection removed one), so the next point is diffed in full.
        head_point TEXT,
        PRIMARY KEY (target_id, vm_id)
      ) WITHOUT ROWID;

      ALTER TABLE recovery_points ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;

      -- Chunk c is used 'uses' times by every point of lineage (target_id, vm_id) whose seq is in
      -- [from_seq, to_seq) (to_seq NULL: up to the lineage's newest point and beyond).
      CREATE TABLE chunk_spans (
        target_id TEXT NOT NULL,
        vm_id     TEXT NOT NULL,
        chunk_id  TEXT NOT NULL,
        from_seq  INTEGER NOT NULL CHECK (from_seq >= 1),
        to_seq    INTEGER CHECK (to_seq IS NULL OR to_seq > from_seq),
        uses      INTEGER NOT NULL CHECK (uses >= 1),
        PRIMARY KEY (target_id, chunk_id, vm_id, from_seq),
        FOREIGN KEY (target_id, chunk_id) REFERENCES chunks(target_id, id)
      ) WITHOUT ROWID;
      CREATE UNIQUE INDEX chunk_spans_open ON chunk_spans(target_id, vm_id, chunk_id) WHERE to_seq IS NULL;
      CREATE INDEX chunk_spans_by_lineage ON chunk_spans(target_id, vm_id, from_seq);
    `,
    migrate(db) {
      // Number each VM's points on each target in creation order and turn their point_chunks rows into
      // spans (uses kept as recorded), then replace the stored counts by computed ones.
      const points = db
        .prepare('SELECT id, target_id AS targetId, vm_id AS vmId FROM recovery_points ORDER BY target_id, vm_id, created_at, id')
        .all() as { id: string; targetId: string; vmId: string }[];
      const rowsOf = db.prepare('SELECT chunk_id AS chunkId, uses FROM point_chunks WHERE point_id = ?');
      const setSeq = db.prepare('UPDATE recovery_points SET seq = ? WHERE id = ?');
      const close = db.prepare('UPDATE chunk_spans SET to_seq = ? WHERE target_id = ? AND vm_id = ? AND chunk_id = ? AND to_seq IS NULL');
      const open = db.prepare('INSERT INTO chunk_spans (target_id, vm_id, chunk_id, from_seq, to_seq, uses) VALUES (?, ?, ?, ?, NULL, ?)');
      const lineage = db.prepare('INSERT INTO lineages (target_id, vm_id, last_seq, head_point) VALUES (?, ?, ?, ?)');
      let key = '';
      let seq = 0;
      let current = new Map<string, number>();
      const finish = (p: { targetId: string; vmId: string; id: string }) => lineage.run(p.targetId, p.vmId, seq, p.id);
      points.forEach((p, i) => {
        const k = JSON.stringify([p.targetId, p.vmId]);
        if (k !== key) {
          key = k;
          seq = 0;
          current = new Map();
        }
        seq++;
        setSeq.run(seq, p.id);
        const next = new Map((rowsOf.all(p.id) as { chunkId: string; uses: number }[]).map((r) => [r.chunkId, r.uses]));
        for (const [chunk, uses] of current) if (next.get(chunk) !== uses) close.run(seq, p.targetId, p.vmId, chunk);
        for (const [chunk, uses] of next) if (current.get(chunk) !== uses) open.run(p.targetId, p.vmId, chunk, seq, uses);
        current = next;
        const following = points[i + 1];
        if (!following || following.targetId !== p.targetId || following.vmId !== p.vmId) finish(p);
      });
      db.exec(`
        DROP TABLE point_chunks;
        DROP INDEX chunks_unreferenced;
        ALTER TABLE chunks DROP COLUMN refcount;
        CREATE INDEX recovery_points_by_lineage ON recovery_points(target_id, vm_id, seq);
        ${SPAN_VIEWS}
      `);
    },
  },
  {
    version: 3,
    name: 'no separate index of open chunk spans: the primary key finds a chunk\'s open span',
    // chunk_spans_open duplicated, for every span, a B-tree keyed by chunk id: recording a point wrote
    // each changed chunk's leaf page in it as well as in chunk_spans and chunks (ids are random, so a
    // page per chunk). The primary key (target_id, chunk_id, vm_id, from_seq) finds a chunk's open span
    // among its few spans, and the lineage's open spans are read through chunk_spans_by_lineage.
    sql: `DROP INDEX chunk_spans_open;`,
  },
];

export const LATEST_SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1].version;

/** Highest applied migration, 0 for a fresh file. Assumes schema_migrations exists. */
export function appliedVersion(db: Database.Database): number {
  const row = db.prepare('SELECT max(version) AS v FROM schema_migrations').get() as { v: number | null };
  return row.v ?? 0;
}

/** Applies every migration above the file's version, each in its own transaction. Returns how many ran. */
export function applyMigrations(db: Database.Database, now: () => string): number {
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
  )`);
  const current = appliedVersion(db);
  const record = db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)');
  let ran = 0;
  for (const m of MIGRATIONS) {
    if (m.version <= current) continue;
    db.transaction(() => {
      db.exec(m.sql);
      m.migrate?.(db);
      record.run(m.version, m.name, now());
    }).immediate();
    ran++;
  }
  return ran;
}
