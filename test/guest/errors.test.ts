// Malformed inputs give one clear line on the console and a non-zero exit status, never a hang.
// (Corrupt ACPI tables need a VMM that can build them: see docs/guest.md, "Error paths".)
import assert from 'node:assert/strict';
import { ImageDir } from './disk-images.js';
import { killAllGuests, runQemu } from '../helpers/qemu.js';

describe('Lifeboat guest error paths under QEMU microvm (KVM)', function () {
  let images: ImageDir;
  beforeEach(() => (images = new ImageDir()));
  afterEach(async () => {
    await killAllGuests();
    images.remove();
  });

  it('an unknown command prints error: unknown command and exits 127, skipping the rest', async () => {
    const exit = await runQemu({ exec: 'frobnicate now; info' });
    assert.equal(exit.guestStatus, 127, exit.output);
    assert.match(exit.output, /^error: unknown command 'frobnicate'$/m);
    assert.doesNotMatch(exit.output, /^info cpus=/m);
  });

  it('a disk command without any virtio disk in the DSDT says there is no such disk', async () => {
    const exit = await runQemu({ exec: 'info; disk verify 0 0 512 1' });
    assert.equal(exit.guestStatus, 1, exit.output);
    assert.match(exit.output, /disks=0 /);
    assert.match(exit.output, /^error: no disk 0 \(the ACPI DSDT lists 0 virtio-blk devices\)$/m);
  });

  it('a disk of size 0 is listed with bytes=0 and refused with a clear message', async () => {
    const empty = images.create('empty.img', 0);
    const exit = await runQemu({ disks: [{ path: empty }], exec: 'info; disk write 0 0 512 1' });
    assert.equal(exit.guestStatus, 1, exit.output);
    assert.match(exit.output, /^disk 0 bytes=0 ro=/m);
    assert.match(exit.output, /^error: disk 0 is empty \(capacity 0 bytes\): give the VM a non-empty disk image$/m);
    const ledger = await runQemu({ disks: [{ path: empty }], exec: 'ledger run' });
    assert.equal(ledger.guestStatus, 1, ledger.output);
    assert.match(ledger.output, /^error: disk 0 is empty/m);
  });

  it('bad arguments are usage errors (status 2); a range past the end of the disk is an error (status 1)', async () => {
    const disks = [{ path: images.create('a.img', 1 << 20) }];
    const unaligned = await runQemu({ disks, exec: 'disk write 0 100 512 1' });
    assert.equal(unaligned.guestStatus, 2, unaligned.output);
    assert.match(unaligned.output, /^error: OFFSET and LENGTH must be multiples of 512/m);
    const notNumber = await runQemu({ disks, exec: 'mem dirty lots' });
    assert.equal(notNumber.guestStatus, 2, notNumber.output);
    assert.match(notNumber.output, /^error: PAGES 'lots' is not a number/m);
    const pastEnd = await runQemu({ disks, exec: 'disk read 0 0x100000 512' });
    assert.equal(pastEnd.guestStatus, 1, pastEnd.output);
    assert.match(pastEnd.output, /^error: disk 0: range 1048576\+512 is past its end \(1048576 bytes\)$/m);
    const tooMuchMemory = await runQemu({ memoryMiB: 64, exec: 'mem dirty 1000000' });
    assert.equal(tooMuchMemory.guestStatus, 1, tooMuchMemory.output);
    assert.match(tooMuchMemory.output, /^error: mem dirty: 1000000 pages do not fit in free memory/m);
  });
});
