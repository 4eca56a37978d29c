// Malformed input to the Lifeboat guest under our own VMM gives one clear `error:` line on the console
// and a non-zero exit status, never a hang: broken ACPI tables (only a VMM can build those; the tests
// ask for them through the test-only RunOptions.acpiTestFaults, in a child process killed if it
// hangs), a disk the DSDT does not declare, an empty disk image, an unknown command. And Ctrl-C on the
// serial input gets the user out of a command that would otherwise run forever.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildAcpiTables, type AcpiTestFaultInjection } from '../../vmm/acpi/tables.js';
import { VIRTIO_MMIO_SIZE, virtioGsi, virtioMmioBase } from '../../vmm/layout.js';
import { projectRoot } from '../../src/util/project-root.js';
import { guestImage, requireKvm, runVm, tempDir, VmProcess, type VmExit } from '../helpers/vmm.js';
import type { AcpiFaultRun } from './fixtures/run-with-acpi-fault.js';
import { sparseImage } from '../helpers/image-files.js';

const MIB = 1024 * 1024;
const BOOT = ['--boot-timeout', '60'];
/** Far longer than any of these runs takes; past it the guest (or the VMM) is hung and is killed. */
const HANG_MS = 60_000;
const STATUS_PLATFORM = 3;
const FIXTURE = fileURLToPath(new URL('./fixtures/run-with-acpi-fault.js', import.meta.url));

/** Our VMM with broken ACPI tables, in a child process that is killed (and the test failed) if it hangs. */
async function runWithAcpiFault(run: Omit<AcpiFaultRun, 'kernelPath'>): Promise<VmExit> {
  const child = spawn(process.execPath, [FIXTURE, JSON.stringify({ kernelPath: guestImage(), ...run })], {
    cwd: projectRoot(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('latin1').on('data', (s: string) => (stdout += s.replace(/\r/g, '')));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the guest hung: no exit within ${HANG_MS} ms with ACPI fault ${JSON.stringify(run.fault)}; console:\n${stdout}\nstderr: ${stderr}`));
    }, HANG_MS);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Where our VMM puts each ACPI table for a VM with `vcpus` and `disks` virtio disks. */
function tableAt(signature: string, vcpus: number, disks: number): { gpa: number; length: number } {
  const virtioDevices = Array.from({ length: disks }, (_, i) => ({ base: virtioMmioBase(i), size: VIRTIO_MMIO_SIZE, gsi: virtioGsi(i) }));
  const table = buildAcpiTables({ vcpus, virtioDevices }).tables.find((t) => t.signature === signature);
  assert.ok(table, `our VMM builds no ${signature}`);
  return table;
}

const consoleLines = (stdout: string) => stdout.replace(/\r/g, '').split('\n').filter((l) => l.length > 0);

/**
 * Presses Ctrl-C until `pattern` shows up after `from`: a Ctrl-C that lands in the instant between
 * two commands is (rightly) discarded by the guest, so one press alone could race.
 */
async function ctrlCUntil(vm: VmProcess, pattern: RegExp, from: number): Promise<{ match: RegExpExecArray; end: number }> {
  for (let attempt = 1; ; attempt++) {
    vm.send('\x03');
    try {
      return await vm.waitFor(pattern, 3_000, from);
    } catch (err) {
      if (attempt >= 10 || vm.child.exitCode !== null) throw err;
    }
  }
}

describe('malformed input to the Lifeboat guest under our VMM: one error line, a non-zero status, never a hang', function () {
  this.timeout(180_000);
  let dir: ReturnType<typeof tempDir>;

  before(() => {
    requireKvm();
    guestImage();
    dir = tempDir('lifeboat-guest-errors-');
  });
  after(() => dir?.remove());

  /** The guest's line for a table (by signature) whose bytes do not sum to 0. */
  const tableChecksumError = (signature: string) => (vcpus: number, disks: number) => {
    const { gpa, length } = tableAt(signature, vcpus, disks);
    return `error: ACPI ${signature} checksum mismatch at 0x${gpa.toString(16)} (its ${length} bytes sum to 0x01, must be 0): the tables are corrupt`;
  };
  const platformFaults: Array<{ name: string; fault: AcpiTestFaultInjection; expected: (vcpus: number, disks: number) => string }> = [
    {
      name: 'an RSDP with a wrong checksum',
      fault: { corruptChecksumOf: 'rsdp' },
      expected: () => 'error: ACPI RSDP checksum mismatch at 0xe0000 (first 20 bytes sum to 0x01, must be 0): the tables are corrupt',
    },
    { name: 'an XSDT with a wrong checksum', fault: { corruptChecksumOf: 'xsdt' }, expected: tableChecksumError('XSDT') },
    { name: 'a FADT with a wrong checksum', fault: { corruptChecksumOf: 'fadt' }, expected: tableChecksumError('FACP') },
    { name: 'a MADT with a wrong checksum', fault: { corruptChecksumOf: 'madt' }, expected: tableChecksumError('APIC') },
    { name: 'a DSDT with a wrong checksum', fault: { corruptChecksumOf: 'dsdt' }, expected: tableChecksumError('DSDT') },
    { name: 'no MADT in the XSDT', fault: { omitFromXsdt: 'madt' }, expected: () => 'error: ACPI MADT (signature APIC) not found in the XSDT' },
    { name: 'no FADT in the XSDT', fault: { omitFromXsdt: 'fadt' }, expected: () => 'error: ACPI FADT (signature FACP) not found in the XSDT' },
  ];

  for (const { name, fault, expected } of platformFaults) {
    it(`${name}: the guest names what is wrong, powers off with status 3, and runs no command (the disk stays untouched)`, async () => {
      const vcpus = 2;
      const disk = sparseImage(join(dir.path, `platform-${name.replace(/\W+/g, '-')}.img`), 8 * MIB);
      const exit = await runWithAcpiFault({ fault, vcpus, disks: [{ path: disk, readOnly: false }], exec: 'disk write 0 0 1048576 7' });

      assert.equal(exit.code, STATUS_PLATFORM, `the VMM exits with the guest's platform-error status\n${exit.stdout}\nstderr: ${exit.stderr}`);
      assert.equal(exit.stderr, '', 'the VMM itself reports nothing: the guest refused the tables');
      const lines = consoleLines(exit.stdout);
      assert.deepEqual(lines.filter((l) => l.startsWith('error: ')), [expected(vcpus, 1)], exit.stdout);
      assert.equal(lines.at(-1), `lifeboat: poweroff status=${STATUS_PLATFORM}`);
      assert.ok(!lines.some((l) => l.startsWith('lifeboat: ready') || l.startsWith('exec> ')), `the guest neither came up nor ran a command:\n${exit.stdout}`);
      assert.ok(readFileSync(disk).equals(Buffer.alloc(8 * MIB)), 'the disk image was not written');
    });
  }

  it('a disk attached but missing from the DSDT: info shows no disk, and a disk command says there is no disk 0 (status 1)', async () => {
    const disk = sparseImage(join(dir.path, 'undeclared.img'), 8 * MIB);
    const exit = await runWithAcpiFault({ fault: { omitDsdtDevices: true }, disks: [{ path: disk, readOnly: false }], exec: 'info; disk verify 0 0 512 1; echo never' });

    assert.equal(exit.code, 1, `a failed command is status 1\n${exit.stdout}\nstderr: ${exit.stderr}`);
    const lines = consoleLines(exit.stdout);
    assert.ok(lines.some((l) => /^info cpus=1 online=1 mem=\d+ disks=0 tsc_khz=\d+$/.test(l)), `info reports no disk:\n${exit.stdout}`);
    assert.ok(!lines.some((l) => l.startsWith('disk 0 ')), 'no disk line');
    assert.ok(!lines.some((l) => l.startsWith('warning: no COM1')), 'the console device is still declared');
    assert.deepEqual(lines.filter((l) => l.startsWith('error: ')), ['error: no disk 0 (the ACPI DSDT lists 0 virtio-blk devices)']);
    assert.ok(!lines.includes('exec> echo never'), 'the commands after the failing one did not run');
    assert.equal(lines.at(-1), 'lifeboat: poweroff status=1');
  });

  it('an empty (0-byte) disk image is refused by `vm run` before the VM starts, with one line saying how to give it a size', async () => {
    const own = join(dir.path, 'empty');
    mkdirSync(own);
    const empty = sparseImage(join(own, 'empty.img'), 0);
    const exit = await runVm([...BOOT, '--disk', empty, '--exec', 'info']);

    assert.equal(exit.code, 1, exit.stderr);
    assert.equal(exit.stderr, `lifeboat vm run: disk image ${empty} is empty (give it a size, e.g. truncate -s 1G ${empty})\n`);
    assert.equal(exit.stdout, '', 'no guest was started');
    assert.equal(statSync(empty).size, 0, 'the image is left as it was');
    assert.deepEqual(readdirSync(own), ['empty.img'], 'nothing was created beside it (no change-tracking file)');
  });

  it('an unknown command in --exec: `error: unknown command`, status 127, and the commands after it do not run', async () => {
    const exit = await runVm([...BOOT, '--exec', 'frobnicate now; echo never']);
    assert.equal(exit.code, 127, `${exit.stdout}\nstderr: ${exit.stderr}`);
    const lines = consoleLines(exit.stdout);
    assert.deepEqual(lines.filter((l) => l.startsWith('error: ')), ["error: unknown command 'frobnicate'"]);
    assert.ok(!lines.includes('exec> echo never'), exit.stdout);
    assert.equal(lines.at(-1), 'lifeboat: poweroff status=127');
  });

  it('an unknown command typed at the shell prints the error and the shell carries on', async () => {
    const vm = new VmProcess([...BOOT]);
    try {
      await vm.prompt(60_000);
      const out = await vm.command('frobnicate now');
      assert.deepEqual(consoleLines(out), ['frobnicate now', "error: unknown command 'frobnicate'"]);
      assert.deepEqual(consoleLines(await vm.command('echo still here')), ['echo still here', 'still here']);
      vm.send('poweroff 9\n');
      assert.equal((await vm.wait(30_000)).code, 9);
    } finally {
      vm.kill();
    }
  });
});

describe('Ctrl-C on the serial console of the Lifeboat guest under our VMM', function () {
  this.timeout(180_000);

  before(() => {
    requireKvm();
    guestImage();
  });

  it('interrupts `counter` at the shell and returns to the prompt, which takes the next command', async () => {
    const vm = new VmProcess([...BOOT]);
    try {
      const start = await vm.prompt(60_000);
      vm.send('counter\n');
      const { end } = await vm.waitFor(/counter 3\r?\n/, 30_000, start);
      const { end: promptEnd } = await ctrlCUntil(vm, /lifeboat> $/, end);
      assert.deepEqual(consoleLines(await vm.command('echo after counter')), ['echo after counter', 'after counter']);
      const afterPrompt = vm.stdout.slice(promptEnd);
      assert.doesNotMatch(afterPrompt, /counter \d+/, 'the counter stopped');
      vm.send('poweroff\n');
      assert.equal((await vm.wait(30_000)).code, 0);
    } finally {
      vm.kill();
    }
  });

  it('in --exec, Ctrl-C ends `counter` normally (the next command runs, status 0) but interrupts `sleep` with an error and status 5', async () => {
    const counting = new VmProcess([...BOOT, '--exec', 'counter; echo after counter']);
    try {
      const { end } = await counting.waitFor(/counter 2\r?\n/, 60_000);
      await ctrlCUntil(counting, /^after counter\r?$/m, end);
      const exit = await counting.wait(30_000);
      assert.equal(exit.code, 0, exit.stdout);
      assert.equal(consoleLines(exit.stdout).at(-1), 'lifeboat: poweroff status=0');
    } finally {
      counting.kill();
    }

    const sleeping = new VmProcess([...BOOT, '--exec', 'sleep 600000; echo never']);
    try {
      const { end } = await sleeping.waitFor(/exec> sleep 600000\r?\n/, 60_000);
      await ctrlCUntil(sleeping, /^error: interrupted\r?$/m, end);
      const exit = await sleeping.wait(30_000);
      assert.equal(exit.code, 5, exit.stdout);
      assert.ok(!consoleLines(exit.stdout).includes('exec> echo never'), exit.stdout);
    } finally {
      sleeping.kill();
    }
  });
});
