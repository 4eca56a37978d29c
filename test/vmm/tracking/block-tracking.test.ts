import assert from 'node:assert/strict';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { BlockChangeTracker } from '../../../vmm/tracking/block-tracker.js';
import { CBT_HEADER, cbtPath, readCbt } from '../../../vmm/tracking/cbt-file.js';
import { pointSidePath } from '../../../vmm/tracking/copy-before-write.js';
import {
  chunksOfRanges, differingChunks, makeImage, readImage, removeDir, replay, tempDir, type WriteLogEntry,
} from './fixtures.js';
import type { WriterJob } from './write-worker.js';

const MiB = 1024 * 1024;

/** A first backup consumed the untrusted first generation (full compare): from here on, history is exact. */
function establishHistory(image: string): void {
  const t = BlockChangeTracker.open(image);
  t.release(t.freeze().generation);
  t.close();
}

/** Starts a writer thread (the virtio I/O worker's write path) on the tracked image. */
function startWriter(tracker: BlockChangeTracker, options: Partial<Omit<WriterJob, 'observer' | 'control'>> = {}) {
  const control = new SharedArrayBuffer(8);
  const job: WriterJob = {
    observer: tracker.observerConfig(), regionStart: 0, regionLength: tracker.imageSize, maxLength: 256 * 1024,
    count: 200, seed: 12345, control, ...options,
  };
  const worker = new Worker(new URL('./write-worker.js', import.meta.url), { workerData: job });
  const done = new Promise<WriteLogEntry[]>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  const words = new Int32Array(control);
  return {
    done,
    completed: () => Atomics.load(words, 1),
    stop: () => Atomics.store(words, 0, 1),
    async waitFor(n: number) {
      while (Atomics.load(words, 1) < n) await new Promise((r) => setTimeout(r, 2));
    },
  };
}

describe('changed block tracking (real image files, writes from a worker thread)', () => {
  let dir: string;
  let image: string;
  beforeEach(() => {
    dir = tempDir('cbt');
    image = join(dir, 'disk.img');
    makeImage(image, 16 * MiB);
  });
  afterEach(() => removeDir(dir));

  for (const granularity of [64 * 1024, 4 * 1024]) {
    it(`tracks exactly the ${granularity / 1024} KiB chunks whose bytes changed, compared byte by byte`, async () => {
      const before = readImage(image);
      const tracker = BlockChangeTracker.open(image, { granularity });
      const log = await startWriter(tracker, { count: 300, maxLength: 96 * 1024, seed: granularity }).done;
      assert.equal(log.length, 300);
      const frozen = tracker.freeze();
      const after = readImage(image);
      const expected = differingChunks(before, after, granularity);
      assert.ok(expected.length > 10, 'the workload changed many chunks');
      assert.deepEqual(chunksOfRanges(tracker.changedRanges(frozen.generation), granularity), expected);
      tracker.close();
    });
  }

  it('a first start has no history: untrusted, with the reason, until a consumer has read that generation', () => {
    const tracker = BlockChangeTracker.open(image);
    assert.equal(tracker.trusted, false);
    assert.match(tracker.reason, /no change history/);
    tracker.close();
    const unconsumed = BlockChangeTracker.open(image);
    assert.match(unconsumed.reason, /already untrusted and has not been consumed/);
    const first = unconsumed.freeze();
    assert.equal(first.trusted, false, 'the first generation cannot be trusted');
    assert.equal(unconsumed.freeze().trusted, true, 'the next one covers everything since the first');
    unconsumed.release(first.generation);
    unconsumed.close();
    // Closed with no untrusted generation left: the history is complete from here on.
    assert.equal(BlockChangeTracker.open(image).trusted, true);
  });

  it('a clean stop and start keeps the bitmap trusted and exact', async () => {
    establishHistory(image);
    const before = readImage(image);
    const first = BlockChangeTracker.open(image);
    assert.equal(first.trusted, true, first.reason);
    await startWriter(first, { count: 120, seed: 99 }).done;
    first.close();
    assert.equal(readCbt(cbtPath(image))!.state, 2, 'saved as clean');

    const second = BlockChangeTracker.open(image);
    assert.equal(second.trusted, true, second.reason);
    assert.equal(second.trackingId, first.trackingId, 'same history continues');
    const g = second.freeze();
    assert.equal(g.trusted, true);
    assert.deepEqual(chunksOfRanges(second.changedRanges(g.generation), 65536), differingChunks(before, readImage(image), 65536));
    second.close();
  });

  it('a VMM that dies without closing (kill -9) leaves the bitmap untrusted at the next start', async () => {
    establishHistory(image);
    const crashed = BlockChangeTracker.open(image);
    assert.equal(readCbt(cbtPath(image))!.state, 1, 'marked in use before any write is served');
    await startWriter(crashed, { count: 20 }).done;
    // No close(): the process "dies" here.
    const next = BlockChangeTracker.open(image);
    assert.equal(next.trusted, false);
    assert.match(next.reason, /did not stop cleanly/);
    assert.notEqual(next.trackingId, crashed.trackingId, 'a new history starts');
    assert.equal(next.freeze().trusted, false);
    next.close();
  });

  it('an image modified while no VMM ran is detected, and so is a damaged tracking file', () => {
    establishHistory(image);
    const untouched = BlockChangeTracker.open(image);
    assert.equal(untouched.trusted, true, untouched.reason);
    untouched.close();
    const edited = readFileSync(image);
    edited[100] ^= 0xff;
    writeFileSync(image, edited);
    const afterEdit = BlockChangeTracker.open(image);
    assert.equal(afterEdit.trusted, false);
    assert.match(afterEdit.reason, /modified while no VMM was running|different file/);
    afterEdit.close();

    const cbt = readFileSync(cbtPath(image));
    cbt[CBT_HEADER.granularity] ^= 1;
    writeFileSync(cbtPath(image), cbt);
    const damaged = BlockChangeTracker.open(image);
    assert.equal(damaged.trusted, false);
    assert.match(damaged.reason, /header checksum mismatch/);
    damaged.close();
  });

  it('a failed consumer merges its generation back: the next generation still has those blocks', async () => {
    const tracker = BlockChangeTracker.open(image);
    const base = readImage(image);
    await startWriter(tracker, { count: 60, seed: 5, regionStart: 0, regionLength: 4 * MiB }).done;
    const failed = tracker.freeze();
    const failedChunks = chunksOfRanges(tracker.changedRanges(failed.generation), 65536);
    await startWriter(tracker, { count: 60, seed: 6, regionStart: 8 * MiB, regionLength: 4 * MiB }).done;
    tracker.mergeBack(failed.generation);
    const next = tracker.freeze();
    const nextChunks = chunksOfRanges(tracker.changedRanges(next.generation), 65536);
    for (const c of failedChunks) assert.ok(nextChunks.includes(c), `chunk ${c} survived the merge`);
    assert.deepEqual(nextChunks, differingChunks(base, readImage(image), 65536));
    tracker.release(next.generation);
    assert.throws(() => tracker.changedRanges(next.generation), /no frozen generation/);
    tracker.close();
  });

  it('a clean shutdown keeps unreleased frozen generations (a consumer still reading) in the saved bitmap', async () => {
    establishHistory(image);
    const before = readImage(image);
    const tracker = BlockChangeTracker.open(image);
    await startWriter(tracker, { count: 40, seed: 8 }).done;
    tracker.freeze();
    await startWriter(tracker, { count: 40, seed: 9 }).done;
    tracker.close();
    const again = BlockChangeTracker.open(image, { granularity: 128 * 1024 });
    assert.equal(again.trusted, true, again.reason);
    const g = again.freeze();
    assert.deepEqual(chunksOfRanges(again.changedRanges(g.generation), 128 * 1024), differingChunks(before, readImage(image), 128 * 1024));
    again.close();
  });
});

describe('disk points (copy-before-write while the guest keeps writing)', () => {
  let dir: string;
  let image: string;
  beforeEach(() => {
    dir = tempDir('point');
    image = join(dir, 'disk.img');
    makeImage(image, 8 * MiB, 3);
  });
  afterEach(() => removeDir(dir));

  for (const granularity of [64 * 1024, 4 * 1024]) {
    it(`a point taken mid-workload reads back as the disk was at that instant (${granularity / 1024} KiB)`, async () => {
      const initial = readImage(image);
      const tracker = BlockChangeTracker.open(image, { granularity });
      tracker.freeze(); // generation 1 = history before the test: not ours
      // Heavy overwrites of a 2 MiB region, so most blocks of the point are overwritten after it.
      const writer = startWriter(tracker, { count: 100_000, seed: granularity + 1, regionStart: MiB, regionLength: 2 * MiB, maxLength: 32 * 1024 });
      await writer.waitFor(200);
      const point = tracker.createPoint();
      const reader = tracker.pointReader(point.generation);
      await writer.waitFor(writer.completed() + 300);
      const asOfPoint = reader.read(0, tracker.imageSize);
      const ranges = reader.changedRanges();
      await writer.waitFor(writer.completed() + 300);
      const middle = reader.read(MiB + 4096, 100_000);
      writer.stop();
      const log = await writer.done;

      const expected = Buffer.from(initial);
      replay(expected, log.filter((w) => w.generation <= point.generation));
      const afterPoint = log.filter((w) => w.generation > point.generation);
      assert.ok(afterPoint.length >= 600, `the guest kept writing after the point (${afterPoint.length} writes)`);
      assert.ok(!readImage(image).equals(expected), 'the live image has moved on');
      assert.ok(asOfPoint.equals(expected), 'the point reads back identical to the disk at that instant');
      assert.ok(middle.equals(expected.subarray(MiB + 4096, MiB + 4096 + 100_000)), 'unaligned ranges too');

      assert.deepEqual(chunksOfRanges(ranges, granularity), differingChunks(initial, expected, granularity));
      assert.ok(tracker.pointInfo(point.generation).preservedBytes > 0);
      reader.close();
      tracker.releasePoint(point.generation);
      assert.equal(existsSync(pointSidePath(image, point.generation)), false, 'side file deleted on release');
      tracker.close();
    });
  }

  it('merging a point back keeps its changes, and side files of a crashed VMM are cleaned up', async () => {
    const tracker = BlockChangeTracker.open(image);
    await startWriter(tracker, { count: 30, seed: 77 }).done;
    const p = tracker.createPoint();
    const pointChunks = chunksOfRanges(tracker.changedRanges(p.generation), 65536);
    await startWriter(tracker, { count: 30, seed: 78, regionStart: 0, regionLength: MiB }).done;
    tracker.mergePoint(p.generation);
    const next = tracker.freeze();
    const nextChunks = chunksOfRanges(tracker.changedRanges(next.generation), 65536);
    for (const c of pointChunks) assert.ok(nextChunks.includes(c));

    const orphan = tracker.createPoint();
    assert.ok(existsSync(pointSidePath(image, orphan.generation)));
    // Crash: no close. The next start deletes the orphaned side file.
    BlockChangeTracker.open(image).close();
    assert.deepEqual(readdirSync(dir).filter((n) => n.endsWith('.cbw')), []);
  });

  it('a point whose side file cannot be written is reported broken; the guest write still happens (fault injected: read-only side-file fd)', async () => {
    const tracker = BlockChangeTracker.open(image);
    const p = tracker.createPoint();
    // Make copy-before-write fail the way a full filesystem would: the side file fd is read-only now.
    const slot = tracker.bitmap.findPoint(p.generation);
    const ro = openSync(pointSidePath(image, p.generation), 'r');
    const rwFd = tracker.bitmap.pointFd(slot);
    tracker.bitmap.control.set(`pointFd${slot}` as never, ro);
    const log = await startWriter(tracker, { count: 5, seed: 4 }).done;
    tracker.bitmap.control.set(`pointFd${slot}` as never, rwFd);
    closeSync(ro);
    const written = Buffer.from(readImage(image));
    const copy = Buffer.from(written);
    replay(copy, log);
    assert.ok(written.equals(copy), 'guest writes reached the image');
    assert.equal(tracker.pointInfo(p.generation).state, 'broken');
    assert.throws(() => tracker.pointReader(p.generation), /broken.*errno 9/);
    tracker.mergePoint(p.generation);
    tracker.close();
  });
});
