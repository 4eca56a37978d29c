// Freezing generations while another thread writes as fast as it can: every write lands in exactly one
// generation, and generations follow the order of the writes (a write completed before a freeze is in the
// frozen generation, never in the next one, never lost). This is the race the write path's lock-free fast
// path must not lose.
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { BlockBitmap } from '../../../vmm/tracking/block-bitmap.js';
import { setRuns } from '../../../vmm/tracking/bits.js';
import type { SequentialWriterJob } from './sequential-writer.js';

describe('changed-block tracking: freezing while a writer thread writes', function () {
  this.timeout(120_000);

  it('every write is in exactly one generation, and the generations cut the write sequence in order', async () => {
    const granularity = 4096;
    const granules = 1_000_000;
    const bitmap = BlockBitmap.create(granules * granularity, granularity);
    const job: SequentialWriterJob = { shared: bitmap.shared };
    const worker = new Worker(new URL('./sequential-writer.js', import.meta.url), { workerData: job });
    let done = false;
    const finished = new Promise<number>((resolve, reject) => {
      worker.once('message', (n: number) => { done = true; resolve(n); });
      worker.once('error', reject);
    });

    const cuts: Array<Array<[number, number]>> = [];
    const takeGeneration = (generation: number, slot: number) => {
      cuts.push([...setRuns(bitmap.generationMap(slot), granules)]);
      bitmap.release(generation);
    };
    while (!done) {
      const generation = bitmap.freeze();
      takeGeneration(generation, bitmap.frozenSlot(generation));
      await new Promise((r) => setImmediate(r));
    }
    assert.equal(await finished, granules);
    const last = bitmap.freeze();
    takeGeneration(last, bitmap.frozenSlot(last));

    const nonEmpty = cuts.filter((runs) => runs.length > 0);
    assert.ok(nonEmpty.length >= 3, `the writer was cut by several freezes (${nonEmpty.length} non-empty generations)`);
    let next = 0;
    for (const runs of nonEmpty) {
      assert.equal(runs.length, 1, `a generation holds one contiguous stretch of the sequential writes, got ${JSON.stringify(runs.slice(0, 4))}`);
      const [first, count] = runs[0]!;
      assert.equal(first, next, 'each generation starts where the previous one ended: nothing lost, nothing twice');
      next = first + count;
    }
    assert.equal(next, granules, 'every write is in some generation');
  });
});
