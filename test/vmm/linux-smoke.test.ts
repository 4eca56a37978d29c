// Stock Linux (Debian's cloud kernel, busybox initramfs from scripts/linux-guest.sh) under `lifeboat vm run`.
// With hardware virtualization it must boot to /init and see its virtio disk. On a PVM host (this project's
// machines) stock Linux cannot run, and what a user relies on is the refusal: one line naming PVM, a
// non-zero exit, and the disk image untouched.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { probeHost } from '../../vmm/host-probe.js';
import { projectRoot } from '../../src/util/project-root.js';
import { debianLinuxGuest } from './boot/debian-kernel.js';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const CMDLINE = 'console=ttyS0 reboot=k panic=1 pci=off nokaslr i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd';
const BOOT_TIMEOUT_MS = 180_000;

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

describe('stock Linux guest', function () {
  this.timeout(BOOT_TIMEOUT_MS + 60_000);
  const host = probeHost();
  let dir: string;
  let disk: string;

  before(() => {
    assert.ok(host.kvm.present && host.kvm.accessible, `${host.kvm.path} is missing or not accessible: this test needs KVM`);
    dir = mkdtempSync(join(tmpdir(), 'lifeboat-linux-'));
    disk = join(dir, 'disk.img');
    // 16 MiB with a recognisable pattern, so "untouched" is checked on real content.
    const block = Buffer.alloc(1 << 20);
    for (let i = 0; i < block.length; i += 4) block.writeUInt32LE((i * 2654435761) >>> 0, i);
    writeFileSync(disk, Buffer.concat(Array.from({ length: 16 }, () => block)));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  if (host.flavour === 'pvm') {
    it('on this PVM host: `vm run` refuses the Linux kernel with one line naming PVM, and leaves the disk untouched', () => {
      const guest = debianLinuxGuest();
      const before = { hash: sha256(disk), mtimeMs: statSync(disk).mtimeMs, files: readdirSync(dir).sort() };
      const r = spawnSync(
        process.execPath,
        [CLI, 'vm', 'run', '--kernel', guest.kernel, '--initrd', guest.initrd, '--disk', disk, '--mem', '512', '--cmdline', CMDLINE],
        { cwd: projectRoot(), encoding: 'utf8', timeout: 60_000 },
      );
      assert.notEqual(r.status, 0, `vm run exited 0:\n${r.stdout}\n${r.stderr}`);
      assert.equal(r.signal, null, 'refused at once, not killed by the timeout');
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, `one line, no stack trace:\n${r.stderr}`);
      assert.match(lines[0]!, /PVM/);
      assert.match(lines[0]!, /kvm_pvm/);
      assert.match(lines[0]!, /VT-x\/AMD-V/);
      assert.equal(sha256(disk), before.hash, 'disk content unchanged');
      assert.equal(statSync(disk).mtimeMs, before.mtimeMs, 'disk not even rewritten');
      assert.deepEqual(readdirSync(dir).sort(), before.files, 'nothing created next to the disk');
    });
  } else {
    it('with hardware virtualization: boots to /init, loads virtio-mmio and virtio-blk, sees vda, powers off', async () => {
      const guest = debianLinuxGuest();
      const consoleLog = join(dir, 'console.log');
      const child = spawn(
        process.execPath,
        [CLI, 'vm', 'run', '--kernel', guest.kernel, '--initrd', guest.initrd, '--disk', disk, '--mem', '512', '--vcpus', '2',
          '--cmdline', CMDLINE, '--console-log', consoleLog],
        { cwd: projectRoot(), stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let output = '';
      child.stdout.on('data', (d: Buffer) => (output += d.toString()));
      child.stderr.on('data', (d: Buffer) => (output += d.toString()));
      let poweredOffAt: number | undefined;
      const status = await new Promise<number | null>((resolve) => {
        const deadline = setTimeout(() => child.kill('SIGKILL'), BOOT_TIMEOUT_MS);
        const watch = setInterval(() => {
          if (poweredOffAt === undefined && output.includes('lifeboat-linux: powering off')) poweredOffAt = Date.now();
          // The guest asked for ACPI S5; a VMM that does not act on it leaves a halted guest behind.
          if (poweredOffAt !== undefined && Date.now() - poweredOffAt > 15_000) child.kill('SIGKILL');
        }, 200);
        child.on('exit', (code) => {
          clearTimeout(deadline);
          clearInterval(watch);
          resolve(code);
        });
      });
      const log = output + (existsSync(consoleLog) ? readFileSync(consoleLog, 'utf8') : '');
      assert.match(log, /lifeboat-linux: init reached/, `no /init marker:\n${output.slice(-4000)}`);
      assert.match(log, /lifeboat-linux: block vda sectors=32768/, 'virtio-blk disk vda, 16 MiB');
      assert.equal(status, 0, 'the VMM exits 0 when Linux powers off through the ACPI sleep control register');
    });
  }
});
