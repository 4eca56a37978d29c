// A booting VMM starts its disks' I/O worker only at the guest's first queue notification
// (VirtioBlockSet.startOnFirstNotification): the guest's requests must not notice, and a hold taken
// before the worker exists (a snapshot's or a point's quiesce) must hold its first request too.
import assert from 'node:assert/strict';
import { BlkReqType, BlkStatus } from '../../../vmm/devices/virtio/abi.js';
import { VirtioMmioState } from '../../../vmm/devices/virtio/state.js';
import { readImage, seededBytes } from './data.js';
import { BlockRig, TestBlockDriver } from './driver.js';

const MiB = 1 << 20;

async function until(what: string, done: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Queues a write of `data` at `offset` and notifies the device, without waiting for it. */
function submitWrite(driver: TestBlockDriver, offset: number, data: Uint8Array): void {
  const buf = driver.buffer(data.length);
  driver.memory.write(buf.gpa, data);
  driver.add({ type: BlkReqType.OUT, sector: offset / 512, data: [buf] });
  driver.publish();
  driver.kick();
}

describe('virtio-blk: an I/O worker started at the first queue notification', function () {
  this.timeout(60_000);

  it('nothing starts while the driver only sets the device up; its first request starts the worker and every request is served', async () => {
    const rig = await BlockRig.create([{ size: 8 * MiB }], 64 * MiB, undefined, 'on-first-notification');
    try {
      rig.driver.init();
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(rig.set.ioWorkerStarted, false, 'driver set-up (status writes, DRIVER_OK) does not start the worker');
      const first = seededBytes(71, 8192);
      submitWrite(rig.driver, 0, first);
      await rig.serving; // the main thread spawns the worker: its event loop must run (this driver waits synchronously)
      assert.equal(rig.set.ioWorkerStarted, true);
      const [done] = rig.driver.waitFor(1);
      assert.equal(done!.status, BlkStatus.OK, 'the first request is served');
      for (let i = 1; i <= 20; i++) assert.equal(rig.driver.writeAt(i * 65536, seededBytes(71 + i, 4096)).status, BlkStatus.OK);
      const r = rig.driver.readAt(0, 8192);
      assert.equal(r.status, BlkStatus.OK);
      assert.deepEqual(r.data, first);
      assert.deepEqual(readImage(rig.imagePath(), 20 * 65536, 4096), seededBytes(91, 4096));
    } finally {
      await rig.close();
    }
  });

  it('a hold taken before the worker exists holds the request that starts it, until the hold ends', async () => {
    const rig = await BlockRig.create([{ size: 8 * MiB }], 64 * MiB, undefined, 'on-first-notification');
    try {
      rig.driver.init();
      const state = new VirtioMmioState(rig.set.descriptors()[0]!.state);
      const data = seededBytes(81, 4096);
      await rig.set.quiesce('all', async () => {
        submitWrite(rig.driver, MiB, data);
        await rig.serving;
        // The worker has claimed the queue (ioServing) while the hold applies: the request stays untaken.
        await until('the worker claimed the queue', () => state.get('ioServing') === 1);
        assert.equal(rig.driver.usedIdx(), 0, 'no request completed during the hold');
        assert.deepEqual(readImage(rig.imagePath(), MiB, 4096), new Uint8Array(4096), 'nothing written during the hold');
      });
      const [done] = rig.driver.waitFor(1);
      assert.equal(done!.status, BlkStatus.OK, 'served once the hold ended');
      assert.deepEqual(readImage(rig.imagePath(), MiB, 4096), data);
    } finally {
      await rig.close();
    }
  });

  it('a set stopped before any notification never starts the worker and stops cleanly', async () => {
    const rig = await BlockRig.create([{ size: 8 * MiB }], 64 * MiB, undefined, 'on-first-notification');
    rig.driver.init();
    await rig.close();
    await rig.serving;
    assert.equal(rig.set.ioWorkerStarted, false);
  });
});
