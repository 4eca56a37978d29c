// Worker for concurrent-writes.test.ts: writes granule 0, 1, 2, ... once each through the write path's
// begin/end calls (as the virtio I/O worker does), then reports how many it wrote.
import { parentPort, workerData } from 'node:worker_threads';
import { BlockBitmap, type SharedBlockBitmap } from '../../../vmm/tracking/block-bitmap.js';

export interface SequentialWriterJob {
  shared: SharedBlockBitmap;
}

const { shared } = workerData as SequentialWriterJob;
const bitmap = BlockBitmap.attach(shared);
const noPointToPreserve = () => {};
for (let offset = 0; offset < shared.imageSize; offset += shared.granularity) {
  bitmap.beginWrite(offset, shared.granularity, noPointToPreserve);
  bitmap.endWrite(offset, shared.granularity);
}
parentPort!.postMessage(shared.imageSize / shared.granularity);
