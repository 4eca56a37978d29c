// The local catalog as a user meets it: every backup, forget and gc keeps it up to date, `lifeboat catalog
// points` answers from it alone, `lifeboat catalog rebuild` reproduces it from the repository, and a
// catalog that cannot be used never turns a stored backup into a reported failure.
//
// Real SQLite files, a real encrypted local repository, the real CLI in a child process.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmdirSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DERIVED_TABLES, LATEST_SCHEMA_VERSION, compareCatalogs, openCatalog, type Catalog } from '../../catalog/index.js';
import { MiB, seededBytes, writeImage, writeMixedImage } from '../replication/images.js';

/** The CLI compiled next to this test (dist/ in CI, a helper's outDir while developing). */
const MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const PASSWORD = 'catalog test passphrase';
/**
 * What a rebuild must reproduce: the derived tables (points, their disks, chunks, references) and the
 * target row. Jobs and events are history of what ran on this host, not derived from the repository,
 * so a rebuilt catalog cannot have them and they are left out. VMs and their disks are configuration:
 * a rebuild registers those its points name, so they compare equal too until every point of a VM is
 * forgotten (the VM itself still exists then, and the kept catalog rightly remembers it).
 */
const DERIVED_AND_TARGETS = [...DERIVED_TABLES, 'targets'];
const WITH_VMS = [...DERIVED_AND_TARGETS, 'vms', 'disks'];

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

interface PointJson {
  id: string;
  vm: { id: string; name: string };
  target: { id: string; location: string };
  disks: { name: string; sizeBytes: number }[];
}

describe('lifeboat catalog', function () {
  this.timeout(300_000);
  let dir: string;
  let home: string;
  let repo: string;
  let defaultCatalog: string;

  function lifeboat(args: string[], env: Record<string, string> = {}): Run {
    const base: NodeJS.ProcessEnv = { ...process.env, LIFEBOAT_PASSWORD: PASSWORD, LIFEBOAT_HOME: home };
    delete base.LIFEBOAT_CATALOG;
    delete base.LIFEBOAT_TARGET;
    const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', env: { ...base, ...env }, maxBuffer: 64 * MiB });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }
  function ok(args: string[], env: Record<string, string> = {}): Run {
    const r = lifeboat(args, env);
    assert.equal(r.status, 0, `lifeboat ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
    assert.equal(r.stderr, '', `lifeboat ${args.join(' ')} printed on stderr`);
    return r;
  }
  function json<T = Record<string, unknown>>(args: string[]): T {
    return JSON.parse(ok([...args, '--json']).stdout) as T;
  }
  /** A refused command prints exactly one line on stderr. */
  function failsWith(args: string[], status: number, pattern: RegExp): string {
    const r = lifeboat(args);
    assert.equal(r.status, status, `lifeboat ${args.join(' ')}: expected exit ${status}, got ${r.status}; stderr: ${r.stderr}`);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, `expected one line on stderr, got:\n${r.stderr}`);
    assert.match(lines[0], pattern);
    return lines[0];
  }
  function backup(image: string, vm: string, extra: string[] = []): string {
    return String(json(['backup', image, '--target', repo, '--vm', vm, ...extra]).point);
  }
  /** Reads a catalog file the CLI wrote, and closes it again. */
  function inCatalog<T>(path: string, fn: (c: Catalog) => T): T {
    const c = openCatalog(path);
    try {
      return fn(c);
    } finally {
      c.close();
    }
  }
  /** Moves the catalog file aside (the CLI closed it, so there is no WAL beside it) and returns its new path. */
  function moveAside(path: string, to: string): string {
    assert.ok(!existsSync(`${path}-wal`) || statSync(`${path}-wal`).size === 0, 'the CLI left no unmerged WAL');
    copyFileSync(path, to);
    for (const f of [path, `${path}-wal`, `${path}-shm`]) if (existsSync(f)) unlinkSync(f);
    return to;
  }

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'lifeboat-catalog-cli-'));
    home = join(dir, 'home');
    repo = join(dir, 'repo');
    defaultCatalog = join(home, 'catalog.sqlite');
    ok(['repo', 'init', '--target', repo, '--pack-size', '1M']);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('records every backup (points, VMs, disks, one reference per point on shared chunks) and lists them offline', () => {
    const web = join(dir, 'web.img');
    const clone = join(dir, 'clone.img');
    const db = join(dir, 'db.img');
    writeMixedImage(web);
    copyFileSync(web, clone);
    writeImage(db, 3 * MiB, [{ offset: 0, data: seededBytes('db', 2 * MiB) }]);
    const webPoint = backup(web, 'web');
    const clonePoint = backup(clone, 'web-clone', ['--disk', 'root']);
    const dbPoint = backup(db, 'db');

    assert.equal(statSync(home).mode & 0o777, 0o700, 'LIFEBOAT_HOME is created private');
    inCatalog(defaultCatalog, (c) => {
      assert.deepEqual(c.listPoints().map((p) => [p.id, p.vmId]), [[webPoint, 'web'], [clonePoint, 'web-clone'], [dbPoint, 'db']]);
      assert.deepEqual(c.listDisks('web-clone'), [{ vmId: 'web-clone', name: 'root', sizeBytes: statSync(clone).size }]);
      const [target] = c.listTargets();
      assert.equal(target.location, repo);
      // The clone holds the same bytes: every blob of its point (chunks and map pages) is the web point's
      // too, and counts two points; the db point shares nothing.
      const webChunks = c.pointChunks(webPoint).map((r) => r.chunkId);
      assert.deepEqual(c.pointChunks(clonePoint).map((r) => r.chunkId), webChunks);
      assert.ok(webChunks.length > 10);
      for (const id of webChunks) assert.equal(c.getChunk(target.id, id)?.refcount, 2, `chunk ${id} is used by two points`);
      for (const r of c.pointChunks(dbPoint)) assert.equal(c.getChunk(target.id, r.chunkId)?.refcount, 1);
      // The mixed image repeats a block: that point lists the chunk twice but references it once.
      assert.ok(c.pointChunks(webPoint).some((r) => r.uses > 1), 'a chunk used twice in one image');
      assert.deepEqual(
        c.listJobs().map((j) => [j.kind, j.state, j.vmId, j.targetId]),
        [['backup', 'succeeded', 'db', target.id], ['backup', 'succeeded', 'web-clone', target.id], ['backup', 'succeeded', 'web', target.id]],
      );
      assert.deepEqual(c.listEvents().map((e) => [e.kind, (e.details as { point: string }).point]), [
        ['backup.succeeded', webPoint],
        ['backup.succeeded', clonePoint],
        ['backup.succeeded', dbPoint],
      ]);
    });

    // The catalog answers without the target: move the repository away and list.
    renameSync(repo, `${repo}.away`);
    const listed = json<PointJson[]>(['catalog', 'points', '--target', repo, '--vm', 'web-clone']);
    assert.deepEqual(listed.map((p) => [p.id, p.vm.name, p.target.location, p.disks]), [[clonePoint, 'web-clone', repo, [{ name: 'root', sizeBytes: statSync(clone).size }]]]);
    const text = ok(['catalog', 'points']).stdout.trimEnd().split('\n');
    assert.equal(text.length, 3);
    assert.match(text[2], new RegExp(`^${dbPoint.slice(0, 8)}  \\S+ \\S+  db  db:3\\.00 MiB  crash  \\+\\S+ \\S+  ${repo}$`));
    failsWith(['catalog', 'points', '--target', join(dir, 'elsewhere')], 1, /is not in catalog .*; back up to it, or run 'lifeboat catalog rebuild --target/);
    const jobs = ok(['catalog', 'jobs', '--limit', '1']).stdout;
    assert.match(jobs, new RegExp(`^#3  \\S+ \\S+  backup  succeeded  .*  vm db  ${repo}  3\\.00 MiB\\n$`));
    assert.equal(ok(['catalog', 'events']).stdout.trimEnd().split('\n').length, 3);
  });

  it('deleting the catalog and running catalog rebuild reproduces it, after forget and gc too', () => {
    const a = join(dir, 'a.img');
    const b = join(dir, 'b.img');
    writeMixedImage(a);
    writeImage(b, 4 * MiB, [{ offset: 0, data: seededBytes('b1', 4 * MiB) }]);
    const a1 = backup(a, 'web');
    const b1 = backup(b, 'db');
    writeImage(b, 4 * MiB, [{ offset: 0, data: seededBytes('b1', 2 * MiB) }, { offset: 2 * MiB, data: seededBytes('b2', 2 * MiB) }]);
    backup(b, 'db');

    const rebuildEquals = (stage: string, tables: string[]) => {
      const original = moveAside(defaultCatalog, join(dir, `original-${stage}.sqlite`));
      const r = json<{ points: number; chunks: number; catalog: string }>(['catalog', 'rebuild', '--target', repo]);
      assert.equal(r.catalog, defaultCatalog);
      inCatalog(original, (o) =>
        inCatalog(defaultCatalog, (rebuilt) => {
          assert.equal(r.points, o.listPoints().length);
          assert.deepEqual(compareCatalogs(o, rebuilt, { tables }), [], `${stage}: the rebuilt catalog equals the one the commands kept`);
          // History stays local: the rebuilt file knows only its own rebuild.
          assert.deepEqual(rebuilt.listJobs().map((j) => [j.kind, j.state]), [['catalog-rebuild', 'succeeded']]);
          assert.ok(o.listJobs().length > 1);
        }),
      );
      return r;
    };

    const first = rebuildEquals('after backups', WITH_VMS);
    assert.equal(first.points, 3);

    // Forget releases the references; chunks only the forgotten points used stay at zero until gc.
    const forgotten = json<{ removed: string[] }>(['forget', '--target', repo, a1, b1]);
    assert.deepEqual(forgotten.removed.sort(), [a1, b1].sort());
    const zero = inCatalog(defaultCatalog, (c) => {
      assert.deepEqual(c.listPoints().map((p) => p.vmId), ['db']);
      return c.unreferencedChunks(c.listTargets()[0].id).length;
    });
    assert.ok(zero > 0, 'chunks only the forgotten points used are unreferenced');
    rebuildEquals('after forget', DERIVED_AND_TARGETS);

    // gc deletes the packs no point needs; the catalog forgets their chunks.
    const gc = json<{ packsDeleted: number }>(['gc', '--target', repo]);
    assert.ok(gc.packsDeleted > 0);
    inCatalog(defaultCatalog, (c) => {
      assert.deepEqual(c.listJobs().map((j) => [j.kind, j.state]), [['gc', 'succeeded'], ['catalog-rebuild', 'succeeded']]);
      assert.ok(c.unreferencedChunks(c.listTargets()[0].id).length < zero);
    });
    rebuildEquals('after gc', DERIVED_AND_TARGETS);
  });

  it('a backup whose catalog cannot be written stores the point, warns with the fix, and that fix repairs the catalog', () => {
    const img = join(dir, 'disk.img');
    writeMixedImage(img);
    const blocked = join(dir, 'catalog-dir');
    mkdirSync(blocked);
    const r = lifeboat(['backup', img, '--target', repo, '--vm', 'web', '--catalog', blocked]);
    assert.equal(r.status, 0, r.stderr);
    const point = /^point ([0-9a-f]{32}) of VM web/.exec(r.stdout)?.[1];
    assert.ok(point, r.stdout);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], new RegExp(`^lifeboat backup: warning: point ${point} is stored, but the catalog was not updated \\(catalog path ${blocked} is a directory`));
    const fix = /run '(lifeboat catalog rebuild [^']+)' to bring it up to date$/.exec(lines[0])?.[1];
    assert.equal(fix, `lifeboat catalog rebuild --target ${repo} --catalog ${blocked}`);

    // The repository is the source of truth: the point is there.
    const listed = json<{ id: string }[]>(['points', 'list', '--target', repo]);
    assert.deepEqual(listed.map((p) => p.id), [point]);

    // Once the path is free, the command the warning named brings the catalog up to date.
    rmdirSync(blocked);
    const rebuilt = JSON.parse(ok([...fix!.split(' ').slice(1), '--json']).stdout) as { points: number };
    assert.equal(rebuilt.points, 1);
    assert.deepEqual(json<PointJson[]>(['catalog', 'points', '--catalog', blocked]).map((p) => p.id), [point]);
  });

  it('a catalog from a newer Lifeboat, or a file that is not a catalog, is refused in one line and left as it was', () => {
    const newer = join(dir, 'newer.sqlite');
    inCatalog(newer, (c) => c.db.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'from the future', '2030-01-01T00:00:00.000Z')").run(LATEST_SCHEMA_VERSION + 1));
    const garbage = join(dir, 'garbage.sqlite');
    writeFileSync(garbage, 'these are my notes, not a database\n'.repeat(200));
    const before = { newer: readFileSync(newer), garbage: readFileSync(garbage) };

    failsWith(
      ['catalog', 'points', '--catalog', newer],
      1,
      new RegExp(`^lifeboat catalog points: catalog ${newer} was written by a newer Lifeboat \\(schema version ${LATEST_SCHEMA_VERSION + 1}, this Lifeboat knows up to ${LATEST_SCHEMA_VERSION}\\); upgrade Lifeboat, or rebuild`),
    );
    failsWith(['catalog', 'rebuild', '--target', repo, '--catalog', garbage], 1, new RegExp(`^lifeboat catalog rebuild: ${garbage} is not a Lifeboat catalog \\(not an SQLite database\\); move it aside`));
    failsWith(['catalog', 'jobs'], 1, new RegExp(`^lifeboat catalog jobs: there is no catalog at ${defaultCatalog} yet; 'lifeboat backup' writes it`));

    // A backup is not held back by the catalog: the point is stored, one warning names the problem.
    const img = join(dir, 'disk.img');
    writeImage(img, 2 * MiB, [{ offset: 0, data: seededBytes('x', MiB) }]);
    const r = lifeboat(['backup', img, '--target', repo, '--catalog', garbage, '--json']);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { point: string; catalog: { upToDate: boolean; warning: string } };
    assert.equal(out.catalog.upToDate, false);
    assert.match(out.catalog.warning, /is not a Lifeboat catalog/);
    assert.equal(r.stderr, out.catalog.warning + '\n');
    assert.deepEqual(json<{ id: string }[]>(['points', 'list', '--target', repo]).map((p) => p.id), [out.point]);

    assert.ok(readFileSync(newer).equals(before.newer), 'the newer catalog is unchanged');
    assert.ok(readFileSync(garbage).equals(before.garbage), 'the garbage file is unchanged');
    assert.ok(!existsSync(defaultCatalog), 'no catalog was created where none was asked for');
  });

  it('restore and verify are recorded as jobs, a failed one with its error; every catalog command has --help', () => {
    const img = join(dir, 'disk.img');
    writeMixedImage(img);
    const point = backup(img, 'web');
    ok(['restore', point, '--target', repo, '--to', join(dir, 'out.img')]);
    failsWith(['restore', point, '--target', repo, '--to', join(dir, 'out.img')], 1, /already exists; give --force/);
    ok(['verify', '--target', repo]);
    const jobs = json<{ kind: string; state: string; error: string | null; targetLocation: string }[]>(['catalog', 'jobs']);
    assert.deepEqual(
      jobs.map((j) => [j.kind, j.state, j.targetLocation]),
      [['verify', 'succeeded', repo], ['restore', 'failed', repo], ['restore', 'succeeded', repo], ['backup', 'succeeded', repo]],
    );
    assert.match(jobs[1].error ?? '', /already exists/);
    const events = json<{ level: string; kind: string }[]>(['catalog', 'events', '--limit', '2']);
    assert.deepEqual(events.map((e) => [e.level, e.kind]), [['error', 'restore.failed'], ['info', 'verify.succeeded']]);

    for (const cmd of [['catalog', 'rebuild'], ['catalog', 'points'], ['catalog', 'jobs'], ['catalog', 'events']]) {
      assert.match(ok([...cmd, '--help']).stdout, new RegExp(`^Usage: lifeboat ${cmd.join(' ')}`));
    }
    for (const cmd of [['backup'], ['forget'], ['gc'], ['restore'], ['verify']]) assert.match(ok([...cmd, '--help']).stdout, /--catalog FILE/);
  });
});
