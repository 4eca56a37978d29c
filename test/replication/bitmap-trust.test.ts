// When a backup may trust a change bitmap, and what it does with an image that holds only the changed
// blocks (exported --changed-only) when it may not: it refuses, because reading such an image whole would
// store its holes as zeros and make a point that restores to a broken disk.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { backup, type BackupResult } from '../../replication/repository/backup.js';
import { ChangeBitmapError, changeBitmapFromRanges, type ChangeBitmap } from '../../replication/repository/change-bitmap.js';
import { Repository } from '../../replication/repository/repository.js';
import { restore } from '../../replication/repository/restore.js';
import { createLocalTarget } from '../../replication/targets/local.js';
import type { Target } from '../../replication/target.js';
import { MiB, sameFile, seededBytes, writeImage, type ImageRegion } from './images.js';

const SIZE = 8 * MiB + 4096;
const EPOCH_1 = '11'.repeat(16);
const EPOCH_2 = '22'.repeat(16);
const EPOCH_3 = '33'.repeat(16);
const EPOCH_9 = '99'.repeat(16);

describe('backup with a change bitmap: when it is trusted, and images that hold only the changed blocks', function () {
  this.timeout(120_000);
  let dir: string;
  let target: Target;
  let repo: Repository;
  /** The disk's contents as the test changes it (the "VM's disk"). */
  let disk: Buffer;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'lifeboat-bitmap-trust-'));
    target = await createLocalTarget(join(dir, 'repo'));
    repo = await Repository.init(target, { secret: null, packSize: MiB });
    disk = seededBytes('disk', SIZE);
  });
  afterEach(async () => {
    await target.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const file = (name: string) => join(dir, name);

  /** The guest writes: each region changes the disk. */
  function guestWrites(seed: string, offsets: number[]): ImageRegion[] {
    const regions = offsets.map((offset, i) => ({ offset, data: seededBytes(`${seed}/${i}`, 4096) }));
    for (const r of regions) r.data.copy(disk, r.offset);
    return regions;
  }

  /** An export of the whole disk. */
  function wholeExport(name: string): string {
    writeImage(file(name), SIZE, [{ offset: 0, data: disk }]);
    return file(name);
  }

  /** An export of only the granules the writes touched (the rest are holes), as point export --changed-only writes it. */
  function changedOnlyExport(name: string, regions: ImageRegion[], granularity: number): string {
    const granules = regions.map((r) => Math.floor(r.offset / granularity) * granularity);
    writeImage(file(name), SIZE, granules.map((g) => ({ offset: g, data: disk.subarray(g, Math.min(SIZE, g + granularity)) })));
    return file(name);
  }

  function bitmapOf(regions: ImageRegion[], granularity: number, baseEpoch: string | null, epoch: string, changedOnly: boolean): ChangeBitmap {
    return { ...changeBitmapFromRanges(SIZE, granularity, regions.map((r) => ({ offset: r.offset, length: r.data.length }))), baseEpoch, epoch, changedOnly };
  }

  function run(path: string, bitmap?: ChangeBitmap, parent?: null): Promise<BackupResult> {
    return backup(repo, { vm: { name: 'vm1' }, disks: [{ name: 'vda', path, bitmap: bitmap ?? null }], ...(parent === null ? { parent: null } : {}) });
  }

  async function objects(prefix: string): Promise<number> {
    let n = 0;
    for await (const o of target.list(prefix)) if (!o.key.includes('.tmp-')) n++;
    return n;
  }

  async function restoresTo(pointId: string, expected: Buffer): Promise<void> {
    const out = file(`restored-${pointId}.img`);
    await restore(repo, { pointId, to: out });
    writeImage(file('expected.img'), SIZE, [{ offset: 0, data: expected }]);
    assert.ok(sameFile(out, file('expected.img')), `point ${pointId} restores to the disk`);
  }

  it('a full backup without a bitmap, then a changed-only image with a bitmap: refused, naming the epoch and the fix, nothing stored; the whole export then starts the chain', async () => {
    const full = await run(wholeExport('full.img'));
    assert.equal(full.manifest.disks[0]!.trackingEpoch, undefined, 'no bitmap: no epoch recorded');
    const pointsBefore = (await repo.listPoints()).length;
    const packsBefore = await objects('packs/');

    const writes = guestWrites('second', [MiB + 100 * 512, 5 * MiB, SIZE - 4096]);
    const partial = changedOnlyExport('changed.img', writes, 65536);
    const bitmap = bitmapOf(writes, 65536, EPOCH_1, EPOCH_2, true);
    await assert.rejects(
      run(partial, bitmap),
      (err: Error) => err instanceof ChangeBitmapError &&
        /^disk vda: .*changed\.img holds only the changed blocks \(exported --changed-only\) but its change bitmap cannot be used: the bitmap counts changes since epoch 1{32} but the parent point recorded no tracking epoch; export the whole point \(lifeboat point export --out IMAGE --bitmap FILE, without --changed-only\) and back that up$/.test(err.message),
    );
    assert.equal((await repo.listPoints()).length, pointsBefore, 'no point was made');
    assert.equal(await objects('packs/'), packsBefore, 'nothing was stored');

    // The fix: the whole point with its (unflagged) bitmap: read whole, compared by hash, epoch recorded.
    const whole = await run(wholeExport('whole.img'), bitmapOf(writes, 65536, EPOCH_1, EPOCH_2, false));
    assert.equal(whole.images[0]!.mode, 'hash-compare');
    assert.equal(whole.bytesRead, SIZE);
    assert.equal(whole.manifest.disks[0]!.trackingEpoch, EPOCH_2);
    await restoresTo(whole.pointId, disk);

    // From here the chain holds: the next changed-only export is a trusted incremental.
    const more = guestWrites('third', [2 * MiB + 512, 7 * MiB]);
    const incr = await run(changedOnlyExport('changed3.img', more, 65536), bitmapOf(more, 65536, EPOCH_2, EPOCH_3, true));
    assert.equal(incr.images[0]!.mode, 'bitmap');
    assert.equal(incr.images[0]!.chunksRead, 2, 'only the chunks the bitmap names are read');
    assert.equal(incr.bytesRead, 2 * 65536);
    assert.equal(incr.manifest.disks[0]!.trackingEpoch, EPOCH_3);
    await restoresTo(incr.pointId, disk);
  });

  it('a changed-only image whose bitmap starts at another epoch, has no parent to apply it to, or names granules finer than a chunk is refused', async () => {
    const first = await run(wholeExport('full.img'), bitmapOf([], 65536, null, EPOCH_1, false));
    assert.equal(first.images[0]!.mode, 'full');
    assert.equal(first.manifest.disks[0]!.trackingEpoch, EPOCH_1, 'an untrusted (first) bitmap still records where the history starts');
    const pointsBefore = (await repo.listPoints()).length;

    const writes = guestWrites('skipped', [3 * MiB]);
    const partial = changedOnlyExport('changed.img', writes, 65536);
    await assert.rejects(
      run(partial, bitmapOf(writes, 65536, EPOCH_9, EPOCH_3, true)),
      /but its change bitmap cannot be used: the bitmap counts changes since epoch 9{32} but the parent point is at epoch 1{32}; export the whole point/,
    );
    await assert.rejects(
      run(partial, bitmapOf(writes, 65536, EPOCH_1, EPOCH_3, true), null),
      /but its change bitmap cannot be used: there is no parent point to apply it to \(a first or --full backup\); export the whole point/,
    );
    await assert.rejects(run(partial, bitmapOf(writes, 65536, null, EPOCH_3, true)), /its base epoch is unspecified/);
    // Granules finer than the repository's chunks: the chunks to read are partly holes.
    const fine = changedOnlyExport('fine.img', writes, 4096);
    await assert.rejects(
      run(fine, bitmapOf(writes, 4096, EPOCH_1, EPOCH_3, true)),
      /fine\.img holds only the changed blocks \(exported --changed-only\) but its change bitmap cannot be used: it names 4 KiB granules and this repository reads 64 KiB chunks, so the chunks to read would be partly holes; export the whole point/,
    );
    assert.equal((await repo.listPoints()).length, pointsBefore, 'no point was made');

    // The bitmap with its base at the parent's epoch: a trusted incremental.
    const incr = await run(partial, bitmapOf(writes, 65536, EPOCH_1, EPOCH_3, true));
    assert.equal(incr.images[0]!.mode, 'bitmap');
    assert.equal(incr.images[0]!.chunksRead, 1);
    await restoresTo(incr.pointId, disk);
  });

  it('a whole image with a bitmap that does not fit the parent is read whole, and records the bitmap epoch for the next incremental', async () => {
    await run(wholeExport('full.img'), bitmapOf([], 65536, null, EPOCH_1, false));
    const writes = guestWrites('whole', [4 * MiB]);
    const r = await run(wholeExport('whole.img'), bitmapOf(writes, 65536, EPOCH_9, EPOCH_2, false));
    assert.equal(r.images[0]!.mode, 'hash-compare');
    assert.match(r.images[0]!.note ?? '', /change bitmap not used \(the bitmap counts changes since epoch 9{32} but the parent point is at epoch 1{32}\); chunks compared by hash/);
    assert.equal(r.chunksNew, 1 + 1, 'the changed chunk and its map page');
    assert.equal(r.manifest.disks[0]!.trackingEpoch, EPOCH_2);
    await restoresTo(r.pointId, disk);
  });
});
