// The repository suite against a local directory target. Retention locks are immutable files
// (chattr +i), which need CAP_LINUX_IMMUTABLE: the lock test fails loudly without it.

import { execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createLocalTarget, LocalTarget } from '../../replication/targets/local.js';
import type { Target } from '../../replication/target.js';
import { backup } from '../../replication/repository/backup.js';
import { Repository } from '../../replication/repository/repository.js';
import { restore } from '../../replication/repository/restore.js';
import { verify } from '../../replication/repository/verify.js';
import { sameFile, writeMixedImage } from './images.js';
import { describeRepositorySuite } from './repository-suite.js';

function pathOf(target: Target, key: string): string {
  return join((target as LocalTarget).description.slice('file:'.length), ...key.split('/'));
}

function chattr(flag: '+i' | '-i', path: string): void {
  try {
    execFileSync('chattr', [flag, path], { stdio: 'pipe' });
  } catch (err) {
    throw new Error(`chattr ${flag} ${path} failed (immutable files stand in for retention locks and need root): ${(err as { stderr?: Buffer }).stderr?.toString().trim()}`);
  }
}

describeRepositorySuite('a local directory', {
  async make() {
    return createLocalTarget(join(mkdtempSync(join(tmpdir(), 'lifeboat-local-target-')), 'repo'));
  },
  async lock(target, key) {
    chattr('+i', pathOf(target, key));
  },
  async unlock(target, key) {
    chattr('-i', pathOf(target, key));
  },
  async destroy(target) {
    // make() created TMP/lifeboat-local-target-XXXX/repo
    rmSync(dirname(dirname(pathOf(target, 'x'))), { recursive: true, force: true });
  },
});

describe('repository on a local directory the user can only read', () => {
  it('still lists, restores and verifies: readers go ahead without a lease', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lifeboat-readonly-'));
    const img = join(dir, 'disk.img');
    writeMixedImage(img);
    const target = createLocalTarget(join(dir, 'repo'));
    const secret = { passphrase: 'pw' };
    const repo = await Repository.init(target, { secret });
    const { pointId } = await backup(repo, { vm: { name: 'vm' }, disks: [{ name: 'vda', path: img }] });
    mkdirSync(join(dir, 'repo', 'leases'), { recursive: true });
    chattr('+i', join(dir, 'repo', 'leases'));
    try {
      const reader = await Repository.open(createLocalTarget(join(dir, 'repo')), { secret });
      await restore(reader, { pointId, to: join(dir, 'out.img') });
      assert.ok(sameFile(img, join(dir, 'out.img')));
      assert.deepEqual((await verify(reader, { readData: true })).problems, []);
      await assert.rejects(backup(reader, { vm: { name: 'vm' }, disks: [{ name: 'vda', path: img }] }), /immutable|locked/);
    } finally {
      chattr('-i', join(dir, 'repo', 'leases'));
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('opening a repository with its index read while the key is derived (backup)', () => {
  it('indexes every pack, including one written after it was opened, and a backup reuses them all', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lifeboat-prefetch-'));
    try {
      const img = join(dir, 'disk.img');
      writeMixedImage(img);
      const secret = { passphrase: 'pw' };
      const repo = await Repository.init(createLocalTarget(join(dir, 'repo')), { secret, packSize: 1024 * 1024 });
      await backup(repo, { vm: { name: 'vm' }, disks: [{ name: 'vda', path: img }] });
      const early = await Repository.open(createLocalTarget(join(dir, 'repo')), { secret, prefetchIndex: true });
      // Another backup (another VM's disk) writes packs after `early` read the index objects.
      const other = join(dir, 'other.img');
      writeMixedImage(other, 'other');
      await backup(await Repository.open(createLocalTarget(join(dir, 'repo')), { secret }), { vm: { name: 'vm2' }, disks: [{ name: 'vdb', path: other }] });
      const plain = await (await Repository.open(createLocalTarget(join(dir, 'repo')), { secret })).loadIndex();
      const prefetched = await early.loadIndex();
      assert.equal(prefetched.size, plain.size);
      for (const id of plain.ids()) assert.deepEqual(prefetched.get(id), plain.get(id));
      // Nothing is stored again: every chunk of both disks is already in the index it loads.
      const again = await Repository.open(createLocalTarget(join(dir, 'repo')), { secret, prefetchIndex: true });
      const result = await backup(again, { vm: { name: 'vm2' }, disks: [{ name: 'vdb', path: other }], parent: null });
      assert.equal(result.chunksNew, 0, 'its chunks and its map pages are all in the index already');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
