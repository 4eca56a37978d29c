// The repository's behaviour, as a suite over any Target: local directory, S3, remote site. Each target's
// test file calls describeRepositorySuite with a factory for fresh, empty targets.

import assert from 'node:assert/strict';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Target } from '../../replication/target.js';
import { backup, type BackupResult } from '../../replication/repository/backup.js';
import { changeBitmapFromRanges, type ChangeBitmap } from '../../replication/repository/change-bitmap.js';
import { CONFIG_KEY, CONDEMNED_KEY, LEASES_PREFIX, MAX_EXTENTS_PER_CELL, PACKS_PREFIX, INDEX_PREFIX, POINTS_PREFIX } from '../../replication/repository/constants.js';
import { CorruptDataError, MissingObjectError, NotARepositoryError, RepositoryError, TruncatedObjectError, WrongKeyError } from '../../replication/repository/errors.js';
import { forget } from '../../replication/repository/forget.js';
import { gc } from '../../replication/repository/gc.js';
import { Lease } from '../../replication/repository/leases.js';
import { Repository } from '../../replication/repository/repository.js';
import { readDeviceState, restore } from '../../replication/repository/restore.js';
import { verify } from '../../replication/repository/verify.js';
import type { KeySecret } from '../../replication/repository/keys.js';
import { MiB, sameFile, seededBytes, writeImage, writeMixedImage } from './images.js';

export interface RepositorySuiteTarget {
  /** A fresh, empty target (each test gets its own). */
  make(): Promise<Target>;
  /** Makes an object retention-locked: deleting it must fail with ObjectLockedError. Optional. */
  lock?(target: Target, key: string): Promise<void>;
  /** Undoes lock() so that cleanup can remove the object. */
  unlock?(target: Target, key: string): Promise<void>;
  /** Removes everything make() created (after close()). */
  destroy?(target: Target): Promise<void>;
}

const PASSPHRASE: KeySecret = { passphrase: 'correct horse battery staple' };
/** Small packs, so that even small images spread over several packs. */
const PACK_SIZE = MiB;

async function objectKeys(target: Target, prefix = ''): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of target.list(prefix)) keys.push(o.key);
  return keys.sort();
}

async function flipByte(target: Target, key: string, at?: number): Promise<void> {
  const body = await target.get(key);
  const i = at ?? Math.floor(body.length / 2);
  body[i] ^= 0x5a;
  await target.put(key, body);
}

/** A change bitmap (granularity = chunk size) setting the chunks that contain the given offsets. */
function bitmapFor(size: number, offsets: number[], chunkSize: number, baseEpoch: string | null, epoch: string): ChangeBitmap {
  return { ...changeBitmapFromRanges(size, chunkSize, offsets.map((o) => ({ offset: o, length: 1 }))), baseEpoch, epoch };
}

/** The key of the pack holding chunk `n` of the point's first disk. */
async function packOfChunk(repo: Repository, pointId: string, n: number): Promise<{ key: string; offset: number }> {
  const index = await repo.loadIndex();
  const map = await repo.readExtentMap((await repo.readManifest(pointId)).disks[0], index, 'test');
  const loc = index.get(map.id(n))!;
  return { key: `packs/${loc.packId.slice(0, 2)}/${loc.packId}`, offset: loc.offset };
}

const EPOCH_1 = '11'.repeat(16);
const EPOCH_2 = '22'.repeat(16);
const EPOCH_ROUNDS = (n: number) => (n + 0x30).toString(16).repeat(16);

/**
 * Registers the suite. `targets` is a factory of fresh, empty targets, or an object with one (`make`) and
 * optional retention-lock hooks (the lock test runs only when `lock` is given).
 */
export function describeRepositorySuite(name: string, targets: RepositorySuiteTarget | (() => Promise<Target>)): void {
  const factory: RepositorySuiteTarget = typeof targets === 'function' ? { make: targets } : targets;
  describe(`repository on ${name}`, function () {
    this.timeout(300_000);
    let dir: string;
    let target: Target;
    const locked: string[] = [];

    beforeEach(async () => {
      dir = mkdtempSync(join(tmpdir(), 'lifeboat-repo-test-'));
      target = await factory.make();
    });

    afterEach(async () => {
      for (const key of locked.splice(0)) await factory.unlock?.(target, key);
      await target.close();
      await factory.destroy?.(target);
      rmSync(dir, { recursive: true, force: true });
    });

    async function init(secret: KeySecret | null = PASSPHRASE): Promise<Repository> {
      return Repository.init(target, { secret, packSize: PACK_SIZE });
    }

    function file(name: string): string {
      return join(dir, name);
    }

    async function backupImage(repo: Repository, path: string, extra: Partial<Parameters<typeof backup>[1]> = {}): Promise<BackupResult> {
      return backup(repo, { vm: { name: 'vm1' }, disks: [{ name: 'vda', path }], ...extra });
    }

    async function restoreTo(repo: Repository, pointId: string, to: string): Promise<void> {
      await restore(repo, { pointId, to });
    }

    for (const encrypted of [true, false]) {
      it(`restores bit-exact an image with holes, zeros, random and compressible data and an odd size (${encrypted ? 'encrypted' : 'unencrypted'})`, async () => {
        const repo = await init(encrypted ? PASSPHRASE : null);
        const img = file('disk.img');
        const size = writeMixedImage(img);
        const result = await backupImage(repo, img);
        assert.equal(result.bytesRead, size);
        assert.ok(result.zeroChunks >= 32, `holes and zeros make zero chunks (got ${result.zeroChunks})`);

        const reopened = await Repository.open(target, { secret: encrypted ? PASSPHRASE : null });
        const out = file('restored.img');
        await restoreTo(reopened, result.pointId, out);
        assert.ok(sameFile(img, out), 'restored image differs from the original');
        const st = statSync(out);
        assert.equal(st.size, size);
        assert.ok(st.blocks * 512 <= size - 2 * MiB, `zero chunks are holes in the restored file (allocated ${st.blocks * 512} of ${size})`);
        const check = await verify(reopened, { readData: true });
        assert.deepEqual(check.problems, []);
      });
    }

    it('a point with two disks, a memory image and device state restores each of them', async () => {
      const repo = await init();
      const [vda, vdb, mem] = [file('vda.img'), file('vdb.img'), file('memory.img')];
      writeMixedImage(vda, 'vda');
      writeMixedImage(vdb, 'vdb');
      writeImage(mem, 6 * MiB, [{ offset: 2 * MiB, data: seededBytes('ram', MiB) }]);
      const state = Buffer.from(JSON.stringify({ vcpus: [{ rip: 4096 }], devices: ['serial', 'virtio-blk'] }));
      const r = await backup(repo, {
        vm: { name: 'vm1' },
        disks: [{ name: 'vda', path: vda }, { name: 'vdb', path: vdb }],
        memory: { path: mem, deviceState: state },
        consistency: 'paused',
      });
      assert.equal(r.manifest.memory?.size, 6 * MiB);
      await restore(repo, { pointId: r.pointId, disk: 'vdb', to: file('vdb.out') });
      await restore(repo, { pointId: r.pointId, memory: true, to: file('mem.out') });
      await assert.rejects(restore(repo, { pointId: r.pointId, to: file('x.out') }), /has 2 disks \(vda, vdb\); choose one with --disk NAME/);
      assert.ok(sameFile(vdb, file('vdb.out')));
      assert.ok(sameFile(mem, file('mem.out')));
      assert.deepEqual(await readDeviceState(repo, r.pointId), state);
      assert.deepEqual((await verify(repo, { readData: true })).problems, []);
    });

    it('stores identical chunks once across disks and points', async () => {
      const repo = await init();
      const a = file('a.img');
      const b = file('b.img');
      writeImage(a, 8 * MiB, [{ offset: 0, data: seededBytes('same', 8 * MiB) }]);
      writeImage(b, 8 * MiB, [{ offset: 0, data: seededBytes('same', 8 * MiB) }]);
      const first = await backup(repo, { vm: { name: 'vm1' }, disks: [{ name: 'vda', path: a }, { name: 'vdb', path: b }] });
      assert.equal(first.chunksNew, 128 + 1, '128 data chunks and one map page, stored once for both disks');
      assert.equal(first.chunksReused, 128);
      const second = await backup(repo, { vm: { name: 'vm2' }, disks: [{ name: 'sda', path: b }] });
      assert.equal(second.chunksNew, 0);
      assert.ok(second.bytesAdded < 4096, `a repeated point adds only its manifest (added ${second.bytesAdded})`);
      const stored = (await objectKeys(target, PACKS_PREFIX)).length;
      const out = file('out.img');
      await restoreTo(repo, second.pointId, out);
      assert.ok(sameFile(b, out));
      assert.ok(stored >= 8, 'the data spans several packs');
    });

    it('an incremental with a 1% change bitmap reads and uploads about 1%', async () => {
      const repo = await init();
      const img = file('disk.img');
      const size = 64 * MiB;
      writeImage(img, size, [{ offset: 0, data: seededBytes('base', size) }]);
      const cs = repo.chunkSize;
      const full = await backupImage(repo, img, { disks: [{ name: 'vda', path: img, bitmap: bitmapFor(size, [], cs, null, EPOCH_1) }] });
      assert.equal(full.images[0].mode, 'full');

      const chunks = size / cs;
      const changed = Array.from({ length: Math.round(chunks / 100) }, (_, i) => Math.floor(((i + 0.5) * chunks) / Math.round(chunks / 100)) * cs + 512);
      const fd = openSync(img, 'r+');
      changed.forEach((o, i) => writeSync(fd, seededBytes(`change ${i}`, 4096), 0, 4096, o));
      closeSync(fd);
      const incr = await backupImage(repo, img, { disks: [{ name: 'vda', path: img, bitmap: bitmapFor(size, changed, cs, EPOCH_1, EPOCH_2) }] });
      assert.equal(incr.images[0].mode, 'bitmap');
      assert.equal(incr.images[0].chunksRead, changed.length, 'only the chunks the bitmap names are read');
      assert.equal(incr.bytesRead, changed.length * cs);
      const share = incr.bytesAdded / full.bytesAdded;
      assert.ok(share > 0.005 && share < 0.02, `the incremental added ${(share * 100).toFixed(2)}% of the full backup's bytes`);
      const out = file('out.img');
      await restoreTo(repo, incr.pointId, out);
      assert.ok(sameFile(img, out));
    });

    it('many incrementals with 4 KiB change bitmaps and overlapping changes: only changed granules are read, every point restores bit-exact', async () => {
      const repo = await init();
      const cs = repo.chunkSize;
      const size = 4 * MiB + 20 * 1024 + 300; // the last chunk-grid cell and the last granule are short
      const disk = Buffer.concat([seededBytes('base', 2 * MiB), Buffer.alloc(MiB), seededBytes('tail', size - 3 * MiB)]);
      const img = file('disk.img');
      const points: { id: string; image: Buffer }[] = [];
      const rounds = 9;
      for (let round = 0; round <= rounds; round++) {
        const ranges: { offset: number; length: number }[] = [];
        const put = (offset: number, data: Buffer) => {
          data.copy(disk, offset);
          ranges.push({ offset, length: data.length });
        };
        if (round > 0) {
          const pick = seededBytes(`round ${round}`, 64);
          for (let i = 0; i < 6; i++) put(Math.floor((pick.readUInt32LE(i * 4) % (size / 4096 - 1))) * 4096, seededBytes(`r${round} block ${i}`, 4096));
          put(pick.readUInt32LE(24) % (size - 10_000), seededBytes(`r${round} unaligned`, 100 + (pick[28] << 5))); // crosses granules, maybe a cell
          put(5 * 4096 + round * 4096, seededBytes(`r${round} overlap`, 8192)); // overlaps the previous round's write here
          put(round * cs - 4096 > 0 ? round * cs - 4096 : 0, Buffer.alloc(8192)); // zeros across a cell boundary
          put(size - 300, seededBytes(`r${round} end`, 300));
        }
        writeImage(img, size, [{ offset: 0, data: disk }]);
        const bitmap = { ...changeBitmapFromRanges(size, 4096, ranges), baseEpoch: round ? EPOCH_ROUNDS(round - 1) : null, epoch: EPOCH_ROUNDS(round) };
        const r = await backupImage(repo, img, { disks: [{ name: 'vda', path: img, bitmap }] });
        assert.equal(r.images[0].mode, round ? 'bitmap' : 'full');
        if (round) assert.ok(r.bytesRead <= ranges.length * 2 * 4096 + 4 * cs, `round ${round} read ${r.bytesRead} bytes for ${ranges.length} small writes`);
        points.push({ id: r.pointId, image: Buffer.from(disk) });
      }
      const index = await repo.loadIndex();
      const last = await repo.readExtentMap((await repo.readManifest(points[rounds].id)).disks[0], index, 'test');
      for (let c = 0; c < last.cells; c++) assert.ok(last.cellFirst[c + 1] - last.cellFirst[c] <= MAX_EXTENTS_PER_CELL, `cell ${c} holds too many extents`);
      assert.ok(last.count > last.cells, 'the last point splices small chunks into its parents\' extents');
      const reopened = await Repository.open(target, { secret: PASSPHRASE });
      for (const p of points) {
        const out = file(`out-${p.id}.img`);
        await restoreTo(reopened, p.id, out);
        assert.ok(readFileSync(out).equals(p.image), `point ${p.id} restores bit-exact`);
      }
      assert.deepEqual((await verify(reopened, { readData: true })).problems, []);
    });

    it('without a trusted bitmap, reads every chunk but uploads only the chunks that changed', async () => {
      const repo = await init();
      const img = file('disk.img');
      const size = 16 * MiB + 100;
      writeImage(img, size, [{ offset: 0, data: seededBytes('base', size) }]);
      await backupImage(repo, img, { disks: [{ name: 'vda', path: img, bitmap: bitmapFor(size, [], repo.chunkSize, null, EPOCH_1) }] });
      writeImage(img, size, [{ offset: 0, data: seededBytes('base', size) }, { offset: 3 * MiB, data: Buffer.from('changed') }, { offset: size - 10, data: Buffer.from('end') }]);
      // The bitmap's base epoch is not the parent's: it cannot be trusted, so every chunk is hashed.
      const wrongBase = bitmapFor(size, [], repo.chunkSize, EPOCH_2, EPOCH_2);
      const incr = await backupImage(repo, img, { disks: [{ name: 'vda', path: img, bitmap: wrongBase }] });
      assert.equal(incr.images[0].mode, 'hash-compare');
      assert.match(incr.images[0].note ?? '', /not used/);
      assert.equal(incr.bytesRead, size);
      assert.equal(incr.chunksNew, 2 + 1, 'two changed chunks and the map page');
      const out = file('out.img');
      await restoreTo(repo, incr.pointId, out);
      assert.ok(sameFile(img, out));
    });

    it('a flipped byte in any stored object is found by verify', async () => {
      const repo = await init();
      const img = file('disk.img');
      writeMixedImage(img);
      await backupImage(repo, img);
      const keys = (await objectKeys(target)).filter((k) => !k.startsWith(LEASES_PREFIX) && k !== CONDEMNED_KEY);
      assert.ok(keys.some((k) => k.startsWith(PACKS_PREFIX)) && keys.some((k) => k.startsWith(POINTS_PREFIX)) && keys.includes(CONFIG_KEY));
      for (const key of keys) {
        const original = await target.get(key);
        await flipByte(target, key);
        let found: string;
        try {
          const r = await verify(await Repository.open(target, { secret: PASSPHRASE }), { readData: true });
          found = r.problems.filter((p) => p.severity === 'error').map((p) => p.message).join('; ');
        } catch (err) {
          assert.ok(err instanceof RepositoryError, `${key}: ${(err as Error).stack}`);
          found = (err as Error).message;
        }
        assert.ok(found.length > 0, `a flipped byte in ${key} went unnoticed`);
        await target.put(key, original);
      }
      const clean = await verify(await Repository.open(target, { secret: PASSPHRASE }), { readData: true });
      assert.deepEqual(clean.problems, []);
    });

    it('a flipped byte in a chunk makes restore and verify name the point, disk and chunk offset', async () => {
      const repo = await init();
      const img = file('disk.img');
      writeImage(img, 4 * MiB, [{ offset: 0, data: seededBytes('x', 4 * MiB) }]);
      const { pointId } = await backupImage(repo, img);
      const chunkAt = 3 * 65536;
      const pack = await packOfChunk(repo, pointId, 3);
      await flipByte(target, pack.key, pack.offset + 100);

      const out = file('out.img');
      await assert.rejects(restoreTo(repo, pointId, out), (err: Error) => {
        assert.ok(err instanceof CorruptDataError, err.message);
        assert.match(err.message, new RegExp(`point ${pointId} disk vda: chunk at offset ${chunkAt} is corrupt`));
        return true;
      });
      assert.ok(!existsSync(out), 'no output file is left behind');
      assert.deepEqual(readdirSync(dir).filter((n) => n.includes('lifeboat')), [], 'no temporary file is left behind');
      const r = await verify(repo, { readData: true });
      assert.equal(r.errors, 1);
      assert.match(r.problems[0].message, new RegExp(`point ${pointId} disk vda: chunk at offset ${chunkAt} is corrupt`));
      const structural = await verify(repo);
      assert.equal(structural.errors, 0, 'a flipped byte inside a blob needs --read-data to be seen');
    });

    it('a truncated pack gives a clear error in restore and verify', async () => {
      const repo = await init();
      const img = file('disk.img');
      writeImage(img, 4 * MiB, [{ offset: 0, data: seededBytes('x', 4 * MiB) }]);
      const { pointId } = await backupImage(repo, img);
      const packKey = (await packOfChunk(repo, pointId, 0)).key;
      const body = await target.get(packKey);
      await target.put(packKey, body.subarray(0, Math.floor(body.length / 3)));
      await assert.rejects(restoreTo(repo, pointId, file('out.img')), (err: Error) => {
        assert.ok(err instanceof TruncatedObjectError, err.message);
        assert.match(err.message, new RegExp(`^point ${pointId} disk vda: chunk at offset \\d+: pack [0-9a-f]{32} is truncated`));
        return true;
      });
      const r = await verify(repo);
      assert.ok(r.problems.some((p) => /is truncated: \d+ bytes, its index says \d+/.test(p.message)), JSON.stringify(r.problems));
    });

    it('a missing pack gives a clear error naming the point and chunk, and the next backup stores the lost chunks again', async () => {
      const repo = await init();
      const img = file('disk.img');
      writeImage(img, 4 * MiB, [{ offset: 0, data: seededBytes('x', 4 * MiB) }]);
      const { pointId } = await backupImage(repo, img);
      const packKey = (await packOfChunk(repo, pointId, 0)).key;
      await target.delete(packKey);
      await assert.rejects(restoreTo(repo, pointId, file('out.img')), (err: Error) => {
        assert.ok(err instanceof MissingObjectError, err.message);
        assert.match(err.message, new RegExp(`point ${pointId} disk vda: .*pack [0-9a-f]{32} is missing`));
        return true;
      });
      const r = await verify(repo);
      assert.ok(r.problems.some((p) => /pack [0-9a-f]{32} is missing/.test(p.message)));
      assert.ok(r.problems.some((p) => new RegExp(`point ${pointId} disk vda: chunk at offset \\d+`).test(p.message)));

      const again = await backupImage(repo, img);
      assert.ok(again.chunksNew > 0, 'chunks of the missing pack are uploaded again');
      await restoreTo(repo, again.pointId, file('again.img'));
      assert.ok(sameFile(img, file('again.img')));
    });

    it('refuses a wrong passphrase or key file, and a location that is not a repository, with one clear message', async () => {
      await init();
      await assert.rejects(Repository.open(target, { secret: { passphrase: 'wrong' } }), (err: Error) => {
        assert.ok(err instanceof WrongKeyError);
        assert.equal(err.message, `wrong passphrase or key file for repository at ${target.description}`);
        return true;
      });
      await assert.rejects(Repository.open(target, { secret: { keyFile: seededBytes('some key file', 32) } }), WrongKeyError);
      await assert.rejects(Repository.open(target, {}), /is encrypted; give --password-file/);
      const empty = await factory.make();
      try {
        await assert.rejects(Repository.open(empty, { secret: PASSPHRASE }), (err: Error) => err instanceof NotARepositoryError && /no Lifeboat repository at/.test(err.message));
      } finally {
        await empty.close();
        await factory.destroy?.(empty);
      }
    });

    it('a key file unlocks the repository, and a second key can be added', async () => {
      const keyFile = seededBytes('key file', 32);
      const repo = await init({ keyFile });
      await repo.addKey({ passphrase: 'second' });
      const img = file('disk.img');
      writeMixedImage(img);
      const { pointId } = await backupImage(repo, img);
      const viaPassphrase = await Repository.open(target, { secret: { passphrase: 'second' } });
      await restoreTo(viaPassphrase, pointId, file('out.img'));
      assert.ok(sameFile(img, file('out.img')));
      assert.equal((await viaPassphrase.listKeys()).length, 2);
    });

    it('after forget and gc every remaining point restores, and the space is reclaimed', async () => {
      const repo = await init();
      const img = file('disk.img');
      const points: { id: string; copy: string }[] = [];
      for (let i = 0; i < 4; i++) {
        writeImage(img, 6 * MiB, [{ offset: 0, data: seededBytes(`gen ${i}`, 6 * MiB) }]);
        const r = await backupImage(repo, img);
        const copy = file(`gen${i}.img`);
        writeImage(copy, 6 * MiB, [{ offset: 0, data: seededBytes(`gen ${i}`, 6 * MiB) }]);
        points.push({ id: r.pointId, copy });
      }
      const before = (await objectKeys(target, PACKS_PREFIX)).length;
      const f = await forget(repo, { policy: { keepLast: 2 } });
      assert.deepEqual(f.removed.sort(), [points[0].id, points[1].id].sort());
      const g = await gc(repo);
      assert.ok(g.packsDeleted > 0 && g.packsWaiting === 0, JSON.stringify(g));
      assert.ok((await objectKeys(target, PACKS_PREFIX)).length < before);
      assert.deepEqual((await repo.listPointIds()).sort(), [points[2].id, points[3].id].sort());
      for (const p of points.slice(2)) {
        const out = file(`out-${p.id}.img`);
        await restoreTo(repo, p.id, out);
        assert.ok(sameFile(p.copy, out));
      }
      assert.deepEqual((await verify(repo, { readData: true })).problems, []);
    });

    it('gc running during a backup loses nothing; a later gc reclaims what it had to leave (commit held until gc ends by a target wrapper)', async () => {
      const repo = await init();
      const img = file('disk.img');
      writeImage(img, 8 * MiB, [{ offset: 0, data: seededBytes('old', 8 * MiB) }]);
      const old = await backupImage(repo, img);
      // Most of the new image is the old one: the backup reuses chunks that gc finds unreferenced once
      // the old point is forgotten.
      writeImage(img, 24 * MiB, [{ offset: 0, data: seededBytes('old', 8 * MiB) }, { offset: 8 * MiB, data: seededBytes('new', 16 * MiB) }]);
      await forget(repo, { points: [old.pointId] });
      // gc starts when the backup first reports progress; the backup's commit (its manifest put) waits
      // until gc has finished, so gc runs entirely while the backup holds its lease.
      const concurrent: { gc?: ReturnType<typeof gc> } = {};
      const holdCommit: Target = {
        description: target.description,
        put: async (k, b, o) => {
          if (k.startsWith(POINTS_PREFIX)) await concurrent.gc?.catch(() => undefined);
          return target.put(k, b, o);
        },
        putParts: (k, parts, o) => target.putParts(k, parts, o),
        get: (k, r) => target.get(k, r),
        head: (k) => target.head(k),
        list: (p) => target.list(p),
        delete: (k) => target.delete(k),
        close: async () => undefined,
      };
      const writer = await Repository.open(holdCommit, { secret: PASSPHRASE });
      const result = await backupImage(writer, img, {
        onProgress: () => {
          concurrent.gc ??= gc(repo);
        },
      });
      assert.ok(concurrent.gc, 'gc started while the backup was running');
      const during = await concurrent.gc;
      assert.equal(during.packsDeleted, 0, 'packs a running backup may use are not deleted');
      assert.ok(during.packsWaiting > 0);
      const out = file('out.img');
      await restoreTo(repo, result.pointId, out);
      assert.ok(sameFile(img, out));
      assert.deepEqual((await verify(repo, { readData: true })).problems, []);
      const after = await gc(repo);
      assert.equal(after.packsWaiting, 0);
      await restoreTo(repo, result.pointId, file('again.img'));
      assert.ok(sameFile(img, file('again.img')));
      assert.deepEqual((await verify(repo, { readData: true })).problems, []);
    });

    it('gc keeps the chunks of a point committed just after it listed the index (interleaving forced by a target wrapper)', async () => {
      const repo = await init();
      const img = file('disk.img');
      writeImage(img, 4 * MiB, [{ offset: 0, data: seededBytes('shared', 4 * MiB) }]);
      const old = await backupImage(repo, img);
      await forget(repo, { points: [old.pointId] });
      // gc lists index objects and packs, then points: a backup that commits in between reuses the
      // forgotten point's chunks and keeps its map page in a pack gc has not seen.
      let committed: BackupResult | null = null;
      const wrapped: Target = {
        description: target.description,
        put: (k, b, o) => target.put(k, b, o),
        putParts: (k, parts, o) => target.putParts(k, parts, o),
        get: (k, r) => target.get(k, r),
        head: (k) => target.head(k),
        delete: (k) => target.delete(k),
        close: async () => undefined,
        list: (prefix) => {
          if (prefix !== POINTS_PREFIX || committed) return target.list(prefix);
          return (async function* () {
            committed = await backupImage(await Repository.open(target, { secret: PASSPHRASE }), img);
            yield* target.list(prefix);
          })();
        },
      };
      const g = await gc(await Repository.open(wrapped, { secret: PASSPHRASE }));
      assert.ok(committed, 'the backup ran inside gc');
      assert.equal(g.packsDeleted, 0, JSON.stringify(g));
      const out = file('out.img');
      await restoreTo(repo, (committed as BackupResult).pointId, out);
      assert.ok(sameFile(img, out));
      assert.deepEqual((await verify(repo, { readData: true })).problems, []);
    });

    it('a backup never reuses chunks of packs gc has condemned; those are deleted once the leases they wait for end', async () => {
      const repo = await init();
      const img = file('disk.img');
      writeImage(img, 4 * MiB, [{ offset: 0, data: seededBytes('data', 4 * MiB) }]);
      const first = await backupImage(repo, img);
      await forget(repo, { points: [first.pointId] });
      // Another host's restore holds a lease: gc condemns the packs but must keep them.
      const other = await Lease.acquire(target, 'restore', 60_000);
      const g1 = await gc(repo);
      assert.equal(g1.packsDeleted, 0);
      assert.ok(g1.packsWaiting > 0);
      const second = await backupImage(repo, img);
      assert.equal(second.chunksReused, 0, 'chunks in condemned packs are stored again');
      await other.release();
      const g2 = await gc(repo);
      assert.equal(g2.packsDeleted, g1.packsWaiting);
      await restoreTo(repo, second.pointId, file('out.img'));
      assert.ok(sameFile(img, file('out.img')));
      assert.deepEqual((await verify(repo, { readData: true })).problems, []);
    });

    it('gc refuses to run while another gc holds the gc lease', async () => {
      const repo = await init();
      const held = await Lease.acquireGc(target, 60_000);
      try {
        await assert.rejects(gc(repo), /another gc is running/);
      } finally {
        await held.release();
      }
    });

    it('lists every point with what the catalog needs, from the target alone', async () => {
      const repo = await init();
      const img = file('disk.img');
      writeMixedImage(img);
      const a = await backup(repo, { vm: { name: 'web', id: 'vm-7' }, disks: [{ name: 'vda', id: 'disk-1', path: img }], consistency: 'paused', labels: { policy: 'hourly' } });
      const b = await backup(repo, { vm: { name: 'web', id: 'vm-7' }, disks: [{ name: 'vda', id: 'disk-1', path: img }] });
      const fresh = await Repository.open(target, { secret: PASSPHRASE });
      const listed = await fresh.listPoints();
      assert.deepEqual(listed.map((p) => p.id), [a.pointId, b.pointId]);
      assert.deepEqual(listed[0].manifest, a.manifest);
      assert.deepEqual(listed[1].manifest, b.manifest);
      assert.equal(listed[1].manifest.parent, a.pointId);
      assert.equal(listed[0].manifest.consistency, 'paused');
      assert.deepEqual(await fresh.readManifest(b.pointId), b.manifest);
    });

    if (factory.lock) {
      it('on retention-locked objects, gc leaves them alone and reports them, and backups and restores still work', async () => {
        const repo = await init();
        const img = file('disk.img');
        writeImage(img, 4 * MiB, [{ offset: 0, data: seededBytes('one', 4 * MiB) }]);
        const first = await backupImage(repo, img);
        await forget(repo, { points: [first.pointId] });
        const packsBefore = await objectKeys(target, PACKS_PREFIX);
        for (const key of await objectKeys(target)) {
          if (key.startsWith(LEASES_PREFIX)) continue;
          await factory.lock!(target, key);
          locked.push(key);
        }
        const g = await gc(repo);
        assert.equal(g.packsDeleted, 0);
        assert.ok(g.locked.length >= packsBefore.length, `gc reports what it could not delete: ${JSON.stringify(g.locked)}`);
        assert.ok(g.locked.every((k) => k.startsWith(PACKS_PREFIX) || k.startsWith(INDEX_PREFIX)));
        assert.deepEqual(await objectKeys(target, PACKS_PREFIX), packsBefore);

        writeImage(img, 4 * MiB, [{ offset: 0, data: seededBytes('two', 4 * MiB) }]);
        const second = await backupImage(repo, img);
        await restoreTo(repo, second.pointId, file('two.img'));
        assert.ok(sameFile(img, file('two.img')));
        await factory.lock!(target, `points/${second.pointId}`);
        locked.push(`points/${second.pointId}`);
        const f = await forget(repo, { points: [second.pointId] });
        assert.deepEqual(f.locked, [second.pointId], 'a retention-locked point stays');
        assert.deepEqual(f.removed, []);
        assert.deepEqual((await verify(repo, { readData: true })).problems, []);
      });
    }
  });
}
