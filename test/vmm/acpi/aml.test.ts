import assert from 'node:assert/strict';
import {
  device,
  eisaId,
  extendedInterrupt,
  integer,
  io,
  memory32Fixed,
  method,
  name,
  namePath,
  pkg,
  pkgLength,
  resourceTemplate,
  returnValue,
  scope,
  string,
} from '../../../vmm/acpi/aml.js';
import { com1Device, virtioMmioDevice } from '../../../vmm/acpi/dsdt.js';

function hex(text: string): number[] {
  return text.trim().split(/\s+/).map((b) => parseInt(b, 16));
}

/** Decode a PkgLength the way an AML interpreter does (ACPI 6.5, 20.2.4). */
function decodePkgLength(bytes: number[]): { length: number; size: number } {
  const lead = bytes[0]!;
  const extra = lead >> 6;
  if (extra === 0) return { length: lead & 0x3f, size: 1 };
  let length = lead & 0x0f;
  for (let i = 0; i < extra; i++) length |= bytes[1 + i]! << (4 + 8 * i);
  return { length, size: 1 + extra };
}

describe('AML encoder', () => {
  it('encodes a virtio-mmio device exactly as the worked example (V000 at 0xC0001000, GSI 5, 71 bytes)', () => {
    const expected = hex(`
      5B 82 45 04 56 30 30 30  08 5F 48 49 44 0D 4C 4E 52 4F 30 30 30 35 00
      08 5F 55 49 44 0C 00 00 00 00  08 5F 43 43 41 01
      08 5F 43 52 53 11 1A 0A 17 86 09 00 01 00 10 00 C0 00 10 00 00
      89 06 00 03 01 05 00 00 00 79 00`);
    const bytes = virtioMmioDevice(0, { base: 0xc0001000, size: 0x1000, gsi: 5 });
    assert.equal(bytes.length, 71);
    assert.deepEqual(bytes, expected);
  });

  it('encodes COM1 exactly as the worked example (PNP0501, IRQ 4, IO 0x3F8 length 8, 69 bytes)', () => {
    const expected = hex(`
      5B 82 43 04 2E 5F 53 42 5F 43 4F 4D 31 08 5F 48 49 44 0C 41 D0 05 01
      08 5F 55 49 44 0A 00 08 5F 44 44 4E 0D 43 4F 4D 31 00
      08 5F 43 52 53 11 16 0A 13 89 06 00 03 01 04 00 00 00 47 01 F8 03 F8 03 01 08 79 00`);
    const bytes = com1Device();
    assert.equal(bytes.length, 69);
    assert.deepEqual(bytes, expected);
  });

  it('numbers later virtio devices V001, V002 with their own _UID, window and GSI', () => {
    const bytes = virtioMmioDevice(12, { base: 0xc000d000, size: 0x1000, gsi: 17 });
    assert.deepEqual(bytes.slice(4, 8), [...'V012'].map((c) => c.charCodeAt(0)));
    assert.deepEqual(bytes.slice(28, 33), [0x0c, 12, 0, 0, 0]);
    assert.deepEqual(bytes.slice(52, 56), [0x00, 0xd0, 0x00, 0xc0]);
    assert.equal(bytes[65], 17);
  });

  it('writes PkgLength in one byte below 64 and in 2..4 bytes above, counting its own bytes', () => {
    assert.deepEqual(pkgLength(0), [1]);
    assert.deepEqual(pkgLength(62), [63]);
    assert.deepEqual(pkgLength(63), [0x41, 0x04]); // 65 = 0x41: lead 01xx_0001, then 0x41 >> 4 = 4
    assert.deepEqual(pkgLength(0x45 - 2), [0x45, 0x04]);
    for (const n of [63, 100, 4093, 4094, 0xfffff - 3, 0xfffff - 2, 0x1000000]) {
      const enc = pkgLength(n);
      const { length, size } = decodePkgLength(enc);
      assert.equal(size, enc.length);
      assert.equal(length, n + size, `PkgLength(${n}) decodes to content + its own bytes`);
      assert.equal(enc[0]! & 0x30, 0, 'bits 5:4 of a multi-byte lead are zero');
    }
    assert.equal(pkgLength(4093).length, 2);
    assert.equal(pkgLength(4094).length, 3);
    assert.throws(() => pkgLength(1 << 28));
  });

  it('picks the smallest integer encoding', () => {
    assert.deepEqual(integer(0), [0x00]);
    assert.deepEqual(integer(1), [0x01]);
    assert.deepEqual(integer(2), [0x0a, 0x02]);
    assert.deepEqual(integer(0xff), [0x0a, 0xff]);
    assert.deepEqual(integer(0x100), [0x0b, 0x00, 0x01]);
    assert.deepEqual(integer(0x10000), [0x0c, 0x00, 0x00, 0x01, 0x00]);
    assert.deepEqual(integer(0xc0001000), [0x0c, 0x00, 0x10, 0x00, 0xc0]);
    assert.deepEqual(integer(0x100000000n), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
    assert.deepEqual(integer(0xffffffffffffffffn), [0xff]);
    assert.throws(() => integer(-1));
  });

  it('encodes names: single segments padded with _, dual and multi-segment paths, the root', () => {
    assert.deepEqual(namePath('_SB'), [0x5f, 0x53, 0x42, 0x5f]);
    assert.deepEqual(namePath('\\_SB_'), [0x5c, 0x5f, 0x53, 0x42, 0x5f]);
    assert.deepEqual(namePath('_SB_.COM1'), [0x2e, ...[...'_SB_COM1'].map((c) => c.charCodeAt(0))]);
    assert.deepEqual(namePath('\\_SB_.PCI0.ISA0').slice(0, 3), [0x5c, 0x2f, 3]);
    assert.deepEqual(namePath('^PAR'), [0x5e, 0x50, 0x41, 0x52, 0x5f]);
    assert.throws(() => namePath('toolong'), /invalid AML name segment/);
    assert.throws(() => namePath('v000'), /invalid AML name segment/);
  });

  it('encodes EISA ids, strings, packages, methods and scopes', () => {
    assert.deepEqual(eisaId('PNP0501'), [0x0c, 0x41, 0xd0, 0x05, 0x01]);
    assert.deepEqual(eisaId('PNP0303'), [0x0c, 0x41, 0xd0, 0x03, 0x03]);
    assert.deepEqual(string('AB'), [0x0d, 0x41, 0x42, 0x00]);
    assert.deepEqual(pkg([integer(5)]), [0x12, 0x04, 0x01, 0x0a, 0x05]);
    // Method(_STA, 0, NotSerialized) { Return (0x0F) }
    assert.deepEqual(method('_STA', 0, false, [returnValue(integer(0x0f))]), hex('14 09 5F 53 54 41 00 A4 0A 0F'));
    assert.equal(method('_DSM', 4, true, [])[6], 0x0c);
    // Scope(\_SB_) { Name(X___, One) }
    assert.deepEqual(scope('\\_SB_', [name('X', integer(1))]), hex('10 0C 5C 5F 53 42 5F 08 58 5F 5F 5F 01'));
    assert.deepEqual(device('D', []), hex('5B 82 05 44 5F 5F 5F'));
  });

  it('encodes resource descriptors and closes a template with an end tag', () => {
    assert.deepEqual(memory32Fixed({ readWrite: false, base: 0xfec00000, length: 0x1000 }), hex('86 09 00 00 00 00 C0 FE 00 10 00 00'));
    assert.deepEqual(
      extendedInterrupt({ consumer: true, edge: false, activeLow: true, shared: true, gsi: 9 }),
      hex('89 06 00 0D 01 09 00 00 00'),
    );
    assert.deepEqual(io({ min: 0x60, max: 0x60, alignment: 1, length: 1 }), hex('47 01 60 00 60 00 01 01'));
    assert.deepEqual(resourceTemplate([]), hex('11 05 0A 02 79 00'));
  });
});
