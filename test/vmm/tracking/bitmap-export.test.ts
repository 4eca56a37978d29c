import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeChangeBitmap, markDirtyChunks } from '../../../replication/repository/change-bitmap.js';
import { exportGenerationBitmap, trackingEpoch } from '../../../vmm/tracking/bitmap-export.js';
import { BlockChangeTracker } from '../../../vmm/tracking/block-tracker.js';
import { ChangeTrackingObserver } from '../../../vmm/tracking/copy-before-write.js';
import { chunksOfRanges, makeImage, removeDir, tempDir } from './fixtures.js';

describe('exporting a generation for `lifeboat backup --bitmap` (read back by the repository code)', () => {
  let dir: string;
  let image: string;
  beforeEach(() => {
    dir = tempDir('export');
    image = join(dir, 'disk.img');
    makeImage(image, 3 * 1024 * 1024 + 4096); // not a multiple of the granularity
  });
  afterEach(() => removeDir(dir));

  it('the backup sees exactly the tracked chunks, with epochs that chain generation to generation', () => {
    const tracker = BlockChangeTracker.open(image);
    const writer = new ChangeTrackingObserver(tracker.observerConfig());
    const touch = (offset: number, length: number) => { writer.beforeWrite(offset, length); writer.afterWrite(offset, length); };
    touch(0, 512);
    const first = tracker.freeze();
    touch(70_000, 200_000);
    touch(3 * 1024 * 1024, 4096); // the short last granule
    const second = tracker.freeze();

    const e1 = exportGenerationBitmap(tracker, first.generation, join(dir, 'g1.bitmap'));
    const e2 = exportGenerationBitmap(tracker, second.generation, join(dir, 'g2.bitmap'));
    assert.equal(e1.trusted, false, 'a first start is untrusted');
    const b1 = decodeChangeBitmap(readFileSync(join(dir, 'g1.bitmap')));
    const b2 = decodeChangeBitmap(readFileSync(join(dir, 'g2.bitmap')));
    assert.equal(b1.baseEpoch, null, 'untrusted: the base epoch is unspecified');
    assert.equal(b2.baseEpoch, b1.epoch, 'generation 2 starts where generation 1 ended');
    assert.equal(b2.epoch, trackingEpoch(tracker.trackingId, second.generation).toString('hex'));
    assert.equal(b2.diskSize, tracker.imageSize);
    assert.equal(b2.granularity, 65536);

    const chunk = 65536;
    const dirty = new Uint8Array(Math.ceil(tracker.imageSize / chunk));
    markDirtyChunks(b2, chunk, dirty);
    const marked = [...dirty.keys()].filter((i) => dirty[i]);
    assert.deepEqual(marked, chunksOfRanges(tracker.changedRanges(second.generation), chunk));
    assert.deepEqual(marked, [1, 2, 3, 4, 48]);
    writer.close();
    tracker.close();
  });
});
