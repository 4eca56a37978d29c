import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { decodeChangeBitmap } from '../../../replication/repository/change-bitmap.js';
import { recoveryControlOps } from '../../../vmm/snapshot/control-ops.js';
import { DiskTracking } from '../../../vmm/tracking/disk-tracking.js';
import { chunksOfRanges, differingChunks, makeImage, readImage, removeDir, replay, tempDir, type WriteLogEntry } from './fixtures.js';
import type { WriterJob } from './write-worker.js';

const MiB = 1024 * 1024;

function write(disks: DiskTracking, disk: number, count: number, seed: number): Promise<WriteLogEntry[]> {
  const job: WriterJob = {
    observer: disks.tracker(disk).observerConfig(), regionStart: 0, regionLength: 2 * MiB, maxLength: 64 * 1024, count, seed,
    control: new SharedArrayBuffer(8),
  };
  const w = new Worker(new URL('./write-worker.js', import.meta.url), { workerData: job });
  return new Promise((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
}

describe('the control-socket operations for disks (a two-disk VM: one writable, one read-only)', () => {
  let dir: string;
  let images: string[];
  beforeEach(() => {
    dir = tempDir('ops');
    images = [join(dir, 'a.img'), join(dir, 'b.img')];
    for (const i of images) makeImage(i, 4 * MiB);
  });
  afterEach(() => removeDir(dir));

  it('point create, read, export, bitmap export, merge and release work as a backup tool uses them', async () => {
    const disks = DiskTracking.open([{ path: images[0]!, readOnly: false }, { path: images[1]!, readOnly: true }]);
    assert.equal(disks.observer(1), undefined, 'a read-only disk is not tracked');
    const op = recoveryControlOps({ disks });
    const initial = readImage(images[0]!);
    const status = (await op({ op: 'tracking.status' }))!.disks as Array<{ disk: number; trusted: boolean; reason: string }>;
    assert.deepEqual(status.map((d) => [d.disk, d.trusted]), [[0, false]]);

    const first = await write(disks, 0, 50, 1);
    const { points } = (await op({ op: 'point.create' }))! as { points: Array<{ disk: number; generation: number; state: string }> };
    assert.deepEqual(points.map((p) => [p.disk, p.state]), [[0, 'open']]);
    const g = points[0]!.generation;
    const atPoint = Buffer.from(initial);
    replay(atPoint, first);
    await write(disks, 0, 50, 2); // the guest overwrites after the point

    const read = (await op({ op: 'point.read', disk: 0, point: g, offset: 65536, length: 131072 }))!;
    assert.ok(Buffer.from(read.data as string, 'base64').equals(atPoint.subarray(65536, 65536 + 131072)));
    await op({ op: 'point.export', disk: 0, point: g, out: join(dir, 'point.img') });
    assert.ok(readImage(join(dir, 'point.img')).equals(atPoint), 'the exported image is the disk at the point');
    const ranges = (await op({ op: 'point.ranges', disk: 0, point: g }))!.ranges as Array<{ offset: number; length: number }>;
    assert.deepEqual(chunksOfRanges(ranges, 65536), differingChunks(initial, atPoint, 65536));
    const exported = (await op({ op: 'bitmap.export', disk: 0, generation: g, out: join(dir, 'g.bitmap') }))!;
    assert.equal(exported.trusted, false);
    assert.equal(decodeChangeBitmap(readFileSync(join(dir, 'g.bitmap'))).baseEpoch, null);

    await op({ op: 'point.merge', disk: 0, point: g }); // the backup failed
    assert.deepEqual((await op({ op: 'point.list' }))!.points, []);
    const next = (await op({ op: 'bitmap.freeze', disk: 0 }))!;
    const nextRanges = disks.tracker(0).changedRanges(next.generation as number);
    for (const c of chunksOfRanges(ranges, 65536)) assert.ok(chunksOfRanges(nextRanges, 65536).includes(c), 'merged blocks are in the next generation');
    await op({ op: 'bitmap.release', disk: 0, generation: next.generation });

    assert.equal(await op({ op: 'vm.frobnicate' }), undefined, 'not one of ours: the socket reports the unknown op');
    await assert.rejects(op({ op: 'point.read', disk: 0, point: 999, offset: 0, length: 512 }), /no open point 999/);
    await assert.rejects(op({ op: 'point.create', disk: 1 }), /disk 1 .* is read-only/);
    await assert.rejects(op({ op: 'point.release', disk: 0, point: -1 }), /'point' must be a non-negative integer/);
    await assert.rejects(op({ op: 'snapshot.create', kind: 'full', out: dir }), /the VM is not running/);
    disks.close();
  });
});
