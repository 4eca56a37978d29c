// Extent maps on a local repository: an incremental with a change bitmap finer than the chunk size stores
// only the changed granules and splices them into its parent's extents; a cell that would hold too many
// extents reads the shortest unchanged gaps along instead; gc keeps every blob a remaining point takes
// bytes from; a map that does not tile its image is refused as damaged everywhere it is read; a
// repository of the old format is refused, never misread.

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { backup, type BackupResult } from '../../replication/repository/backup.js';
import { changeBitmapFromRanges } from '../../replication/repository/change-bitmap.js';
import { BlobType, CONFIG_KEY, MAP_PAGE_CELLS, MAX_EXTENTS_PER_CELL, ZERO_CHUNK_ID } from '../../replication/repository/constants.js';
import { CorruptDataError, NotARepositoryError } from '../../replication/repository/errors.js';
import { forget } from '../../replication/repository/forget.js';
import { GcAbortedError, gc } from '../../replication/repository/gc.js';
import { MAP_EXTENT } from '../../replication/repository/layout.js';
import { newManifest } from '../../replication/repository/manifest.js';
import { PackBuilder } from '../../replication/repository/pack.js';
import { Repository } from '../../replication/repository/repository.js';
import { restore } from '../../replication/repository/restore.js';
import { verify } from '../../replication/repository/verify.js';
import type { KeySecret } from '../../replication/repository/keys.js';
import { createLocalTarget } from '../../replication/targets/local.js';
import type { Target } from '../../replication/target.js';
import { MiB, seededBytes, writeImage } from './images.js';

const PASSPHRASE: KeySecret = { passphrase: 'extent maps' };
const KiB = 1024;
const CS = 64 * KiB;
const epoch = (n: number) => n.toString(16).padStart(2, '0').repeat(16);

describe('extent maps: incrementals that store only the changed granules', function () {
  this.timeout(180_000);
  let dir: string;
  let target: Target;
  let repo: Repository;
  /** The VM's disk as the test changes it. */
  let disk: Buffer;
  let generation: number;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'lifeboat-extent-map-'));
    target = await createLocalTarget(join(dir, 'repo'));
    repo = await Repository.init(target, { secret: PASSPHRASE, packSize: MiB });
    generation = 0;
  });
  afterEach(async () => {
    await target.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const file = (name: string) => join(dir, name);

  /** The guest writes `data` at `offset`; returns the range for the change bitmap. */
  function write(offset: number, data: Buffer): { offset: number; length: number } {
    data.copy(disk, offset);
    return { offset, length: data.length };
  }

  /** Exports the whole disk with a 4 KiB change bitmap of `ranges` (trusted: it starts at the last point) and backs it up. */
  async function backupWith(ranges: { offset: number; length: number }[], granularity = 4 * KiB): Promise<BackupResult> {
    writeImage(file('disk.img'), disk.length, [{ offset: 0, data: disk }]);
    const bitmap = { ...changeBitmapFromRanges(disk.length, granularity, ranges), baseEpoch: generation ? epoch(generation) : null, epoch: epoch(generation + 1) };
    generation++;
    return backup(repo, { vm: { name: 'vm1' }, disks: [{ name: 'vda', path: file('disk.img'), bitmap }] });
  }

  async function restored(pointId: string): Promise<Buffer> {
    const out = file(`out-${pointId}.img`);
    await restore(repo, { pointId, to: out, force: true });
    return readFileSync(out);
  }

  async function mapOf(pointId: string) {
    const manifest = await repo.readManifest(pointId);
    return repo.readExtentMap(manifest.disks[0], await repo.loadIndex(), 'test');
  }

  it('a cell that would hold more than the bounded number of extents reads the shortest unchanged gap along, and stays within the bound', async () => {
    disk = seededBytes('base', 4 * CS);
    await backupWith([]);
    const one = await backupWith([write(8 * KiB, seededBytes('one', 4 * KiB))]);
    assert.equal(one.bytesRead, 4 * KiB, 'only the changed granule is read');
    assert.equal((await mapOf(one.pointId)).cellFirst[1], 3, 'cell 0: the old chunk before, the new granule, the old chunk after');
    // Splicing a granule at 40 KiB alone would leave 5 extents (old, one, old, two, old): the 20 KiB of
    // unchanged bytes after it (the shorter gap) are read along, and cell 0 holds 4.
    const two = await backupWith([write(40 * KiB, seededBytes('two', 4 * KiB))]);
    assert.equal(two.bytesRead, 24 * KiB, `a fifth extent would exceed ${MAX_EXTENTS_PER_CELL}: the granule and the unchanged bytes after it are read, not the whole cell`);
    const twoMap = await mapOf(two.pointId);
    assert.equal(twoMap.cellFirst[1], MAX_EXTENTS_PER_CELL, 'cell 0: old, one, old, then the new run to the end of the cell');
    assert.deepEqual([...twoMap.lengths.subarray(0, 4)], [8 * KiB, 4 * KiB, 28 * KiB, 24 * KiB]);
    // Granules changed all over cell 3: splicing them would take many extents; the shortest gaps are
    // read along until at most 4 remain.
    const scattered = [1, 3, 6, 9, 12, 14].map((g) => write(3 * CS + g * 4 * KiB, seededBytes(`scattered ${g}`, 4 * KiB)));
    const four = await backupWith(scattered);
    assert.ok(four.bytesRead < CS, `less than the whole cell is read (read ${four.bytesRead})`);
    const fourMap = await mapOf(four.pointId);
    assert.ok(fourMap.cellFirst[4] - fourMap.cellFirst[3] <= MAX_EXTENTS_PER_CELL, 'cell 3 stays within the bound');
    // Every granule of cell 2 changed: the cell is read whole and is one chunk again.
    const whole = await backupWith(Array.from({ length: 16 }, (_, g) => write(2 * CS + g * 4 * KiB, seededBytes(`all ${g}`, 4 * KiB))));
    assert.equal(whole.bytesRead, CS);
    assert.equal((await mapOf(whole.pointId)).cellFirst[3] - (await mapOf(whole.pointId)).cellFirst[2], 1, 'cell 2 is one chunk');
    const three = await backupWith([write(CS + 100, Buffer.from('a few bytes across a granule boundary'.repeat(200)))]);
    assert.ok(three.bytesRead <= 3 * 4 * KiB, `only the granules the write touched are read (read ${three.bytesRead})`);
    assert.ok((await restored(three.pointId)).equals(disk));
    assert.ok((await restored(one.pointId)).equals(Buffer.concat([seededBytes('base', 8 * KiB), seededBytes('one', 4 * KiB), seededBytes('base', 4 * CS).subarray(12 * KiB)])));
    assert.deepEqual((await verify(repo, { readData: true })).problems, []);
  });

  it('forget and gc keep every blob a remaining point takes bytes from, and reclaim the rest', async () => {
    disk = seededBytes('gc base', 8 * MiB);
    const first = await backupWith([]);
    // Small changes all over: the second point takes most of its bytes from slices of the first one's chunks.
    const scattered = Array.from({ length: 40 }, (_, i) => write(i * 200 * KiB + ((i * 12 * KiB) % CS), seededBytes(`scatter ${i}`, 4 * KiB)));
    const second = await backupWith(scattered);
    assert.ok(second.bytesRead <= 40 * 8 * KiB, `only the changed granules are read (read ${second.bytesRead})`);
    assert.ok(second.chunksNew <= 1 + Math.ceil((40 * 8 * KiB) / CS), `the 40 changed runs are stored a chunk's worth together (${second.chunksNew} new blobs)`);
    // The first 3 MiB are rewritten whole: those cells become new chunks, the old ones unreferenced.
    const third = await backupWith([write(0, seededBytes('rewritten', 3 * MiB)), write(5 * MiB + 4 * KiB, seededBytes('late', 4 * KiB))]);
    const expected = Buffer.from(disk);
    await forget(repo, { points: [first.pointId, second.pointId] });
    const g = await gc(repo);
    assert.ok(g.packsDeleted > 0, `packs holding only rewritten chunks are deleted: ${JSON.stringify(g)}`);
    assert.ok((await restored(third.pointId)).equals(expected));
    assert.deepEqual((await verify(repo, { readData: true })).problems, []);
  });

  describe('a map that does not describe its image exactly is refused as damaged', () => {
    /**
     * Commits a point whose disk has `size` bytes and the given extents (written as they are, unchecked),
     * with manifest counts that agree with them.
     */
    async function commitCrafted(size: number, extents: { id: Buffer | null; offset: number; length: number }[]): Promise<string> {
      const page = Buffer.alloc(extents.length * MAP_EXTENT.size);
      extents.forEach((e, i) => {
        (e.id ?? ZERO_CHUNK_ID).copy(page, i * MAP_EXTENT.size + MAP_EXTENT.id);
        page.writeUInt32LE(e.offset, i * MAP_EXTENT.size + MAP_EXTENT.offset);
        page.writeUInt32LE(e.length, i * MAP_EXTENT.size + MAP_EXTENT.length);
      });
      const pack = new PackBuilder();
      const blob = repo.encodeBlob(page, BlobType.MapPage);
      pack.add(blob);
      await repo.writePack(pack.finish(repo.sealer));
      const data = extents.filter((e) => e.id);
      const image = {
        size,
        chunkSize: CS,
        pageCells: MAP_PAGE_CELLS,
        pages: [blob.id.toString('hex')],
        extents: extents.length,
        dataExtents: data.length,
        zeroExtents: extents.length - data.length,
        dataBytes: data.reduce((a, e) => a + e.length, 0),
      };
      const manifest = newManifest({
        repository: repo.id,
        parent: null,
        vm: { name: 'crafted', id: 'crafted' },
        consistency: 'crash',
        disks: [{ name: 'vda', id: 'vda', ...image }],
        memory: null,
        stats: { bytesRead: 0, bytesAdded: 0, chunksNew: 0, chunksReused: 0, durationMs: 0 },
        labels: {},
      });
      return (await repo.writeManifest(manifest)).pointId;
    }

    let blob: Buffer;
    beforeEach(async () => {
      disk = seededBytes('crafted', 2 * CS);
      const base = await backupWith([]);
      blob = (await mapOf(base.pointId)).id(0);
    });

    const cases: { name: string; size: number; extents: () => { id: Buffer | null; offset: number; length: number }[]; message: RegExp; gcAborts: boolean }[] = [
      {
        name: 'extents that stop short of the image end',
        size: 2 * CS,
        extents: () => [{ id: blob, offset: 0, length: CS }, { id: null, offset: 0, length: CS - 4096 }],
        message: /extent map is damaged: map page 0 covers the image up to 126976, not up to 131072/,
        gcAborts: true,
      },
      {
        name: 'an extent that crosses a chunk-grid boundary',
        size: 2 * CS,
        extents: () => [{ id: blob, offset: 0, length: CS - 4096 }, { id: null, offset: 0, length: 8192 }, { id: null, offset: 0, length: CS - 4096 }],
        message: /extent map is damaged: map page 0: the extent at image offset 61440 \(8192 bytes\) crosses the chunk-grid boundary at 65536/,
        gcAborts: true,
      },
      {
        name: 'an extent that takes bytes past the end of its blob',
        size: 2 * CS,
        extents: () => [{ id: blob, offset: 0, length: CS }, { id: blob, offset: 4096, length: CS }],
        message: /extent map is damaged: the chunk at offset 65536 takes bytes 4096\.\.69632 of a blob of 65536 bytes/,
        gcAborts: false,
      },
    ];
    for (const c of cases) {
      it(`${c.name}: restore and verify name the point and the problem${c.gcAborts ? ', gc deletes nothing' : ''}`, async () => {
        const pointId = await commitCrafted(c.size, c.extents());
        await assert.rejects(restore(repo, { pointId, to: file('out.img') }), (err: Error) => {
          assert.ok(err instanceof CorruptDataError, err.message);
          assert.match(err.message, new RegExp(`^point ${pointId} disk vda: `));
          assert.match(err.message, c.message);
          return true;
        });
        const r = await verify(repo);
        assert.equal(r.errors, 1, JSON.stringify(r.problems));
        assert.match(r.problems[0].message, c.message);
        assert.match(r.problems[0].message, new RegExp(`point ${pointId} disk vda`));
        if (c.gcAborts) await assert.rejects(gc(repo), (err: Error) => err instanceof GcAbortedError && /gc deleted nothing: .*extent map is damaged/.test(err.message));
      });
    }
  });

  it('a repository of format version 1 (chunk maps before extents) is refused with one line naming the fix', async () => {
    const config = JSON.parse((await target.get(CONFIG_KEY)).toString('utf8'));
    writeFileSync(join(dir, 'repo', CONFIG_KEY), JSON.stringify({ ...config, version: 1 }));
    await assert.rejects(Repository.open(target, { secret: PASSPHRASE }), (err: Error) => {
      assert.ok(err instanceof NotARepositoryError, err.message);
      assert.match(err.message, /repository format version 1 is not supported by this Lifeboat \(it reads version 2\): .*older.*create a new repository \(lifeboat repo init\)/);
      return true;
    });
  });
});
