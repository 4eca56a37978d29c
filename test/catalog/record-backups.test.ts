// Recording real backups as `lifeboat backup` does (each incremental as a delta against its parent,
// computed from the extent maps), through retention and garbage collection, gives the catalog a
// rebuild from the repository gives; and an incremental's record names only what it changed.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compareCatalogs, openCatalog, rebuildCatalog, type Catalog, type TargetRecord } from '../../catalog/index.js';
import type { ChunkReference, PointRecord } from '../../catalog/records.js';
import { backup, type BackupResult } from '../../replication/repository/backup.js';
import { catalogIndex, committedPointRecord, repositoryRebuildSource } from '../../replication/repository/catalog-source.js';
import { changeBitmapFromRanges } from '../../replication/repository/change-bitmap.js';
import { forget } from '../../replication/repository/forget.js';
import { gc } from '../../replication/repository/gc.js';
import { Repository } from '../../replication/repository/repository.js';
import { createLocalTarget } from '../../replication/targets/local.js';
import { MiB, rewriteRandomBlocks, seededBytes, writeImage } from '../replication/images.js';

const SIZE = 8 * MiB;
const epoch = (n: number) => String(n).repeat(32).slice(0, 32);

describe('catalog: recording backups as they run', function () {
  this.timeout(120_000);
  let dir: string;
  const catalogs: Catalog[] = [];
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'lifeboat-catalog-record-'))));
  afterEach(() => {
    for (const c of catalogs.splice(0)) c.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('incrementals recorded as deltas, then forget and gc: the catalog equals one rebuilt from the repository', async () => {
    const target = createLocalTarget(join(dir, 'repo'));
    const repo = await Repository.init(target, { secret: { passphrase: 'pw' }, packSize: MiB });
    const targetRecord: TargetRecord = { id: repo.id, kind: 'local', location: target.description, siteId: null };
    const catalog = openCatalog(join(dir, 'catalog.db'));
    catalogs.push(catalog);
    catalog.upsertTarget(targetRecord);

    // Half the disk holds data; two cells hold the same bytes (one blob used twice).
    const disk = join(dir, 'vda.img');
    const same = seededBytes('same', 65536);
    writeImage(disk, SIZE, [
      { offset: 0, data: seededBytes('data', SIZE / 2) },
      { offset: 6 * MiB, data: same },
      { offset: 7 * MiB, data: same },
    ]);
    const records: { delta: boolean; changed: number; chunks: number }[] = [];
    let n = 0;
    let previous: PointRecord | null = null;
    const run = async (changes: number[] | null): Promise<BackupResult> => {
      n++;
      const bitmap = {
        ...changeBitmapFromRanges(SIZE, 4096, (changes ?? []).map((offset) => ({ offset, length: 4096 }))),
        baseEpoch: changes ? epoch(n - 1) : null,
        epoch: epoch(n),
        changedOnly: false,
      };
      const point = await backup(repo, { vm: { name: 'web', id: 'vm-web' }, disks: [{ name: 'vda', path: disk, bitmap }] });
      // As `lifeboat backup` builds it: from what the backup holds, the cells it did not copy included.
      const record = await committedPointRecord(repo, point.pointId, point.manifest, targetRecord.id, {
        maps: point.maps,
        index: point.index,
        parentMaps: point.parentMaps,
        parentManifest: point.parentManifest,
        changedCells: point.changedCells,
      });
      if (record.delta) {
        // The same delta as one worked out by comparing every cell of the maps read back.
        const compared = await committedPointRecord(repo, point.pointId, point.manifest, targetRecord.id);
        assert.deepEqual([...record.delta.changed].sort(), [...compared.delta!.changed].sort());
        assert.deepEqual(record.delta.changes, compared.delta!.changes);
        // The catalog counts the delta's own references or changes instead of the full list: they must agree.
        const changed = new Set(record.delta.changed);
        const counts = (refs: ChunkReference[]) => [...refs.filter((r) => changed.has(r.id)).reduce((m, r) => m.set(r.id, (m.get(r.id) ?? 0) + 1), new Map<string, number>())].sort();
        const references = record.delta!.references;
        assert.ok(references, 'an incremental record carries its references to the changed chunks');
        assert.deepEqual(counts(references), counts(record.chunks));
        const parentCounts = new Map(counts(previous!.chunks));
        const changes = new Map(record.delta.changes!.map((ch) => [ch.id, ch.change]));
        for (const [id, n] of counts(record.chunks)) assert.equal(n - (parentCounts.get(id) ?? 0), changes.get(id), `chunk ${id}: count change`);
      }
      previous = record;
      records.push({ delta: record.delta !== undefined, changed: record.delta?.changed.length ?? 0, chunks: new Set(record.chunks.map((c) => c.id)).size });
      catalog.transaction(() => catalog.recordPoint(record));
      return point;
    };

    const first = await run(null);
    await run(rewriteRandomBlocks(disk, SIZE, 12, 'one'));
    const third = await run(rewriteRandomBlocks(disk, SIZE, 12, 'two'));
    assert.equal(third.images[0].mode, 'bitmap', 'the incrementals splice the changed 4 KiB blocks into their parent');
    assert.deepEqual(records.map((r) => r.delta), [false, true, true]);
    for (const r of records.slice(1)) {
      assert.ok(r.changed > 0 && r.changed <= 12 + 2, `an incremental that rewrote 12 blocks changes ${r.changed} of its ${r.chunks} chunks`);
    }
    assert.ok(catalog.pointChunks(first.pointId).some((r) => r.uses === 2), 'the repeated cell counts twice');

    // Retention, then garbage collection, as `lifeboat forget` and `lifeboat gc` record them.
    const removed = (await forget(repo, { points: [first.pointId] })).removed;
    for (const id of removed) catalog.forgetPoint(id);
    await gc(repo, { leaseTtlMs: 0 });
    const index = await catalogIndex(repo);
    const gone = catalog.unreferencedChunks(targetRecord.id).filter((chunk) => !index.has(Buffer.from(chunk.id, 'hex')));
    assert.ok(gone.length > 0, 'gc deleted packs of chunks only the forgotten point used');
    catalog.deleteUnreferencedChunks(targetRecord.id, gone.map((chunk) => chunk.id));
    await run(rewriteRandomBlocks(disk, SIZE, 12, 'three'));

    const rebuilt = openCatalog(join(dir, 'rebuilt.db'));
    catalogs.push(rebuilt);
    const summary = await rebuildCatalog(rebuilt, repositoryRebuildSource(await Repository.open(target, { secret: { passphrase: 'pw' } }), targetRecord));
    assert.equal(summary.points, 3);
    assert.deepEqual(compareCatalogs(catalog, rebuilt), []);
  });
});
