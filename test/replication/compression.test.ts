// Blob compression as users meet it: LZ4 (the default), brotli and none all restore bit-exact; a
// repository created with brotli keeps backing up and restoring; damaged LZ4 data and unknown compression
// ids are refused with a clear message, never decoded into wrong bytes. The LZ4 layout is checked
// against an independent decoder written from the format document (docs/repository-format.md §6).

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { backup } from '../../replication/repository/backup.js';
import type { ChunkIndex } from '../../replication/repository/chunk-index.js';
import { BlobError, decodeBlob, encodeBlob } from '../../replication/repository/blob.js';
import { BlobType, Compression, DEFAULT_COMPRESSION, INDEX_PREFIX, RECORD_VERSION, indexKey, packKey } from '../../replication/repository/constants.js';
import { Sealer, deriveWorkingKeys } from '../../replication/repository/crypto.js';
import { CorruptDataError } from '../../replication/repository/errors.js';
import type { ExtentMap } from '../../replication/repository/extent-map.js';
import type { KeySecret } from '../../replication/repository/keys.js';
import { decodeIndexObject, decodePackIndex, encodeIndexObject, encodePackIndex } from '../../replication/repository/layout.js';
import { openPackIndexPlain } from '../../replication/repository/pack.js';
import { Repository } from '../../replication/repository/repository.js';
import { restore } from '../../replication/repository/restore.js';
import { verify } from '../../replication/repository/verify.js';
import type { Target } from '../../replication/target.js';
import { createLocalTarget } from '../../replication/targets/local.js';
import { MiB, compressibleBytes, rewriteRandomBlocks, sameFile, seededBytes, writeImage, writeMixedImage } from './images.js';

const PASSPHRASE: KeySecret = { passphrase: 'correct horse battery staple' };
/** The CLI compiled next to this test (dist/ in CI, a helper's outDir while developing). */
const MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

/**
 * LZ4 block decoder written from the LZ4 block format specification (lz4/doc/lz4_Block_format.md), as
 * the format document tells a second reader to: sequences of a token (high nibble: literal length, low
 * nibble: match length - 4, 15 meaning more length bytes follow, each added until one is not 255), the
 * literals, and, except after the last literals, a u16 LE match offset back into the output.
 */
function lz4BlockDecode(block: Buffer, outputLength: number): Buffer {
  const out = Buffer.alloc(outputLength);
  let ip = 0;
  let op = 0;
  const length = (n: number): number => {
    if (n !== 15) return n;
    for (;;) {
      const b = block[ip++];
      n += b;
      if (b !== 255) return n;
    }
  };
  for (;;) {
    const token = block[ip++];
    const literals = length(token >> 4);
    block.copy(out, op, ip, ip + literals);
    ip += literals;
    op += literals;
    if (ip === block.length) break; // the last sequence has literals only
    const offset = block.readUInt16LE(ip);
    ip += 2;
    if (offset === 0 || offset > op) throw new Error(`bad match offset ${offset} at output ${op}`);
    const match = length(token & 15) + 4;
    for (let i = 0; i < match; i++, op++) out[op] = out[op - offset]; // byte by byte: matches may overlap
  }
  if (op !== outputLength) throw new Error(`block decodes to ${op} bytes, expected ${outputLength}`);
  return out;
}

/** Rewrites pack `packId`'s index object with `change` applied to its entries (unencrypted repositories). */
async function rewriteIndexEntries(target: Target, packId: string, change: (e: ReturnType<typeof decodePackIndex>['entries'][number]) => void): Promise<void> {
  const [record] = decodeIndexObject(await target.get(indexKey(packId)), RECORD_VERSION);
  const contents = decodePackIndex(record.stored, RECORD_VERSION);
  contents.entries.forEach(change);
  const stored = encodePackIndex(contents, RECORD_VERSION);
  await target.put(indexKey(packId), encodeIndexObject([{ packId: record.packId, crc32: crc32(stored), stored }], RECORD_VERSION));
}

describe('blob compression', function () {
  this.timeout(120_000);
  let dir: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'lifeboat-compression-test-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  async function init(compression: string | undefined, secret: KeySecret | null, name = 'repo'): Promise<Repository> {
    return Repository.init(createLocalTarget(join(dir, name)), { secret, packSize: MiB, ...(compression ? { compression } : {}) });
  }

  /** Backs up `data` as disk 'vda' of VM 'vm' (an image of exactly those bytes): the point, the index and the disk's extent map. */
  async function backedUp(repo: Repository, data: Buffer): Promise<{ pointId: string; index: ChunkIndex; map: ExtentMap }> {
    const img = join(dir, 'disk.img');
    writeImage(img, data.length, [{ offset: 0, data }]);
    const { pointId } = await backup(repo, { vm: { name: 'vm' }, disks: [{ name: 'vda', path: img }] });
    const index = await repo.loadIndex();
    const map = await repo.readExtentMap((await repo.readManifest(pointId)).disks[0], index, 'test');
    return { pointId, index, map };
  }

  /** Compression ids of every chunk blob the index holds, counted. */
  async function compressionIds(repo: Repository): Promise<Map<number, number>> {
    const counts = new Map<number, number>();
    for await (const o of repo.target.list(INDEX_PREFIX)) {
      const [record] = decodeIndexObject(await repo.target.get(o.key), RECORD_VERSION);
      const plain = openPackIndexPlain(record.stored, record.crc32, record.packId, repo.sealer);
      for (const e of decodePackIndex(plain, RECORD_VERSION).entries) {
        if (e.type === BlobType.Chunk) counts.set(e.compression, (counts.get(e.compression) ?? 0) + 1);
      }
    }
    return counts;
  }

  it('new repositories use lz4 by default', async () => {
    assert.equal(DEFAULT_COMPRESSION, 'lz4');
    const repo = await init(undefined, PASSPHRASE);
    assert.equal(repo.config.compression, 'lz4');
  });

  for (const compression of ['lz4', 'brotli-0', 'none']) {
    for (const secret of [PASSPHRASE, null]) {
      it(`with ${compression} (${secret ? 'encrypted' : 'unencrypted'}), an image with holes, zeros, random and text data and an odd size restores bit-exact`, async () => {
        const repo = await init(compression, secret);
        const img = join(dir, 'disk.img');
        // Mixed data, plus text ending in a partial chunk (size not a multiple of the chunk size).
        const size = writeMixedImage(img);
        const { pointId } = await backup(repo, { vm: { name: 'vm' }, disks: [{ name: 'vda', path: img }] });
        const ids = await compressionIds(repo);
        const expected = compression === 'lz4' ? Compression.Lz4 : compression === 'none' ? null : Compression.Brotli;
        if (expected !== null) assert.ok((ids.get(expected) ?? 0) > 0, `text chunks are stored with compression id ${expected}`);
        assert.deepEqual([...ids.keys()].filter((id) => id !== Compression.None && id !== expected), [], 'no other compression is used');
        assert.ok((ids.get(Compression.None) ?? 0) > 0, 'random chunks are stored raw');

        const out = join(dir, 'out.img');
        await restore(await Repository.open(repo.target, { secret }), { pointId, to: out });
        assert.ok(sameFile(img, out), 'the restored image differs');
        assert.equal(readFileSync(out).length, size);
        assert.deepEqual((await verify(repo, { readData: true })).problems, []);
      });
    }
  }

  it('a repository created with brotli (as every repository before lz4 was) still backs up incrementals and restores every point', async () => {
    const repo = await init('brotli-0', PASSPHRASE);
    const img = join(dir, 'disk.img');
    const size = writeMixedImage(img);
    const first = await backup(repo, { vm: { name: 'vm' }, disks: [{ name: 'vda', path: img }] });
    const firstCopy = join(dir, 'first.img');
    writeFileSync(firstCopy, readFileSync(img));
    rewriteRandomBlocks(img, size, 40, 'change');
    const second = await backup(await Repository.open(repo.target, { secret: PASSPHRASE }), { vm: { name: 'vm' }, disks: [{ name: 'vda', path: img }] });
    assert.ok(second.chunksNew > 0);
    const reopened = await Repository.open(repo.target, { secret: PASSPHRASE });
    assert.equal(reopened.config.compression, 'brotli-0', 'the repository keeps the compression it was created with');
    assert.equal((await compressionIds(reopened)).get(Compression.Lz4), undefined, 'no lz4 blob is written into it');
    for (const [pointId, want] of [[first.pointId, firstCopy], [second.pointId, img]]) {
      const out = join(dir, `out-${pointId}.img`);
      await restore(reopened, { pointId, to: out });
      assert.ok(sameFile(want, out), `point ${pointId} restores bit-exact`);
    }
    assert.deepEqual((await verify(reopened, { readData: true })).problems, []);
  });

  it('stored lz4 data is a u32 LE length followed by one LZ4 block, as the format document says', async () => {
    const repo = await init('lz4', null);
    const text = compressibleBytes('layout', 3 * 65536 + 777);
    const { index, map } = await backedUp(repo, text);
    for (let cell = 0; cell < 4; cell++) {
      const loc = index.get(map.id(cell))!;
      assert.equal(loc.compression, Compression.Lz4);
      const stored = (await repo.target.get(packKey(loc.packId))).subarray(loc.offset, loc.offset + loc.storedLength);
      assert.equal(stored.readUInt32LE(0), loc.rawLength, 'the prefix is the uncompressed length');
      const plain = lz4BlockDecode(stored.subarray(4), loc.rawLength);
      assert.ok(plain.equals(text.subarray(cell * 65536, cell * 65536 + loc.rawLength)), `cell ${cell} decodes with an independent LZ4 decoder`);
    }
  });

  it('damaged lz4 data is refused (decompression or length), never decoded into other bytes', () => {
    const plain = compressibleBytes('damage', 65536);
    const sealer = new Sealer(null);
    const blob = encodeBlob(plain, sealer.chunkId(plain), BlobType.Chunk, sealer, 'lz4');
    assert.equal(blob.compression, Compression.Lz4);
    assert.ok(blob.stored.length <= plain.length - plain.length / 8, 'lz4 is kept only when it saves 1/8');
    assert.deepEqual(decodeBlob(blob.stored, blob, sealer), plain);
    const damages: [string, (b: Buffer) => Buffer][] = [
      ['a size prefix that disagrees with the index', (b) => (b.writeUInt32LE(plain.length * 4, 0), b)],
      ['a cut block', (b) => b.subarray(0, b.length - 40)],
      ['a match offset pointing before the start', (b) => (b.writeUInt16LE(0xffff, b.length - 200), b)],
      ['only the prefix', (b) => b.subarray(0, 4)],
      ['less than the prefix', (b) => b.subarray(0, 2)],
    ];
    for (const [what, damage] of damages) {
      const damaged = damage(Buffer.from(blob.stored));
      // A CRC that matches the damage, so that the LZ4 layer itself must catch it.
      assert.throws(
        () => decodeBlob(damaged, { ...blob, crc32: crc32(damaged) }, sealer),
        (e: Error) => e instanceof BlobError && ['decompression', 'length', 'content hash'].includes(e.problem),
        what,
      );
    }
    const encrypted = new Sealer(deriveWorkingKeys(seededBytes('master', 32), seededBytes('repo', 16)));
    const sealed = encodeBlob(plain, encrypted.chunkId(plain), BlobType.Chunk, encrypted, 'lz4');
    const flipped = Buffer.from(sealed.stored);
    flipped[40] ^= 1;
    assert.throws(() => decodeBlob(flipped, { ...sealed, crc32: crc32(flipped) }, encrypted), (e: Error) => e instanceof BlobError && e.problem === 'authentication');
  });

  for (const secret of [PASSPHRASE, null]) {
    it(`a flipped byte in an lz4 chunk makes restore and verify name the point, disk and chunk offset (${secret ? 'encrypted' : 'unencrypted'})`, async () => {
      const repo = await init('lz4', secret);
      const { pointId, index, map } = await backedUp(repo, compressibleBytes('flip', 4 * MiB));
      const loc = index.get(map.id(5))!;
      assert.equal(loc.compression, Compression.Lz4);
      const pack = await repo.target.get(packKey(loc.packId));
      pack[loc.offset + Math.floor(loc.storedLength / 2)] ^= 0x5a;
      await repo.target.put(packKey(loc.packId), pack);

      const out = join(dir, 'out.img');
      const named = new RegExp(`point ${pointId} disk vda: chunk at offset ${5 * 65536} is corrupt`);
      await assert.rejects(restore(repo, { pointId, to: out }), (err: Error) => err instanceof CorruptDataError && named.test(err.message));
      assert.ok(!existsSync(out), 'no output file is left behind');
      const r = await verify(repo, { readData: true });
      assert.equal(r.errors, 1);
      assert.match(r.problems[0].message, named);
    });
  }

  it('an lz4 blob whose CRC was forged to match its damage is still refused by restore, naming the chunk', async () => {
    const repo = await init('lz4', null);
    const { pointId, index, map } = await backedUp(repo, compressibleBytes('forged', 2 * MiB));
    const loc = index.get(map.id(2))!;
    const pack = await repo.target.get(packKey(loc.packId));
    pack.writeUInt32LE(loc.rawLength * 1000, loc.offset); // the size prefix: would make a reader allocate 64 MB
    await repo.target.put(packKey(loc.packId), pack);
    const newCrc = crc32(pack.subarray(loc.offset, loc.offset + loc.storedLength));
    await rewriteIndexEntries(repo.target, loc.packId, (e) => {
      if (e.id.equals(loc.id)) e.crc32 = newCrc;
    });
    const reader = await Repository.open(repo.target, { secret: null });
    await assert.rejects(restore(reader, { pointId, to: join(dir, 'out.img') }), (err: Error) => {
      assert.ok(err instanceof CorruptDataError, err.message);
      assert.match(err.message, new RegExp(`point ${pointId} disk vda: chunk at offset ${2 * 65536} is corrupt: blob's LZ4 size prefix says ${loc.rawLength * 1000} bytes, index says ${loc.rawLength}`));
      return true;
    });
  });

  it('an unknown compression id is refused with a message naming it, by the blob decoder and by restore', async () => {
    const plain = compressibleBytes('unknown', 65536);
    const sealer = new Sealer(null);
    const blob = encodeBlob(plain, sealer.chunkId(plain), BlobType.Chunk, sealer, 'lz4');
    assert.throws(
      () => decodeBlob(blob.stored, { ...blob, compression: 7 }, sealer),
      (e: Error) => e instanceof BlobError && /unknown compression id 7 \(this Lifeboat reads 0 none, 1 brotli, 2 lz4/.test(e.message),
    );

    const repo = await init('lz4', null);
    const { pointId, index, map } = await backedUp(repo, compressibleBytes('unknown', MiB));
    const loc = index.get(map.id(0))!;
    await rewriteIndexEntries(repo.target, loc.packId, (e) => {
      if (e.id.equals(loc.id)) e.compression = 9;
    });
    const reader = await Repository.open(repo.target, { secret: null });
    await assert.rejects(
      restore(reader, { pointId, to: join(dir, 'out.img') }),
      new RegExp(`point ${pointId} disk vda: chunk at offset 0 is corrupt: unknown compression id 9`),
    );
  });

  it('a config naming a compression this Lifeboat does not know is refused when the repository is opened', async () => {
    const repo = await init('lz4', null);
    const path = join(dir, 'repo', 'config');
    const config = JSON.parse(readFileSync(path, 'utf8'));
    writeFileSync(path, JSON.stringify({ ...config, compression: 'zstd-3' }));
    await assert.rejects(Repository.open(repo.target, { secret: null }), /unknown compression 'zstd-3' \(expected lz4, brotli-0 \.\.\. brotli-11 or none; .*newer Lifeboat\)/);
  });

  it('repo init takes --compression lz4, brotli-Q or none, and refuses anything else with one line', () => {
    const cli = (args: string[]) => spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', env: { ...process.env, LIFEBOAT_HOME: join(dir, 'home') } });
    for (const c of ['lz4', 'brotli-3', 'none']) {
      const r = cli(['repo', 'init', '--target', join(dir, `repo-${c}`), '--no-encryption', '--compression', c, '--json']);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(JSON.parse(r.stdout).compression, c);
    }
    const bad = cli(['repo', 'init', '--target', join(dir, 'repo-bad'), '--no-encryption', '--compression', 'lz5']);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr.trim(), /^lifeboat repo init: unknown compression 'lz5' \(expected lz4, brotli-0 \.\.\. brotli-11 or none/);
    assert.equal(bad.stderr.trim().split('\n').length, 1);
    assert.match(cli(['repo', 'init', '--help']).stdout, /--compression C\s+lz4 \(fast restores\)/);
  });
});
