import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KernelImageError, parseKernelImage, readKernelImage } from '../../../vmm/boot/bzimage.js';
import { projectRoot } from '../../../src/util/project-root.js';
import { debianLinuxGuest } from './debian-kernel.js';
import { syntheticBzImage } from './synthetic-bzimage.js';

describe('kernel image (bzImage) parsing', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'lifeboat-bzimage-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  describe("Debian's cloud kernel (scripts/linux-guest.sh)", () => {
    it('is a 64-bit bzImage whose payload starts after the setup sectors and whose header names its release', () => {
      const guest = debianLinuxGuest();
      const file = readFileSync(guest.kernel);
      const image = readKernelImage(guest.kernel);
      const setupSects = file[0x1f1]!;
      assert.ok(setupSects > 0);
      assert.equal(image.setupSects, setupSects);
      assert.ok(image.protocolVersion >= 0x020f, `protocol 0x${image.protocolVersion.toString(16)}`);
      assert.equal(image.xloadflags & 1, 1, '64-bit entry');
      assert.equal(image.payload.length, file.length - (setupSects + 1) * 512);
      assert.deepEqual(Buffer.from(image.payload.subarray(0, 64)), file.subarray((setupSects + 1) * 512, (setupSects + 1) * 512 + 64));
      assert.deepEqual(Buffer.from(image.setupHeader), file.subarray(0x1f1, 0x26c));
      assert.ok(image.kernelVersion?.startsWith(guest.kernelVersion + ' '), `kernel_version ${image.kernelVersion}`);
      // x86-64 Linux ABI facts of a relocatable kernel built with the default 16 MiB load address.
      assert.equal(image.relocatable, true);
      assert.equal(image.kernelAlignment, 0x200000);
      assert.equal(image.prefAddress, 0x1000000n);
      assert.equal(image.initrdAddrMax, 0x7fffffff);
      assert.equal(image.cmdlineMax, 2047);
      assert.ok(image.initSize > image.payload.length, 'init_size covers the decompressed kernel');
    });

    it('refuses a copy cut short, saying it is truncated', () => {
      const file = readFileSync(debianLinuxGuest().kernel);
      const cut = join(dir, 'bzImage.cut');
      writeFileSync(cut, file.subarray(0, 1 << 20));
      assert.throws(() => readKernelImage(cut), (err: Error) => {
        assert.ok(err instanceof KernelImageError);
        assert.match(err.message, new RegExp(`^${escape(cut)} is truncated: the kernel needs at least \\d+ bytes after the setup code, the file has \\d+; copy the image again$`));
        return true;
      });
      writeFileSync(cut, file.subarray(0, 0x100));
      assert.throws(() => readKernelImage(cut), /is truncated or not a kernel: 256 bytes, too short for a bzImage setup header/);
    });
  });

  describe('the Lifeboat guest (guest/build/lifeboat-guest.bin)', () => {
    it('is a 64-bit bzImage with its payload after the setup sectors', function () {
      const bin = join(projectRoot(), 'guest/build/lifeboat-guest.bin');
      assert.ok(existsSync(bin), `${bin} is missing: build it with 'make -C guest'`);
      const file = readFileSync(bin);
      const image = readKernelImage(bin);
      assert.ok(image.protocolVersion >= 0x020c);
      assert.equal(image.xloadflags & 1, 1);
      assert.equal(image.payload.length, file.length - ((file[0x1f1] || 4) + 1) * 512);
    });
  });

  describe('synthetic headers', () => {
    it('returns the header bytes and the fields the loader needs', () => {
      const image = parseKernelImage(
        syntheticBzImage({ initrdAddrMax: 0x37ffffff, kernelAlignment: 0x1000, prefAddress: 0x100000n, initSize: 0x345000, kernelVersion: 'lifeboat-guest 0.1' }),
      );
      assert.equal(image.setupHeader.length, 0x26c - 0x1f1);
      assert.equal(image.setupHeader[0x202 - 0x1f1], 0x48); // 'H' of "HdrS"
      assert.equal(image.initrdAddrMax, 0x37ffffff);
      assert.equal(image.kernelAlignment, 0x1000);
      assert.equal(image.prefAddress, 0x100000n);
      assert.equal(image.initSize, 0x345000);
      assert.equal(image.kernelVersion, 'lifeboat-guest 0.1');
      assert.equal(image.payload.length, 0x1000);
      assert.equal(image.payload[1], 7);
    });

    it('reads setup_sects = 0 as 4, so the payload starts at byte 2560', () => {
      const payload = new Uint8Array(0x800).fill(0xab);
      const file = syntheticBzImage({ setupSects: 0, payload });
      const image = parseKernelImage(file);
      assert.equal(image.setupSects, 4);
      assert.deepEqual(image.payload, payload);
      assert.equal(file.length - image.payload.length, 2560);
    });

    it('accepts a payload ending inside its last 16-byte paragraph (syssize rounds up) and refuses one a paragraph short', () => {
      const payload = new Uint8Array(0x1001).fill(1);
      const file = syntheticBzImage({ payload }); // syssize = ceil(0x1001 / 16) = 0x101
      assert.equal(new DataView(file.buffer).getUint32(0x1f4, true), 0x101);
      assert.equal(parseKernelImage(file).payload.length, 0x1001);
      assert.throws(() => parseKernelImage(file.subarray(0, file.length - 1), 'short.bin'), {
        message: 'short.bin is truncated: the kernel needs at least 4097 bytes after the setup code, the file has 4096; copy the image again',
      });
    });

    it('refuses boot protocol 2.11, which has no 64-bit entry', () => {
      assert.throws(() => parseKernelImage(syntheticBzImage({ version: 0x020b }), 'old.bin'), {
        name: 'KernelImageError',
        message: 'old.bin uses boot protocol 2.11; Lifeboat needs 2.12 or newer (Linux 3.8+) for the 64-bit entry',
      });
    });

    it('refuses a 32-bit-only kernel (xloadflags bit 0 clear)', () => {
      assert.throws(() => parseKernelImage(syntheticBzImage({ xloadflags: 0x2 }), 'k32'), {
        message: 'k32 has no 64-bit entry point (xloadflags bit 0 clear); Lifeboat boots x86-64 kernels only',
      });
    });
  });

  describe('files that are not bzImages', () => {
    it('says an ELF (vmlinux, lifeboat-guest.elf) is the wrong file and which one to pass', () => {
      // The node binary is a real ELF executable.
      assert.throws(() => readKernelImage(process.execPath), {
        name: 'KernelImageError',
        message: `${process.execPath} is an ELF file (vmlinux or lifeboat-guest.elf), not a bzImage; pass a bzImage (arch/x86/boot/bzImage or guest/build/lifeboat-guest.bin)`,
      });
    });

    it('says a file without the "HdrS" header is not a bzImage', () => {
      const path = join(dir, 'random.img');
      writeFileSync(path, Buffer.alloc(8192, 0x5a));
      assert.throws(() => readKernelImage(path), /random\.img is not a bzImage \(no 0xAA55 boot flag and "HdrS" setup header\); pass a bzImage/);
    });

    it('names a missing file and a directory plainly', () => {
      assert.throws(() => readKernelImage(join(dir, 'nope')), /kernel image .*nope does not exist/);
      assert.throws(() => readKernelImage(dir), /is a directory; pass the bzImage file/);
    });
  });
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
