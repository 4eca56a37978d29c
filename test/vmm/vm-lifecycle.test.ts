// How a VM ends and what the VMM's exit status then says: the exit port's status, ACPI poweroff, a
// reset (reboot, or the end with --no-reboot), signals; and the console log.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { requireKvm, runLifeboat, runVm, tempDir, tinyKernel, VmProcess, X86 } from '../helpers/vmm.js';

describe('lifeboat vm run: how a VM ends', function () {
  this.timeout(60_000);
  let dir: ReturnType<typeof tempDir>;
  const kernel = (name: string, code: number[]) => {
    const path = join(dir.path, name);
    writeFileSync(path, tinyKernel(code));
    return path;
  };

  before(() => {
    requireKvm();
    dir = tempDir();
  });
  after(() => dir.remove());

  it('exits with the status the guest writes to the exit port; above 255 it is 255, never a wrapped 0', async () => {
    assert.equal((await runVm(['--kernel', kernel('s0.bin', [...X86.print('a\n'), ...X86.exit(0)])])).code, 0);
    assert.equal((await runVm(['--kernel', kernel('s42.bin', [...X86.print('a\n'), ...X86.exit(42)])])).code, 42);
    assert.equal((await runVm(['--kernel', kernel('s256.bin', [...X86.print('a\n'), ...X86.exit(256)])])).code, 255);
  });

  it('an ACPI poweroff (S5 on the FADT sleep control port) exits 0', async () => {
    const exit = await runVm(['--kernel', kernel('acpi.bin', [...X86.print('bye\n'), ...X86.acpiPoweroff])]);
    assert.equal(exit.code, 0, exit.stderr);
    assert.equal(exit.stdout, 'bye\n');
  });

  it('a reset boots the guest again from scratch; with --no-reboot it ends the VMM with 0', async () => {
    const k = kernel('reset.bin', [...X86.print('booted\n'), ...X86.reset]);
    const once = await runVm(['--kernel', k, '--no-reboot']);
    assert.equal(once.code, 0, once.stderr);
    assert.equal(once.stdout, 'booted\n');

    const sock = join(dir.path, 'reset.sock');
    const vm = new VmProcess(['--kernel', k, '--api-sock', sock]);
    try {
      const first = await vm.waitFor('booted\n');
      const second = await vm.waitFor('booted\n', 30_000, first.end);
      await vm.waitFor('booted\n', 30_000, second.end);
      assert.equal((await runLifeboat(['vm', 'stop', '--api-sock', sock, '--status', '4'])).code, 0);
      assert.equal((await vm.wait(30_000)).code, 4);
    } finally {
      vm.kill();
    }
  });

  it('SIGTERM stops the VM cleanly with status 143', async () => {
    const vm = new VmProcess(['--kernel', kernel('spin.bin', [...X86.print('up\n'), ...X86.hang])]);
    await vm.waitFor('up\n');
    vm.kill('SIGTERM');
    const exit = await vm.wait(30_000);
    assert.equal(exit.code, 143, exit.stderr);
    assert.equal(exit.stderr, '');
  });

  it('--console-log keeps a copy of everything the guest printed', async () => {
    const log = join(dir.path, 'console.log');
    const exit = await runVm(['--kernel', kernel('log.bin', [...X86.print('line one\nline two\n'), ...X86.exit(0)]), '--console-log', log]);
    assert.equal(exit.code, 0);
    assert.equal(readFileSync(log, 'utf8'), 'line one\nline two\n');
  });

  it('--exec refuses a double quote, which the kernel command line cannot carry', async () => {
    const exit = await runVm(['--kernel', kernel('q.bin', X86.exit(0)), '--exec', 'echo "hi"']);
    assert.equal(exit.code, 2);
    assert.match(exit.stderr, /cannot contain a double quote/);
  });
});
