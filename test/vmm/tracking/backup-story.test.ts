// The incremental backup story end to end, as a user runs it: the Lifeboat guest writes its disk and its
// ledger under our VMM with change tracking; `lifeboat point create / export` hand points and change
// bitmaps to `lifeboat backup`; `lifeboat restore` brings them back. Real KVM, real repository.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeChangeBitmap, markDirtyChunks } from '../../../replication/repository/change-bitmap.js';
import { guestImage, requireKvm, runLifeboat, runVm } from '../../helpers/vmm.js';
import { controlOp, LifeboatVm } from '../snapshot/vm-process.js';
import { makeImage, readImage, removeDir, tempDir } from './fixtures.js';

const MiB = 1024 * 1024;
const DISK_SIZE = 32 * MiB;
const CHUNK = 64 * 1024; // the repository's default chunk size

interface BackupJson {
  point: string;
  bytesRead: number;
  images: Array<{ mode: string; chunks: number; chunksRead: number; note?: string }>;
}

describe('incremental backups of a running guest from points and change bitmaps (real KVM, the Lifeboat guest)', function () {
  this.timeout(300_000);
  let dir: string;
  let disk: string;
  let repo: string;
  let password: string;
  let vm: LifeboatVm;
  /** Highest `ledger durable seq` the guest printed so far. */
  let durable: number;

  before(() => {
    requireKvm();
    guestImage();
  });
  beforeEach(async () => {
    dir = tempDir('backup-story');
    disk = join(dir, 'disk.img');
    makeImage(disk, DISK_SIZE, 21);
    repo = join(dir, 'repo');
    password = join(dir, 'password');
    writeFileSync(password, 'a passphrase for the story\n');
    await lifeboat(['repo', 'init', '--target', repo]);
    durable = 0;
    vm = new LifeboatVm('run', ['--disk', disk, '--mem', '128'], dir);
    await vm.waitFor(/lifeboat> $/, 60_000);
  });
  afterEach(async () => {
    vm.child.kill('SIGKILL');
    await vm.exited;
    removeDir(dir);
  });

  const file = (name: string) => join(dir, name);

  /** A repository command; fails with its stderr unless it succeeds. */
  async function lifeboat(args: string[]): Promise<string> {
    const r = await runLifeboat([...args, '--password-file', password], 120_000);
    if (r.code !== 0) throw new Error(`lifeboat ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
    return r.stdout;
  }

  async function backup(image: string, bitmap?: string): Promise<BackupJson> {
    const out = await lifeboat(['backup', image, ...(bitmap ? ['--bitmap', bitmap] : []), '--target', repo, '--vm', 'story', '--disk', 'vda', '--json']);
    return JSON.parse(out) as BackupJson;
  }

  async function pointsInRepository(): Promise<string[]> {
    return (JSON.parse(await lifeboat(['points', 'list', '--target', repo, '--json'])) as Array<{ id: string }>).map((p) => p.id).sort();
  }

  /** `lifeboat restore POINT`; returns the restored image's bytes. */
  async function restored(point: string): Promise<Buffer> {
    const out = file(`restored-${point}.img`);
    await lifeboat(['restore', point, '--target', repo, '--to', out]);
    return readImage(out);
  }

  /** The guest appends to its ledger until at least `records` more are durable, then Ctrl-C. */
  async function ledgerRun(records: number): Promise<void> {
    const from = vm.stdout.length;
    vm.send('ledger run\n');
    await vm.waitForAtLeast(/ledger durable seq=(\d+)\n/g, durable + records, 60_000, from);
    vm.send('\x03');
    await vm.waitFor(/lifeboat> $/, 30_000, from);
    durable = Math.max(durable, ...vm.numbers(/ledger durable seq=(\d+)\n/g, from));
  }

  async function diskWrites(seed: number): Promise<void> {
    for (const [offset, length] of [[4 * MiB + 512, 4096], [9 * MiB, 131072], [20 * MiB + 61440, 8192], [31 * MiB + 512, 512]]) {
      assert.match(await vm.command(`disk write 0 ${offset} ${length} ${seed++}`), /disk write ok/);
    }
  }

  async function createPoint(): Promise<{ generation: number; trusted: boolean }> {
    const created = await vm.cli(['point', 'create']);
    return (created.points as Array<{ generation: number; trusted: boolean }>)[0]!;
  }

  /** `lifeboat point export`; returns the decoded bitmap, if one was asked for. */
  async function exportPoint(point: number, out: string, options: { changedOnly?: boolean; bitmap?: string } = {}) {
    await vm.cli(['point', 'export', '--point', String(point), '--out', out, ...(options.changedOnly ? ['--changed-only'] : []), ...(options.bitmap ? ['--bitmap', options.bitmap] : [])]);
    return options.bitmap ? decodeChangeBitmap(readFileSync(options.bitmap)) : undefined;
  }

  /** The repository chunks a bitmap names. */
  function namedChunks(bitmapFile: string): number[] {
    const dirty = new Uint8Array(Math.ceil(DISK_SIZE / CHUNK));
    markDirtyChunks(decodeChangeBitmap(readFileSync(bitmapFile)), CHUNK, dirty);
    return [...dirty.keys()].filter((c) => dirty[c]);
  }

  function chunksNamed(bitmapFile: string): number {
    return namedChunks(bitmapFile).length;
  }

  async function stopCleanly(): Promise<void> {
    await controlOp(vm.socket, { op: 'stop' });
    assert.equal((await vm.wait()).code, 0);
  }

  it('a whole first backup, then changed-only incrementals (one after a failed backup was merged back) read only the changed chunks and restore byte-identical; the ledger checks', async () => {
    await ledgerRun(40);
    // First start of tracking: the point is untrusted; it is exported whole and backed up in full.
    const first = await createPoint();
    assert.equal(first.trusted, false);
    const firstBitmap = await exportPoint(first.generation, file('p1.img'), { bitmap: file('p1.bitmap') });
    assert.equal(firstBitmap!.baseEpoch, null);
    const full = await backup(file('p1.img'), file('p1.bitmap'));
    assert.equal(full.images[0]!.mode, 'full');
    await vm.cli(['point', 'release', '--point', String(first.generation)]);

    // The guest writes; the next point is exported changed-only with its (trusted) bitmap.
    await diskWrites(100);
    await ledgerRun(40);
    const second = await createPoint();
    assert.equal(second.trusted, true);
    const secondBitmap = await exportPoint(second.generation, file('p2-changed.img'), { changedOnly: true, bitmap: file('p2.bitmap') });
    await exportPoint(second.generation, file('p2-whole.img'));
    assert.equal(secondBitmap!.baseEpoch, firstBitmap!.epoch, 'it counts changes since the first point');
    const incremental = await backup(file('p2-changed.img'), file('p2.bitmap'));
    assert.equal(incremental.images[0]!.mode, 'bitmap');
    const named = chunksNamed(file('p2.bitmap'));
    assert.ok(named >= 5 && named < 40, `${named} chunks changed`);
    assert.equal(incremental.images[0]!.chunksRead, named, 'only the chunks the bitmap names are read');
    assert.equal(incremental.bytesRead, named * CHUNK);
    assert.ok((await restored(incremental.point)).equals(readImage(file('p2-whole.img'))), 'the incremental restores to the whole point');
    await vm.cli(['point', 'release', '--point', String(second.generation)]);

    // The next backup fails (the repository is not there); the point is merged back.
    await diskWrites(200);
    const failed = await createPoint();
    await exportPoint(failed.generation, file('p3-changed.img'), { changedOnly: true, bitmap: file('p3.bitmap') });
    const failure = await runLifeboat(['backup', file('p3-changed.img'), '--bitmap', file('p3.bitmap'), '--target', file('no-such-repo'), '--password-file', password], 60_000);
    assert.equal(failure.code, 1, failure.stderr);
    await vm.cli(['point', 'release', '--merge', '--point', String(failed.generation)]);

    // More writes; the next point still counts from the last successful backup, so it is a trusted incremental.
    await diskWrites(300);
    await ledgerRun(40);
    const fourth = await createPoint();
    const fourthBitmap = await exportPoint(fourth.generation, file('p4-changed.img'), { changedOnly: true, bitmap: file('p4.bitmap') });
    await exportPoint(fourth.generation, file('p4-whole.img'));
    assert.equal(fourthBitmap!.baseEpoch, secondBitmap!.epoch, "its base epoch is the parent point's tracking epoch");
    const afterFailure = await backup(file('p4-changed.img'), file('p4.bitmap'));
    assert.equal(afterFailure.images[0]!.mode, 'bitmap', afterFailure.images[0]!.note);
    assert.equal(afterFailure.images[0]!.chunksRead, chunksNamed(file('p4.bitmap')));
    for (const c of namedChunks(file('p3.bitmap'))) assert.ok(namedChunks(file('p4.bitmap')).includes(c), `chunk ${c} of the failed point is included`);
    const image = await restored(afterFailure.point);
    assert.ok(image.equals(readImage(file('p4-whole.img'))), 'the incremental restores to the whole point');
    await vm.cli(['point', 'release', '--point', String(fourth.generation)]);
    await stopCleanly();

    // The guest's own check on the restored disk.
    const check = await runVm(['--disk', file(`restored-${afterFailure.point}.img`), '--mem', '128', '--no-track-changes', '--exec', 'ledger check']);
    assert.equal(check.code, 0, check.stdout.slice(-600));
    const last = Number(/ledger ok last=(\d+)/.exec(check.stdout)?.[1]);
    assert.ok(last >= durable, `the restored ledger holds every record made durable before the point (last=${last}, durable=${durable})`);
  });

  it('a changed-only image whose bitmap does not start at the parent point is refused with one line and no point; a whole export restarts the chain', async () => {
    // A full backup without a bitmap: the point records no tracking epoch.
    const first = await createPoint();
    await exportPoint(first.generation, file('p1.img'));
    await backup(file('p1.img'));
    await vm.cli(['point', 'release', '--point', String(first.generation)]);
    const pointsBefore = await pointsInRepository();

    await diskWrites(10);
    await ledgerRun(20);
    const second = await createPoint();
    const secondBitmap = await exportPoint(second.generation, file('p2-changed.img'), { changedOnly: true, bitmap: file('p2.bitmap') });
    const refused = await runLifeboat(['backup', file('p2-changed.img'), '--bitmap', file('p2.bitmap'), '--target', repo, '--vm', 'story', '--disk', 'vda', '--password-file', password], 60_000);
    assert.equal(refused.code, 1);
    assert.deepEqual(refused.stderr.trimEnd().split('\n'), [
      `lifeboat backup: disk vda: ${file('p2-changed.img')} holds only the changed blocks (exported --changed-only) but its change bitmap cannot be used: ` +
        `the bitmap counts changes since epoch ${secondBitmap!.baseEpoch} but the parent point recorded no tracking epoch; ` +
        'export the whole point (lifeboat point export --out IMAGE --bitmap FILE, without --changed-only) and back that up',
    ]);
    assert.deepEqual(await pointsInRepository(), pointsBefore, 'no point was added');

    // The fix the message gives: the whole point with its bitmap. Read whole, it records the epoch.
    await exportPoint(second.generation, file('p2-whole.img'), { bitmap: file('p2-whole.bitmap') });
    const whole = await backup(file('p2-whole.img'), file('p2-whole.bitmap'));
    assert.equal(whole.images[0]!.mode, 'hash-compare');
    assert.equal(whole.bytesRead, DISK_SIZE);
    await vm.cli(['point', 'release', '--point', String(second.generation)]);

    // A point released without being backed up breaks the chain again: the next bitmap starts at it.
    await diskWrites(20);
    const skipped = await createPoint();
    await vm.cli(['point', 'release', '--point', String(skipped.generation)]);
    await diskWrites(30);
    const third = await createPoint();
    const thirdBitmap = await exportPoint(third.generation, file('p3-changed.img'), { changedOnly: true, bitmap: file('p3.bitmap') });
    const mismatch = await runLifeboat(['backup', file('p3-changed.img'), '--bitmap', file('p3.bitmap'), '--target', repo, '--vm', 'story', '--disk', 'vda', '--password-file', password], 60_000);
    assert.equal(mismatch.code, 1);
    assert.equal(mismatch.stderr.trimEnd().split('\n').length, 1, mismatch.stderr);
    assert.match(mismatch.stderr, new RegExp(`the bitmap counts changes since epoch ${thirdBitmap!.baseEpoch} but the parent point is at epoch ${secondBitmap!.epoch}; export the whole point`));
    assert.deepEqual(await pointsInRepository(), [...pointsBefore, whole.point].sort(), 'no point was added');

    // The whole point again, and the chain continues with a trusted incremental.
    await exportPoint(third.generation, file('p3-whole.img'), { bitmap: file('p3-whole.bitmap') });
    assert.equal((await backup(file('p3-whole.img'), file('p3-whole.bitmap'))).images[0]!.mode, 'hash-compare');
    await vm.cli(['point', 'release', '--point', String(third.generation)]);
    await diskWrites(40);
    const fourth = await createPoint();
    await exportPoint(fourth.generation, file('p4-changed.img'), { changedOnly: true, bitmap: file('p4.bitmap') });
    await exportPoint(fourth.generation, file('p4-whole.img'));
    const incremental = await backup(file('p4-changed.img'), file('p4.bitmap'));
    assert.equal(incremental.images[0]!.mode, 'bitmap');
    assert.equal(incremental.images[0]!.chunksRead, chunksNamed(file('p4.bitmap')));
    assert.ok((await restored(incremental.point)).equals(readImage(file('p4-whole.img'))));
    await vm.cli(['point', 'release', '--point', String(fourth.generation)]);
    await stopCleanly();
  });
});
