import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, copyFileSync, openSync, readFileSync, readSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { PAGE_SIZE } from '../../../vmm/layout.js';
import { DATA_OFFSET, MEMORY_FILE } from '../../../vmm/snapshot/format.js';
import { openMemoryFile } from '../../../vmm/snapshot/memory-file.js';
import { guestImage, requireKvm } from '../../helpers/vmm.js';
import { removeDir, tempDir } from '../tracking/fixtures.js';
import { LifeboatVm } from './vm-process.js';

const DURABLE = /ledger durable seq=(\d+)\n/g;

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/** Flips one bit in the middle page of the last page run of a memory file; returns that run's pages. */
function damageLastRun(memoryFile: string): { first: number; last: number } {
  const m = openMemoryFile(memoryFile);
  closeSync(m.fd);
  const run = m.runs[m.runs.length - 1]!;
  const at = DATA_OFFSET + (run.firstPage + Math.floor(run.count / 2)) * PAGE_SIZE + 2048;
  const fd = openSync(memoryFile, 'r+');
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, at);
    b[0]! ^= 0x10;
    writeSync(fd, b, 0, 1, at);
  } finally {
    closeSync(fd);
  }
  return { first: run.firstPage, last: run.firstPage + run.count - 1 };
}

describe('restoring a damaged snapshot (real KVM, real guest, real disk image)', function () {
  this.timeout(120_000);
  let dir: string;
  before(() => {
    requireKvm();
    guestImage();
  });
  beforeEach(() => (dir = tempDir('restore-verify')));
  afterEach(() => removeDir(dir));

  it('a diff with a flipped bit, restored during `ledger run`: found while the guest runs, the VM stopped, the disk image untouched', async () => {
    const disk = join(dir, 'disk.img');
    writeFileSync(disk, '');
    truncateSync(disk, 64 * 1024 * 1024);
    // 100 MiB of written memory make the full snapshot large: its pages are checked (first) while the
    // restored guest already appends to its ledger, so its next disk write is waiting when the damage is found.
    const vm = new LifeboatVm('run', ['--disk', disk, '--exec', 'mem dirty 25600; ledger run', '--mem', '256'], dir);
    try {
      await vm.waitForAtLeast(DURABLE, 20);
      await vm.cli(['snapshot', 'create', '--full', '--out', join(dir, 'full')]);
      await vm.waitForAtLeast(DURABLE, Math.max(...vm.numbers(DURABLE)) + 10);
      await vm.cli(['snapshot', 'create', '--diff', '--with-disks', '--out', join(dir, 'diff')]);
    } finally {
      await vm.kill9();
    }
    const damaged = damageLastRun(join(dir, 'diff', MEMORY_FILE));
    const image = join(dir, 'restored.img');
    copyFileSync(join(dir, 'diff', 'disk-0.img'), image);
    const before = sha256(image);

    const restored = new LifeboatVm('restore', ['--from', join(dir, 'full'), '--from', join(dir, 'diff'), '--disk', image], dir, 'restored');
    const exit = await restored.wait();
    assert.equal(exit.code, 1, `the VMM fails (stdout tail: ${restored.stdout.slice(-300)})`);
    const lines = restored.stderr.trim().split('\n');
    assert.equal(lines.length, 1, `one line: ${restored.stderr}`);
    const m = new RegExp(`^lifeboat vm restore: ${join(dir, 'diff', MEMORY_FILE).replace(/\./g, '\\.')}: pages ${damaged.first}\\.\\.${damaged.last} fail their checksum: ` +
      'the snapshot is damaged; the VM was stopped before its disks served a request \\((\\d+) held, none written\\)$').exec(lines[0]!);
    assert.ok(m, `names the damaged file and pages: ${lines[0]}`);
    assert.ok(Number(m[1]) >= 1, 'the restored guest had asked for a disk write, which was held');
    assert.equal(sha256(image), before, 'the disk image is byte-identical');
  });
});
