// A stand-in for the virtio I/O worker: a thread that writes the image through the change-tracking
// observer exactly as the virtio-blk write path does (beforeWrite, pwrite, afterWrite), on real files.
import { closeSync, openSync, writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { BlockBitmap } from '../../../vmm/tracking/block-bitmap.js';
import { ChangeTrackingObserver, type ChangeTrackingObserverConfig } from '../../../vmm/tracking/copy-before-write.js';
import { seededBytes, type WriteLogEntry } from './fixtures.js';

export interface WriterJob {
  observer: ChangeTrackingObserverConfig;
  /** Writes land in [regionStart, regionStart + regionLength). */
  regionStart: number;
  regionLength: number;
  maxLength: number;
  count: number;
  seed: number;
  /** Int32Array control: [0] = stop request (1 = stop), [1] = writes completed. */
  control: SharedArrayBuffer;
}

const job = workerData as WriterJob;
const observer = new ChangeTrackingObserver(job.observer);
const bitmap = BlockBitmap.attach(job.observer.bitmap);
const control = new Int32Array(job.control);
const fd = openSync(job.observer.imagePath, 'r+');
const log: WriteLogEntry[] = [];
let x = job.seed >>> 0 || 7;
const rand = () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };

for (let i = 0; i < job.count && Atomics.load(control, 0) === 0; i++) {
  const sectors = job.regionLength / 512;
  const length = Math.min(512 * (1 + (rand() % (job.maxLength / 512))), job.regionLength);
  const offset = job.regionStart + 512 * (rand() % (sectors - length / 512 + 1));
  const seed = rand();
  observer.beforeWrite(offset, length);
  const generation = bitmap.activeGeneration;
  writeSync(fd, seededBytes(seed, length), 0, length, offset);
  log.push({ offset, length, seed, generation });
  observer.afterWrite(offset, length);
  Atomics.add(control, 1, 1);
}
closeSync(fd);
observer.close();
parentPort!.postMessage(log);
