// The crash-consistent ledger, the application DR tests restore: whatever moment the VM dies at,
// a fresh boot's `ledger check` passes and reports at least the last sequence reported durable.
import assert from 'node:assert/strict';
import { ImageDir } from './disk-images.js';
import { readAt, writeAt } from '../helpers/image-files.js';
import { killAllGuests, runQemu, startQemu, type QemuGuest } from '../helpers/qemu.js';

const MiB = 1 << 20;
const SECTOR = 512;

function lastDurable(output: string): number {
  // Only complete lines: a kill can cut the last one short ("seq=1" of "seq=15").
  const all = [...output.matchAll(/^ledger durable seq=(\d+)\n/gm)];
  return all.length ? Number(all[all.length - 1][1]) : 0;
}

/** Waits until some `ledger durable seq=N` line has N >= min; returns N. */
function waitForDurable(guest: QemuGuest, min: number): Promise<number> {
  return guest.waitUntil((output) => {
    const n = lastDurable(output);
    return n >= min ? n : 0;
  }, 30_000, `ledger durable seq>=${min}`);
}

async function check(disk: string): Promise<{ status: number | null; last: number; output: string }> {
  const exit = await runQemu({ disks: [{ path: disk }], exec: 'ledger check' });
  const ok = /^ledger ok last=(\d+)$/m.exec(exit.output);
  return { status: exit.guestStatus, last: ok ? Number(ok[1]) : -1, output: exit.output };
}

/** Starts `ledger run`, waits for `minSeq` to be durable, then a random extra moment, then SIGKILL. */
async function runAndKill(disk: string, minSeq: number, rate = ''): Promise<number> {
  const guest = startQemu({ disks: [{ path: disk }], exec: `ledger run ${rate}`.trim() });
  await waitForDurable(guest, minSeq);
  await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 700)));
  const exit = await guest.kill('SIGKILL');
  assert.equal(exit.signal, 'SIGKILL');
  return lastDurable(exit.output);
}

describe('Lifeboat guest ledger under QEMU microvm (KVM)', function () {
  let images: ImageDir;
  beforeEach(() => (images = new ImageDir()));
  afterEach(async () => {
    await killAllGuests();
    images.remove();
  });

  it('ledger run killed with SIGKILL at a random moment: a fresh boot passes ledger check at or past the last durable seq', async () => {
    const disk = images.create('ledger.img', 16 * MiB);
    for (let round = 0; round < 2; round++) {
      const durable = await runAndKill(disk, 10);
      assert.ok(durable >= 10, `round ${round}: no durable record before the kill`);
      const result = await check(disk);
      assert.equal(result.status, 0, result.output);
      assert.ok(result.last >= durable, `round ${round}: check reported last=${result.last}, but seq=${durable} was durable`);
    }
  });

  it('after a crash, ledger run resumes right after the last valid record and the chain stays valid', async () => {
    const disk = images.create('ledger.img', 8 * MiB);
    await runAndKill(disk, 20, '500');
    const before = await check(disk);
    assert.equal(before.status, 0, before.output);
    const guest = startQemu({ disks: [{ path: disk }], exec: 'ledger run 200' });
    await guest.waitFor(new RegExp(`^ledger: disk 0 epoch=0x[0-9a-f]+ resuming after seq=${before.last}$`, 'm'));
    await waitForDurable(guest, before.last + 30);
    await guest.kill('SIGKILL');
    const after = await check(disk);
    assert.equal(after.status, 0, after.output);
    assert.ok(after.last >= before.last + 30);
  });

  it('records left on disk from an earlier format of the ledger are not taken for the current one', async () => {
    const disk = images.create('ledger.img', 4 * MiB);
    const first = await runAndKill(disk, 200);
    assert.ok(first >= 200);
    // Re-format (a new epoch) and append fewer records than the old ledger had.
    const guest = startQemu({ disks: [{ path: disk }], exec: 'ledger format; ledger run 300' });
    await waitForDurable(guest, 20);
    const second = lastDurable((await guest.kill('SIGKILL')).output);
    const result = await check(disk);
    assert.equal(result.status, 0, result.output);
    assert.ok(result.last >= second && result.last < first, `last=${result.last}: stale records of the old epoch were counted`);
  });

  it('damage to a durable record in the middle of the ledger is reported as corruption, not as a short ledger', async () => {
    const disk = images.create('ledger.img', 4 * MiB);
    await runAndKill(disk, 300);
    const good = await check(disk);
    assert.equal(good.status, 0, good.output);
    const victim = 100; // record seq N lives in sector N
    const byte = readAt(disk, victim * SECTOR + 200, 1);
    writeAt(disk, victim * SECTOR + 200, Buffer.from([byte[0] ^ 0xff]));
    const bad = await check(disk);
    assert.equal(bad.status, 1, bad.output);
    assert.match(bad.output, /^ledger corrupt: records end after seq=99 but a valid record seq=\d+ follows$/m);
  });

  it('ledger check on a disk that never held a ledger fails with a clear message', async () => {
    const result = await check(images.create('blank.img', MiB));
    assert.equal(result.status, 1, result.output);
    assert.match(result.output, /^ledger corrupt: no valid ledger header on disk 0/m);
  });
});
