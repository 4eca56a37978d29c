// The boot protocol end to end on real KVM: a tiny 64-bit kernel, entered by `lifeboat vm run` exactly as
// Linux would be, checks what the platform promised it and reports through the exit-status port.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { projectRoot } from '../../../src/util/project-root.js';
import { syntheticBzImage } from './synthetic-bzimage.js';

const CLI = fileURLToPath(new URL('../../../src/cli/main.js', import.meta.url));
const PASS = 42;

/** x86-64 machine code: each check sets ZF and is followed by `jne fail`; success exits PASS. */
function entryProgram(): Uint8Array {
  const ascii8 = (s: string) => [...s].map((c) => c.charCodeAt(0));
  const checks: number[][] = [
    [0x81, 0xbe, 0x02, 0x02, 0x00, 0x00, ...ascii8('HdrS')], //  cmp dword [rsi+0x202], "HdrS" (RSI = zero page)
    [0x80, 0xbe, 0xe8, 0x01, 0x00, 0x00, 0x03], //                cmp byte [rsi+0x1e8], 3 (e820 entries of 64 MiB)
    [0x80, 0xbe, 0x10, 0x02, 0x00, 0x00, 0xff], //                cmp byte [rsi+0x210], 0xff (type_of_loader)
    [
      0x8b, 0x86, 0x28, 0x02, 0x00, 0x00, //                      mov eax, [rsi+0x228] (cmd_line_ptr)
      0x48, 0xbb, ...ascii8('lifeboat'), //                        mov rbx, "lifeboat"
      0x48, 0x39, 0x18, //                                         cmp [rax], rbx
    ],
    [
      0x48, 0x8b, 0x46, 0x70, //                                   mov rax, [rsi+0x70] (acpi_rsdp_addr)
      0x48, 0xbb, ...ascii8('RSD PTR '), //                        mov rbx, "RSD PTR "
      0x48, 0x39, 0x18, //                                         cmp [rax], rbx
    ],
    [
      0x48, 0xc7, 0xc0, 0x78, 0x56, 0x34, 0x12, //                mov rax, 0x12345678
      0x50, 0x5b, //                                               push rax; pop rbx (the stack is mapped)
      0x48, 0x39, 0xc3, //                                         cmp rbx, rax
    ],
  ];
  const success = [0xb8, PASS, 0, 0, 0, 0xe7, 0xf4]; //            mov eax, PASS; out 0xf4, eax
  const fail = [0xb8, 1, 0, 0, 0, 0xe7, 0xf4, 0xf4, 0xeb, 0xfd]; // mov eax, 1; out 0xf4, eax; hlt; jmp hlt
  const code: number[] = [];
  const jneAt: number[] = [];
  for (const check of checks) {
    code.push(...check, 0x75, 0x00);
    jneAt.push(code.length - 1);
  }
  code.push(...success);
  const failAt = code.length;
  code.push(...fail);
  for (const at of jneAt) code[at] = failAt - (at + 1);
  const payload = new Uint8Array(0x1000);
  payload.set(code, 0x200); // the 64-bit entry
  return syntheticBzImage({ payload, relocatable: false, prefAddress: 0x100000n, initSize: 0x2000 });
}

describe('the 64-bit boot protocol on KVM', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'lifeboat-entry-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('enters a kernel in long mode with the zero page in RSI, its e820 map, command line and RSDP in place, and a working stack', () => {
    const kernel = join(dir, 'entry.bin');
    writeFileSync(kernel, entryProgram());
    const r = spawnSync(
      process.execPath,
      [CLI, 'vm', 'run', '--kernel', kernel, '--mem', '64', '--vcpus', '1', '--cmdline', 'lifeboat-entry-test', '--boot-timeout', '0'],
      { cwd: projectRoot(), encoding: 'utf8', timeout: 60_000 },
    );
    assert.equal(r.signal, null, `vm run did not finish:\n${r.stderr}`);
    assert.equal(r.status, PASS, `the entry program exits ${PASS} when every check passes, 1 when one fails:\n${r.stdout}\n${r.stderr}`);
  });
});
