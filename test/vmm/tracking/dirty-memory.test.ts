import assert from 'node:assert/strict';
import { PAGE_SIZE } from '../../../vmm/layout.js';
import { DirtyMemoryTracker, type DirtyPages } from '../../../vmm/tracking/dirty-memory.js';
import { RealModeVm } from './real-mode-vm.js';

function pagesOf(d: DirtyPages): number[] {
  const out: number[] = [];
  for (const [first, count] of d.runs()) for (let p = first; p < first + count; p++) out.push(p);
  return out;
}
const range = (first: number, count: number) => Array.from({ length: count }, (_, i) => first + i);

for (const manualProtect of [true, false]) {
  describe(`dirty memory tracking with real KVM (${manualProtect ? 'MANUAL_DIRTY_LOG_PROTECT2 + CLEAR_DIRTY_LOG' : 'GET_DIRTY_LOG get-and-clear'})`, () => {
    let vm: RealModeVm;
    let tracker: DirtyMemoryTracker;
    beforeEach(() => {
      vm = RealModeVm.create(2 * 1024 * 1024, manualProtect);
      assert.equal(vm.mode, manualProtect ? 'manual-protect' : 'get-and-clear');
      tracker = new DirtyMemoryTracker(vm.vm, vm.memory, vm.mode);
      tracker.commit(tracker.collect()); // a "snapshot" of the initial state
    });
    afterEach(() => vm.close());

    it('reports exactly the pages the guest CPU wrote, OR-ed with the pages the VMM wrote', () => {
      vm.writePages(0x20, 10);
      vm.memory.write(0x50 * PAGE_SIZE + 100, new Uint8Array(PAGE_SIZE)); // the VMM writes 2 pages (unaligned)
      const d = tracker.collect();
      assert.deepEqual(pagesOf(d), [...range(0x20, 10), 0x50, 0x51]);
      tracker.commit(d);
    });

    it('after a durable snapshot, pages written again are dirty again (the log was reset at the paused instant)', () => {
      vm.writePages(0x20, 8);
      tracker.commit(tracker.collect());
      vm.writePages(0x20, 8);
      const again = tracker.collect();
      assert.deepEqual(pagesOf(again), range(0x20, 8));
      tracker.commit(again);
      assert.deepEqual(pagesOf(tracker.collect()), [], 'nothing written since');
    });

    it('a failed snapshot keeps its dirty pages: the next collection still has them, plus what came after', () => {
      vm.writePages(0x30, 5);
      const failed = tracker.collect();
      // ... the snapshot write fails here ...
      tracker.abort(failed);
      vm.writePages(0x30, 2); // the guest writes some of them again after the resume
      vm.writePages(0x40, 3);
      const next = tracker.collect();
      assert.deepEqual(pagesOf(next), [...range(0x30, 5), ...range(0x40, 3)]);
      tracker.commit(next);
    });
  });
}
