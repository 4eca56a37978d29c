import assert from 'node:assert/strict';
import { join } from 'node:path';
import { guestImage, requireKvm, runLifeboat } from '../../helpers/vmm.js';
import { removeDir, tempDir } from '../tracking/fixtures.js';
import { controlOp, LifeboatVm } from './vm-process.js';

const COUNTER = /counter (\d+)\n/g;
const READY = /lifeboat vm standby: ready on .*waiting for a restore request/;

/** A guest counting on 2 vCPUs, snapshotted (full, then a diff), then killed; the counter range of the diff. */
async function countingChain(dir: string): Promise<{ dirs: string[]; min: number; max: number }> {
  const vm = new LifeboatVm('run', ['--exec', 'counter', '--mem', '256', '--vcpus', '2'], dir);
  try {
    await vm.waitFor(/counter 5\n/);
    await vm.cli(['snapshot', 'create', '--full', '--out', join(dir, 'full')]);
    await vm.waitFor(/counter 10\n/);
    const min = Math.max(...vm.numbers(COUNTER));
    await vm.cli(['snapshot', 'create', '--diff', '--out', join(dir, 'diff')]);
    const max = Math.max(...vm.numbers(COUNTER));
    return { dirs: [join(dir, 'full'), join(dir, 'diff')], min, max };
  } finally {
    await vm.kill9();
  }
}

/** The counter on the standby's console continues from the snapshot, tick by tick. */
async function counterContinues(vm: LifeboatVm, chain: { min: number; max: number }): Promise<void> {
  const { end } = await vm.waitFor(/counter (\d+)\n/);
  await vm.waitFor(/counter \d+\n/, 10_000, end);
  const seen = vm.numbers(COUNTER);
  assert.doesNotMatch(vm.stdout, /guest starting|ready in/, 'the guest did not boot');
  assert.ok(seen[0]! >= chain.min && seen[0]! <= chain.max + 1, `the counter continues from the snapshot (first ${seen[0]}, snapshot between ${chain.min} and ${chain.max})`);
  assert.deepEqual(seen, seen.map((_, i) => seen[0]! + i));
}

const restoreOn = (socket: string, args: string[]) => runLifeboat(['vm', 'restore', '--standby', socket, ...args], 60_000);

describe('warm standby restore: `lifeboat vm standby`, then `vm restore --standby` (real KVM, real guest)', function () {
  this.timeout(120_000);
  let dir: string;
  before(() => {
    requireKvm();
    guestImage();
  });
  beforeEach(() => (dir = tempDir('standby')));
  afterEach(() => removeDir(dir));

  it('a standby VMM restores a chain on request and is then that VM\'s VMM: console, control socket, exit status', async () => {
    const chain = await countingChain(dir);
    const standby = new LifeboatVm('standby', ['--vcpus', '2'], dir, 'standby');
    try {
      await standby.waitForStderr(READY);
      const waiting = await controlOp(standby.socket, { op: 'status' });
      assert.equal(waiting.state, 'standby');
      assert.equal(waiting.vcpus, 2);

      const r = await restoreOn(standby.socket, chain.dirs.flatMap((d) => ['--from', d]));
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^restored snapshot [0-9a-f-]{36} in the standby VMM on .*: running \(2 vCPUs, [\d.]+ ms\)/);
      await counterContinues(standby, chain);

      const status = await standby.cli(['vm', 'status']);
      assert.equal(status.state, 'running');
      assert.equal(status.vcpus, 2);
      assert.equal((await standby.cli(['vm', 'pause'])).state, 'paused');
      const atPause = standby.stdout.length;
      assert.equal((await standby.cli(['vm', 'resume'])).state, 'running');
      await standby.waitFor(/counter \d+\n/, 10_000, atPause);

      const again = await restoreOn(standby.socket, chain.dirs.flatMap((d) => ['--from', d]));
      assert.equal(again.code, 1);
      assert.match(again.stderr, /^lifeboat vm restore: restore: this standby VMM already runs the VM restored from .*diff; a standby restores one VM \(start another 'lifeboat vm standby' for the next\)\n$/);

      const stopped = await runLifeboat(['vm', 'stop', '--api-sock', standby.socket, '--status', '7']);
      assert.equal(stopped.code, 0, stopped.stderr);
      assert.equal((await standby.wait()).code, 7, 'the exit status is the one the VM was stopped with');
    } finally {
      standby.child.kill('SIGKILL');
    }
  });

  it('a bad chain is refused and the standby keeps waiting; a snapshot with more vCPUs than it started restores anyway', async () => {
    const chain = await countingChain(dir);
    const standby = new LifeboatVm('standby', ['--vcpus', '1'], dir, 'standby');
    try {
      await standby.waitForStderr(READY);
      const wrongOrder = await restoreOn(standby.socket, ['--from', chain.dirs[1]!]);
      assert.equal(wrongOrder.code, 1);
      assert.match(wrongOrder.stderr, /^lifeboat vm restore: .*diff is a diff snapshot: the chain must start with a full one .*\n$/);
      const missing = await restoreOn(standby.socket, ['--from', join(dir, 'nothing-here')]);
      assert.equal(missing.code, 1);
      assert.match(missing.stderr, /nothing-here is not a snapshot/);
      await assert.rejects(controlOp(standby.socket, { op: 'restore' }), /restore: "from" is required/);
      await assert.rejects(controlOp(standby.socket, { op: 'pause' }), /no VM yet: this is a standby VMM/);
      assert.equal((await controlOp(standby.socket, { op: 'status' })).state, 'standby', 'still waiting');

      // The snapshot's VM has 2 vCPUs; the standby started 1 worker: the second starts now.
      const r = await restoreOn(standby.socket, chain.dirs.flatMap((d) => ['--from', d]));
      assert.equal(r.code, 0, r.stderr);
      await counterContinues(standby, chain);
      assert.equal((await standby.cli(['vm', 'status'])).vcpus, 2);
      standby.send('\x03'); // Ctrl-C: the counter ends, the guest powers off with status 0
      assert.equal((await standby.wait()).code, 0);
    } finally {
      standby.child.kill('SIGKILL');
    }
  });

  it('a standby with its VM made ahead (--mem) restores into it, after a failed request made it a fresh one; another size restores without it', async () => {
    const chain = await countingChain(dir);
    const standby = new LifeboatVm('standby', ['--vcpus', '2', '--mem', '256'], dir, 'standby');
    try {
      await standby.waitForStderr(READY);
      const waiting = await controlOp(standby.socket, { op: 'status' });
      assert.equal(waiting.vmPrepared, true);
      assert.equal(waiting.memoryBytes, 256 * 2 ** 20);
      // Refused after the snapshot's memory was mapped over the prepared VM's range: that VM is spent.
      const refused = await restoreOn(standby.socket, [...chain.dirs.flatMap((d) => ['--from', d]), '--disk', join(dir, 'none.img')]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /the snapshot's VM has 0 disk\(s\)/);
      assert.equal((await controlOp(standby.socket, { op: 'status' })).vmPrepared, true, 'a fresh VM is made for the next request');
      const r = await restoreOn(standby.socket, chain.dirs.flatMap((d) => ['--from', d]));
      assert.equal(r.code, 0, r.stderr);
      await counterContinues(standby, chain);
      standby.send('\x03');
      assert.equal((await standby.wait()).code, 0);
    } finally {
      standby.child.kill('SIGKILL');
    }
    const other = new LifeboatVm('standby', ['--vcpus', '2', '--mem', '512'], dir, 'other');
    try {
      await other.waitForStderr(READY);
      const r = await restoreOn(other.socket, chain.dirs.flatMap((d) => ['--from', d]));
      assert.equal(r.code, 0, r.stderr);
      await counterContinues(other, chain);
      other.send('\x03');
      assert.equal((await other.wait()).code, 0);
    } finally {
      other.child.kill('SIGKILL');
    }
  });

  it('stopping a standby that restored nothing ends it with the status asked for (its VM made ahead released)', async () => {
    const standby = new LifeboatVm('standby', ['--mem', '64'], dir, 'standby');
    try {
      await standby.waitForStderr(READY);
      assert.equal((await controlOp(standby.socket, { op: 'status' })).vmPrepared, true);
      assert.equal((await controlOp(standby.socket, { op: 'stop', status: 3 })).state, 'stopping');
      assert.equal((await standby.wait()).code, 3);
    } finally {
      standby.child.kill('SIGKILL');
    }
  });

  it('explains itself (--help) and refuses what it cannot do in one line', async () => {
    const help = await runLifeboat(['vm', 'standby', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Usage: lifeboat vm standby --api-sock PATH \[--vcpus N\] \[--mem MiB\]/);
    assert.match((await runLifeboat(['vm', 'restore', '--help'])).stdout, /--standby PATH/);
    const noSocket = await runLifeboat(['vm', 'standby']);
    assert.equal(noSocket.code, 2);
    assert.equal(noSocket.stderr, 'lifeboat vm standby: --api-sock PATH is required: the standby waits for its restore request there\n');
    const badCount = await runLifeboat(['vm', 'standby', '--api-sock', join(dir, 's.sock'), '--vcpus', '0']);
    assert.equal(badCount.code, 2);
    assert.match(badCount.stderr, /--vcpus must be a whole number from 1 to 64, got '0'/);
    const badMem = await runLifeboat(['vm', 'standby', '--api-sock', join(dir, 's.sock'), '--mem', '1.5']);
    assert.equal(badMem.code, 2);
    assert.equal(badMem.stderr, "lifeboat vm standby: --mem must be a whole number of MiB from 1 to 4094, got '1.5'\n");
    const nobody = await runLifeboat(['vm', 'restore', '--standby', join(dir, 'none.sock'), '--from', dir]);
    assert.equal(nobody.code, 1);
    assert.match(nobody.stderr, /cannot reach the VMM on .*none\.sock: no such socket \(start one with 'lifeboat vm standby --api-sock .*none\.sock'\)/);
  });
});
