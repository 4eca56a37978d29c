// Opening disks: every mistake a user can make with --disk gets one clear line before anything is
// touched, and a good set is laid out where the ACPI tables and KVM registrations say.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { VIRTIO_MMIO_SIZE, virtioGsi, virtioMmioBase } from '../../../vmm/layout.js';
import { DiskImageError, VirtioBlockSet, type DiskSpec } from '../../../vmm/devices/virtio/index.js';
import { GuestMemory } from '../../../vmm/memory.js';
import { EventfdVm } from './driver.js';

const MiB = 1 << 20;

/** fds of this process open on `file`, with their access mode (0 O_RDONLY, 2 O_RDWR). */
function openModes(file: string): number[] {
  const real = fs.realpathSync(file);
  const modes: number[] = [];
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    if (target !== real) continue;
    const flags = /flags:\s+([0-7]+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!;
    modes.push(parseInt(flags, 8) & 3);
  }
  return modes;
}

describe('virtio-blk: opening disk images', () => {
  let dir: string;
  let memory: GuestMemory;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lifeboat-virtio-open-'));
    memory = GuestMemory.create(4 * MiB);
  });

  afterEach(() => {
    memory.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function image(name: string, size: number): string {
    const p = path.join(dir, name);
    fs.writeFileSync(p, '');
    fs.truncateSync(p, size);
    return p;
  }

  function open(specs: DiskSpec[], vm = new EventfdVm()) {
    return VirtioBlockSet.open(specs, { memory, vm, firstIndex: 0 });
  }

  function refuses(specs: DiskSpec[], message: RegExp): void {
    const vm = new EventfdVm();
    const isFile = (p: string) => fs.existsSync(p) && fs.statSync(p).isFile();
    const openBefore = specs.map((s) => (isFile(s.path) ? openModes(s.path).length : 0));
    assert.throws(() => open(specs, vm), (err: Error) => {
      assert.ok(err instanceof DiskImageError, `a DiskImageError, got ${err.name}`);
      assert.match(err.message, message);
      assert.ok(!err.message.includes('\n'), 'one line');
      return true;
    });
    assert.equal(vm.ioeventfds.length + vm.irqfds.length, 0, 'nothing registered with the VM');
    specs.forEach((s, i) => {
      if (isFile(s.path)) assert.equal(openModes(s.path).length, openBefore[i], `${s.path} not left open`);
    });
  }

  it('a missing image is named, with how to create it, and is not created', () => {
    const good = image('good.img', MiB);
    const missing = path.join(dir, 'missing.img');
    refuses([{ path: good, readOnly: false }, { path: missing, readOnly: false }], /missing\.img does not exist \(create it, e\.g\. truncate -s 1G/);
    assert.equal(fs.existsSync(missing), false);
  });

  it('a directory is not a disk', () => {
    refuses([{ path: dir, readOnly: true }], /is not a regular file or block device/);
  });

  it('an image whose size is not a multiple of 512 is refused with the size to resize it to, and left as it was', () => {
    const odd = image('odd.img', 1000);
    refuses([{ path: odd, readOnly: false }], /odd\.img is 1000 bytes, not a multiple of 512 \(resize it, e\.g\. truncate -s 1024 /);
    assert.equal(fs.statSync(odd).size, 1000);
    refuses([{ path: image('empty.img', 0), readOnly: false }], /is empty/);
  });

  it('the same image attached twice for writing is refused; twice read-only is fine', () => {
    const p = image('twice.img', MiB);
    refuses([{ path: p, readOnly: false }, { path: path.join(dir, '.', 'twice.img'), readOnly: true }], /attached twice/);
    const set = open([{ path: p, readOnly: true }, { path: p, readOnly: true }]);
    void set.stop();
  });

  it('an image another running VM writes to is refused (locked), and free again once that VM stopped', async () => {
    const p = image('busy.img', MiB);
    const first = open([{ path: p, readOnly: false }]);
    refuses([{ path: p, readOnly: true }], /busy\.img is in use by another VM/);
    await first.stop();
    const second = open([{ path: p, readOnly: false }]);
    await second.stop();
  });

  it('a bad serial is refused', () => {
    refuses([{ path: image('s.img', MiB), readOnly: false, serial: 'x'.repeat(21) }], /serial .* must be 1 to 20 printable ASCII characters/);
  });

  it('read-only disks are opened O_RDONLY, writable ones O_RDWR; stop closes them', async () => {
    const ro = image('ro.img', MiB);
    const rw = image('rw.img', MiB);
    const set = open([{ path: ro, readOnly: true }, { path: rw, readOnly: false }]);
    assert.deepEqual(openModes(ro), [0]);
    assert.deepEqual(openModes(rw), [2]);
    await set.stop();
    assert.deepEqual(openModes(ro), []);
    assert.deepEqual(openModes(rw), []);
  });

  it('lays disks out from firstIndex: MMIO windows, GSIs, ioeventfds at QueueNotify with the queue index, one irqfd each', async () => {
    const vm = new EventfdVm();
    const set = VirtioBlockSet.open(
      [
        { path: image('a.img', MiB), readOnly: false },
        { path: image('b.img', 2 * MiB), readOnly: true, serial: 'MY-DISK-B' },
      ],
      { memory, vm, firstIndex: 2 },
    );
    try {
      assert.deepEqual(set.acpiDevices(), [
        { base: virtioMmioBase(2), size: VIRTIO_MMIO_SIZE, gsi: virtioGsi(2) },
        { base: virtioMmioBase(3), size: VIRTIO_MMIO_SIZE, gsi: virtioGsi(3) },
      ]);
      const descriptors = set.descriptors();
      assert.deepEqual(descriptors.map((d) => [d.kind, d.base, d.length, d.gsi]), [
        ['virtio-mmio', virtioMmioBase(2), VIRTIO_MMIO_SIZE, virtioGsi(2)],
        ['virtio-mmio', virtioMmioBase(3), VIRTIO_MMIO_SIZE, virtioGsi(3)],
      ]);
      assert.deepEqual(vm.ioeventfds.map((e) => [e.addr, e.length, e.datamatch, e.fd]), descriptors.map((d) => [d.base + 0x50, 4, 0, d.queueNotifyFds[0]]));
      assert.deepEqual(vm.irqfds.map((e) => e.gsi), [virtioGsi(2), virtioGsi(3)]);
      assert.deepEqual(set.disks.map((d) => [d.disk, d.deviceIndex, d.sizeBytes, d.readOnly]), [[0, 2, MiB, false], [1, 3, 2 * MiB, true]]);
      assert.equal(set.disks[1]!.serial, 'MY-DISK-B');
      // Descriptors cross to vCPU workers by structured clone.
      assert.deepEqual(structuredClone(descriptors)[0]!.base, virtioMmioBase(2));
    } finally {
      await set.stop();
    }
  });
});
