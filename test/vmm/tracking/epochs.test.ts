// What an exported change bitmap claims (its base epoch, its CHANGED_ONLY flag) must stay true through
// failed consumers (merge-back), out-of-order releases and clean restarts; and a consumer that backs up
// one point after another must never lose trust it is owed.
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { decodeChangeBitmap } from '../../../replication/repository/change-bitmap.js';
import * as repositorySide from '../../../replication/repository/layout.js';
import * as vmmSide from '../../../vmm/tracking/bitmap-export.js';
import { encodeGenerationBitmap, trackingEpoch } from '../../../vmm/tracking/bitmap-export.js';
import { MIN_CHANGED_ONLY_GRANULARITY } from '../../../vmm/tracking/block-bitmap.js';
import { BlockChangeTracker } from '../../../vmm/tracking/block-tracker.js';
import { cbtPath, readCbt } from '../../../vmm/tracking/cbt-file.js';
import { ChangeTrackingObserver } from '../../../vmm/tracking/copy-before-write.js';
import { DiskTracking } from '../../../vmm/tracking/disk-tracking.js';
import { makeImage, readImage, removeDir, seededBytes, tempDir } from './fixtures.js';

const MiB = 1024 * 1024;
const GRANULE = 64 * 1024;

/** xorshift32: the same sequence for the same seed. */
function prng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x % n;
  };
}

/**
 * A tracker driven the way the virtio worker drives it (beforeWrite/afterWrite), remembering for every
 * granule written which generation was active, so that a bitmap's claim can be checked against history.
 */
class TrackedDisk {
  tracker: BlockChangeTracker;
  private writer: ChangeTrackingObserver;
  /** [granule, active generation at the write]. */
  readonly log: Array<[number, number]> = [];

  constructor(readonly image: string) {
    this.tracker = BlockChangeTracker.open(image);
    this.writer = new ChangeTrackingObserver(this.tracker.observerConfig());
  }

  get granules(): number {
    return this.tracker.bitmap.granules;
  }

  write(granule: number): void {
    this.writer.beforeWrite(granule * GRANULE, 512);
    this.writer.afterWrite(granule * GRANULE, 512);
    this.log.push([granule, this.tracker.bitmap.activeGeneration]);
  }

  /** A clean VMM stop and start. */
  restart(): void {
    this.writer.close();
    this.tracker.close();
    this.tracker = BlockChangeTracker.open(this.image);
    this.writer = new ChangeTrackingObserver(this.tracker.observerConfig());
  }

  close(): void {
    this.writer.close();
    this.tracker.close();
  }

  /**
   * Checks frozen `generation`'s exported bitmap: when trusted, every granule written after its base
   * generation was frozen and before it was frozen itself is set. Returns the decoded bitmap.
   */
  checkClaim(generation: number) {
    const exported = encodeGenerationBitmap(this.tracker, generation);
    const bitmap = decodeChangeBitmap(exported.bytes);
    const { trusted, base } = this.tracker.describe(generation);
    if (!trusted) {
      assert.equal(bitmap.baseEpoch, null, 'an untrusted generation claims no base');
      return { bitmap, trusted, base };
    }
    assert.equal(bitmap.baseEpoch, trackingEpoch(this.tracker.trackingId, base).toString('hex'));
    for (const [granule, active] of this.log) {
      if (active > base && active <= generation) {
        assert.ok(bitmap.bits[granule >> 3]! & (1 << (granule & 7)), `generation ${generation} (base ${base}) holds granule ${granule}, written in generation ${active}`);
      }
    }
    return { bitmap, trusted, base };
  }
}

describe('exported bitmaps: base epochs through failed consumers and restarts, and changed-only images', () => {
  let dir: string;
  let image: string;
  beforeEach(() => {
    dir = tempDir('epochs');
    image = join(dir, 'disk.img');
    makeImage(image, 2 * MiB);
  });
  afterEach(() => removeDir(dir));

  it('the VMM and the repository declare the same bitmap header', () => {
    assert.deepEqual({ ...vmmSide.CHANGE_BITMAP_HEADER }, { ...repositorySide.CHANGE_BITMAP_HEADER });
    assert.equal(vmmSide.CHANGE_BITMAP_MAGIC, repositorySide.CHANGE_BITMAP_MAGIC.toString('latin1'));
    assert.equal(vmmSide.CHANGE_BITMAP_VERSION, repositorySide.CHANGE_BITMAP_VERSION);
    assert.equal(vmmSide.CHANGE_BITMAP_FLAG_CHANGED_ONLY, repositorySide.CHANGE_BITMAP_FLAG_CHANGED_ONLY);
    assert.equal(vmmSide.EPOCH_BYTES, repositorySide.TRACKING_EPOCH_BYTES);
  });

  it('a backup fails and its generation is merged back: the next bitmap starts where the last successful backup ended', () => {
    const disk = new TrackedDisk(image);
    const first = disk.tracker.freeze(); // first start: untrusted, backed up whole
    disk.tracker.release(first.generation);
    disk.write(3);
    const failed = disk.tracker.freeze();
    assert.equal(failed.base, first.generation);
    disk.write(7); // the guest goes on while the backup runs, then the backup fails
    disk.tracker.mergeBack(failed.generation);
    disk.write(9);
    const next = disk.tracker.freeze();
    const { bitmap, trusted, base } = disk.checkClaim(next.generation);
    assert.equal(trusted, true);
    assert.equal(base, first.generation, 'the failed generation is joined onto the next one');
    assert.equal(bitmap.baseEpoch, trackingEpoch(disk.tracker.trackingId, first.generation).toString('hex'));
    disk.close();
  });

  it('a VM stopped cleanly between two backups (even with a backup still running) continues the same history', () => {
    const disk = new TrackedDisk(image);
    const first = disk.tracker.freeze();
    disk.tracker.release(first.generation); // backed up
    disk.write(1);
    disk.restart();
    assert.equal(readCbt(cbtPath(image))!.baseGeneration, first.generation, 'the tracking file records where the saved history starts');
    disk.write(2);
    const second = disk.tracker.freeze();
    assert.equal(disk.checkClaim(second.generation).base, first.generation, 'the restart does not move the base');
    disk.write(4);
    // Stopped while the backup of `second` had not finished: it counts as failed, its changes are kept.
    disk.restart();
    disk.write(5);
    const third = disk.tracker.freeze();
    const { trusted, base } = disk.checkClaim(third.generation);
    assert.equal(trusted, true);
    assert.equal(base, first.generation);
    disk.close();
  });

  it('one consumer after another, each succeeding or failing at random, with clean restarts: every bitmap starts at the last success', () => {
    const disk = new TrackedDisk(image);
    const rand = prng(20240501);
    let parent: number | null = null; // the generation the repository's latest point was taken at
    let trustedIncrementals = 0;
    for (let step = 0; step < 400; step++) {
      const op = rand(10);
      if (op < 6) {
        disk.write(rand(disk.granules));
      } else if (op < 9) {
        const g = disk.tracker.freeze();
        const { trusted, base } = disk.checkClaim(g.generation);
        assert.equal(trusted, parent !== null, `step ${step}: trusted exactly when a backup has succeeded`);
        if (trusted) {
          assert.equal(base, parent, `step ${step}: generation ${g.generation} starts at the last successful backup`);
          trustedIncrementals++;
        }
        if (rand(3) === 0) disk.tracker.mergeBack(g.generation);
        else {
          disk.tracker.release(g.generation);
          parent = g.generation;
        }
      } else {
        // A clean stop, sometimes while a backup is still in flight (it never gets to release).
        if (rand(2) === 0) disk.tracker.freeze();
        disk.restart();
      }
    }
    assert.ok(trustedIncrementals > 50, `${trustedIncrementals} trusted incrementals`);
    disk.close();
  });

  it('several points outstanding, released and merged in any order, with clean restarts: no bitmap ever claims a base its bits do not cover', () => {
    const disk = new TrackedDisk(image);
    const rand = prng(77);
    const frozen: number[] = [];
    let trustedClaims = 0;
    for (let step = 0; step < 600; step++) {
      const op = rand(12);
      if (op < 6) disk.write(rand(disk.granules));
      else if (op < 8 && frozen.length < 5) {
        const g = disk.tracker.freeze();
        if (disk.checkClaim(g.generation).trusted) trustedClaims++;
        frozen.push(g.generation);
      } else if (op < 11 && frozen.length) {
        const [g] = frozen.splice(rand(frozen.length), 1);
        if (rand(2)) disk.tracker.release(g!);
        else disk.tracker.mergeBack(g!);
      } else if (op === 11) {
        disk.restart();
        frozen.length = 0;
      }
      for (const g of frozen) disk.checkClaim(g);
    }
    assert.ok(trustedClaims > 30, `${trustedClaims} trusted bitmaps checked`);
    disk.close();
  });

  it('a changed-only export is refused for an untrusted point; the bitmap exported after an image says whether that image is changed-only', async () => {
    const disks = DiskTracking.open([{ path: image, readOnly: false }]);
    const [untrusted] = await disks.createPoints();
    assert.equal(untrusted!.trusted, false);
    assert.throws(
      () => disks.exportPoint(0, untrusted!.generation, join(dir, 'p1.img'), true),
      /generation \d+ of .* is untrusted .* no usable delta; export the whole point \(without --changed-only\)/,
    );
    disks.exportPoint(0, untrusted!.generation, join(dir, 'p1.img'));
    disks.exportBitmap(0, untrusted!.generation, join(dir, 'p1.bitmap'));
    assert.equal(decodeChangeBitmap(readFileSync(join(dir, 'p1.bitmap'))).changedOnly, false, 'a whole image: no flag');
    disks.release(0, untrusted!.generation);

    const [trusted] = await disks.createPoints();
    assert.equal(trusted!.trusted, true);
    disks.exportPoint(0, trusted!.generation, join(dir, 'p2.img'), true);
    const exported = disks.exportBitmap(0, trusted!.generation, join(dir, 'p2.bitmap'));
    assert.equal(exported.changedOnly, true);
    const bitmap = decodeChangeBitmap(readFileSync(join(dir, 'p2.bitmap')));
    assert.equal(bitmap.changedOnly, true, 'the bitmap written after a changed-only image says so');
    assert.equal(bitmap.baseEpoch, trackingEpoch(disks.tracker(0).trackingId, untrusted!.generation).toString('hex'));
    // The fix for a refused changed-only image: the same point exported whole, then its bitmap.
    disks.exportPoint(0, trusted!.generation, join(dir, 'p2-whole.img'));
    assert.equal(disks.exportBitmap(0, trusted!.generation, join(dir, 'p2-whole.bitmap')).changedOnly, false, 'the bitmap describes the image exported last');
    disks.merge(0, trusted!.generation);
    disks.close();
  });

  it('with 4 KiB tracking, a changed-only export holds whole 64 KiB granules around each change, and its bitmap names them', async () => {
    const disks = DiskTracking.open([{ path: image, readOnly: false }], { granularity: 4096 });
    const [first] = await disks.createPoints();
    disks.release(0, first!.generation); // backed up whole
    const writer = new ChangeTrackingObserver(disks.tracker(0).observerConfig());
    const fd = openSync(image, 'r+');
    for (const offset of [65536 + 8192, 5 * 65536 + 4096, 5 * 65536 + 8192, 2 * MiB - 4096]) {
      writer.beforeWrite(offset, 4096);
      writeSync(fd, seededBytes(offset, 4096), 0, 4096, offset);
      writer.afterWrite(offset, 4096);
    }
    closeSync(fd);
    const [point] = await disks.createPoints();
    disks.exportPoint(0, point!.generation, join(dir, 'changed.img'), true);
    disks.exportBitmap(0, point!.generation, join(dir, 'changed.bitmap'));
    const bitmap = decodeChangeBitmap(readFileSync(join(dir, 'changed.bitmap')));
    assert.equal(bitmap.granularity, MIN_CHANGED_ONLY_GRANULARITY);
    assert.equal(bitmap.changedOnly, true);
    const named = [...Array(bitmap.diskSize / bitmap.granularity).keys()].filter((g) => bitmap.bits[g >> 3]! & (1 << (g & 7)));
    assert.deepEqual(named, [1, 5, 31]);
    const exported = readImage(join(dir, 'changed.img'));
    const live = readImage(image);
    for (let g = 0; g < 32; g++) {
      const at = g * 65536;
      const expected = named.includes(g) ? live.subarray(at, at + 65536) : Buffer.alloc(65536);
      assert.ok(exported.subarray(at, at + 65536).equals(expected), `granule ${g}: ${named.includes(g) ? 'whole from the point' : 'a hole'}`);
    }
    writer.close();
    disks.release(0, point!.generation);
    disks.close();
  });
});
