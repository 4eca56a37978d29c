// The two guest images, as loaders and PVM see them: a Linux bzImage whose payload is the same code
// as the PVH ELF, small, and free of instructions PVM cannot run.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { ensureGuestBuilt, guestBinPath, guestElfPath, killAllGuests, runQemu } from '../helpers/qemu.js';

const PAYLOAD_LOAD_ADDRESS = 0x100000;
const ENTRY64_OFFSET = 0x200;

interface LoadSegment { offset: number; paddr: number; filesz: number; memsz: number }

function elfSegments(elf: Buffer): { load: LoadSegment[]; notes: Buffer[] } {
  assert.equal(elf.toString('latin1', 0, 4), '\x7fELF');
  assert.equal(elf[4], 2, 'ELF64');
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  const load: LoadSegment[] = [];
  const notes: Buffer[] = [];
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    const type = elf.readUInt32LE(p);
    const offset = Number(elf.readBigUInt64LE(p + 8));
    const paddr = Number(elf.readBigUInt64LE(p + 24));
    const filesz = Number(elf.readBigUInt64LE(p + 32));
    const memsz = Number(elf.readBigUInt64LE(p + 40));
    if (type === 1) load.push({ offset, paddr, filesz, memsz });
    if (type === 4) notes.push(elf.subarray(offset, offset + filesz));
  }
  return { load, notes };
}

describe('Lifeboat guest images', () => {
  before(() => ensureGuestBuilt());

  it('lifeboat-guest.bin carries a Linux setup header a 64-bit boot protocol loader accepts', () => {
    const bin = readFileSync(guestBinPath());
    assert.equal(bin.readUInt16LE(0x1fe), 0xaa55, 'boot_flag');
    assert.equal(bin.toString('latin1', 0x202, 0x206), 'HdrS');
    assert.ok(bin.readUInt16LE(0x206) >= 0x020c, 'protocol >= 2.12');
    assert.equal(bin[0x236] & 1, 1, 'xloadflags XLF_KERNEL_64');
    assert.equal(bin[0x211] & 1, 1, 'loadflags LOADED_HIGH');
    assert.equal(bin.readBigUInt64LE(0x258), BigInt(PAYLOAD_LOAD_ADDRESS), 'pref_address');
    const setupSects = bin[0x1f1];
    const payload = bin.subarray((setupSects + 1) * 512);
    assert.equal(bin.readUInt32LE(0x1f4), Math.ceil(payload.length / 16), 'syssize');
    assert.ok(bin.readUInt32LE(0x260) >= payload.length, 'init_size covers the payload');
  });

  it('the bzImage payload is byte for byte the code the PVH ELF loads at 1 MiB, with the 64-bit entry at +0x200', () => {
    const bin = readFileSync(guestBinPath());
    const elf = readFileSync(guestElfPath());
    const payload = bin.subarray((bin[0x1f1] + 1) * 512);
    const { load } = elfSegments(elf);
    assert.equal(load.length, 1);
    assert.equal(load[0].paddr, PAYLOAD_LOAD_ADDRESS);
    const loaded = elf.subarray(load[0].offset, load[0].offset + load[0].filesz);
    assert.ok(loaded.subarray(0, payload.length).equals(payload));
    assert.ok(bin.readUInt32LE(0x260) >= load[0].memsz, 'init_size covers .bss');
    const symbols = execFileSync('nm', [guestElfPath()], { encoding: 'utf8' });
    const entry64 = /^([0-9a-f]+) T entry64$/m.exec(symbols);
    assert.ok(entry64);
    assert.equal(parseInt(entry64[1], 16), PAYLOAD_LOAD_ADDRESS + ENTRY64_OFFSET);
  });

  it('the ELF has a Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY) pointing at the 32-bit entry', () => {
    const { notes } = elfSegments(readFileSync(guestElfPath()));
    const note = notes.find((n) => n.readUInt32LE(8) === 18 && n.toString('latin1', 12, 15) === 'Xen');
    assert.ok(note, 'no PVH note');
    assert.equal(note.readUInt32LE(16), PAYLOAD_LOAD_ADDRESS);
  });

  it('a loader that enters the bzImage in 16-bit real mode gets a clear message and status 3, not a hang', async () => {
    try {
      const exit = await runQemu({ kernel: guestBinPath(), timeoutMs: 20_000 });
      assert.equal(exit.guestStatus, 3, exit.output);
      assert.match(exit.output, /^error: lifeboat-guest\.bin has no 16-bit entry: start it through the 64-bit boot protocol, or boot lifeboat-guest\.elf \(PVH\)$/m);
    } finally {
      await killAllGuests();
    }
  });

  it('both images stay well under 1 MiB', () => {
    assert.ok(statSync(guestBinPath()).size < 256 * 1024);
    assert.ok(statSync(guestElfPath()).size < 256 * 1024);
  });

  it('contains no instruction PVM cannot run: no SSE/AVX registers, XSAVE/XRSTOR, FXSAVE, cmpxchg16b or int3', () => {
    const disassembly = execFileSync('objdump', ['-d', guestElfPath()], { encoding: 'utf8', maxBuffer: 64 << 20 });
    assert.ok(disassembly.includes('<entry64>:'));
    const forbidden = /%[xyz]mm\d|cmpxchg16b|xsave|xrstor|fxsave|fxrstor|\bint3\b|\bint\s+\$0x3\b|[ls]dmxcsr/;
    const bad = disassembly.split('\n').filter((l) => forbidden.test(l));
    assert.deepEqual(bad, []);
  });
});
