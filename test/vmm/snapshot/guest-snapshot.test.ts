import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, readdirSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { guestImage, requireKvm, runVm } from '../../helpers/vmm.js';
import { removeDir, tempDir } from '../tracking/fixtures.js';
import { controlOp, LifeboatVm } from './vm-process.js';

const COUNTER = /counter (\d+)\n/g;
const DURABLE = /ledger durable seq=(\d+)\n/g;

/** Starts the Lifeboat guest counting (10 ticks a second) under a VMM with a control socket. */
async function countingVm(dir: string): Promise<LifeboatVm> {
  const vm = new LifeboatVm('run', ['--exec', 'counter', '--mem', '256', '--vcpus', '2'], dir);
  try {
    await vm.waitFor(/counter 5\n/);
  } catch (err) {
    await vm.kill9();
    throw err;
  }
  return vm;
}

/** Resumes a snapshot chain; checks the guest did not boot again and its counter goes on. */
async function resumeAndCheckCounter(dir: string, dirs: string[], counterAtSnapshot: { min: number; max: number }): Promise<void> {
  const restored = new LifeboatVm('restore', dirs.flatMap((d) => ['--from', d]), dir, 'restored');
  try {
    const { end } = await restored.waitFor(/counter (\d+)\n/);
    await restored.waitFor(/counter \d+\n/, 10_000, end);
    const seen = restored.numbers(COUNTER);
    assert.doesNotMatch(restored.stdout, /guest starting|ready in/, 'the guest did not boot again');
    assert.ok(seen[0]! >= counterAtSnapshot.min && seen[0]! <= counterAtSnapshot.max + 1,
      `the counter continues from the snapshot (first after restore ${seen[0]}, snapshot taken between ${counterAtSnapshot.min} and ${counterAtSnapshot.max})`);
    assert.deepEqual(seen, seen.map((_, i) => seen[0]! + i), 'and keeps ticking one by one');
    restored.send('\x03'); // Ctrl-C: counter returns, the exec list ends, the guest powers off
    assert.equal((await restored.wait()).code, 0);
  } finally {
    restored.child.kill('SIGKILL');
  }
}

describe('VM snapshots of the running Lifeboat guest (real KVM, real guest)', function () {
  this.timeout(120_000);
  let dir: string;
  before(() => {
    requireKvm();
    guestImage();
  });
  beforeEach(() => (dir = tempDir('guest-snap')));
  afterEach(() => removeDir(dir));

  it('the counting guest is snapshotted, the VMM killed, restored: the counter continues without a reboot', async () => {
    const vm = await countingVm(dir);
    try {
      const before = Math.max(...vm.numbers(COUNTER));
      const snap = await vm.cli(['snapshot', 'create', '--full', '--out', join(dir, 'full')]);
      const after = Math.max(...vm.numbers(COUNTER));
      assert.equal(snap.kind, 'full');
      assert.ok((snap.pauseMs as number) > 0);
      await vm.kill9();
      await resumeAndCheckCounter(dir, [join(dir, 'full')], { min: before, max: after });
    } finally {
      vm.child.kill('SIGKILL');
    }
  });

  it('the same from a full snapshot and two diffs', async () => {
    const vm = await countingVm(dir);
    try {
      await vm.cli(['snapshot', 'create', '--full', '--out', join(dir, 'full')]);
      await vm.waitFor(/counter 12\n/);
      const d1 = await vm.cli(['snapshot', 'create', '--diff', '--out', join(dir, 'd1')]);
      await vm.waitFor(/counter 18\n/);
      const before = Math.max(...vm.numbers(COUNTER));
      const d2 = await vm.cli(['snapshot', 'create', '--diff', '--out', join(dir, 'd2')]);
      const after = Math.max(...vm.numbers(COUNTER));
      assert.equal(d2.parentId, d1.snapshotId);
      assert.ok((d2.memoryPages as number) < 1000, `a diff holds only the pages dirtied since the last snapshot (${d2.memoryPages})`);
      await vm.kill9();
      await resumeAndCheckCounter(dir, [join(dir, 'full'), join(dir, 'd1'), join(dir, 'd2')], { min: before, max: after });
    } finally {
      vm.child.kill('SIGKILL');
    }
  });

  it('a snapshot whose write fails (full filesystem) says why, the VM runs on, and the next diff still has every page', async () => {
    const vm = await countingVm(dir);
    const small = join(dir, 'small');
    execFileSync('mkdir', [small]);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16k', 'tmpfs', small]);
    try {
      await vm.cli(['snapshot', 'create', '--full', '--out', join(dir, 'full')]);
      await vm.waitFor(/counter 10\n/);
      await assert.rejects(vm.cli(['snapshot', 'create', '--diff', '--out', join(small, 'diff')]), /snapshot not written: no space left on the device holding .*no dirty page was lost/);
      assert.deepEqual(readdirSync(small), []);
      await vm.waitFor(/counter 14\n/); // still running
      const before = Math.max(...vm.numbers(COUNTER));
      await vm.cli(['snapshot', 'create', '--diff', '--out', join(dir, 'diff')]);
      const after = Math.max(...vm.numbers(COUNTER));
      await vm.kill9();
      // The diff must carry the pages the failed one took, or the restored guest would not run.
      await resumeAndCheckCounter(dir, [join(dir, 'full'), join(dir, 'diff')], { min: before, max: after });
    } finally {
      vm.child.kill('SIGKILL');
      execFileSync('umount', [small]);
    }
  });

  it('a resumable point (memory + disk at one paused instant) taken during `ledger run` resumes the ledger in a new VMM', async () => {
    const disk = join(dir, 'disk.img');
    writeFileSync(disk, '');
    truncateSync(disk, 64 * 1024 * 1024);
    const vm = new LifeboatVm('run', ['--disk', disk, '--exec', 'ledger run 100', '--mem', '256'], dir);
    let atPoint: number;
    try {
      await vm.waitForAtLeast(DURABLE, 20);
      const snap = await vm.cli(['snapshot', 'create', '--full', '--with-disks', '--out', join(dir, 'point')]);
      const disks = snap.disks as Array<{ point?: { image: string } }>;
      assert.equal(disks[0]!.point!.image, 'disk-0.img');
      const afterSnapshot = Math.max(...vm.numbers(DURABLE));
      await vm.waitForAtLeast(DURABLE, afterSnapshot + 20); // the guest went on appending
      await vm.kill9();
      const check = await runVm(['--disk', join(dir, 'point', 'disk-0.img') + ',ro', '--exec', 'ledger check']);
      atPoint = Number(/ledger ok last=(\d+)/.exec(check.stdout)![1]);
      assert.ok(atPoint >= 20 && atPoint <= afterSnapshot, `the disk as of the point holds the ledger up to then (last=${atPoint})`);
    } finally {
      vm.child.kill('SIGKILL');
    }
    const copy = join(dir, 'restored.img');
    copyFileSync(join(dir, 'point', 'disk-0.img'), copy);
    const restored = new LifeboatVm('restore', ['--from', join(dir, 'point'), '--disk', copy], dir, 'restored');
    let last: number;
    try {
      await restored.waitForAtLeast(DURABLE, 0);
      const first = restored.numbers(DURABLE)[0]!;
      // A flush that completed just before the pause may be acknowledged to the guest after the resume
      // (seq = atPoint); every record after it is new, starting at atPoint + 1.
      assert.ok(first >= atPoint && first <= atPoint + 10, `the ledger resumes at the point's last record ${atPoint} (first durable after restore: ${first})`);
      await restored.waitForAtLeast(DURABLE, atPoint + 30);
      restored.send('\x03');
      assert.equal((await restored.wait()).code, 0);
      last = Math.max(...restored.numbers(DURABLE));
    } finally {
      restored.child.kill('SIGKILL');
    }
    const check = await runVm(['--disk', copy, '--exec', 'ledger check']);
    assert.equal(check.code, 0, check.stdout.slice(-500));
    assert.equal(Number(/ledger ok last=(\d+)/.exec(check.stdout)![1]), last, 'every record the restored guest made durable is there, in sequence');
  });

  it('a restore that cannot be done says why in one line', async () => {
    const vm = await countingVm(dir);
    try {
      await vm.cli(['snapshot', 'create', '--full', '--out', join(dir, 'full')]);
      const d = await controlOp(vm.socket, { op: 'snapshot.create', kind: 'diff', out: join(dir, 'd1') });
      assert.equal(d.kind, 'diff');
    } finally {
      await vm.kill9();
    }
    const wrongOrder = new LifeboatVm('restore', ['--from', join(dir, 'd1')], dir, 'bad');
    assert.equal((await wrongOrder.wait()).code, 1);
    assert.match(wrongOrder.stderr, /lifeboat vm restore: .*is a diff snapshot: the chain must start with a full one/);
    assert.equal(wrongOrder.stderr.trim().split('\n').length, 1);
  });
});
