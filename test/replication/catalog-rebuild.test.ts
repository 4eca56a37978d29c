// "The catalog rebuilt from the target equals the original": points recorded as backups ran, against a
// catalog rebuilt later from nothing but the repository.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compareCatalogs, openCatalog, rebuildCatalog, type TargetRecord } from '../../catalog/index.js';
import { backup, type BackupResult } from '../../replication/repository/backup.js';
import { pointRecord, repositoryRebuildSource } from '../../replication/repository/catalog-source.js';
import { Repository } from '../../replication/repository/repository.js';
import { createLocalTarget } from '../../replication/targets/local.js';
import { MiB, seededBytes, writeImage, writeMixedImage } from './images.js';

describe('catalog rebuilt from a repository', function () {
  this.timeout(120_000);
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'lifeboat-catalog-rebuild-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('equals the catalog that recorded each point as it was backed up', async () => {
    const target = createLocalTarget(join(dir, 'repo'));
    const secret = { passphrase: 'pw' };
    const repo = await Repository.init(target, { secret, packSize: MiB });
    const targetRecord: TargetRecord = { id: 'site-a-local', kind: 'local', location: target.description, siteId: null };
    const original = openCatalog(join(dir, 'original.db'));
    original.upsertTarget(targetRecord);
    const record = async (r: BackupResult) => {
      const index = await repo.loadIndex({ present: await repo.listPacks() });
      original.recordPoint(await pointRecord(repo, r.pointId, r.manifest, index, targetRecord.id));
    };

    const a = join(dir, 'a.img');
    const b = join(dir, 'b.img');
    writeMixedImage(a);
    writeImage(b, 3 * MiB, [{ offset: MiB, data: seededBytes('b', MiB) }]);
    await record(await backup(repo, { vm: { name: 'web', id: 'vm-web' }, disks: [{ name: 'vda', path: a }], consistency: 'paused' }));
    await record(await backup(repo, { vm: { name: 'db', id: 'vm-db' }, disks: [{ name: 'vda', path: b }, { name: 'vdb', path: a }] }));
    writeImage(b, 3 * MiB, [{ offset: 0, data: seededBytes('b2', 3 * MiB) }]);
    await record(await backup(repo, { vm: { name: 'db', id: 'vm-db' }, disks: [{ name: 'vda', path: b }, { name: 'vdb', path: a }] }));
    assert.equal(original.listPoints().length, 3);

    const rebuilt = openCatalog(join(dir, 'rebuilt.db'));
    const fromTarget = await Repository.open(createLocalTarget(join(dir, 'repo')), { secret });
    const summary = await rebuildCatalog(rebuilt, repositoryRebuildSource(fromTarget, targetRecord));
    assert.equal(summary.points, 3);
    assert.deepEqual(compareCatalogs(original, rebuilt), []);
    assert.deepEqual(rebuilt.listPoints().map((p) => [p.vmId, p.consistency, p.hasMemory]), [
      ['vm-web', 'paused', false],
      ['vm-db', 'crash', false],
      ['vm-db', 'crash', false],
    ]);
    original.close();
    rebuilt.close();
  });
});
