import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { CBT_STATE_CLEAN, CBT_STATE_IN_USE, cbtPath, readCbt } from '../../../vmm/tracking/cbt-file.js';
import { ChangeTrackingObserver } from '../../../vmm/tracking/copy-before-write.js';
import { DiskTracking } from '../../../vmm/tracking/disk-tracking.js';
import { makeImage, readImage, removeDir, tempDir, type WriteLogEntry } from './fixtures.js';
import type { WriterJob } from './write-worker.js';

const MiB = 1024 * 1024;

/** A thread that writes the image through the tracking observer, as the virtio I/O worker does. */
function writeFromWorker(disks: DiskTracking, count: number, seed: number): Promise<WriteLogEntry[]> {
  const job: WriterJob = {
    observer: disks.tracker(0).observerConfig(), regionStart: 0, regionLength: 2 * MiB, maxLength: 64 * 1024, count, seed,
    control: new SharedArrayBuffer(8),
  };
  const w = new Worker(new URL('./write-worker.js', import.meta.url), { workerData: job });
  return new Promise((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
}

/** A first run consumed the untrusted first generation and stopped cleanly: the saved history is trusted. */
function establishHistory(image: string): void {
  const disks = DiskTracking.open([{ path: image, readOnly: false }]);
  disks.release(0, disks.freeze(0).generation);
  disks.close();
}

const savedState = (image: string) => readCbt(cbtPath(image))!.state;

describe('a VMM marks its tracking file in use from the disk-writing thread, before that thread writes', () => {
  let dir: string;
  let image: string;
  beforeEach(() => {
    dir = tempDir('in-use');
    image = join(dir, 'disk.img');
    makeImage(image, 4 * MiB);
  });
  afterEach(() => removeDir(dir));

  it('the writer marks the file in use before its first write; kill -9 after that makes the next start untrusted', async () => {
    establishHistory(image);
    const crashed = DiskTracking.open([{ path: image, readOnly: false }]);
    assert.equal(savedState(image), CBT_STATE_CLEAN, 'open leaves the fsyncs to the writer (off the path to the first instruction)');
    const log = await writeFromWorker(crashed, 30, 7);
    assert.equal(log.length, 30);
    assert.equal(savedState(image), CBT_STATE_IN_USE, 'marked in use by the writer');
    // No close(): the process "dies" here.
    const next = DiskTracking.open([{ path: image, readOnly: false }]);
    const [status] = next.status();
    assert.equal(status!.trusted, false);
    assert.match(status!.reason, /did not stop cleanly/);
    next.close();
  });

  it('a VMM killed before any writer ran wrote nothing: the saved history stays trusted and exact', async () => {
    establishHistory(image);
    const before = readImage(image);
    const first = DiskTracking.open([{ path: image, readOnly: false }]);
    const trackingId = first.status()[0]!.trackingId;
    // Killed here, before its I/O worker started: no close().
    const next = DiskTracking.open([{ path: image, readOnly: false }]);
    const [status] = next.status();
    assert.equal(status!.trusted, true, status!.reason);
    assert.equal(status!.trackingId, trackingId, 'the same history continues');
    await writeFromWorker(next, 10, 3);
    const g = next.freeze(0);
    assert.equal(g.trusted, true);
    assert.ok(next.tracker(0).changedRanges(g.generation).length > 0);
    assert.notDeepEqual(readImage(image), before);
    next.close();
  });

  it('a generation handed to a consumer before any writer ran marks the file in use first (a crash then cannot hand it out again)', () => {
    establishHistory(image);
    const disks = DiskTracking.open([{ path: image, readOnly: false }]);
    assert.equal(savedState(image), CBT_STATE_CLEAN);
    const frozen = disks.freeze(0);
    assert.equal(savedState(image), CBT_STATE_IN_USE, 'in use before the generation number leaves the tracker');
    // Killed now: the next start must begin a new history rather than reuse that generation number.
    const next = DiskTracking.open([{ path: image, readOnly: false }]);
    assert.equal(next.status()[0]!.trusted, false);
    assert.ok(next.freeze(0).generation >= frozen.generation);
    next.close();
  });

  it('a writer that cannot mark the file in use refuses to start, and the image is untouched', async () => {
    establishHistory(image);
    const before = readImage(image);
    const disks = DiskTracking.open([{ path: image, readOnly: false }]);
    // A real fault: the tracking file's name is taken by a non-empty directory, so the rename fails.
    const saved = readFileSync(cbtPath(image));
    renameSync(cbtPath(image), join(dir, 'saved-cbt'));
    mkdirSync(cbtPath(image));
    writeFileSync(join(cbtPath(image), 'x'), 'x');
    await assert.rejects(writeFromWorker(disks, 10, 5), /could not mark change tracking of the image in use/);
    assert.deepEqual(readImage(image), before, 'nothing was written');
    assert.throws(() => new ChangeTrackingObserver(disks.tracker(0).observerConfig()), /could not mark change tracking/, 'a later writer tries again');
    rmSync(cbtPath(image), { recursive: true });
    writeFileSync(cbtPath(image), saved);
    await writeFromWorker(disks, 5, 6);
    assert.equal(savedState(image), CBT_STATE_IN_USE, 'written once the fault is gone');
    disks.close();
    assert.equal(savedState(image), CBT_STATE_CLEAN);
  });
});
