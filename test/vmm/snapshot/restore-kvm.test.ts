import assert from 'node:assert/strict';
import { join } from 'node:path';
import { PAGE_SIZE } from '../../../vmm/layout.js';
import { GuestMemory, layoutRegions } from '../../../vmm/memory.js';
import * as libc from '../../../vmm/sys/libc.js';
import { checkRestorable, createSnapshot, openSnapshotChain, type RestoredChain, type SnapshotSource } from '../../../vmm/snapshot/snapshot.js';
import { DirtyMemoryTracker } from '../../../vmm/tracking/dirty-memory.js';
import { removeDir, tempDir } from '../tracking/fixtures.js';
import { RealModeVm } from '../tracking/real-mode-vm.js';

const MEMORY = 2 * 1024 * 1024;
const PROGRAM = 0x2000;
const COUNTER = 0x5000;
/** loop: inc word [0x5000]; mov ax, [0x5000]; out 0xf4, al; jmp loop  (one OUT exit per increment) */
const COUNTING_LOOP = Buffer.from([0xff, 0x06, 0x00, 0x50, 0xa1, 0x00, 0x50, 0xe6, 0xf4, 0xeb, 0xf5]);

function source(vm: RealModeVm, dirty: DirtyMemoryTracker): SnapshotSource {
  return {
    memory: { view: libc.view(vm.memory.shared.hostAddress, vm.memory.size), memfd: vm.memory.shared.fd },
    dirty,
    pause: async () => {},
    resume: () => {},
    captureState: async () => ({
      vcpus: [vm.saveVcpu()], vm: vm.vm.saveState(), devices: {},
      meta: { memory: { size: vm.memory.size, regions: [...vm.memory.regions] }, devices: [], disks: [], machine: {}, refused: [] },
    }),
  };
}

/** A new KVM VM resumed from a snapshot chain: memory mapped from the files, VM and vCPU state loaded. */
function resume(chain: RestoredChain): RealModeVm {
  const memory = GuestMemory.attach({
    fd: chain.memory.fd, size: chain.memory.size, hostAddress: chain.memory.hostAddress,
    regions: layoutRegions(chain.memory.size), vmmDirty: new SharedArrayBuffer(Math.ceil(chain.memory.size / PAGE_SIZE / 32) * 4),
  });
  const vm = RealModeVm.create(chain.memory.size, true, memory);
  vm.vm.loadState(chain.state.vm);
  vm.loadVcpu(chain.state.vcpus[0]!);
  return vm;
}

const counter = (vm: RealModeVm) => Buffer.from(vm.memory.read(COUNTER, 2)).readUInt16LE(0);

describe('resuming a real KVM vCPU from a snapshot in a new VM', () => {
  let dir: string;
  let vm: RealModeVm;
  let dirty: DirtyMemoryTracker;
  beforeEach(() => {
    dir = tempDir('restore');
    vm = RealModeVm.create(MEMORY);
    dirty = new DirtyMemoryTracker(vm.vm, vm.memory, vm.mode);
    vm.memory.write(PROGRAM, COUNTING_LOOP);
    vm.jump(PROGRAM);
  });
  afterEach(() => {
    vm.close();
    removeDir(dir);
  });

  it('continues counting from where the snapshot was taken (full snapshot)', async () => {
    for (let i = 0; i < 5; i++) vm.runToOut();
    assert.equal(counter(vm), 5);
    const snap = await createSnapshot(source(vm, dirty), { kind: 'full', out: join(dir, 'full') });
    const chain = openSnapshotChain([snap.dir]);
    const tscKhz = chain.state.vcpus[0]!.tscKhz;
    checkRestorable(chain.state, { tscKhz, maxVcpus: 4 });
    assert.throws(() => checkRestorable(chain.state, { tscKhz: tscKhz + 1000, maxVcpus: 4 }), /TSC of \d+ kHz, this host's is \d+ kHz: restore it on a host with the same TSC/);
    const resumed = resume(chain);
    try {
      resumed.runToOut();
      assert.equal(counter(resumed), 6, 'the restored vCPU continued the loop (registers, RIP and memory restored)');
      resumed.runToOut();
      assert.equal(counter(resumed), 7);
      assert.equal(counter(vm), 5, 'the original is untouched (the restored memory is a private mapping)');
    } finally {
      resumed.close();
      chain.close();
    }
  });

  it('continues from a full snapshot plus two diffs', async () => {
    for (let i = 0; i < 3; i++) vm.runToOut();
    const full = await createSnapshot(source(vm, dirty), { kind: 'full', out: join(dir, 'full') });
    vm.runToOut();
    vm.writePages(0x30, 4);
    vm.jump(PROGRAM + COUNTING_LOOP.length - 2); // back into the loop at its jmp
    const d1 = await createSnapshot(source(vm, dirty), { kind: 'diff', out: join(dir, 'd1'), parentId: full.snapshotId });
    for (let i = 0; i < 4; i++) vm.runToOut();
    assert.equal(counter(vm), 8);
    const d2 = await createSnapshot(source(vm, dirty), { kind: 'diff', out: join(dir, 'd2'), parentId: d1.snapshotId });
    assert.ok(d2.memoryPages <= 2, `the second diff holds only the counter's page (and stack), got ${d2.memoryPages}`);
    const chain = openSnapshotChain([full.dir, d1.dir, d2.dir]);
    const resumed = resume(chain);
    try {
      assert.ok(Buffer.from(resumed.memory.read(0, MEMORY)).equals(Buffer.from(vm.memory.read(0, MEMORY))), 'memory as of the last diff');
      resumed.runToOut();
      assert.equal(counter(resumed), 9);
    } finally {
      resumed.close();
      chain.close();
    }
  });
});
