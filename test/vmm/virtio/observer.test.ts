// The hooks change tracking relies on: a write observer that sees every change to the image, and a
// quiesce point at which no request is half done.
import assert from 'node:assert/strict';
import { BlkDiscardFlag, BlkReqType, BlkStatus } from '../../../vmm/devices/virtio/abi.js';
import * as libc from '../../../vmm/sys/libc.js';
import { isZero, readImage, seededBytes } from './data.js';
import { BlockRig } from './driver.js';
import { readRecords, recordingLog } from './fixtures/recording-observer.js';

const MiB = 1 << 20;
const observerModule = new URL('./fixtures/recording-observer.js', import.meta.url).href;

describe('virtio-blk: write observers for change tracking', () => {
  it('an observer given at open sees every write, discard and write-zeroes, before and after, in order; reads are not writes', async () => {
    const log = recordingLog();
    const rig = await BlockRig.create([{ size: 32 * MiB, spec: { observer: { module: observerModule, options: { log } } } }]);
    try {
      const d = rig.driver;
      d.init();
      assert.equal(d.writeAt(4096, seededBytes(1, 8192), { pieces: 2 }).status, BlkStatus.OK);
      assert.equal(d.readAt(0, MiB).status, BlkStatus.OK);
      assert.equal(d.flush().status, BlkStatus.OK);
      assert.equal(d.rangeRequest(BlkReqType.DISCARD, [{ offset: MiB, length: 2 * MiB }, { offset: 8 * MiB, length: 4096 }]).status, BlkStatus.OK);
      assert.equal(d.rangeRequest(BlkReqType.WRITE_ZEROES, [{ offset: 16 * MiB, length: 512, flags: BlkDiscardFlag.UNMAP }]).status, BlkStatus.OK);
      assert.equal(d.writeAt(32 * MiB - 512, seededBytes(2, 1024)).status, BlkStatus.IOERR, 'a write past the end is refused before the observer hears of it');
      assert.deepEqual(readRecords(log), [
        { kind: 'before', offset: 4096, length: 8192 },
        { kind: 'after', offset: 4096, length: 8192 },
        { kind: 'before', offset: MiB, length: 2 * MiB },
        { kind: 'after', offset: MiB, length: 2 * MiB },
        { kind: 'before', offset: 8 * MiB, length: 4096 },
        { kind: 'after', offset: 8 * MiB, length: 4096 },
        { kind: 'before', offset: 16 * MiB, length: 512 },
        { kind: 'after', offset: 16 * MiB, length: 512 },
      ]);
    } finally {
      await rig.close();
    }
  });

  it('when the observer cannot record a change, the guest write fails with IOERR and the image is unchanged', async () => {
    const log = recordingLog();
    const rig = await BlockRig.create([{ size: 8 * MiB, spec: { observer: { module: observerModule, options: { log, failBeforeWrite: true } } } }]);
    try {
      rig.driver.init();
      assert.equal(rig.driver.writeAt(0, seededBytes(3, 4096)).status, BlkStatus.IOERR);
      assert.ok(isZero(readImage(rig.imagePath(), 0, 4096)));
    } finally {
      await rig.close();
    }
  });

  it('an observer installed while the VM runs sees the writes after it, and none after it is removed', async () => {
    const rig = await BlockRig.create([{ size: 8 * MiB }, { size: 8 * MiB }]);
    try {
      const [a, b] = rig.drivers;
      a!.init();
      b!.init();
      a!.writeAt(0, seededBytes(4, 512));
      const log = recordingLog();
      await rig.set.setObserver(1, { module: observerModule, options: { log } });
      a!.writeAt(512, seededBytes(5, 512));
      b!.writeAt(1024, seededBytes(6, 512));
      await rig.set.setObserver(1, null);
      assert.equal(new Int32Array(log, 0, 3)[2], 1, 'the removed observer was closed');
      b!.writeAt(2048, seededBytes(7, 512));
      assert.deepEqual(readRecords(log), [
        { kind: 'before', offset: 1024, length: 512 },
        { kind: 'after', offset: 1024, length: 512 },
      ]);
      assert.equal(new Int32Array(log, 0, 2)[1], 1, 'the factory was told which disk it observes');
      await assert.rejects(rig.set.setObserver(0, { module: '/nonexistent/observer.js' }), /Cannot find module|ERR_MODULE_NOT_FOUND/);
    } finally {
      await rig.close();
    }
  });

  it('an observer module that cannot be loaded fails start() with its reason, and the set still stops cleanly', async () => {
    await assert.rejects(
      BlockRig.create([{ size: MiB, spec: { observer: { module: '/nonexistent/tracker.js' } } }]),
      /virtio-blk I\/O worker failed to start: .*tracker\.js/,
    );
  });

  it('quiesce: while the callback runs no request of that disk is served, other disks keep going, and queued requests complete after', async () => {
    const rig = await BlockRig.create([{ size: 8 * MiB }, { size: 8 * MiB }]);
    try {
      const [a, b] = rig.drivers;
      a!.init();
      b!.init();
      const data = seededBytes(8, 64 * 1024);
      let usedDuring = -1;
      const result = await rig.set.quiesce([0], async () => {
        const buf = a!.buffer(data.length);
        rig.memory.write(buf.gpa, data);
        a!.add({ type: BlkReqType.OUT, sector: 0, data: [buf] });
        a!.publish();
        a!.kick();
        // Disk 1 is not quiesced: it completes a request meanwhile.
        assert.equal(b!.writeAt(0, seededBytes(9, 4096)).status, BlkStatus.OK);
        await new Promise((r) => setTimeout(r, 50));
        usedDuring = a!.usedIdx();
        assert.ok(isZero(readImage(rig.imagePath(0), 0, data.length)), 'nothing written to the quiesced disk');
        return 'frozen';
      }, { sync: true });
      assert.equal(result, 'frozen');
      assert.equal(usedDuring, 0, 'no completion on the quiesced disk during the callback');
      const [c] = a!.waitFor(1);
      assert.equal(c!.status, BlkStatus.OK);
      assert.deepEqual(readImage(rig.imagePath(0), 0, data.length), data);
    } finally {
      await rig.close();
    }
  });

  it('quiesce of all disks runs the callback after the requests in hand completed', async () => {
    const rig = await BlockRig.create([{ size: 64 * MiB }]);
    try {
      const d = rig.driver;
      d.init();
      const count = 16;
      for (let i = 0; i < count; i++) {
        const buf = d.buffer(MiB);
        rig.memory.write(buf.gpa, seededBytes(100 + i, MiB));
        d.add({ type: BlkReqType.OUT, sector: (i * MiB) / 512, data: [buf] });
      }
      d.publish();
      d.kick();
      const snapshot = await rig.set.quiesce('all', () => {
        // Whatever completed is entirely in the image; whatever did not has not touched it.
        const completed = d.usedIdx();
        const state: boolean[] = [];
        for (let i = 0; i < count; i++) {
          const image = readImage(rig.imagePath(), i * MiB, MiB);
          const whole = Buffer.from(image).equals(Buffer.from(seededBytes(100 + i, MiB)));
          assert.ok(whole || isZero(image), `request ${i} is all or nothing at the quiesce point`);
          state.push(whole);
        }
        return { completed, written: state.filter(Boolean).length };
      });
      assert.equal(snapshot.written, snapshot.completed, 'exactly the completed requests are in the image');
      assert.ok(libc.pollReadable([d.irqFd], 20_000)[0]);
      assert.equal(d.waitFor(count).length, count);
    } finally {
      await rig.close();
    }
  });
});
