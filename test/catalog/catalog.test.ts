import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import {
  CATALOG_APPLICATION_ID,
  LATEST_SCHEMA_VERSION,
  MIGRATIONS,
  compareCatalogs,
  dumpCatalog,
  openCatalog,
  rebuildCatalog,
  type Catalog,
  type ChunkReference,
  type PointRecord,
  type RebuildSource,
} from '../../catalog/index.js';

const TARGET = { id: 'local-1', kind: 'local' as const, location: '/srv/lifeboat/repo', siteId: null };

function chunk(n: number, pack = `pack-${Math.floor(n / 4)}`): ChunkReference {
  return { id: `c${String(n).padStart(4, '0')}`, size: 65536, storedSize: 40000 + n, pack };
}

function point(id: string, createdAt: string, chunkNumbers: number[], parentId: string | null = null): PointRecord {
  return {
    id,
    vmId: 'vm-web',
    targetId: TARGET.id,
    parentId,
    consistency: 'paused',
    createdAt,
    logicalBytes: chunkNumbers.length * 65536,
    storedBytes: 1000,
    state: 'complete',
    hasMemory: false,
    vmName: 'web server',
    disks: [{ name: 'root', sizeBytes: chunkNumbers.length * 65536 }],
    chunks: chunkNumbers.map((n) => chunk(n)),
  };
}

/** The point with the delta a backup passes: the chunks whose use count differs from its parent's. */
function withDelta(p: PointRecord, parent: PointRecord): PointRecord {
  const count = (r: PointRecord) => {
    const m = new Map<string, number>();
    for (const c of r.chunks) m.set(c.id, (m.get(c.id) ?? 0) + 1);
    return m;
  };
  const a = count(parent);
  const b = count(p);
  const changed = [...new Set([...a.keys(), ...b.keys()])].filter((id) => a.get(id) !== b.get(id));
  return { ...p, parentId: parent.id, delta: { baseId: parent.id, changed } };
}

/**
 * withDelta with the count of each changed chunk's change, as `lifeboat backup` passes it; the point's
 * chunk list is left out (reading it throws) unless `keepChunks`.
 */
function withChanges(p: PointRecord, parent: PointRecord, keepChunks = false): PointRecord {
  const d = withDelta(p, parent);
  const count = (r: PointRecord, id: string) => r.chunks.filter((c) => c.id === id).length;
  const changes = d.delta!.changed.map((id) => {
    const ref = p.chunks.find((c) => c.id === id);
    return { id, change: count(p, id) - count(parent, id), ...(ref ? { location: { size: ref.size, storedSize: ref.storedSize, pack: ref.pack } } : {}) };
  });
  const out: PointRecord = { ...d, delta: { ...d.delta!, changes } };
  if (!keepChunks) {
    Object.defineProperty(out, 'chunks', {
      get() {
        throw new Error('the chunk list was read');
      },
    });
  }
  return out;
}

function sourceOf(points: PointRecord[], chunks?: ChunkReference[]): RebuildSource {
  return {
    target: TARGET,
    async *listPoints() {
      // Deliberately not in creation order: a repository lists manifests in any order.
      for (const p of [...points].reverse()) yield p;
    },
    ...(chunks && {
      async *listChunks() {
        yield* chunks;
      },
    }),
  };
}

describe('catalog', () => {
  let dir: string;
  const open: Catalog[] = [];
  const openHere = (name = 'catalog.db'): Catalog => {
    const c = openCatalog(join(dir, name));
    open.push(c);
    return c;
  };

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'lifeboat-catalog-'));
  });
  afterEach(() => {
    for (const c of open.splice(0)) c.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a fresh file is migrated to the latest schema, in WAL mode with foreign keys on', () => {
    const c = openHere();
    assert.equal(c.schemaVersion(), LATEST_SCHEMA_VERSION);
    assert.equal(c.db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(c.db.pragma('foreign_keys', { simple: true }), 1);
    const applied = c.db.prepare('SELECT version FROM schema_migrations ORDER BY version').all() as { version: number }[];
    assert.deepEqual(applied.map((r) => r.version), Array.from({ length: LATEST_SCHEMA_VERSION }, (_, i) => i + 1));
  });

  it('reopening an existing catalog keeps its data and runs no migration twice', () => {
    const c = openHere();
    c.upsertTarget(TARGET);
    c.recordPoint(point('p1', '2025-01-01T00:00:00.000Z', [1, 2, 3]));
    c.close();
    const again = openHere();
    assert.equal((again.db.prepare('SELECT count(*) AS n FROM schema_migrations').get() as { n: number }).n, LATEST_SCHEMA_VERSION);
    assert.deepEqual(again.listPoints().map((p) => p.id), ['p1']);
    assert.equal(again.getVm('vm-web')?.name, 'web server', 'the first point of a VM registers it under its name');
  });

  it('recording the same point twice changes nothing, and counts each chunk once per point', () => {
    const c = openHere();
    c.upsertTarget(TARGET);
    const p = point('p1', '2025-01-01T00:00:00.000Z', [1, 2, 2, 2, 3]);
    assert.deepEqual(c.recordPoint(p), { recorded: true });
    const before = dumpCatalog(c);
    assert.deepEqual(c.recordPoint(p), { recorded: false });
    assert.deepEqual(dumpCatalog(c), before);
    assert.equal(c.getChunk(TARGET.id, 'c0002')?.refcount, 1);
    assert.deepEqual(
      c.pointChunks('p1').map((r) => [r.chunkId, r.uses]),
      [['c0001', 1], ['c0002', 3], ['c0003', 1]],
    );
    assert.throws(() => c.recordPoint({ ...p, storedBytes: 5 }), /already in the catalog with different contents/);
  });

  it('reference counts follow points being recorded and forgotten; garbage collection sees exactly the orphans', () => {
    const c = openHere();
    c.upsertTarget(TARGET);
    c.recordPoint(point('p1', '2025-01-01T00:00:00.000Z', [1, 2, 3]));
    c.recordPoint(point('p2', '2025-01-02T00:00:00.000Z', [2, 3, 4], 'p1'));
    c.recordPoint(point('p3', '2025-01-03T00:00:00.000Z', [3, 4, 5], 'p2'));
    const counts = () => Object.fromEntries(c.listChunks(TARGET.id).map((ch) => [ch.id, ch.refcount]));
    assert.deepEqual(counts(), { c0001: 1, c0002: 2, c0003: 3, c0004: 2, c0005: 1 });

    assert.equal(c.forgetPoint('p1'), 1);
    assert.deepEqual(counts(), { c0001: 0, c0002: 1, c0003: 2, c0004: 2, c0005: 1 });
    assert.deepEqual(c.unreferencedChunks(TARGET.id).map((ch) => ch.id), ['c0001']);
    assert.throws(() => c.deleteUnreferencedChunks(TARGET.id, ['c0001', 'c0002']), /still referenced/);
    assert.equal(c.getChunk(TARGET.id, 'c0001')?.refcount, 0, 'a refused deletion changes nothing');
    assert.equal(c.deleteUnreferencedChunks(TARGET.id, ['c0001']), 1);
    assert.equal(c.forgetPoint('p1'), 0, 'forgetting an absent point is a no-op');
    assert.equal(c.getPoint('p2')?.parentId, 'p1', 'the parent is lineage, not a foreign key');
  });

  it('an incremental point writes rows only for the chunks it changed, and every point still lists all its chunks', () => {
    const c = openHere();
    c.upsertTarget(TARGET);
    const cells = Array.from({ length: 2000 }, (_, i) => i);
    const p1 = point('p1', '2025-01-01T00:00:00.000Z', cells);
    c.recordPoint(p1);
    const spans = () => (c.db.prepare('SELECT count(*) FROM chunk_spans').pluck().get() as number);
    const before = spans();
    const changedCells = cells.map((n, i) => (i % 100 === 7 ? 5000 + i : n)); // 1% of the cells rewritten
    const p2 = withDelta(point('p2', '2025-01-02T00:00:00.000Z', changedCells), p1);
    c.recordPoint(p2);
    assert.equal(spans() - before, 20, 'one new span per chunk the incremental added; the dropped ones are closed');
    assert.equal(c.pointChunks('p1').length, 2000);
    assert.deepEqual(c.pointChunks('p2').map((r) => r.chunkId), [...new Set(changedCells)].map((n) => chunk(n).id).sort());
    assert.equal(c.getChunk(TARGET.id, chunk(7).id)?.refcount, 1, 'a chunk the incremental dropped is still used by the full point');
    assert.equal(c.getChunk(TARGET.id, chunk(8).id)?.refcount, 2);
    assert.equal(c.getChunk(TARGET.id, chunk(5007).id)?.refcount, 1);
  });

  it('an incremental that says by how much each changed chunk\'s count changed is recorded without its chunk list', async () => {
    const c = openHere();
    c.upsertTarget(TARGET);
    const p1 = point('p1', '2025-01-01T00:00:00.000Z', [1, 2, 3, 4, 4, 5]);
    // Chunk 4 used once instead of twice, 5 dropped, 6 new and used twice.
    const p2 = point('p2', '2025-01-02T00:00:00.000Z', [1, 2, 3, 4, 6, 6], 'p1');
    c.recordPoint(p1);
    c.recordPoint(withChanges(p2, p1));
    const uses = (id: string) => c.pointChunks(id).map((r) => `${r.chunkId}x${r.uses}`);
    assert.deepEqual(uses('p2'), ['c0001x1', 'c0002x1', 'c0003x1', 'c0004x1', 'c0006x2']);
    assert.deepEqual(uses('p1'), ['c0001x1', 'c0002x1', 'c0003x1', 'c0004x2', 'c0005x1']);
    assert.equal(c.getChunk(TARGET.id, chunk(6).id)?.storedSize, chunk(6).storedSize, 'a new chunk is recorded with its location');
    const rebuilt = openHere('rebuilt.db');
    await rebuildCatalog(rebuilt, sourceOf([p1, p2]));
    assert.deepEqual(compareCatalogs(c, rebuilt), []);
  });

  it('count changes that do not fit the lineage (a count below zero) make the catalog diff the point in full', async () => {
    const c = openHere();
    c.upsertTarget(TARGET);
    const p1 = point('p1', '2025-01-01T00:00:00.000Z', [1, 2, 3]);
    const p2 = point('p2', '2025-01-02T00:00:00.000Z', [1, 2, 7], 'p1');
    c.recordPoint(p1);
    const wrong = withChanges(p2, p1, true);
    wrong.delta!.changes = wrong.delta!.changes!.map((ch) => (ch.id === chunk(3).id ? { ...ch, change: -2 } : ch));
    c.recordPoint(wrong);
    assert.deepEqual(c.pointChunks('p2').map((r) => r.chunkId), ['c0001', 'c0002', 'c0007']);
    const rebuilt = openHere('rebuilt.db');
    await rebuildCatalog(rebuilt, sourceOf([p1, p2]));
    assert.deepEqual(compareCatalogs(c, rebuilt), []);
  });

  it('a delta against a point that is not the newest of its lineage is not trusted: the point is diffed in full', async () => {
    const c = openHere();
    c.upsertTarget(TARGET);
    const p1 = point('p1', '2025-01-01T00:00:00.000Z', [1, 2, 3, 4]);
    const p2 = point('p2', '2025-01-02T00:00:00.000Z', [10, 11, 12]); // a full backup in between
    const p3 = withDelta(point('p3', '2025-01-03T00:00:00.000Z', [1, 2, 3, 5]), p1); // incremental against p1
    for (const p of [p1, p2, p3]) c.recordPoint(p);
    assert.deepEqual(c.pointChunks('p3').map((r) => r.chunkId), ['c0001', 'c0002', 'c0003', 'c0005']);
    assert.deepEqual(c.pointChunks('p2').map((r) => r.chunkId), ['c0010', 'c0011', 'c0012']);

    // Garbage collection removing a chunk of the newest point (forgotten) makes the next delta untrusted too.
    c.forgetPoint('p3');
    c.deleteUnreferencedChunks(TARGET.id, c.unreferencedChunks(TARGET.id).map((ch) => ch.id));
    const p4 = withDelta(point('p4', '2025-01-04T00:00:00.000Z', [1, 2, 3, 6]), p3);
    c.recordPoint(p4);
    assert.deepEqual(c.pointChunks('p4').map((r) => r.chunkId), ['c0001', 'c0002', 'c0003', 'c0006']);

    const rebuilt = openHere('rebuilt.db');
    await rebuildCatalog(rebuilt, sourceOf([p1, p2, p4]));
    assert.deepEqual(compareCatalogs(c, rebuilt), []);
  });

  it('a catalog of schema version 1 is migrated: its points, chunk lists and reference counts are kept', () => {
    const path = join(dir, 'v1.db');
    const v1 = new Database(path);
    v1.pragma(`application_id = ${CATALOG_APPLICATION_ID}`);
    v1.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)');
    v1.exec(MIGRATIONS[0].sql);
    v1.prepare("INSERT INTO schema_migrations VALUES (1, 'initial', '2025-01-01T00:00:00.000Z')").run();
    v1.prepare("INSERT INTO targets VALUES (?, 'local', ?, NULL, '2025-01-01T00:00:00.000Z')").run(TARGET.id, TARGET.location);
    v1.prepare("INSERT INTO vms VALUES ('vm-web', 'web server', NULL, '2025-01-01T00:00:00.000Z')").run();
    const v1Points: [string, string, Record<number, number>][] = [
      ['p1', '2025-01-01T00:00:00.000Z', { 1: 1, 2: 3, 3: 1 }],
      ['p2', '2025-01-02T00:00:00.000Z', { 2: 3, 3: 2, 4: 1 }],
      ['p3', '2025-01-03T00:00:00.000Z', { 1: 1, 4: 1 }],
    ];
    const refcounts = new Map<number, number>([[9, 0]]);
    for (const [id, at, uses] of v1Points) {
      v1.prepare("INSERT INTO recovery_points VALUES (?, 'vm-web', ?, NULL, 'crash', ?, 1, 1, 'complete', 0)").run(id, TARGET.id, at);
      for (const n of Object.keys(uses).map(Number)) refcounts.set(n, (refcounts.get(n) ?? 0) + 1);
    }
    for (const [n, refcount] of refcounts) {
      const ch = chunk(n);
      v1.prepare('INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?)').run(TARGET.id, ch.id, ch.size, ch.storedSize, ch.pack, refcount);
    }
    for (const [id, , uses] of v1Points) {
      for (const [n, u] of Object.entries(uses)) v1.prepare('INSERT INTO point_chunks VALUES (?, ?, ?, ?)').run(id, TARGET.id, chunk(Number(n)).id, u);
    }
    v1.close();

    const c = openCatalog(path);
    open.push(c);
    assert.equal(c.schemaVersion(), LATEST_SCHEMA_VERSION);
    assert.deepEqual(c.listPoints().map((p) => p.id), ['p1', 'p2', 'p3']);
    for (const [id, , uses] of v1Points) {
      assert.deepEqual(
        c.pointChunks(id).map((r) => [r.chunkId, r.uses]),
        Object.entries(uses).map(([n, u]) => [chunk(Number(n)).id, u]),
        `chunks of ${id}`,
      );
    }
    assert.deepEqual(
      c.listChunks(TARGET.id).map((ch) => [ch.id, ch.refcount, ch.pack]),
      [...refcounts].sort((a, b) => a[0] - b[0]).map(([n, r]) => [chunk(n).id, r, chunk(n).pack]),
    );
    // And it goes on from there: an incremental of p3 is recorded as a delta on the migrated spans.
    c.recordPoint(withDelta(point('p4', '2025-01-04T00:00:00.000Z', [1, 4, 5]), point('p3', '2025-01-03T00:00:00.000Z', [1, 4])));
    assert.deepEqual(c.pointChunks('p4').map((r) => r.chunkId), ['c0001', 'c0004', 'c0005']);
    assert.equal(c.forgetPoint('p1'), 0);
    assert.equal(c.forgetPoint('p2'), 2, 'chunks 2 and 3 are used by no point left');
  });

  it('a point is recorded whole or not at all', () => {
    const c = openHere();
    c.upsertTarget(TARGET);
    const broken = point('p1', '2025-01-01T00:00:00.000Z', [1, 2]);
    broken.disks = [{ name: 'root', sizeBytes: 1 }, { name: 'root', sizeBytes: 2 }]; // duplicate disk: fails mid-way
    assert.throws(() => c.recordPoint(broken));
    assert.equal(c.listPoints().length, 0);
    assert.equal(c.listChunks(TARGET.id).length, 0);
    assert.throws(() => c.recordPoint({ ...point('p2', '2025-01-01T00:00:00.000Z', [1]), targetId: 'nowhere' }), /target nowhere is not in the catalog/);
  });

  it('a catalog rebuilt from the repository equals the one kept up to date incrementally', async () => {
    const original = openHere('original.db');
    original.upsertTarget(TARGET);
    const points = [
      point('p1', '2025-01-01T00:00:00.000Z', [1, 2, 3, 4]),
      point('p2', '2025-01-02T00:00:00.000Z', [1, 2, 5, 5], 'p1'),
      point('p3', '2025-01-03T00:00:00.000Z', [6, 2, 5, 7], 'p2'),
      point('p4', '2025-01-04T00:00:00.000Z', [8, 9, 5, 7], 'p3'),
    ];
    points.forEach((p, i) => original.recordPoint(i === 0 ? p : withDelta(p, points[i - 1]))); // as backup records them
    original.forgetPoint('p1'); // retention
    const gcDeleted = original.unreferencedChunks(TARGET.id).map((ch) => ch.id);
    original.deleteUnreferencedChunks(TARGET.id, gcDeleted); // garbage collection
    original.setPointState('p4', 'complete');
    original.addEvent({ level: 'info', kind: 'backup', message: 'local history, not rebuilt' });

    const rebuilt = openHere('rebuilt.db');
    const summary = await rebuildCatalog(rebuilt, sourceOf(points.slice(1)));
    assert.equal(summary.points, 3);
    assert.deepEqual(compareCatalogs(original, rebuilt), []);
    assert.equal(JSON.stringify(dumpCatalog(original)), JSON.stringify(dumpCatalog(rebuilt)));
    assert.ok(dumpCatalog(rebuilt).tables.chunks.length > 0);

    // A catalog whose counts drifted (bug, hand edit) is repaired by rebuilding it in place.
    original.db.prepare("DELETE FROM chunk_spans WHERE chunk_id = 'c0005'").run();
    assert.notDeepEqual(compareCatalogs(original, rebuilt), []);
    await rebuildCatalog(original, sourceOf(points.slice(1)));
    assert.deepEqual(compareCatalogs(original, rebuilt), []);
    assert.equal(original.listEvents().length, 1, 'rebuild leaves local history alone');
  });

  it('a rebuild keeps stored chunks no point references yet when the source lists the pack indexes', async () => {
    const c = openHere();
    const stored = [chunk(1), chunk(2), chunk(99, 'pack-orphan')];
    await rebuildCatalog(c, sourceOf([point('p1', '2025-01-01T00:00:00.000Z', [1, 2])], stored));
    assert.deepEqual(c.unreferencedChunks(TARGET.id).map((ch) => [ch.id, ch.pack]), [['c0099', 'pack-orphan']]);
  });

  it('a rebuild from a failing source leaves the catalog as it was', async () => {
    const c = openHere();
    c.upsertTarget(TARGET);
    c.recordPoint(point('p1', '2025-01-01T00:00:00.000Z', [1]));
    const before = dumpCatalog(c);
    const failing: RebuildSource = {
      target: TARGET,
      async *listPoints() {
        yield point('p9', '2025-01-09T00:00:00.000Z', [9]);
        throw new Error('manifest unreadable');
      },
    };
    await assert.rejects(rebuildCatalog(c, failing), /manifest unreadable/);
    assert.deepEqual(dumpCatalog(c), before);
  });

  it('jobs record state, progress and errors; events keep JSON details', () => {
    const c = openHere();
    const job = c.startJob({ kind: 'backup', vmId: 'vm-web', progressTotal: 100 });
    c.updateJobProgress(job, 40);
    assert.equal(c.getJob(job)?.progressDone, 40);
    c.finishJob(job, { state: 'failed', error: 'target unreachable' });
    const row = c.getJob(job)!;
    assert.equal(row.state, 'failed');
    assert.equal(row.error, 'target unreachable');
    assert.ok(row.finishedAt);
    assert.throws(() => c.updateJobProgress(job, 50), /not queued or running/);
    c.addEvent({ level: 'error', kind: 'backup.failed', message: 'backup of vm-web failed', details: { bytes: 5, reasons: ['timeout'] }, jobId: job });
    assert.deepEqual(c.listEvents({ kind: 'backup.failed' }).map((e) => e.details), [{ bytes: 5, reasons: ['timeout'] }]);
  });

  it('a file from a newer Lifeboat is refused with a message saying so', () => {
    const c = openHere();
    c.db.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'future', 'x')").run(LATEST_SCHEMA_VERSION + 1);
    c.close();
    assert.throws(() => openHere(), /written by a newer Lifeboat \(schema version \d+, this Lifeboat knows up to \d+\); upgrade Lifeboat/);
  });

  it('an SQLite file of another program is refused and left untouched', () => {
    const path = join(dir, 'other.db');
    const other = new Database(path);
    other.exec("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('keep me')");
    other.close();
    assert.throws(() => openCatalog(path), (err: Error) => err.message === `${path} is an SQLite database but not a Lifeboat catalog; move it aside or choose another catalog path`);
    const check = new Database(path);
    assert.deepEqual(check.prepare('SELECT body FROM notes').all(), [{ body: 'keep me' }]);
    assert.equal(check.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'schema_migrations'").pluck().get(), 0);
    check.close();
  });

  it('a garbage file is refused with one clear line', () => {
    const path = join(dir, 'garbage.db');
    writeFileSync(path, Buffer.alloc(8192, 0x5a));
    assert.throws(() => openCatalog(path), (err: Error) => err.message === `${path} is not a Lifeboat catalog (not an SQLite database); move it aside or choose another catalog path`);
  });
});
