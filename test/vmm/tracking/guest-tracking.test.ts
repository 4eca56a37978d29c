import assert from 'node:assert/strict';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeChangeBitmap, type ChangeBitmap } from '../../../replication/repository/change-bitmap.js';
import { guestImage, requireKvm } from '../../helpers/vmm.js';
import { controlOp, LifeboatVm } from '../snapshot/vm-process.js';
import { differingChunks, makeImage, readImage, removeDir, tempDir } from './fixtures.js';

const MiB = 1024 * 1024;
const DISK_SIZE = 32 * MiB;

/** Set granules of an exported change bitmap. */
function setGranules(b: ChangeBitmap): number[] {
  const out: number[] = [];
  for (let g = 0; g * b.granularity < b.diskSize; g++) if (b.bits[g >> 3]! & (1 << (g & 7))) out.push(g);
  return out;
}

/** `disk write` commands at seeded random 512-byte-aligned offsets and lengths. */
function randomWrites(count: number, seed: number, region = DISK_SIZE): string[] {
  let x = seed >>> 0 || 1;
  const rand = () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
  return Array.from({ length: count }, () => {
    const length = 512 * (1 + (rand() % 160));
    const offset = 512 * (rand() % ((region - length) / 512));
    return `disk write 0 ${offset} ${length} ${rand()}`;
  });
}

/** Types the commands at the guest's shell, checking each write succeeded. */
async function typeWrites(vm: LifeboatVm, commands: string[]): Promise<void> {
  for (const c of commands) assert.match(await vm.command(c), /disk write ok/, c);
}

/** Boots the guest on `disk`, runs `commands` at its shell, leaves it there with a control socket. */
async function vmWriting(dir: string, disk: string, commands: string[], extra: string[] = []): Promise<LifeboatVm> {
  const vm = new LifeboatVm('run', ['--disk', disk, '--mem', '128', ...extra], dir);
  try {
    await vm.waitFor(/lifeboat> $/, 60_000);
    await typeWrites(vm, commands);
  } catch (err) {
    await vm.kill9();
    throw err;
  }
  return vm;
}

async function freezeAndExport(vm: LifeboatVm, out: string): Promise<{ generation: number; trusted: boolean; bitmap: ChangeBitmap }> {
  const frozen = await controlOp(vm.socket, { op: 'bitmap.freeze', disk: 0 });
  const generation = frozen.generation as number;
  await controlOp(vm.socket, { op: 'bitmap.export', disk: 0, generation, out });
  return { generation, trusted: frozen.trusted as boolean, bitmap: decodeChangeBitmap(readFileSync(out)) };
}

async function stopCleanly(vm: LifeboatVm): Promise<void> {
  await controlOp(vm.socket, { op: 'stop' });
  assert.equal((await vm.wait()).code, 0);
}

describe('changed block tracking with the Lifeboat guest writing its disk (real KVM)', function () {
  this.timeout(180_000);
  let dir: string;
  let disk: string;
  before(() => {
    requireKvm();
    guestImage();
  });
  beforeEach(() => {
    dir = tempDir('guest-cbt');
    disk = join(dir, 'disk.img');
    makeImage(disk, DISK_SIZE, 9);
  });
  afterEach(() => removeDir(dir));

  for (const granularity of [64 * 1024, 4 * 1024]) {
    it(`the tracked set equals exactly the ${granularity / 1024} KiB chunks whose bytes differ (host byte-by-byte compare)`, async () => {
      const before = readImage(disk);
      const vm = await vmWriting(dir, disk, randomWrites(60, granularity), ['--track-granularity', String(granularity)]);
      try {
        const { bitmap } = await freezeAndExport(vm, join(dir, 'g.bitmap'));
        await stopCleanly(vm);
        assert.equal(bitmap.granularity, granularity);
        const expected = differingChunks(before, readImage(disk), granularity);
        assert.ok(expected.length >= 50);
        assert.deepEqual(setGranules(bitmap), expected);
      } finally {
        vm.child.kill('SIGKILL');
      }
    });
  }

  it('a clean stop and start keeps the bitmap trusted and exact; kill -9 during a workload makes the next start report it untrusted', async () => {
    // First start: no history. A consumer reads everything, then releases the untrusted generation.
    const first = await vmWriting(dir, disk, []);
    const g0 = await controlOp(first.socket, { op: 'bitmap.freeze', disk: 0 });
    assert.equal(g0.trusted, false);
    await controlOp(first.socket, { op: 'bitmap.release', disk: 0, generation: g0.generation });
    await stopCleanly(first);
    const base = readImage(disk);

    const writer = await vmWriting(dir, disk, randomWrites(30, 77));
    await stopCleanly(writer);

    const again = await vmWriting(dir, disk, []);
    try {
      const status = (await controlOp(again.socket, { op: 'tracking.status' })).disks as Array<{ trusted: boolean; reason: string }>;
      assert.equal(status[0]!.trusted, true, status[0]!.reason);
      const { trusted, bitmap } = await freezeAndExport(again, join(dir, 'g.bitmap'));
      assert.equal(trusted, true);
      assert.notEqual(bitmap.baseEpoch, null);
      assert.deepEqual(setGranules(bitmap), differingChunks(base, readImage(disk), 65536), 'exact across the restart');
      await stopCleanly(again);
    } finally {
      again.child.kill('SIGKILL');
    }
    // The guest appends to its ledger; the VMM dies mid-workload.
    const crashing = new LifeboatVm('run', ['--disk', disk, '--mem', '128', '--exec', 'ledger run 200'], dir, 'crash');
    try {
      await crashing.waitForAtLeast(/ledger durable seq=(\d+)\n/g, 30);
    } finally {
      await crashing.kill9();
    }

    const after = await vmWriting(dir, disk, []);
    try {
      const status = (await controlOp(after.socket, { op: 'tracking.status' })).disks as Array<{ trusted: boolean; reason: string }>;
      assert.equal(status[0]!.trusted, false);
      assert.match(status[0]!.reason, /did not stop cleanly/);
      const { trusted, bitmap } = await freezeAndExport(after, join(dir, 'g2.bitmap'));
      assert.equal(trusted, false);
      assert.equal(bitmap.baseEpoch, null, 'exported as unspecified: the consumer compares contents');
    } finally {
      after.child.kill('SIGKILL');
    }
  });

  it('a failed consumer merges its generation back: the next generation still contains those blocks', async () => {
    const before = readImage(disk);
    const vm = await vmWriting(dir, disk, randomWrites(20, 5, 8 * MiB));
    try {
      const failed = await controlOp(vm.socket, { op: 'bitmap.freeze', disk: 0 });
      const mid = readImage(disk);
      await typeWrites(vm, randomWrites(20, 6, 8 * MiB));
      await controlOp(vm.socket, { op: 'bitmap.merge', disk: 0, generation: failed.generation });
      const { bitmap } = await freezeAndExport(vm, join(dir, 'next.bitmap'));
      const next = setGranules(bitmap);
      for (const c of differingChunks(before, mid, 65536)) assert.ok(next.includes(c), `chunk ${c} of the failed generation survived`);
      assert.deepEqual(next, differingChunks(before, readImage(disk), 65536));
      await stopCleanly(vm);
    } finally {
      vm.child.kill('SIGKILL');
    }
  });

  it('a point taken mid-workload reads back identical to a copy of the disk taken at that instant, while the guest keeps overwriting', async () => {
    const vm = await vmWriting(dir, disk, randomWrites(10, 1, 4 * MiB));
    try {
      // The guest overwrites the same 4 MiB over and over; we stop time once, copy, take the point.
      const from = vm.stdout.length;
      const typing = typeWrites(vm, randomWrites(120, 2, 4 * MiB));
      await vm.waitForCount('disk write ok', 30, 60_000, from);
      await controlOp(vm.socket, { op: 'pause' });
      copyFileSync(disk, join(dir, 'instant.img'));
      const created = await vm.cli(['point', 'create']);
      await controlOp(vm.socket, { op: 'resume' });
      const point = (created.points as Array<{ generation: number }>)[0]!.generation;
      await typing;
      await vm.cli(['point', 'export', '--point', String(point), '--out', join(dir, 'point.img')]);
      const listed = (await vm.cli(['point', 'list'])).points as Array<{ generation: number; preservedBytes: number }>;
      assert.ok(listed[0]!.preservedBytes > 0, 'old blocks were preserved while the guest overwrote them');
      assert.ok(!readImage(disk).equals(readImage(join(dir, 'instant.img'))), 'the live disk moved on');
      assert.ok(readImage(join(dir, 'point.img')).equals(readImage(join(dir, 'instant.img'))), 'the point is the disk at that instant');
      await vm.cli(['point', 'release', '--point', String(point)]);
      assert.deepEqual((await vm.cli(['point', 'list'])).points, []);
      await stopCleanly(vm);
    } finally {
      vm.child.kill('SIGKILL');
    }
  });
});
