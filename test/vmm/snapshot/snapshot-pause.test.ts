import assert from 'node:assert/strict';
import { join } from 'node:path';
import { PAGE_SIZE } from '../../../vmm/layout.js';
import * as libc from '../../../vmm/sys/libc.js';
import { createSnapshot, openSnapshotChain, type SnapshotSource } from '../../../vmm/snapshot/snapshot.js';
import type { PauseStep } from '../../../vmm/snapshot/pause-timing.js';
import { DirtyMemoryTracker, DirtyPages } from '../../../vmm/tracking/dirty-memory.js';
import { guestImage, requireKvm } from '../../helpers/vmm.js';
import { removeDir, seededBytes, tempDir } from '../tracking/fixtures.js';
import { RealModeVm } from '../tracking/real-mode-vm.js';
import { controlOp, LifeboatVm } from './vm-process.js';

const COUNTER = /counter (\d+)\n/g;
/** The pause step of a snapshot whose vCPUs saved their own state on their threads (vmm/snapshot/vcpu-save.ts). */
const SAVED_BY_THREADS = 'vCPU states saved (by their threads)';

const stepNames = (r: Record<string, unknown>) => (r.pauseSteps as PauseStep[]).map((s) => s.step);

describe('the snapshot pause (real KVM, real guest)', function () {
  this.timeout(120_000);
  let dir: string;
  before(() => {
    requireKvm();
    guestImage();
  });
  beforeEach(() => (dir = tempDir('snap-pause')));
  afterEach(() => removeDir(dir));

  it('each vCPU of a running 2-vCPU guest saves its own state; a VM paused beforehand takes the ordinary path; the chain of both resumes the counter', async () => {
    const vm = new LifeboatVm('run', ['--exec', 'counter', '--mem', '256', '--vcpus', '2'], dir);
    try {
      await vm.waitFor(/counter 3\n/);
      const full = await controlOp(vm.socket, { op: 'snapshot.create', kind: 'full', out: join(dir, 'full') });
      assert.ok(stepNames(full).includes(SAVED_BY_THREADS), `the vCPU threads saved their state: ${stepNames(full).join(', ')}`);

      await vm.waitFor(/counter 6\n/);
      await controlOp(vm.socket, { op: 'pause' });
      const whilePaused = await controlOp(vm.socket, { op: 'snapshot.create', kind: 'diff', out: join(dir, 'd1') });
      assert.ok(!stepNames(whilePaused).includes(SAVED_BY_THREADS), 'a VM that was paused already is saved by state commands');
      assert.ok(stepNames(whilePaused).includes('vCPU states'));
      await controlOp(vm.socket, { op: 'resume' });

      const { end } = await vm.waitFor(/counter 9\n/);
      const d2 = await controlOp(vm.socket, { op: 'snapshot.create', kind: 'diff', out: join(dir, 'd2') });
      assert.ok(stepNames(d2).includes(SAVED_BY_THREADS));
      const atSnapshot = Math.max(...vm.numbers(COUNTER));
      await vm.kill9();
      assert.ok(atSnapshot >= 9 && end > 0);

      const restored = new LifeboatVm('restore', ['--from', join(dir, 'full'), '--from', join(dir, 'd1'), '--from', join(dir, 'd2')], dir, 'restored');
      try {
        const first = await restored.waitFor(/counter (\d+)\n/);
        await restored.waitFor(/counter \d+\n/, 10_000, first.end);
        const seen = restored.numbers(COUNTER);
        assert.doesNotMatch(restored.stdout, /guest starting|ready in/, 'the guest did not boot again');
        assert.ok(seen[0]! >= 9 && seen[0]! <= atSnapshot + 1, `the counter continues from the last snapshot (${seen[0]} after ${atSnapshot})`);
        assert.deepEqual(seen, seen.map((_, i) => seen[0]! + i));
        restored.send('\x03');
        assert.equal((await restored.wait()).code, 0);
      } finally {
        restored.child.kill('SIGKILL');
      }
    } finally {
      vm.child.kill('SIGKILL');
    }
  });
});

describe('the dirty log across a snapshot pause (real KVM, real memfd)', () => {
  let dir: string;
  let vm: RealModeVm;
  beforeEach(() => {
    dir = tempDir('snap-pause-log');
    vm = RealModeVm.create(2 * 1024 * 1024);
  });
  afterEach(() => {
    vm.close();
    removeDir(dir);
  });

  it('a page the guest dirtied just before the pause and changes again right after the resume is in the next diff', async () => {
    const dirty = new DirtyMemoryTracker(vm.vm, vm.memory, vm.mode);
    let pausing = false;
    let afterResume = () => {};
    const source: SnapshotSource = {
      memory: { view: libc.view(vm.memory.shared.hostAddress, vm.memory.size), memfd: vm.memory.shared.fd },
      dirty,
      pause: async () => {
        // The guest writes these pages after the last copy round: only the paused round copies them.
        if (pausing) vm.writePages(0x40, 3);
      },
      resume: () => afterResume(),
      captureState: async () => ({
        vcpus: [vm.saveVcpu()], vm: vm.vm.saveState(), devices: {},
        meta: { memory: { size: vm.memory.size, regions: [...vm.memory.regions] }, devices: [], disks: [], machine: {}, refused: [] },
      }),
    };
    const full = await createSnapshot(source, { kind: 'full', out: join(dir, 'full') });
    pausing = true;
    // Right after the resume the guest writes page 0x41 again: an unseen change would be lost from
    // every later diff (the log must be reset at the pause, or not at all).
    const changed = seededBytes(5, 512);
    afterResume = () => {
      libc.view(vm.memory.shared.hostAddress + BigInt(0x41 * PAGE_SIZE + 1024), 512).set(changed);
      vm.writePages(0x41, 1);
    };
    const d1 = await createSnapshot(source, { kind: 'diff', out: join(dir, 'd1'), parentId: full.snapshotId });
    assert.equal(d1.pausedPages, 3, 'the pages written just before the pause were copied while paused');
    pausing = false;
    afterResume = () => {};
    const d2 = await createSnapshot(source, { kind: 'diff', out: join(dir, 'd2'), parentId: d1.snapshotId });
    const chain = openSnapshotChain([full.dir, d1.dir, d2.dir]);
    try {
      const restored = Buffer.from(libc.view(chain.memory.hostAddress, chain.memory.size));
      assert.ok(restored.subarray(0x41 * PAGE_SIZE + 1024, 0x41 * PAGE_SIZE + 1536).equals(changed), 'the change made after the resume is in the next diff');
      assert.ok(restored.equals(Buffer.from(vm.memory.read(0, vm.memory.size))), 'the chain equals guest memory byte for byte');
    } finally {
      chain.close();
    }
  });
});

describe('the pages collected while paused, listed without scanning the whole bitmap', () => {
  it('count, runs and merging agree with a full scan, runs crossing word boundaries included', () => {
    const pages = 262144 + 7; // 1 GiB and a partial last word
    let x = 99;
    const rand = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0);
    for (let round = 0; round < 20; round++) {
      const full = DirtyPages.empty(pages);
      const set = new Set<number>();
      for (let k = 0; k < 40; k++) {
        // Single pages and runs of up to 100 pages, some across 32-page words and 1 KiB chunks.
        const first = rand() % pages;
        const length = k % 3 === 0 ? 1 + (rand() % 100) : 1;
        for (let p = first; p < Math.min(pages, first + length); p++) {
          full.words[p >>> 5]! |= 1 << (p & 31);
          set.add(p >>> 5);
        }
      }
      const sparse = new DirtyPages(full.words, pages, [...set].sort((a, b) => a - b));
      assert.equal(sparse.count(), full.count());
      assert.deepEqual([...sparse.runs()], [...full.runs()]);
      const merged = DirtyPages.empty(pages);
      merged.orWith(sparse);
      assert.deepEqual(merged.words, full.words);
    }
  });
});
