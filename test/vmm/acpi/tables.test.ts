import assert from 'node:assert/strict';
import { com1Device, virtioMmioDevice } from '../../../vmm/acpi/dsdt.js';
import { fadt, madtHeader, rsdp, tableHeader } from '../../../vmm/acpi/layouts.js';
import { ACPI_POWER_OFF_VALUE, buildAcpiTables, byteSum, type AcpiTablesInput } from '../../../vmm/acpi/tables.js';
import {
  ACPI_SLEEP_CONTROL_PORT,
  ACPI_SLEEP_STATUS_PORT,
  ACPI_TABLES_END,
  ACPI_TABLES_START,
  RSDP_ADDR,
  virtioGsi,
  virtioMmioBase,
} from '../../../vmm/layout.js';

const ascii = (bytes: Uint8Array) => String.fromCharCode(...bytes);

function virtioDevices(n: number) {
  return Array.from({ length: n }, (_, i) => ({ base: virtioMmioBase(i), size: 0x1000, gsi: virtioGsi(i) }));
}

/** Guest memory below 1 MiB with the tables written in, read back the way a guest OS finds them. */
function guestView(input: AcpiTablesInput) {
  const memory = new Uint8Array(0x100000);
  for (const w of buildAcpiTables(input).writes) memory.set(w.bytes, w.gpa);
  const view = new DataView(memory.buffer);
  const table = (gpa: number) => memory.subarray(gpa, gpa + view.getUint32(gpa + 4, true));
  const rsdpBytes = memory.subarray(RSDP_ADDR, RSDP_ADDR + 36);
  const xsdt = table(Number(view.getBigUint64(RSDP_ADDR + 24, true)));
  const byName = new Map<string, Uint8Array>();
  for (let at = 36; at < xsdt.length; at += 8) {
    const t = table(Number(new DataView(xsdt.buffer, xsdt.byteOffset).getBigUint64(at, true)));
    byName.set(ascii(t.subarray(0, 4)), t);
  }
  const facp = byName.get('FACP')!;
  const dsdt = table(Number(new DataView(facp.buffer, facp.byteOffset).getBigUint64(140, true)));
  return { rsdp: rsdpBytes, xsdt, facp, madt: byName.get('APIC')!, dsdt, tables: [...byName.keys()] };
}

function count(haystack: Uint8Array, needle: string): number {
  const text = ascii(haystack);
  return text.split(needle).length - 1;
}

function indexOfBytes(haystack: Uint8Array, needle: number[]): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

describe('ACPI tables', () => {
  it('lead a guest from the RSDP at 0xE0000 through the XSDT to the FADT, MADT and DSDT', () => {
    const g = guestView({ vcpus: 2, virtioDevices: virtioDevices(3) });
    assert.equal(ascii(g.rsdp.subarray(0, 8)), 'RSD PTR ');
    assert.equal(g.rsdp[15], 2, 'ACPI 2.0+ RSDP');
    assert.deepEqual(g.tables, ['FACP', 'APIC']);
    assert.equal(ascii(g.dsdt.subarray(0, 4)), 'DSDT');
    assert.equal(count(g.dsdt, 'LNRO0005'), 3, 'three virtio-mmio devices');
    assert.equal(count(g.dsdt, 'COM1'), 2, 'COM1 device name and _DDN');
    assert.equal(g.madt.length, 44 + 12 + 2 * 8);
  });

  it('checksum to 0 mod 256, table by table, and the RSDP over its first 20 bytes and all 36', () => {
    const built = buildAcpiTables({ vcpus: 4, virtioDevices: virtioDevices(2) });
    for (const w of built.writes) {
      if (w.gpa === RSDP_ADDR) {
        assert.equal(byteSum(w.bytes.subarray(0, 20)), 0, 'RSDP checksum');
        assert.equal(byteSum(w.bytes), 0, 'RSDP extended checksum');
      } else {
        assert.equal(byteSum(w.bytes), 0, `${ascii(w.bytes.subarray(0, 4))} checksum`);
        assert.equal(tableHeader.get(w.bytes, 'length'), w.bytes.length, `${ascii(w.bytes.subarray(0, 4))} length field`);
      }
    }
  });

  it('are packed first fit in [0x9FC00, 0xE0000) without overlapping, with the 36-byte RSDP at 0xE0000', () => {
    const built = buildAcpiTables({ vcpus: 8, virtioDevices: virtioDevices(19) });
    const placed = built.writes.filter((w) => w.gpa !== RSDP_ADDR).sort((a, b) => a.gpa - b.gpa);
    assert.equal(placed[0]!.gpa, ACPI_TABLES_START);
    for (let i = 0; i < placed.length; i++) {
      const end = placed[i]!.gpa + placed[i]!.bytes.length;
      assert.ok(end <= ACPI_TABLES_END);
      if (i + 1 < placed.length) {
        assert.ok(placed[i + 1]!.gpa >= end, 'no overlap');
        assert.ok(placed[i + 1]!.gpa - end < 8, 'first fit: next table at the next 8-byte boundary');
      }
    }
    assert.equal(built.rsdpAddress, RSDP_ADDR);
    assert.equal(built.writes.find((w) => w.gpa === RSDP_ADDR)!.bytes.length, 36);
    assert.deepEqual(built.tables.map((t) => t.signature), ['DSDT', 'FACP', 'APIC', 'XSDT', 'RSD PTR ']);
  });

  it('write an RSDP v2 with no RSDT and the XSDT address', () => {
    const built = buildAcpiTables({ vcpus: 1, virtioDevices: [] });
    const r = built.writes.find((w) => w.gpa === RSDP_ADDR)!.bytes;
    assert.equal(rsdp.get(r, 'rsdtAddress'), 0);
    assert.equal(rsdp.get(r, 'length'), 36);
    assert.equal(rsdp.get(r, 'xsdtAddress'), built.tables.find((t) => t.signature === 'XSDT')!.gpa);
    assert.equal(rsdp.offset('xsdtAddress'), 24);
    assert.equal(rsdp.offset('extendedChecksum'), 32);
  });

  it('write a 276-byte revision 6 FADT: hardware-reduced, no VGA, no 8042, no CMOS RTC, X_DSDT, sleep registers', () => {
    const g = guestView({ vcpus: 1, virtioDevices: virtioDevices(1) });
    const f = g.facp;
    const v = new DataView(f.buffer, f.byteOffset, f.byteLength);
    assert.equal(f.length, 276);
    assert.equal(f[8], 6, 'revision');
    assert.equal(f[131], 5, 'minor revision');
    assert.equal(v.getUint32(40, true), 0, '32-bit DSDT pointer unused');
    assert.equal(v.getUint32(112, true), (1 << 20) | (1 << 4) | (1 << 5), 'HW_REDUCED_ACPI | PWR_BUTTON | SLP_BUTTON');
    const iapc = v.getUint16(109, true);
    assert.equal(iapc & (1 << 1), 0, 'no 8042: Linux skips i8042 probing');
    assert.equal(iapc & (1 << 0), 0, 'no legacy devices');
    assert.equal(iapc & (1 << 2), 1 << 2, 'VGA not present');
    assert.equal(iapc & (1 << 5), 1 << 5, 'CMOS RTC not present');
    // SLEEP_CONTROL_REG / SLEEP_STATUS_REG: GAS {SystemIO, 8 bits, offset 0, byte access, port}.
    assert.deepEqual([...f.subarray(244, 248)], [1, 8, 0, 1]);
    assert.equal(v.getBigUint64(248, true), BigInt(ACPI_SLEEP_CONTROL_PORT));
    assert.deepEqual([...f.subarray(256, 260)], [1, 8, 0, 1]);
    assert.equal(v.getBigUint64(260, true), BigInt(ACPI_SLEEP_STATUS_PORT));
    assert.equal(ascii(f.subarray(268, 276)), 'LIFEBOAT');
    assert.equal(fadt.offset('xDsdt'), 140);
    // Poweroff writes SLP_TYP 5 (from \_S5_) << 2 | SLP_EN.
    assert.equal(ACPI_POWER_OFF_VALUE, 0x34);
    assert.ok(indexOfBytes(g.dsdt, [0x08, 0x5c, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x04, 0x01, 0x0a, 0x05]) > 0, 'Name(\\_S5_, Package(){5})');
  });

  it('list one enabled local APIC per vCPU and the IOAPIC at 0xFEC00000 from GSI 0 in the MADT', () => {
    const m = guestView({ vcpus: 3, virtioDevices: [] }).madt;
    const v = new DataView(m.buffer, m.byteOffset, m.byteLength);
    assert.equal(m[8], 6, 'revision');
    assert.equal(madtHeader.get(m, 'localApicAddress'), 0xfee00000);
    assert.equal(madtHeader.get(m, 'flags'), 0);
    assert.deepEqual([...m.subarray(44, 48)], [1, 12, 0, 0], 'IOAPIC entry, id 0');
    assert.equal(v.getUint32(48, true), 0xfec00000);
    assert.equal(v.getUint32(52, true), 0, 'gsi_base');
    for (let i = 0; i < 3; i++) {
      assert.deepEqual([...m.subarray(56 + 8 * i, 64 + 8 * i)], [0, 8, i, i, 1, 0, 0, 0], `LAPIC ${i}`);
    }
  });

  it('declare COM1 and each virtio-mmio device in the DSDT with the bytes of the worked examples', () => {
    const devices = virtioDevices(2);
    const dsdt = guestView({ vcpus: 1, virtioDevices: devices }).dsdt;
    assert.equal(dsdt[8], 2, 'revision');
    assert.ok(indexOfBytes(dsdt, com1Device()) >= 36);
    const v0 = indexOfBytes(dsdt, virtioMmioDevice(0, devices[0]!));
    const v1 = indexOfBytes(dsdt, virtioMmioDevice(1, devices[1]!));
    assert.ok(v0 > 0 && v1 > v0);
    // Both inside Scope(\_SB_) { ... }
    const scopeAt = indexOfBytes(dsdt, [0x5c, 0x5f, 0x53, 0x42, 0x5f]);
    assert.equal(dsdt[scopeAt - 3], 0x10, 'ScopeOp');
  });

  describe('fault injection for negative guest tests', () => {
    for (const which of ['rsdp', 'madt', 'dsdt'] as const) {
      it(`breaks only the ${which.toUpperCase()} checksum when asked`, () => {
        const built = buildAcpiTables({ vcpus: 1, virtioDevices: virtioDevices(1), testFaultInjection: { corruptChecksumOf: which } });
        for (const w of built.writes) {
          const name = w.gpa === RSDP_ADDR ? 'rsdp' : { APIC: 'madt', DSDT: 'dsdt' }[ascii(w.bytes.subarray(0, 4))];
          const sum = w.gpa === RSDP_ADDR ? byteSum(w.bytes.subarray(0, 20)) : byteSum(w.bytes);
          if (name === which) assert.notEqual(sum, 0);
          else assert.equal(sum, 0);
        }
      });
    }

    it('leaves the virtio devices out of the DSDT (COM1 stays) when asked', () => {
      const g = guestView({ vcpus: 1, virtioDevices: virtioDevices(2), testFaultInjection: { omitDsdtDevices: true } });
      assert.equal(count(g.dsdt, 'LNRO0005'), 0);
      assert.equal(count(g.dsdt, 'COM1'), 2);
      assert.equal(byteSum(g.dsdt), 0);
    });
  });

  it('refuse inputs the tables cannot express', () => {
    assert.throws(() => buildAcpiTables({ vcpus: 0, virtioDevices: [] }), /vcpus must be 1..254/);
    assert.throws(() => buildAcpiTables({ vcpus: 255, virtioDevices: [] }), /vcpus must be 1..254/);
    assert.throws(() => buildAcpiTables({ vcpus: 1, virtioDevices: [{ base: 0xc0001000, size: 0x1000, gsi: 24 }] }), /GSI 24 is not an IOAPIC pin/);
  });
});
