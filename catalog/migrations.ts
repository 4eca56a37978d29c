// Numbered schema migrations. Append-only: a released migration is never edited; a change to the
// schema is a new entry with the next number. Each migration runs in its own transaction together with
// its schema_migrations row, so a crash leaves the catalog at the previous version, never in between.

import type Database from 'better-sqlite3';

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/** `PRAGMA application_id` of every Lifeboat catalog: "LBCT". Tells our files from other SQLite files. */
export const CATALOG_APPLICATION_ID = 0x4c424354;

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
      record.run(m.version, m.name, now());
    }).immediate();
    ran++;
  }
  return ran;
}
