// virtio-blk over real sparse image files, driven through the real virtio-mmio registers, real guest
// memory and the real eventfds (the ones KVM's ioeventfd and irqfd would use), with the real I/O worker.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { BlkConfig, BlkDiscardFlag, BlkFeature, BlkReqType, BlkStatus, Feature, Interrupt, MmioReg, Status } from '../../../vmm/devices/virtio/abi.js';
import { defaultSerial } from '../../../vmm/devices/virtio/index.js';
import * as libc from '../../../vmm/sys/libc.js';
import { allocatedBytes, isZero, readImage, seededBytes, writeImage } from './data.js';
import { BlockRig, TestBlockDriver, VERSION_1 } from './driver.js';

const MiB = 1 << 20;
const bit = (b: number) => 1n << BigInt(b);

/** Waits until the device raises an interrupt whose status has `bits`, and acknowledges it. */
function waitForInterrupt(driver: TestBlockDriver, bits: number, timeoutMs = 20_000): number {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const isr = driver.read32(MmioReg.INTERRUPT_STATUS);
    if (isr & bits) {
      driver.write32(MmioReg.INTERRUPT_ACK, isr);
      return isr;
    }
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`no interrupt with bits ${bits}`);
    if (libc.pollReadable([driver.irqFd], left)[0]) libc.eventfdDrain(driver.irqFd);
  }
}

describe('virtio-blk: a guest driver and a sparse image', function () {
  let rig: BlockRig;
  let driver: TestBlockDriver;
  const size = 64 * MiB;

  beforeEach(async () => {
    rig = await BlockRig.create([{ size }]);
    driver = rig.driver;
    driver.init();
  });

  afterEach(async () => {
    await rig.close();
  });

  it('initialises like a guest: version 2 block device with the documented features and config space', () => {
    const features = driver.deviceFeatures();
    for (const b of [Feature.VERSION_1, Feature.RING_INDIRECT_DESC, BlkFeature.SEG_MAX, BlkFeature.BLK_SIZE, BlkFeature.FLUSH, BlkFeature.DISCARD, BlkFeature.WRITE_ZEROES]) {
      assert.ok(features & bit(b), `feature bit ${b} offered`);
    }
    assert.equal(features & bit(BlkFeature.RO), 0n, 'a writable disk does not offer RO');
    assert.equal(driver.status(), Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK);
    assert.equal(driver.capacitySectors(), size / 512);
    assert.equal(driver.readConfig32(BlkConfig.SEG_MAX), 254);
    assert.equal(driver.readConfig32(BlkConfig.BLK_SIZE), 512);
    assert.ok(driver.readConfig32(BlkConfig.MAX_DISCARD_SECTORS) > 0);
    assert.ok(driver.readConfig32(BlkConfig.MAX_DISCARD_SEG) > 0);
    assert.equal(driver.readConfig32(BlkConfig.DISCARD_SECTOR_ALIGNMENT), 8);
    assert.ok(driver.readConfig32(BlkConfig.MAX_WRITE_ZEROES_SECTORS) > 0);
    assert.ok(driver.readConfig32(BlkConfig.MAX_WRITE_ZEROES_SEG) > 0);
    assert.equal(driver.read32(MmioReg.QUEUE_NUM_MAX), 256);
    driver.write32(MmioReg.QUEUE_SEL, 1);
    assert.equal(driver.read32(MmioReg.QUEUE_NUM_MAX), 0, 'there is only one queue');
  });

  it('what the guest writes at many offsets and sizes lands exactly there in the image, and reads back the same', () => {
    const cases = [
      { offset: 0, length: 512, pieces: 1 },
      { offset: 512, length: 4096, pieces: 1 },
      { offset: 4096 * 3 + 1024, length: 64 * 1024, pieces: 3, indirect: true },
      { offset: 1 * MiB - 512, length: 1 * MiB, pieces: 17 },
      { offset: 7 * MiB + 3 * 512, length: 128 * 1024, pieces: 5, indirect: true },
      { offset: 33 * MiB, length: 2 * MiB, pieces: 64, indirect: true },
      { offset: size - 4096, length: 4096, pieces: 8 },
    ];
    cases.forEach((c, i) => {
      const data = seededBytes(100 + i, c.length);
      const w = driver.writeAt(c.offset, data, c);
      assert.equal(w.status, BlkStatus.OK, `write ${i}`);
      assert.deepEqual(readImage(rig.imagePath(), c.offset, c.length), data, `image holds write ${i} at ${c.offset}`);
    });
    cases.forEach((c, i) => {
      const r = driver.readAt(c.offset, c.length, { pieces: c.pieces + 1, indirect: !c.indirect });
      assert.equal(r.status, BlkStatus.OK);
      assert.equal(r.usedLength, c.length + 1, 'used length = data bytes + status byte');
      assert.deepEqual(r.data, seededBytes(100 + i, c.length), `read back ${i}`);
    });
    // Around the writes the image is still a hole of zeroes.
    assert.ok(isZero(readImage(rig.imagePath(), 48 * MiB, MiB)));
  });

  it('the guest reads exactly the pattern the host wrote into the image', () => {
    const data = seededBytes(7, 3 * MiB + 512);
    writeImage(rig.imagePath(), 5 * MiB + 512, data);
    const r = driver.readAt(5 * MiB + 512, data.length, { pieces: 12 });
    assert.equal(r.status, BlkStatus.OK);
    assert.deepEqual(r.data, data);
  });

  it('a batch of 100 requests kicked once all complete, in whatever order, with their data', () => {
    const writes = Array.from({ length: 50 }, (_, i) => {
      const buf = driver.buffer(8192);
      rig.memory.write(buf.gpa, seededBytes(1000 + i, 8192));
      return { type: BlkReqType.OUT, sector: (i * 3 * 8192) / 512, data: [buf] };
    });
    assert.ok(driver.run(writes).every((c) => c.status === BlkStatus.OK));
    const bufs = writes.map(() => driver.buffer(8192));
    const more = writes.map(() => driver.buffer(8192));
    const reads = [
      ...bufs.map((buf, i) => ({ type: BlkReqType.IN, sector: (i * 3 * 8192) / 512, data: TestBlockDriver.split(buf, 2), indirect: true })),
      ...more.map((buf, i) => ({ type: BlkReqType.IN, sector: (i * 3 * 8192) / 512, data: [buf] })),
    ];
    const done = driver.run(reads);
    assert.equal(done.length, 100);
    assert.ok(done.every((c) => c.status === BlkStatus.OK && c.usedLength === 8193));
    more.forEach((b, i) => assert.deepEqual(rig.memory.read(b.gpa, 8192), seededBytes(1000 + i, 8192)));
    bufs.forEach((b, i) => assert.deepEqual(rig.memory.read(b.gpa, 8192), seededBytes(1000 + i, 8192)));
  });

  it('the device asks not to be kicked only while it drains, so the guest kicks again afterwards', () => {
    driver.writeAt(0, seededBytes(1, 4096));
    assert.equal(driver.usedFlags(), 0, 'notifications are enabled once the queue is empty');
  });

  it('FLUSH completes with OK once the image is synced, after earlier writes are in the image', () => {
    const data = seededBytes(3, 64 * 1024);
    assert.equal(driver.writeAt(10 * MiB, data).status, BlkStatus.OK);
    assert.equal(driver.flush().status, BlkStatus.OK);
    assert.deepEqual(readImage(rig.imagePath(), 10 * MiB, data.length), data);
  });

  it('DISCARD punches a hole: the range reads as zeroes and the image gives the space back', () => {
    const path = rig.imagePath();
    const before = allocatedBytes(path);
    assert.equal(driver.writeAt(8 * MiB, seededBytes(9, 4 * MiB), { pieces: 4 }).status, BlkStatus.OK);
    assert.equal(driver.flush().status, BlkStatus.OK);
    const written = allocatedBytes(path);
    assert.ok(written >= before + 4 * MiB, `4 MiB allocated after the write (${before} -> ${written})`);
    const c = driver.rangeRequest(BlkReqType.DISCARD, [
      { offset: 8 * MiB, length: 2 * MiB },
      { offset: 10 * MiB, length: 2 * MiB },
    ]);
    assert.equal(c.status, BlkStatus.OK);
    assert.ok(allocatedBytes(path) <= before, `the image is sparse again (${allocatedBytes(path)} <= ${before})`);
    assert.ok(isZero(driver.readAt(8 * MiB, 4 * MiB).data));
    assert.equal(fs.statSync(path).size, size, 'the image keeps its size');
  });

  it('WRITE_ZEROES zeroes the range, with or without UNMAP, and keeps the image sparse', () => {
    const path = rig.imagePath();
    driver.writeAt(16 * MiB, seededBytes(11, 2 * MiB));
    const allocated = allocatedBytes(path);
    const c = driver.rangeRequest(BlkReqType.WRITE_ZEROES, [
      { offset: 16 * MiB, length: MiB, flags: BlkDiscardFlag.UNMAP },
      { offset: 17 * MiB + 4096, length: 8192 },
    ]);
    assert.equal(c.status, BlkStatus.OK);
    const image = readImage(path, 16 * MiB, 2 * MiB);
    assert.ok(isZero(image.subarray(0, MiB)), 'first range zeroed');
    assert.ok(isZero(image.subarray(MiB + 4096, MiB + 4096 + 8192)), 'second range zeroed');
    assert.deepEqual(image.subarray(MiB, MiB + 4096), seededBytes(11, 2 * MiB).subarray(MiB, MiB + 4096), 'bytes between the ranges kept');
    assert.ok(allocatedBytes(path) < allocated, 'zeroed ranges were deallocated');
  });

  it('DISCARD with flags it does not know, or with UNMAP, is UNSUPP; a range past the end is IOERR; nothing changes', () => {
    const data = seededBytes(12, MiB);
    driver.writeAt(20 * MiB, data);
    assert.equal(driver.rangeRequest(BlkReqType.DISCARD, [{ offset: 20 * MiB, length: MiB, flags: BlkDiscardFlag.UNMAP }]).status, BlkStatus.UNSUPP);
    assert.equal(driver.rangeRequest(BlkReqType.WRITE_ZEROES, [{ offset: 20 * MiB, length: MiB, flags: 0x80 }]).status, BlkStatus.UNSUPP);
    assert.equal(
      driver.rangeRequest(BlkReqType.DISCARD, [
        { offset: 20 * MiB, length: MiB },
        { offset: size - 4096, length: 8192 },
      ]).status,
      BlkStatus.IOERR,
    );
    assert.deepEqual(readImage(rig.imagePath(), 20 * MiB, MiB), data, 'the valid first segment was not applied either');
  });

  it('GET_ID answers the serial derived from the image path (LB + 18 hex digits of SHA-256)', () => {
    const { status, id } = driver.getId();
    assert.equal(status, BlkStatus.OK);
    const expected = defaultSerial(fs.realpathSync(rig.imagePath()));
    assert.match(expected, /^LB[0-9A-F]{18}$/);
    assert.equal(Buffer.from(id).toString('ascii'), expected);
    assert.equal(rig.set.disks[0]!.serial, expected);
  });

  it('requests past the end of the disk fail with IOERR and write nothing', () => {
    const cap = driver.capacitySectors();
    assert.equal(driver.readAt(cap * 512, 512).status, BlkStatus.IOERR);
    assert.equal(driver.readAt(cap * 512 - 512, 1024).status, BlkStatus.IOERR);
    assert.equal(driver.writeAt(cap * 512 - 512, seededBytes(5, 4096)).status, BlkStatus.IOERR);
    const huge = driver.one({ type: BlkReqType.OUT, sector: 2 ** 62, data: [driver.buffer(512)] });
    assert.equal(huge.status, BlkStatus.IOERR);
    assert.equal(fs.statSync(rig.imagePath()).size, size, 'the image did not grow');
    assert.ok(isZero(readImage(rig.imagePath(), size - 512, 512)));
  });

  it('a read of a length that is not whole sectors fails with IOERR; an unknown request type is UNSUPP', () => {
    assert.equal(driver.one({ type: BlkReqType.IN, sector: 0, data: [driver.buffer(100)] }).status, BlkStatus.IOERR);
    assert.equal(driver.one({ type: 2 /* SCSI passthrough, legacy */, sector: 0 }).status, BlkStatus.UNSUPP);
  });

  it('a buffer outside guest RAM fails that request with IOERR and the device keeps serving', () => {
    const outside = { gpa: rig.memory.size + 0x10000, length: 4096 };
    assert.equal(driver.one({ type: BlkReqType.IN, sector: 0, data: [outside] }).status, BlkStatus.IOERR);
    assert.equal(driver.one({ type: BlkReqType.OUT, sector: 0, data: [{ gpa: 2 ** 52, length: 512 }] }).status, BlkStatus.IOERR);
    assert.ok(isZero(readImage(rig.imagePath(), 0, 4096)), 'nothing was written');
    const data = seededBytes(21, 4096);
    assert.equal(driver.writeAt(0, data).status, BlkStatus.OK);
    assert.deepEqual(driver.readAt(0, 4096).data, data);
  });

  it('a chain with no reachable status byte, or a loop, sets NEEDS_RESET with a config interrupt; after a reset the disk works again', () => {
    driver.add({ type: BlkReqType.IN, sector: 0, data: [driver.buffer(512)], statusGpa: rig.memory.size + 4096 });
    driver.publish();
    driver.kick();
    const isr = waitForInterrupt(driver, Interrupt.CONFIG_CHANGE);
    assert.ok(isr & Interrupt.CONFIG_CHANGE);
    assert.ok(driver.status() & Status.NEEDS_RESET, 'NEEDS_RESET set');

    driver.init();
    const header = driver.buffer(16, 16);
    // Two descriptors pointing at each other: a loop the device must not follow forever.
    driver.add({ type: BlkReqType.IN, rawChain: [{ addr: header.gpa, len: 16, flags: 1, next: -1 }, { addr: header.gpa, len: 16, flags: 1, next: 0 }] });
    driver.publish();
    driver.kick();
    waitForInterrupt(driver, Interrupt.CONFIG_CHANGE);
    assert.ok(driver.status() & Status.NEEDS_RESET);

    driver.init();
    assert.equal(driver.status() & Status.NEEDS_RESET, 0, 'a reset clears NEEDS_RESET');
    const data = seededBytes(22, 8192);
    assert.equal(driver.writeAt(MiB, data).status, BlkStatus.OK);
    assert.deepEqual(driver.readAt(MiB, 8192).data, data);
  });

  it('malformed indirect tables (nested, endless, outside RAM, or without the feature) set NEEDS_RESET and nothing else happens', () => {
    const writeTable = (entries: { addr: number; len: number; flags: number; next: number }[]) => {
      const table = driver.buffer(entries.length * 16, 16);
      const bytes = new Uint8Array(entries.length * 16);
      const v = new DataView(bytes.buffer);
      entries.forEach((e, i) => {
        v.setBigUint64(i * 16, BigInt(e.addr), true);
        v.setUint32(i * 16 + 8, e.len, true);
        v.setUint16(i * 16 + 12, e.flags, true);
        v.setUint16(i * 16 + 14, e.next, true);
      });
      rig.memory.write(table.gpa, bytes);
      return table;
    };
    const header = driver.buffer(16, 16);
    const nested = writeTable([{ addr: header.gpa, len: 16, flags: 4, next: 0 }]);
    // 4096 entries, each pointing at the next: longer than any chain may be.
    const endless = writeTable(Array.from({ length: 4096 }, (_, i) => ({ addr: header.gpa, len: 16, flags: 1, next: (i + 1) % 4096 })));
    const cases: { name: string; chain: { addr: number; len: number; flags: number; next: number }[]; features?: (f: bigint) => bigint }[] = [
      { name: 'nested', chain: [{ addr: nested.gpa, len: 16, flags: 4, next: 0 }] },
      { name: 'endless', chain: [{ addr: endless.gpa, len: 4096 * 16, flags: 4, next: 0 }] },
      { name: 'outside RAM', chain: [{ addr: rig.memory.size, len: 64, flags: 4, next: 0 }] },
      { name: 'odd length', chain: [{ addr: nested.gpa, len: 15, flags: 4, next: 0 }] },
      { name: 'not negotiated', chain: [{ addr: nested.gpa, len: 16, flags: 4, next: 0 }], features: (f) => f & ~bit(Feature.RING_INDIRECT_DESC) },
    ];
    const imageBefore = readImage(rig.imagePath(), 0, MiB);
    for (const c of cases) {
      driver.init({ features: c.features });
      driver.add({ type: BlkReqType.IN, rawChain: c.chain });
      driver.publish();
      driver.kick();
      waitForInterrupt(driver, Interrupt.CONFIG_CHANGE);
      assert.ok(driver.status() & Status.NEEDS_RESET, c.name);
      assert.equal(driver.usedIdx(), 0, `${c.name}: nothing completed`);
    }
    assert.deepEqual(readImage(rig.imagePath(), 0, MiB), imageBefore);
    driver.init();
    assert.equal(driver.readAt(0, 4096).status, BlkStatus.OK);
  });

  it('rings outside RAM at DRIVER_OK set NEEDS_RESET instead of being served', () => {
    driver.reset();
    driver.write32(MmioReg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER);
    driver.write32(MmioReg.DRIVER_FEATURES_SEL, 1);
    driver.write32(MmioReg.DRIVER_FEATURES, 1);
    driver.write32(MmioReg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
    driver.write32(MmioReg.QUEUE_SEL, 0);
    driver.write32(MmioReg.QUEUE_NUM, 256);
    driver.write32(MmioReg.QUEUE_DESC_LOW, 0);
    driver.write32(MmioReg.QUEUE_DESC_HIGH, 0x10); // 64 GiB: not RAM
    driver.write32(MmioReg.QUEUE_READY, 1);
    driver.write32(MmioReg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK);
    waitForInterrupt(driver, Interrupt.CONFIG_CHANGE);
    assert.ok(driver.status() & Status.NEEDS_RESET);
  });

  it('a reset while requests are in flight returns once the device let go; it never touches the old rings again', () => {
    const writes = Array.from({ length: 40 }, (_, i) => {
      const buf = driver.buffer(MiB);
      return { type: BlkReqType.OUT, sector: (i * MiB) / 512, data: [buf] };
    });
    writes.forEach((w) => driver.add(w));
    driver.publish();
    driver.kick();
    driver.reset(); // the vCPU is blocked here until the I/O worker has let go
    const rings = driver.ringRange();
    const usedAfterReset = driver.usedIdx();
    assert.ok(usedAfterReset <= 40);
    // The guest reuses the ring memory for something else.
    rig.memory.slice(rings.gpa, rings.length).fill(0x5a);
    // A fresh queue elsewhere works, and the old ring memory is left alone.
    driver.init({ ringArea: 0x80000 });
    const data = seededBytes(31, 4096);
    assert.equal(driver.writeAt(40 * MiB, data).status, BlkStatus.OK);
    assert.deepEqual(driver.readAt(40 * MiB, 4096).data, data);
    assert.ok(rig.memory.slice(rings.gpa, rings.length).every((b) => b === 0x5a), 'old rings untouched after the reset');
  });

  it('a QueueNotify write that reaches the register (no ioeventfd) is served too', () => {
    const buf = driver.buffer(4096);
    driver.add({ type: BlkReqType.IN, sector: 0, data: [buf] });
    driver.publish();
    assert.equal(rig.set.stats()[0]!.notifyRegisterWrites, 0, 'kicks so far came through the eventfd');
    driver.kickThroughRegister();
    const [c] = driver.waitFor(1);
    assert.equal(c!.status, BlkStatus.OK);
    assert.equal(rig.set.stats()[0]!.notifyRegisterWrites, 1);
  });

  it('the used-buffer interrupt sets InterruptStatus bit 0 and InterruptACK clears it', () => {
    const buf = driver.buffer(512);
    driver.add({ type: BlkReqType.IN, sector: 0, data: [buf] });
    driver.publish();
    driver.kick();
    assert.ok(libc.pollReadable([driver.irqFd], 20_000)[0], 'irqfd signalled');
    libc.eventfdDrain(driver.irqFd);
    assert.equal(driver.read32(MmioReg.INTERRUPT_STATUS) & Interrupt.USED_BUFFER, Interrupt.USED_BUFFER);
    driver.write32(MmioReg.INTERRUPT_ACK, Interrupt.USED_BUFFER);
    assert.equal(driver.read32(MmioReg.INTERRUPT_STATUS), 0);
    assert.equal(driver.reap().length, 1);
    const stats = rig.set.stats()[0]!;
    assert.equal(stats.requestsCompleted, 1);
    assert.equal(stats.interruptsSent, 1);
    assert.equal(stats.deviceStatus & Status.DRIVER_OK, Status.DRIVER_OK);
  });

  it('a driver that does not accept VERSION_1 is refused at FEATURES_OK', () => {
    assert.throws(() => driver.init({ features: (offered) => offered & ~VERSION_1 }), /refused the features/);
    assert.throws(() => driver.init({ features: (offered) => offered | bit(40) }), /refused the features/);
  });
});

describe('virtio-blk: read-only disks', () => {
  it('a read-only disk offers RO, reads, and fails writes, discards and write-zeroes with IOERR; the image is unchanged', async () => {
    const rig = await BlockRig.create([{ size: 16 * MiB, readOnly: true }]);
    try {
      const driver = rig.driver;
      driver.init();
      assert.ok(driver.deviceFeatures() & bit(BlkFeature.RO));
      const path = rig.imagePath();
      const content = seededBytes(41, MiB);
      // The host may still change the image; the guest may only read it.
      writeImage(path, 0, content);
      const before = fs.readFileSync(path);
      assert.equal(driver.writeAt(0, seededBytes(42, 4096)).status, BlkStatus.IOERR);
      assert.equal(driver.rangeRequest(BlkReqType.DISCARD, [{ offset: 0, length: 4096 }]).status, BlkStatus.IOERR);
      assert.equal(driver.rangeRequest(BlkReqType.WRITE_ZEROES, [{ offset: 0, length: 4096 }]).status, BlkStatus.IOERR);
      assert.equal(driver.flush().status, BlkStatus.OK);
      const r = driver.readAt(0, MiB, { pieces: 4 });
      assert.equal(r.status, BlkStatus.OK);
      assert.deepEqual(r.data, content);
      assert.ok(fs.readFileSync(path).equals(before), 'image byte-for-byte unchanged');
    } finally {
      await rig.close();
    }
  });
});

describe('virtio-blk: several disks', () => {
  it('three disks served by one I/O worker keep their data apart', async () => {
    const rig = await BlockRig.create([{ size: 8 * MiB }, { size: 16 * MiB }, { size: 4 * MiB, readOnly: true }]);
    try {
      rig.drivers.forEach((d) => d.init());
      assert.deepEqual(rig.drivers.map((d) => d.capacitySectors()), [16384, 32768, 8192]);
      const [a, b, c] = rig.drivers as [TestBlockDriver, TestBlockDriver, TestBlockDriver];
      // Interleave: queue on both writable disks, kick both, then collect.
      for (let i = 0; i < 8; i++) {
        const bufA = a.buffer(4096);
        const bufB = b.buffer(4096);
        rig.memory.write(bufA.gpa, seededBytes(500 + i, 4096));
        rig.memory.write(bufB.gpa, seededBytes(600 + i, 4096));
        a.add({ type: BlkReqType.OUT, sector: i * 8, data: [bufA] });
        b.add({ type: BlkReqType.OUT, sector: i * 8, data: [bufB] });
      }
      a.publish();
      b.publish();
      a.kick();
      b.kick();
      assert.ok(a.waitFor(8).every((x) => x.status === BlkStatus.OK));
      assert.ok(b.waitFor(8).every((x) => x.status === BlkStatus.OK));
      assert.equal(c.writeAt(0, seededBytes(1, 512)).status, BlkStatus.IOERR);
      for (let i = 0; i < 8; i++) {
        assert.deepEqual(readImage(rig.imagePath(0), i * 4096, 4096), seededBytes(500 + i, 4096));
        assert.deepEqual(readImage(rig.imagePath(1), i * 4096, 4096), seededBytes(600 + i, 4096));
      }
      assert.ok(isZero(readImage(rig.imagePath(2), 0, 4 * MiB)));
      const ids = rig.drivers.map((d) => Buffer.from(d.getId().id).toString('ascii'));
      assert.equal(new Set(ids).size, 3, 'each disk has its own serial');
    } finally {
      await rig.close();
    }
  });
});

describe('virtio-blk: device state in a snapshot', () => {
  it('states saved at a quiesced instant and loaded into a new VMM resume the guest\'s queue where it was', async () => {
    const first = await BlockRig.create([{ size: 8 * MiB }]);
    let states: Uint8Array[] = [];
    let ram: Uint8Array = new Uint8Array(0);
    const path = first.imagePath();
    const keepDir = fs.mkdtempSync(join(os.tmpdir(), 'lifeboat-virtio-snap-'));
    const keep = join(keepDir, 'disk.img');
    try {
      first.driver.init();
      assert.equal(first.driver.writeAt(0, seededBytes(61, 8192)).status, BlkStatus.OK);
      assert.equal(first.driver.readAt(0, 8192).status, BlkStatus.OK);
      await first.set.quiesce('all', () => {
        states = first.set.saveStates();
        ram = first.memory.read(0, first.memory.size);
      });
      fs.copyFileSync(path, keep);
    } finally {
      await first.close();
    }
    const second = await BlockRig.create([{ path: keep }], 64 * MiB, (set, memory) => {
      memory.write(0, ram);
      set.loadStates(states);
    });
    try {
      const d = second.driver;
      d.adopt(first.driver);
      assert.equal(d.status(), Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK, 'the driver finds its device running');
      const usedBefore = d.usedIdx();
      assert.equal(usedBefore, 2);
      const data = seededBytes(62, 4096);
      assert.equal(d.writeAt(MiB, data).status, BlkStatus.OK);
      const r = d.readAt(0, 8192);
      assert.deepEqual(r.data, seededBytes(61, 8192), 'data written before the snapshot');
      assert.equal(d.usedIdx(), usedBefore + 2, 'the used ring continues from the saved position');
      assert.deepEqual(readImage(keep, MiB, 4096), data);
      assert.throws(() => second.set.loadStates(states), /before start/);
    } finally {
      await second.close();
      fs.rmSync(keepDir, { recursive: true, force: true });
    }
  });

  it('a state saved for a disk of another size is refused', async () => {
    const a = await BlockRig.create([{ size: 8 * MiB }]);
    const states = a.set.saveStates();
    await a.close();
    await assert.rejects(BlockRig.create([{ size: 16 * MiB }], 64 * MiB, (set) => set.loadStates(states)), /for a different device/);
  });
});
