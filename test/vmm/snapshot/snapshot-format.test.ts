import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PAGE_SIZE } from '../../../vmm/layout.js';
import * as libc from '../../../vmm/sys/libc.js';
import { DATA_OFFSET, MEMORY_FILE, STATE_FILE } from '../../../vmm/snapshot/format.js';
import { MAX_MAPPED_RANGES, openMemoryFile, verifyMemoryFile } from '../../../vmm/snapshot/memory-file.js';
import { createSnapshot, openSnapshotChain, type SnapshotSource } from '../../../vmm/snapshot/snapshot.js';
import { DirtyMemoryTracker } from '../../../vmm/tracking/dirty-memory.js';
import { removeDir, seededBytes, tempDir } from '../tracking/fixtures.js';
import { RealModeVm } from '../tracking/real-mode-vm.js';

const MEMORY = 2 * 1024 * 1024;

/** The snapshot code's view of a real KVM VM (one vCPU in real mode, in-kernel irqchip and PIT). */
function sourceFor(vm: RealModeVm, dirty: DirtyMemoryTracker, hooks: { duringPause?: () => void; beforePause?: () => void } = {}): SnapshotSource {
  const serial = seededBytes(42, 64); // stands in for a device's SharedArrayBuffer
  return {
    memory: { view: libc.view(vm.memory.shared.hostAddress, vm.memory.size), memfd: vm.memory.shared.fd },
    dirty,
    pause: async () => hooks.beforePause?.(),
    resume: () => {},
    captureState: async () => {
      hooks.duringPause?.();
      return {
        vcpus: [vm.saveVcpu()],
        vm: vm.vm.saveState(),
        devices: { serial0: serial },
        meta: { memory: { size: vm.memory.size, regions: [...vm.memory.regions] }, devices: ['serial0'], disks: [], machine: { test: true }, refused: [] },
      };
    },
  };
}

function liveMemory(vm: RealModeVm): Buffer {
  return Buffer.from(vm.memory.read(0, vm.memory.size));
}

function restoredMemory(dirs: string[]): { bytes: Buffer; diffPages: number } {
  const chain = openSnapshotChain(dirs);
  try {
    return { bytes: Buffer.from(libc.view(chain.memory.hostAddress, chain.memory.size)), diffPages: chain.memory.diffPages };
  } finally {
    chain.close();
  }
}

describe('VM snapshot format (real KVM state, real memfd, real files)', () => {
  let dir: string;
  let vm: RealModeVm;
  let dirty: DirtyMemoryTracker;
  beforeEach(() => {
    dir = tempDir('snap');
    vm = RealModeVm.create(MEMORY);
    dirty = new DirtyMemoryTracker(vm.vm, vm.memory, vm.mode);
    vm.memory.write(0x60000, seededBytes(7, 64 * 1024)); // some VMM-written data
    vm.writePages(0x10, 4);
  });
  afterEach(() => {
    vm.close();
    removeDir(dir);
  });

  it('round-trips vCPU, VM and device state and memory through a full snapshot', async () => {
    const before = vm.saveVcpu();
    const r = await createSnapshot(sourceFor(vm, dirty), { kind: 'full', out: join(dir, 'full') });
    assert.deepEqual(readdirSync(r.dir).sort(), [MEMORY_FILE, STATE_FILE]);
    assert.ok(r.memoryPages < MEMORY / PAGE_SIZE, 'zero pages are left out (sparse)');
    const chain = openSnapshotChain([r.dir]);
    try {
      assert.deepEqual(chain.state.vcpus[0]!.regs, before.regs);
      assert.deepEqual(chain.state.vcpus[0]!.sregs, before.sregs);
      const notTsc = (m: { index: number }) => m.index !== 0x10; // the TSC ticks between the two reads
      assert.deepEqual(chain.state.vcpus[0]!.msrs.filter(notTsc), before.msrs.filter(notTsc));
      assert.ok(chain.state.vcpus[0]!.msrs.some((m) => m.index === 0x10), 'the TSC is saved');
      assert.deepEqual(Buffer.from(chain.state.vcpus[0]!.lapic), Buffer.from(before.lapic));
      assert.deepEqual(Buffer.from(chain.state.devices.serial0!), seededBytes(42, 64));
      assert.equal(chain.state.vm.irqchips.length, 3);
      assert.equal(chain.lastSnapshotId, r.snapshotId);
      assert.ok(Buffer.from(libc.view(chain.memory.hostAddress, chain.memory.size)).equals(liveMemory(vm)));
    } finally {
      chain.close();
    }
  });

  it('a full snapshot plus a chain of diffs restores memory byte-identical to a full snapshot taken at the same instant', async () => {
    const base = await createSnapshot(sourceFor(vm, dirty), { kind: 'full', out: join(dir, 's0') });
    vm.writePages(0x20, 16);
    vm.memory.write(0x40000 + 123, seededBytes(8, 10_000));
    const d1 = await createSnapshot(sourceFor(vm, dirty), { kind: 'diff', out: join(dir, 'd1'), parentId: base.snapshotId });
    assert.equal(d1.memoryPages, 16 + 3, 'the diff holds only the dirtied pages');
    vm.writePages(0x22, 40);
    const d2 = await createSnapshot(sourceFor(vm, dirty), { kind: 'diff', out: join(dir, 'd2'), parentId: d1.snapshotId });
    const full = await createSnapshot(sourceFor(vm, dirty), { kind: 'full', out: join(dir, 'full') });

    const fromChain = restoredMemory([base.dir, d1.dir, d2.dir]);
    const fromFull = restoredMemory([full.dir]);
    assert.equal(fromChain.diffPages, 19 + 40);
    assert.ok(fromChain.bytes.equals(fromFull.bytes), 'chain and full agree byte for byte');
    assert.ok(fromFull.bytes.equals(liveMemory(vm)), 'and both equal the memory at that instant');
    assert.throws(() => openSnapshotChain([base.dir, d2.dir]), /applies over snapshot .* give the chain in order/);
    assert.throws(() => openSnapshotChain([d1.dir]), /chain must start with a full one/);
  });

  it('pages the guest dirties while memory is being copied are copied again during the pause', async () => {
    const base = await createSnapshot(sourceFor(vm, dirty), { kind: 'full', out: join(dir, 's0') });
    vm.writePages(0x30, 8);
    // The guest runs on while the diff's pages are written, then the VM pauses: the same pages change again.
    const hooks = {
      beforePause: () => {
        vm.memory.write(0x30 * PAGE_SIZE, seededBytes(99, 100));
        vm.writePages(0x50, 2);
      },
    };
    const d = await createSnapshot(sourceFor(vm, dirty, hooks), { kind: 'diff', out: join(dir, 'd'), parentId: base.snapshotId });
    assert.equal(d.pausedPages, 3, 'only the re-dirtied pages were copied while paused');
    assert.ok(restoredMemory([base.dir, d.dir]).bytes.equals(liveMemory(vm)));
  });

  it('a flipped byte is reported with the name of the damaged record or pages', async () => {
    const base = await createSnapshot(sourceFor(vm, dirty), { kind: 'full', out: join(dir, 's0') });
    vm.writePages(0x20, 4);
    const d = await createSnapshot(sourceFor(vm, dirty), { kind: 'diff', out: join(dir, 'd'), parentId: base.snapshotId });

    const statePath = join(base.dir, STATE_FILE);
    const state = readFileSync(statePath);
    const at = state.indexOf(Buffer.from('vcpu/0/sregs')) + 'vcpu/0/sregs'.length + 40;
    state[at] ^= 0x01;
    writeFileSync(statePath, state);
    assert.throws(() => openSnapshotChain([base.dir]), /record 'vcpu\/0\/sregs' \(at byte \d+\) fails its checksum/);
    state[at] ^= 0x01;
    writeFileSync(statePath, state);

    const memPath = join(d.dir, MEMORY_FILE);
    const mem = readFileSync(memPath);
    mem[DATA_OFFSET + 0x21 * PAGE_SIZE] ^= 0x80;
    writeFileSync(memPath, mem);
    // The chain opens (the VM can run at once); the damage is found by the verification that runs
    // meanwhile, and it names the file and the pages.
    const damaged = openSnapshotChain([base.dir, d.dir]);
    try {
      await assert.rejects(damaged.verify(), new RegExp(`${d.dir}/memory\\.lbm: pages 32\\.\\.35 fail their checksum: the snapshot is damaged`));
    } finally {
      damaged.close();
    }

    const baseMem = join(base.dir, MEMORY_FILE);
    const bm = readFileSync(baseMem);
    bm[DATA_OFFSET + 0x60000 + 5] ^= 0x04;
    writeFileSync(baseMem, bm);
    const m = openMemoryFile(baseMem);
    assert.throws(() => verifyMemoryFile(m), /pages \d+\.\.\d+ fail their checksum/);
    libc.close(m.fd);
  });

  it('a good chain passes its verification, and the diff pages are mapped from the diff file, not copied', async () => {
    const base = await createSnapshot(sourceFor(vm, dirty), { kind: 'full', out: join(dir, 's0') });
    vm.writePages(0x20, 16);
    vm.writePages(0x40, 3);
    const d = await createSnapshot(sourceFor(vm, dirty), { kind: 'diff', out: join(dir, 'd'), parentId: base.snapshotId });
    const chain = openSnapshotChain([base.dir, d.dir]);
    try {
      assert.equal(chain.memory.mappedRanges, 2, 'one mapping per range of adjacent diff pages');
      assert.equal(chain.memory.copiedRanges, 0);
      await chain.verify();
      assert.ok(Buffer.from(libc.view(chain.memory.hostAddress, chain.memory.size)).equals(liveMemory(vm)));
    } finally {
      chain.close();
    }
  });

  it('a diff and a diff over it writing the same pages: the newest wins, mapped over the older mapping', async () => {
    const base = await createSnapshot(sourceFor(vm, dirty), { kind: 'full', out: join(dir, 's0') });
    vm.memory.write(0x30 * PAGE_SIZE, seededBytes(1, 6 * PAGE_SIZE));
    const d1 = await createSnapshot(sourceFor(vm, dirty), { kind: 'diff', out: join(dir, 'd1'), parentId: base.snapshotId });
    vm.memory.write(0x32 * PAGE_SIZE + 100, seededBytes(2, PAGE_SIZE)); // pages 0x32 and 0x33, inside d1's range
    const d2 = await createSnapshot(sourceFor(vm, dirty), { kind: 'diff', out: join(dir, 'd2'), parentId: d1.snapshotId });
    assert.ok(restoredMemory([base.dir, d1.dir, d2.dir]).bytes.equals(liveMemory(vm)));
  });

  it('a diff needs a base, and an existing directory is never overwritten', async () => {
    await assert.rejects(createSnapshot(sourceFor(vm, dirty), { kind: 'diff', out: join(dir, 'd') }), /needs a base: take a full snapshot/);
    mkdirSync(join(dir, 'exists'));
    await assert.rejects(createSnapshot(sourceFor(vm, dirty), { kind: 'full', out: join(dir, 'exists') }), /already exists/);
  });
});

describe('a diff with more short page ranges than a restore maps (real KVM, 80 MiB)', () => {
  let dir: string;
  let vm: RealModeVm;
  beforeEach(() => {
    dir = tempDir('snap-many');
    vm = RealModeVm.create(80 * 1024 * 1024);
  });
  afterEach(() => {
    vm.close();
    removeDir(dir);
  });

  const mappings = () => readFileSync('/proc/self/maps', 'utf8').split('\n').length;

  it('maps the longest ranges, copies the rest, and keeps the process far below the kernel\'s mapping limit', async () => {
    const dirty = new DirtyMemoryTracker(vm.vm, vm.memory, vm.mode);
    const base = await createSnapshot(sourceFor(vm, dirty), { kind: 'full', out: join(dir, 's0') });
    const pages = vm.memory.size / PAGE_SIZE;
    // Every other page (one-page ranges), and one long range at the end.
    for (let p = 0; p < pages - 1024; p += 2) vm.memory.write(p * PAGE_SIZE + 8, seededBytes(p, 16));
    vm.memory.write((pages - 512) * PAGE_SIZE, seededBytes(5, 256 * PAGE_SIZE));
    const d = await createSnapshot(sourceFor(vm, dirty), { kind: 'diff', out: join(dir, 'd'), parentId: base.snapshotId });
    const ranges = (pages - 1024) / 2 + 1;
    assert.ok(ranges > MAX_MAPPED_RANGES, `the diff has ${ranges} ranges`);
    const before = mappings();
    const chain = openSnapshotChain([base.dir, d.dir]);
    try {
      assert.equal(chain.memory.mappedRanges, MAX_MAPPED_RANGES);
      assert.equal(chain.memory.copiedRanges, ranges - MAX_MAPPED_RANGES);
      const added = mappings() - before;
      // At most two per mapped range, plus whatever Node itself mapped meanwhile (its heap, buffers).
      assert.ok(added <= 2 * MAX_MAPPED_RANGES + 256, `the restore added ${added} mappings (at most two per mapped range)`);
      assert.ok(mappings() < 65530 / 2, 'far below vm.max_map_count');
      await chain.verify();
      assert.ok(Buffer.from(libc.view(chain.memory.hostAddress, chain.memory.size)).equals(liveMemory(vm)), 'memory as of the diff');
    } finally {
      chain.close();
    }
    assert.ok(mappings() <= before + 256, 'and closing the chain removes them all');
  });
});

describe('a snapshot that cannot be written (full filesystem: a 1 MiB tmpfs)', () => {
  let mnt: string;
  let vm: RealModeVm;
  before(function () {
    if (process.getuid?.() !== 0) throw new Error('this test mounts a tmpfs and must run as root');
  });
  beforeEach(() => {
    mnt = tempDir('full-fs');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1M', 'tmpfs', mnt]);
    vm = RealModeVm.create(MEMORY);
  });
  afterEach(() => {
    vm.close();
    execFileSync('umount', [mnt]);
    removeDir(mnt);
  });

  it('fails with the reason, leaves nothing behind, and keeps every dirty page for the next snapshot', async () => {
    const dirty = new DirtyMemoryTracker(vm.vm, vm.memory, vm.mode);
    vm.writePages(0x10, 0x80); // 512 KiB by the guest
    vm.memory.write(0x100000, seededBytes(3, 768 * 1024)); // 768 KiB by the VMM: more than fits
    await assert.rejects(
      createSnapshot(sourceFor(vm, dirty), { kind: 'full', out: join(mnt, 'snap') }),
      /snapshot not written: no space left on the device holding .*no dirty page was lost/,
    );
    assert.deepEqual(readdirSync(mnt), [], 'no partial snapshot left');
    const next = dirty.collect();
    for (const page of [0x10, 0x50, 0x8f, 0x100, 0x100 + 191]) assert.ok(next.has(page), `page 0x${page.toString(16)} is still dirty`);
    assert.equal(existsSync(join(mnt, 'snap')), false);
  });
});
