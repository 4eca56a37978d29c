// The Lifeboat guest under our VMM, driven as a user drives `lifeboat vm run`: it sees its CPUs, memory
// and disks; data written on one side of virtio-blk is exactly what the other side reads; read-only
// disks stay unchanged; a ledger survives SIGKILL of the VMM; pause really stops the guest.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildE820 } from '../../vmm/boot/e820.js';
import { patternBuffer } from '../helpers/pattern.js';
import { guestImage, requireKvm, runLifeboat, runVm, tempDir, VmProcess } from '../helpers/vmm.js';
import { readAt, sparseImage, writeAt } from '../helpers/image-files.js';

const MIB = 1024 * 1024;
const BOOT = ['--boot-timeout', '60'];

function e820RamBytes(memoryBytes: number): number {
  return buildE820(memoryBytes).filter((e) => e.type === 1).reduce((sum, e) => sum + Number(e.size), 0);
}

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

describe('the Lifeboat guest under our VMM', function () {
  this.timeout(180_000);
  let dir: ReturnType<typeof tempDir>;

  before(() => {
    requireKvm();
    guestImage();
    dir = tempDir();
  });
  after(() => dir?.remove());

  for (const vcpus of [1, 2]) {
    it(`boots with ${vcpus} vCPU${vcpus > 1 ? 's' : ''} and reports its CPUs online, its memory and every disk with its size`, async () => {
      const a = sparseImage(join(dir.path, `a${vcpus}.img`), 64 * MIB);
      const b = sparseImage(join(dir.path, `b${vcpus}.img`), 3 * MIB + 512);
      const exit = await runVm([...BOOT, '--vcpus', String(vcpus), '--mem', '128', '--disk', a, '--disk', `${b},ro`, '--exec', 'info']);
      assert.equal(exit.code, 0, `${exit.stderr}\n${exit.stdout}`);
      const info = /^info cpus=(\d+) online=(\d+) mem=(\d+) disks=(\d+) tsc_khz=(\d+)/m.exec(exit.stdout);
      assert.ok(info, `no info line in:\n${exit.stdout}`);
      assert.equal(Number(info[1]), vcpus);
      assert.equal(Number(info[2]), vcpus, 'every CPU came online');
      assert.equal(Number(info[3]), e820RamBytes(128 * MIB), 'the guest sees the RAM of our e820 map');
      assert.equal(Number(info[4]), 2);
      assert.ok(Number(info[5]) > 0);
      const disks = [...exit.stdout.matchAll(/^disk (\d+) bytes=(\d+) ro=([01])/gm)].map((m) => ({ index: Number(m[1]), bytes: Number(m[2]), ro: m[3] === '1' }));
      assert.deepEqual(disks, [{ index: 0, bytes: 64 * MIB, ro: false }, { index: 1, bytes: 3 * MIB + 512, ro: true }]);
    });
  }

  it('the guest writes a seeded pattern at an offset and the host reads exactly that pattern there', async () => {
    const disk = sparseImage(join(dir.path, 'write.img'), 32 * MIB);
    const offset = 5 * MIB + 4096;
    const length = 256 * 1024;
    const exit = await runVm([...BOOT, '--disk', disk, '--exec', `disk write 0 ${offset} ${length} 1234`]);
    assert.equal(exit.code, 0, `${exit.stderr}\n${exit.stdout}`);
    assert.match(exit.stdout, /^disk write ok/m);
    assert.ok(readAt(disk, offset, length).equals(patternBuffer(1234n, offset, length)), 'the image holds the pattern');
    assert.ok(readAt(disk, offset - 512, 512).equals(Buffer.alloc(512)), 'nothing written before the range');
    assert.ok(readAt(disk, offset + length, 512).equals(Buffer.alloc(512)), 'nothing written after the range');
  });

  it('the host writes a seeded pattern and the guest verifies it (and notices a wrong one)', async () => {
    const disk = sparseImage(join(dir.path, 'verify.img'), 16 * MIB);
    const offset = 3 * MIB;
    const length = 128 * 1024;
    writeAt(disk, offset, patternBuffer(99n, offset, length));
    const ok = await runVm([...BOOT, '--disk', disk, '--exec', `disk verify 0 ${offset} ${length} 99`]);
    assert.equal(ok.code, 0, `${ok.stderr}\n${ok.stdout}`);
    assert.match(ok.stdout, /^disk verify ok/m);
    const bad = await runVm([...BOOT, '--disk', disk, '--exec', `disk verify 0 ${offset} ${length} 100`]);
    assert.equal(bad.code, 1, 'a mismatch is the guest\'s exit status 1');
    assert.match(bad.stdout, /^disk verify mismatch offset=/m);
  });

  it('with ,ro the guest\'s write fails and the image is unchanged', async () => {
    const disk = sparseImage(join(dir.path, 'ro.img'), 8 * MIB);
    writeAt(disk, 0, patternBuffer(7n, 0, 65536));
    const before = sha256(disk);
    const exit = await runVm([...BOOT, '--disk', `${disk},ro`, '--exec', 'disk write 0 0 65536 8']);
    assert.equal(exit.code, 1);
    assert.match(exit.stdout, /error: disk 0 is read-only/);
    assert.equal(sha256(disk), before);
  });

  it('an unknown command in --exec ends the VMM with the guest\'s status 127', async () => {
    const exit = await runVm([...BOOT, '--exec', 'frobnicate']);
    assert.equal(exit.code, 127);
    assert.match(exit.stdout, /error: unknown command 'frobnicate'/);
  });

  it('ledger run under our VMM, VMM killed with SIGKILL, fresh boot: ledger check passes', async () => {
    const disk = sparseImage(join(dir.path, 'ledger.img'), 64 * MIB);
    const vm = new VmProcess([...BOOT, '--disk', disk, '--exec', 'ledger run']);
    let lastDurable = 0;
    let seenOffset = 0;
    try {
      for (let seen = 0; seen < 20;) {
        const { match, end } = await vm.waitFor(/ledger durable seq=(\d+)\r?\n/, 60_000, seenOffset);
        seenOffset = end;
        lastDurable = Number(match[1]);
        seen++;
      }
    } finally {
      vm.kill('SIGKILL');
    }
    const killed = await vm.wait();
    assert.equal(killed.signal, 'SIGKILL');
    const check = await runVm([...BOOT, '--disk', disk, '--exec', 'ledger check']);
    assert.equal(check.code, 0, `${check.stderr}\n${check.stdout}`);
    const ok = /ledger ok last=(\d+)/.exec(check.stdout);
    assert.ok(ok, check.stdout);
    assert.ok(Number(ok[1]) >= lastDurable, `every record reported durable (${lastDurable}) survived (last=${ok[1]})`);
  });
  it('pause and resume over the control socket: the guest\'s counter stops while paused and continues after', async () => {
    const sock = join(dir.path, 'counter.sock');
    const vm = new VmProcess([...BOOT, '--api-sock', sock]);
    try {
      await vm.prompt(60_000);
      vm.send('counter\n');
      const { match: m1, end: e1 } = await vm.waitFor(/counter (\d+)\r?\n/, 30_000);
      let from = e1;
      let last = Number(m1[1]);
      for (let i = 0; i < 3; i++) {
        const r = await vm.waitFor(/counter (\d+)\r?\n/, 30_000, from);
        from = r.end;
        last = Number(r.match[1]);
      }
      assert.equal((await runLifeboat(['vm', 'pause', '--api-sock', sock])).code, 0);
      const atPause = vm.stdout.length;
      await new Promise((r) => setTimeout(r, 1500));
      const whilePaused = vm.stdout.slice(atPause);
      assert.doesNotMatch(whilePaused, /counter \d+/, 'no tick while paused');
      const lastBefore = Number([...vm.stdout.matchAll(/counter (\d+)\r?\n/g)].pop()![1]);
      assert.ok(lastBefore >= last);
      assert.equal((await runLifeboat(['vm', 'resume', '--api-sock', sock])).code, 0);
      const after = await vm.waitFor(/counter (\d+)\r?\n/, 30_000, atPause);
      assert.ok(Number(after.match[1]) > lastBefore, `the counter continues (${after.match[1]} after ${lastBefore})`);
      vm.send('\x03');
      await vm.prompt(30_000, after.end);
      assert.equal((await runLifeboat(['vm', 'stop', '--api-sock', sock])).code, 0);
      const exit = await vm.wait(30_000);
      assert.equal(exit.code, 0, exit.stderr);
    } finally {
      vm.kill();
    }
  });

  it('a guest reboot boots it again; with --no-reboot it ends the VMM', async () => {
    const once = await runVm([...BOOT, '--no-reboot', '--exec', 'reboot']);
    assert.equal(once.code, 0, once.stderr);
    const sock = join(dir.path, 'reboot.sock');
    const vm = new VmProcess([...BOOT, '--api-sock', sock]);
    try {
      const first = await vm.prompt(60_000);
      vm.send('reboot\n');
      await vm.waitFor('lifeboat: guest starting', 60_000, first);
      await vm.prompt(60_000, first);
      assert.equal((await runLifeboat(['vm', 'stop', '--api-sock', sock, '--status', '5'])).code, 0);
      assert.equal((await vm.wait(30_000)).code, 5);
    } finally {
      vm.kill();
    }
  });
});
