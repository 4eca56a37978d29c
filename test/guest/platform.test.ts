// The Lifeboat guest validated against an independent platform: QEMU -M microvm's ACPI tables,
// virtio-mmio, 8250 and LAPIC/IOAPIC, before it meets Lifeboat's own VMM.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { ImageDir } from './disk-images.js';
import { readAt, writeAt } from '../helpers/image-files.js';
import { firstPatternMismatch, patternBuffer } from '../helpers/pattern.js';
import { killAllGuests, runQemu, startQemu, PROMPT, type Accel } from '../helpers/qemu.js';

const MiB = 1 << 20;

function infoLines(output: string) {
  const info = /info cpus=(\d+) online=(\d+) mem=(\d+) disks=(\d+) tsc_khz=(\d+)/.exec(output);
  assert.ok(info, `no info line in:\n${output}`);
  const disks = [...output.matchAll(/disk (\d+) bytes=(\d+) ro=([01]) mmio=(0x[0-9a-f]+) gsi=(\d+)/g)].map((m) => ({
    index: Number(m[1]),
    bytes: Number(m[2]),
    ro: m[3] === '1',
    mmio: m[4],
    gsi: Number(m[5]),
  }));
  return { cpus: Number(info[1]), online: Number(info[2]), mem: Number(info[3]), disks: Number(info[4]), tscKhz: Number(info[5]), diskLines: disks };
}

for (const accel of ['kvm', 'tcg'] as Accel[]) {
  describe(`Lifeboat guest under QEMU microvm (${accel.toUpperCase()}), 2 vCPUs, two virtio-blk disks`, function () {
    let images: ImageDir;
    beforeEach(() => (images = new ImageDir()));
    afterEach(async () => {
      await killAllGuests();
      images.remove();
    });

    it('info lists both CPUs online, the memory, and both disks with their sizes', async () => {
      const disks = [{ path: images.create('a.img', 64 * MiB) }, { path: images.create('b.img', 24 * MiB + 4096) }];
      const exit = await runQemu({ accel, cpus: 2, memoryMiB: 128, disks, exec: 'info' });
      assert.equal(exit.guestStatus, 0, exit.output);
      assert.equal(exit.printedStatus, 0);
      const info = infoLines(exit.output);
      assert.equal(info.cpus, 2);
      assert.equal(info.online, 2);
      assert.equal(info.disks, 2);
      assert.ok(info.mem > 120 * MiB && info.mem <= 128 * MiB, `mem=${info.mem}`);
      assert.ok(info.tscKhz > 100_000, `tsc_khz=${info.tscKhz}`);
      assert.deepEqual(info.diskLines.map((d) => [d.index, d.bytes, d.ro]), [[0, 64 * MiB, false], [1, 24 * MiB + 4096, false]]);
    });

    it('a seeded pattern the guest writes is byte-exact in the image file, and nothing around it changes', async () => {
      const disks = [{ path: images.create('a.img', 16 * MiB) }, { path: images.create('b.img', 32 * MiB) }];
      const offset = 3 * MiB + 512;
      const length = accel === 'kvm' ? 5 * MiB : MiB;
      const exit = await runQemu({ accel, disks, exec: `disk write 1 ${offset} ${length} 0xfeedbeef; disk write 0 0 4096 7` });
      assert.equal(exit.guestStatus, 0, exit.output);
      assert.equal([...exit.output.matchAll(/^disk write ok$/gm)].length, 2);
      const written = readAt(disks[1].path, offset, length);
      assert.equal(firstPatternMismatch(written, 0xfeedbeefn, offset), -1);
      assert.ok(readAt(disks[1].path, offset - 512, 512).every((b) => b === 0), 'bytes before the range changed');
      assert.ok(readAt(disks[1].path, offset + length, 512).every((b) => b === 0), 'bytes after the range changed');
      assert.ok(readAt(disks[0].path, 0, 4096).equals(patternBuffer(7n, 0, 4096)), 'disk 0 got the wrong bytes');
    });

    it('a pattern the host wrote is verified by the guest; a wrong seed or a damaged byte is caught at its offset', async () => {
      const disks = [{ path: images.create('a.img', 8 * MiB) }, { path: images.create('b.img', 8 * MiB) }];
      const offset = MiB;
      const length = 2 * MiB;
      writeAt(disks[1].path, offset, patternBuffer(99n, offset, length));
      const ok = await runQemu({ accel, disks, exec: `disk verify 1 ${offset} ${length} 99` });
      assert.equal(ok.guestStatus, 0, ok.output);
      assert.match(ok.output, /^disk verify ok$/m);

      const wrongSeed = await runQemu({ accel, disks, exec: `disk verify 1 ${offset} ${length} 98` });
      assert.equal(wrongSeed.guestStatus, 1, wrongSeed.output);
      assert.match(wrongSeed.output, new RegExp(`^disk verify mismatch offset=${offset}$`, 'm'));

      const damaged = offset + 1234567;
      writeAt(disks[1].path, damaged, Buffer.from([readAt(disks[1].path, damaged, 1)[0] ^ 0x40]));
      const bad = await runQemu({ accel, disks, exec: `disk verify 1 ${offset} ${length} 99` });
      assert.equal(bad.guestStatus, 1, bad.output);
      assert.match(bad.output, new RegExp(`^disk verify mismatch offset=${damaged}$`, 'm'));
    });

    it('disk read reports the SHA-256 the host computes over the same bytes', async () => {
      const disks = [{ path: images.create('a.img', 4 * MiB) }];
      const data = Buffer.alloc(MiB + 1536);
      for (let i = 0; i < data.length; i++) data[i] = (i * 31 + (i >> 9)) & 0xff;
      writeAt(disks[0].path, 512, data);
      const exit = await runQemu({ accel, disks, exec: `disk read 0 0x200 ${data.length}` });
      assert.equal(exit.guestStatus, 0, exit.output);
      const sha = createHash('sha256').update(data).digest('hex');
      assert.match(exit.output, new RegExp(`^disk read sha256=${sha}$`, 'm'));
    });
  });
}

describe('Lifeboat guest under QEMU microvm (KVM): shell and workloads', function () {
  let images: ImageDir;
  beforeEach(() => (images = new ImageDir()));
  afterEach(async () => {
    await killAllGuests();
    images.remove();
  });

  it('serves an interactive shell on the serial console: commands, Ctrl-C ends counter, poweroff status reaches the host', async () => {
    const guest = startQemu({ disks: [{ path: images.create('a.img', 4 * MiB) }] });
    await guest.waitFor(PROMPT);
    const info = await guest.command('info');
    assert.match(info, /info cpus=2 online=2 /);
    const from = guest.output.length;
    guest.send('counter\r');
    await guest.waitFor(/^counter 3$/m, 10_000, from);
    guest.send('\x03');
    await guest.waitFor(new RegExp(`\\n${PROMPT}`), 10_000, from);
    const counts = [...guest.output.slice(from).matchAll(/^counter (\d+)$/gm)].map((m) => Number(m[1]));
    assert.deepEqual(counts, counts.map((_, i) => i + 1), 'counter must count 1, 2, 3, ... one per line');
    assert.match(await guest.command('no-such-command'), /^error: unknown command 'no-such-command'$/m);
    guest.send('poweroff 42\r');
    const exit = await guest.wait();
    assert.equal(exit.guestStatus, 42);
    assert.equal(exit.printedStatus, 42);
  });

  it('mem dirty touches the requested pages and disk bench reports all four figures', async () => {
    const disks = [{ path: images.create('a.img', 16 * MiB) }];
    const exit = await runQemu({ disks, exec: 'mem dirty 4000; disk bench 0' });
    assert.equal(exit.guestStatus, 0, exit.output);
    assert.match(exit.output, /^mem dirty pages=4000$/m);
    const bench = /^disk bench seq_read_mibps=(\d+) seq_write_mibps=(\d+) rand_read_iops=(\d+) rand_write_iops=(\d+)$/m.exec(exit.output);
    assert.ok(bench, exit.output);
    assert.ok(bench.slice(1).every((n) => Number(n) > 0), bench[0]);
  });

  it('mem dirty with a rate keeps cycling until Ctrl-C and reports the pages written', async () => {
    const guest = startQemu({});
    await guest.waitFor(PROMPT);
    const from = guest.output.length;
    guest.send('mem dirty 100 2000\r');
    // The command runs once the guest has echoed the whole line; from then on 2000 pages/s passes 100
    // pages within 50 ms of guest time, so a second of wall time leaves room for a loaded host.
    await guest.waitFor(/mem dirty 100 2000\r?\n/, 10_000, from);
    await new Promise((r) => setTimeout(r, 1000));
    guest.send('\x03');
    // Up to the newline: `$` with /m also matches the end of a line still arriving ("pages=2" of "pages=2020").
    const m = await guest.waitFor(/^mem dirty pages=(\d+)\n/m, 10_000, from);
    assert.ok(Number(m[1]) > 100, `expected it to cycle past 100 pages, got ${m[1]}`);
    await guest.waitFor(new RegExp(`\\n${PROMPT}`), 10_000, from);
    await guest.kill();
  });

  it('a read-only disk refuses writes with a clear error and status 1, but can be read', async () => {
    const path = images.create('ro.img', 2 * MiB);
    const exit = await runQemu({ disks: [{ path, readOnly: true }], exec: 'info; disk verify 0 0 512 1' });
    assert.equal(exit.guestStatus, 1, exit.output);
    assert.match(exit.output, /^disk 0 bytes=2097152 ro=1 /m);
    assert.match(exit.output, /^disk verify mismatch offset=0$/m);
    const write = await runQemu({ disks: [{ path, readOnly: true }], exec: 'disk write 0 0 512 1' });
    assert.equal(write.guestStatus, 1, write.output);
    assert.match(write.output, /^error: disk 0 is read-only$/m);
    assert.ok(readAt(path, 0, 512).every((b) => b === 0));
  });

  it('takes the TSC frequency from lifeboat.tsc_khz when given (how TCG hosts without kvmclock are told)', async () => {
    const exit = await runQemu({ accel: 'tcg', exec: 'info', append: 'lifeboat.tsc_khz=2345678' });
    assert.equal(exit.guestStatus, 0, exit.output);
    assert.equal(infoLines(exit.output).tscKhz, 2345678);
  });
});
