import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BOOT_PARAMS_SIZE, E820_RAM, E820_RESERVED, bootParams } from '../../../vmm/boot/boot-params.js';
import { parseKernelImage, readKernelImage, type KernelImage } from '../../../vmm/boot/bzimage.js';
import { buildE820, guestRamRanges } from '../../../vmm/boot/e820.js';
import { BootError } from '../../../vmm/boot/errors.js';
import { buildZeroPage, kernelMemoryEnd } from '../../../vmm/boot/zero-page.js';
import { CMDLINE_ADDR, RSDP_ADDR, ZERO_PAGE_ADDR } from '../../../vmm/layout.js';
import { debianLinuxGuest } from './debian-kernel.js';
import { syntheticBzImage } from './synthetic-bzimage.js';

const MiB = 0x100000;
const GiB = 0x40000000;

/** The e820 table as the guest reads it from the zero page: e820_entries at 0x1E8, 20-byte entries at 0x2D0. */
function e820FromZeroPage(zp: Uint8Array): { addr: number; size: number; type: number }[] {
  const v = new DataView(zp.buffer, zp.byteOffset);
  return Array.from({ length: zp[0x1e8]! }, (_, i) => ({
    addr: Number(v.getBigUint64(0x2d0 + 20 * i, true)),
    size: Number(v.getBigUint64(0x2d0 + 20 * i + 8, true)),
    type: v.getUint32(0x2d0 + 20 * i + 16, true),
  }));
}

describe('zero page (boot_params)', () => {
  let linux: KernelImage;
  before(() => {
    linux = readKernelImage(debianLinuxGuest().kernel);
  });

  it("declares every field at the offset this machine's <asm/bootparam.h> gives it", function () {
    const dir = mkdtempSync(join(tmpdir(), 'lifeboat-bootparam-'));
    try {
      const cNames: Record<string, string> = {
        acpiRsdpAddr: 'acpi_rsdp_addr', extRamdiskImage: 'ext_ramdisk_image', extRamdiskSize: 'ext_ramdisk_size',
        extCmdLinePtr: 'ext_cmd_line_ptr', e820Entries: 'e820_entries', sentinel: 'sentinel', setupHeader: 'hdr',
        setupSects: 'hdr.setup_sects', syssize: 'hdr.syssize', vidMode: 'hdr.vid_mode', bootFlag: 'hdr.boot_flag',
        jump: 'hdr.jump', header: 'hdr.header', version: 'hdr.version', kernelVersion: 'hdr.kernel_version',
        typeOfLoader: 'hdr.type_of_loader', loadflags: 'hdr.loadflags', code32Start: 'hdr.code32_start',
        ramdiskImage: 'hdr.ramdisk_image', ramdiskSize: 'hdr.ramdisk_size', heapEndPtr: 'hdr.heap_end_ptr',
        cmdLinePtr: 'hdr.cmd_line_ptr', initrdAddrMax: 'hdr.initrd_addr_max', kernelAlignment: 'hdr.kernel_alignment',
        relocatableKernel: 'hdr.relocatable_kernel', minAlignment: 'hdr.min_alignment', xloadflags: 'hdr.xloadflags',
        cmdlineSize: 'hdr.cmdline_size', hardwareSubarch: 'hdr.hardware_subarch', payloadOffset: 'hdr.payload_offset',
        payloadLength: 'hdr.payload_length', setupData: 'hdr.setup_data', prefAddress: 'hdr.pref_address',
        initSize: 'hdr.init_size', handoverOffset: 'hdr.handover_offset', kernelInfoOffset: 'hdr.kernel_info_offset',
        e820Table: 'e820_table',
      };
      assert.deepEqual(Object.keys(cNames).sort(), Object.keys(bootParams.fields).sort(), 'every declared field is checked');
      const source = [
        '#include <stddef.h>',
        '#include <stdio.h>',
        '#include <asm/bootparam.h>',
        'int main(void) {',
        '  printf("size %zu\\n", sizeof(struct boot_params));',
        '  printf("hdr_size %zu\\n", sizeof(struct setup_header));',
        ...Object.entries(cNames).map(
          ([key, c]) => `  printf("${key} %zu %zu\\n", offsetof(struct boot_params, ${c}), sizeof(((struct boot_params *)0)->${c}));`,
        ),
        '  return 0;',
        '}',
      ].join('\n');
      writeFileSync(join(dir, 'offsets.c'), source);
      execFileSync('gcc', ['-o', join(dir, 'offsets'), join(dir, 'offsets.c')]);
      const lines = execFileSync(join(dir, 'offsets'), { encoding: 'utf8' }).trim().split('\n');
      const c = Object.fromEntries(lines.map((l) => { const [k, ...n] = l.split(' '); return [k!, n.map(Number)]; }));
      assert.equal(bootParams.size, c.size![0]);
      assert.equal(BOOT_PARAMS_SIZE, 4096);
      assert.equal(bootParams.fields.setupHeader.length, c.hdr_size![0]);
      for (const [key, field] of Object.entries(bootParams.fields)) {
        const [offset, size] = c[key]!;
        assert.equal(field.offset, offset, `${key} offset`);
        const length = field.type === 'bytes' ? field.length : { u8: 1, u16: 2, u32: 4, u64: 8 }[field.type];
        assert.equal(length, size, `${key} size`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('e820 memory map', () => {
    it('describes a 128 MiB guest as low RAM, the reserved BIOS/ACPI area, and RAM from 1 MiB', () => {
      const plan = buildZeroPage({ kernel: linux, memorySize: 128 * MiB, cmdline: 'console=ttyS0' });
      const expected = [
        { addr: 0, size: 0x9fc00, type: E820_RAM },
        { addr: 0x9fc00, size: 0x100000 - 0x9fc00, type: E820_RESERVED },
        { addr: 0x100000, size: 128 * MiB - 0x100000, type: E820_RAM },
      ];
      assert.deepEqual(e820FromZeroPage(plan.zeroPage), expected);
      // Byte-level: the third entry at 0x2D0 + 40.
      assert.deepEqual(
        [...plan.zeroPage.subarray(0x2d0 + 40, 0x2d0 + 60)],
        [0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0x07, 0, 0, 0, 0, 1, 0, 0, 0],
      );
      assert.deepEqual(guestRamRanges(128 * MiB), [{ gpa: 0, size: 128 * MiB }]);
    });

    it('puts the RAM of a 5 GiB guest that does not fit below the 3 GiB MMIO hole above 4 GiB', () => {
      const plan = buildZeroPage({ kernel: linux, memorySize: 5 * GiB, cmdline: '' });
      assert.deepEqual(e820FromZeroPage(plan.zeroPage), [
        { addr: 0, size: 0x9fc00, type: E820_RAM },
        { addr: 0x9fc00, size: 0x60400, type: E820_RESERVED },
        { addr: 0x100000, size: 0xc0000000 - 0x100000, type: E820_RAM },
        { addr: 0x100000000, size: 2 * GiB, type: E820_RAM },
      ]);
      assert.deepEqual(guestRamRanges(5 * GiB), [
        { gpa: 0, size: 3 * GiB },
        { gpa: 4 * GiB, size: 2 * GiB },
      ]);
    });

    it('needs no high range for exactly 3 GiB', () => {
      assert.equal(buildE820(3 * GiB).length, 3);
      assert.equal(buildE820(3 * GiB + 4096).length, 4);
    });

    it('refuses memory sizes that are not whole pages or too small to boot', () => {
      assert.throws(() => buildE820(128 * MiB + 1), /not a whole number of 4 KiB pages/);
      assert.throws(() => buildE820(MiB), /too small: at least 2 MiB/);
    });
  });

  describe('fields the kernel reads', () => {
    it('points at the command line, the ACPI RSDP and the e820 map, and says who loaded it', () => {
      const plan = buildZeroPage({ kernel: linux, memorySize: 256 * MiB, cmdline: 'console=ttyS0 quiet' });
      const zp = plan.zeroPage;
      const v = new DataView(zp.buffer);
      assert.equal(zp.length, 4096);
      assert.deepEqual(Buffer.from(zp.subarray(0x1f1, 0x26c)).subarray(0, 0x1f) , Buffer.from(linux.setupHeader).subarray(0, 0x1f));
      assert.equal(v.getUint16(0x1fe, true), 0xaa55);
      assert.equal(v.getUint32(0x202, true), 0x53726448);
      assert.equal(zp[0x210], 0xff, 'type_of_loader');
      assert.equal(zp[0x211]! & 1, 1, 'loadflags LOADED_HIGH');
      assert.equal(v.getUint32(0x228, true), CMDLINE_ADDR);
      assert.equal(v.getUint32(0x0c8, true), 0, 'ext_cmd_line_ptr');
      assert.equal(v.getBigUint64(0x070, true), BigInt(RSDP_ADDR));
      assert.equal(zp[0x1ef], 0, 'sentinel stays 0');
      assert.equal(v.getUint32(0x218, true), 0, 'no initrd');
      assert.deepEqual(plan.writes.map((w) => w.gpa), [ZERO_PAGE_ADDR, CMDLINE_ADDR]);
      assert.equal(new TextDecoder().decode(plan.cmdline), 'console=ttyS0 quiet\0');
    });

    it('takes a 2047-byte command line and refuses 2048 bytes with one line saying the limit', () => {
      const ok = buildZeroPage({ kernel: linux, memorySize: 128 * MiB, cmdline: 'x'.repeat(2047) });
      assert.equal(ok.cmdline.length, 2048);
      assert.equal(ok.cmdline[2047], 0);
      assert.throws(() => buildZeroPage({ kernel: linux, memorySize: 128 * MiB, cmdline: 'x'.repeat(2048) }), (err: Error) => {
        assert.ok(err instanceof BootError);
        assert.equal(err.message, 'the kernel command line is 2048 bytes; at most 2047 fit (2048 with the terminating NUL); shorten it');
        return true;
      });
    });

    it("honours a kernel's smaller cmdline_size", () => {
      const kernel = parseKernelImage(syntheticBzImage({ cmdlineSize: 255 }));
      assert.throws(() => buildZeroPage({ kernel, memorySize: 64 * MiB, cmdline: 'y'.repeat(256) }), /256 bytes; at most 255 fit/);
    });
  });

  describe('initrd placement', () => {
    it('puts the initrd at the top of RAM, page aligned down, and records it in the header', () => {
      const size = 1_080_743; // an odd size, like the smoke initramfs
      const plan = buildZeroPage({ kernel: linux, memorySize: 128 * MiB, cmdline: '', initrdSize: size });
      const expected = Math.floor((128 * MiB - size) / 4096) * 4096;
      assert.equal(plan.initrdAddress, expected);
      const v = new DataView(plan.zeroPage.buffer);
      assert.equal(v.getUint32(0x218, true), expected, 'ramdisk_image');
      assert.equal(v.getUint32(0x21c, true), size, 'ramdisk_size');
      assert.equal(v.getUint32(0x0c0, true), 0, 'ext_ramdisk_image');
      assert.equal(v.getUint32(0x0c4, true), 0, 'ext_ramdisk_size');
    });

    it('keeps the initrd below the MMIO hole in a 5 GiB guest', () => {
      const plan = buildZeroPage({ kernel: linux, memorySize: 5 * GiB, cmdline: '', initrdSize: 8 * MiB });
      assert.equal(plan.initrdAddress, 0x7fffffff + 1 - 8 * MiB, 'Linux allows up to initrd_addr_max = 2 GiB - 1');
      const old = parseKernelImage(syntheticBzImage({ initrdAddrMax: 0x37ffffff }));
      const low = buildZeroPage({ kernel: old, memorySize: 5 * GiB, cmdline: '', initrdSize: 3 * MiB + 5 });
      assert.ok(low.initrdAddress! + 3 * MiB + 5 - 1 <= 0x37ffffff);
      assert.equal(low.initrdAddress! % 4096, 0);
    });

    it('refuses an initrd that would overlap the memory the kernel decompresses into', () => {
      // Linux decompresses to 16 MiB and needs init_size bytes from there.
      const kernelEnd = kernelMemoryEnd(linux);
      assert.equal(kernelEnd, 0x1000000 + linux.initSize);
      const memorySize = Math.ceil((kernelEnd + 2 * MiB) / MiB) * MiB;
      assert.throws(
        () => buildZeroPage({ kernel: linux, memorySize, cmdline: '', initrdSize: 4 * MiB }),
        /^BootError: the initrd \(4 MiB\) does not fit in guest memory of \d+ MiB above the kernel .*; give the VM more memory \(--mem\)$/,
      );
    });

    it('refuses a guest too small for the kernel itself', () => {
      assert.throws(() => buildZeroPage({ kernel: linux, memorySize: 16 * MiB, cmdline: '' }), /guest memory of 16 MiB is too small for this kernel/);
    });

    it('counts the memory of a kernel that runs where it is loaded (1 MiB) from there', () => {
      const kernel = parseKernelImage(syntheticBzImage({ relocatable: false, prefAddress: 0x100000n, initSize: 3 * MiB }));
      assert.equal(kernelMemoryEnd(kernel), 4 * MiB);
      assert.equal(buildZeroPage({ kernel, memorySize: 8 * MiB, cmdline: '', initrdSize: 4 * MiB }).initrdAddress, 4 * MiB);
    });
  });
});
