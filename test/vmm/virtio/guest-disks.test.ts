// virtio-blk with the real Lifeboat guest under `lifeboat vm run`: several disks in one VM, data in both
// directions, transfers larger than one request, a read-only disk, and the guest's own benchmark.
// (test/vmm/guest.test.ts covers the single-disk stories and the ledger surviving SIGKILL.)
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { virtioGsi, virtioMmioBase } from '../../../vmm/layout.js';
import { patternBuffer } from '../../helpers/pattern.js';
import { guestImage, requireKvm, runVm, tempDir } from '../../helpers/vmm.js';
import { sparseImage, readAt, writeAt } from '../../helpers/image-files.js';

const MiB = 1 << 20;
const BOOT = ['--boot-timeout', '120'];

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

describe('virtio-blk with the real Lifeboat guest', function () {
  this.timeout(600_000);
  let dir: ReturnType<typeof tempDir>;

  before(() => {
    requireKvm();
    guestImage();
    dir = tempDir('lifeboat-virtio-guest-');
  });
  after(() => dir?.remove());

  it('two disks in one VM: the guest writes to disk 0 and verifies the host\'s data on read-only disk 1; each byte lands only where it should', async () => {
    const d0 = sparseImage(join(dir.path, 'd0.img'), 48 * MiB);
    const d1 = sparseImage(join(dir.path, 'd1.img'), 24 * MiB);
    // Larger than one request of the guest's driver, at offsets that are not 4 KiB aligned.
    const write = { offset: 7 * MiB + 512, length: 2 * MiB + 4096, seed: 1234n };
    const onD0 = { offset: 20 * MiB, length: 64 * 1024, seed: 55n };
    const onD1 = { offset: MiB + 512, length: 3 * MiB + 1024, seed: 77n };
    writeAt(d0, onD0.offset, patternBuffer(onD0.seed, onD0.offset, onD0.length));
    writeAt(d1, onD1.offset, patternBuffer(onD1.seed, onD1.offset, onD1.length));
    const d1Before = sha256(readFileSync(d1));

    const exec = [
      'info',
      `disk write 0 ${write.offset} ${write.length} ${write.seed}`,
      `disk verify 0 ${onD0.offset} ${onD0.length} ${onD0.seed}`,
      `disk verify 1 ${onD1.offset} ${onD1.length} ${onD1.seed}`,
      `disk read 1 ${onD1.offset} ${onD1.length}`,
      'disk write 1 0 4096 9',
    ].join('; ');
    const exit = await runVm([...BOOT, '--disk', d0, '--disk', `${d1},ro`, '--exec', exec], { timeoutMs: 300_000 });
    const out = exit.stdout;
    assert.equal(exit.code, 1, `the last command (a write to the read-only disk) fails the run\n${exit.stderr}\n${out}`);

    assert.match(out, new RegExp(`^disk 0 bytes=${48 * MiB} ro=0 mmio=0x${virtioMmioBase(0).toString(16)} gsi=${virtioGsi(0)}$`, 'm'));
    assert.match(out, new RegExp(`^disk 1 bytes=${24 * MiB} ro=1 mmio=0x${virtioMmioBase(1).toString(16)} gsi=${virtioGsi(1)}$`, 'm'));
    assert.match(out, /^disk write ok$/m);
    assert.equal([...out.matchAll(/^disk verify ok$/gm)].length, 2, 'both verifications passed');
    const read = /^disk read sha256=([0-9a-f]{64})$/m.exec(out);
    assert.ok(read, out);
    assert.equal(read[1], sha256(readAt(d1, onD1.offset, onD1.length)), 'the guest read exactly the bytes of disk 1');
    assert.match(out, /error: disk 1 is read-only/);

    assert.ok(readAt(d0, write.offset, write.length).equals(patternBuffer(write.seed, write.offset, write.length)), 'disk 0 holds the guest\'s pattern');
    assert.ok(readAt(d0, write.offset - 512, 512).equals(Buffer.alloc(512)), 'nothing before it');
    assert.ok(readAt(d0, write.offset + write.length, 512).equals(Buffer.alloc(512)), 'nothing after it');
    assert.ok(readAt(d0, onD0.offset, onD0.length).equals(patternBuffer(onD0.seed, onD0.offset, onD0.length)), 'the host\'s data on disk 0 is intact');
    assert.equal(sha256(readFileSync(d1)), d1Before, 'the read-only disk is byte-for-byte unchanged');
  });

  it('disk bench runs its sequential and random phases on our virtio-blk and reports figures for each', async () => {
    const disk = sparseImage(join(dir.path, 'bench.img'), 256 * MiB);
    const exit = await runVm([...BOOT, '--disk', disk, '--exec', 'disk bench 0'], { timeoutMs: 300_000 });
    assert.equal(exit.code, 0, `${exit.stderr}\n${exit.stdout}`);
    const m = /^disk bench seq_read_mibps=(\d+) seq_write_mibps=(\d+) rand_read_iops=(\d+) rand_write_iops=(\d+)$/m.exec(exit.stdout);
    assert.ok(m, exit.stdout);
    for (const [i, name] of ['seq_read_mibps', 'seq_write_mibps', 'rand_read_iops', 'rand_write_iops'].entries()) {
      assert.ok(Number(m[i + 1]) > 0, `${name} > 0`);
    }
    assert.equal(readFileSync(disk).length, 256 * MiB, 'the image kept its size');
  });
});
