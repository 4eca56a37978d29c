// The repository's binary records: sizes, field offsets that tile each record exactly, and round trips.
// A second reader written from docs/repository-format.md relies on exactly these numbers.

import assert from 'node:assert/strict';
import {
  CHANGE_BITMAP_HEADER,
  INDEX_OBJECT_HEADER,
  INDEX_OBJECT_RECORD,
  PACK_INDEX_ENTRY,
  PACK_INDEX_HEADER,
  PACK_TRAILER,
  decodeIndexObject,
  decodePackIndex,
  decodePackTrailer,
  encodeIndexObject,
  encodePackIndex,
  encodePackTrailer,
  FormatError,
} from '../../replication/repository/layout.js';
import { changeBitmapFromRanges, decodeChangeBitmap, encodeChangeBitmap, markDirtyChunks } from '../../replication/repository/change-bitmap.js';
import { Sealer, deriveWorkingKeys } from '../../replication/repository/crypto.js';
import { decodeBlob, encodeBlob, BlobError } from '../../replication/repository/blob.js';
import { BlobType, Compression, FORMAT_VERSION, SEAL_OVERHEAD } from '../../replication/repository/constants.js';
import { PackBuilder, parsePackTail } from '../../replication/repository/pack.js';
import { crc32 } from 'node:zlib';
import { seededBytes, compressibleBytes } from './images.js';

/** Field name -> width in bytes, for checking that offsets tile the record with no gap or overlap. */
function assertTiles(layout: Record<string, number>, widths: Record<string, number>, size: number): void {
  const fields = Object.keys(widths).sort((a, b) => layout[a] - layout[b]);
  let at = 0;
  for (const f of fields) {
    assert.equal(layout[f], at, `field ${f} starts at ${layout[f]}, expected ${at}`);
    at += widths[f];
  }
  assert.equal(at, size, 'fields fill the record');
}

describe('repository binary layouts', () => {
  it('pack trailer: 16 bytes, index length, CRC, version, magic', () => {
    assertTiles(PACK_TRAILER, { indexLength: 4, indexCrc32: 4, version: 4, magic: 4 }, PACK_TRAILER.size);
    const t = encodePackTrailer({ indexLength: 1234, indexCrc32: 0xdeadbeef, version: FORMAT_VERSION });
    assert.equal(t.toString('latin1', 12), 'LBPK');
    assert.deepEqual(decodePackTrailer(t), { indexLength: 1234, indexCrc32: 0xdeadbeef, version: FORMAT_VERSION });
  });

  it('pack index: 48-byte header and 56-byte entries', () => {
    assertTiles(PACK_INDEX_HEADER, { magic: 4, version: 2, reserved0: 2, entryCount: 4, reserved1: 4, packId: 16, packSize: 8, createdMs: 8 }, PACK_INDEX_HEADER.size);
    assertTiles(
      PACK_INDEX_ENTRY,
      { id: 32, offset: 4, storedLength: 4, rawLength: 4, crc32: 4, type: 1, compression: 1, reserved0: 2, reserved1: 4 },
      PACK_INDEX_ENTRY.size,
    );
    const contents = {
      packId: seededBytes('pack', 16),
      packSize: 5_000_000_000,
      createdMs: 1_700_000_000_123,
      entries: [
        { id: seededBytes('a', 32), offset: 0, storedLength: 100, rawLength: 65536, crc32: 7, type: BlobType.Chunk, compression: Compression.Brotli },
        { id: seededBytes('b', 32), offset: 100, storedLength: 50, rawLength: 50, crc32: 9, type: BlobType.MapPage, compression: Compression.None },
      ],
    };
    const buf = encodePackIndex(contents, FORMAT_VERSION);
    assert.equal(buf.length, 48 + 2 * 56);
    assert.equal(buf.readUInt32LE(PACK_INDEX_HEADER.entryCount), 2);
    assert.equal(buf.readUInt32LE(PACK_INDEX_HEADER.size + 56 + PACK_INDEX_ENTRY.offset), 100);
    assert.deepEqual(decodePackIndex(buf, FORMAT_VERSION), contents);
    assert.throws(() => decodePackIndex(buf.subarray(0, buf.length - 1), FORMAT_VERSION), FormatError);
  });

  it('index object: 16-byte header, 24-byte record headers', () => {
    assertTiles(INDEX_OBJECT_HEADER, { magic: 4, version: 2, reserved0: 2, packCount: 4, reserved1: 4 }, INDEX_OBJECT_HEADER.size);
    assertTiles(INDEX_OBJECT_RECORD, { packId: 16, storedLength: 4, crc32: 4 }, INDEX_OBJECT_RECORD.size);
    const records = [
      { packId: seededBytes('p1', 16), crc32: 1, stored: Buffer.from('first') },
      { packId: seededBytes('p2', 16), crc32: 2, stored: Buffer.from('second one') },
    ];
    const buf = encodeIndexObject(records, FORMAT_VERSION);
    assert.equal(buf.length, 16 + 24 + 5 + 24 + 10);
    assert.deepEqual(
      decodeIndexObject(buf, FORMAT_VERSION).map((r) => ({ ...r, stored: Buffer.from(r.stored) })),
      records,
    );
  });

  it('change bitmap: 72-byte header, one bit per granule, least significant bit first', () => {
    assertTiles(CHANGE_BITMAP_HEADER, { magic: 8, version: 4, granularity: 4, diskSize: 8, granuleCount: 8, baseEpoch: 16, epoch: 16, flags: 4, reserved: 4 }, CHANGE_BITMAP_HEADER.size);
    const size = 10 * 65536 + 1000;
    const b = changeBitmapFromRanges(size, 65536, [{ offset: 65536 * 3 + 5, length: 1 }, { offset: size - 1, length: 1 }]);
    const buf = encodeChangeBitmap({ ...b, baseEpoch: 'ab'.repeat(16), epoch: 'cd'.repeat(16), changedOnly: true });
    assert.equal(buf.length, 72 + 2);
    assert.equal(buf.toString('latin1', 0, 8), 'LBCHGMAP');
    assert.equal(buf.readUInt32LE(64), 1, 'flag CHANGED_ONLY');
    assert.equal(buf[72], 0b00001000, 'granule 3 is bit 3 of byte 0');
    assert.equal(buf[73], 0b00000100, 'granule 10 (the partial last one) is bit 2 of byte 1');
    const back = decodeChangeBitmap(buf);
    assert.equal(back.baseEpoch, 'ab'.repeat(16));
    assert.equal(back.changedOnly, true);
    assert.equal(back.granularity, 65536);
    const dirty = new Uint8Array(Math.ceil(size / 262144));
    markDirtyChunks(back, 262144, dirty);
    assert.deepEqual([...dirty], [1, 0, 1], 'a coarser chunk containing a set granule is dirty');
    assert.throws(() => decodeChangeBitmap(buf.subarray(0, 73)), /truncated or damaged/);
  });

  it('a blob round-trips through compression and sealing, and any damage is named', () => {
    const keys = deriveWorkingKeys(seededBytes('master', 32), seededBytes('repo', 16));
    for (const sealer of [new Sealer(keys), new Sealer(null)]) {
      for (const [plain, compressible] of [[compressibleBytes('t', 65536), true], [seededBytes('r', 65536), false]] as const) {
        const id = sealer.chunkId(plain);
        const blob = encodeBlob(plain, id, BlobType.Chunk, sealer, 1);
        assert.equal(blob.compression, compressible ? Compression.Brotli : Compression.None, 'compression is kept only when it pays');
        assert.equal(blob.stored.length < plain.length, compressible);
        if (sealer.encrypted && !compressible) assert.equal(blob.stored.length, plain.length + SEAL_OVERHEAD);
        assert.deepEqual(decodeBlob(blob.stored, blob, sealer), plain);
        const damaged = Buffer.from(blob.stored);
        damaged[20] ^= 1;
        assert.throws(() => decodeBlob(damaged, blob, sealer), (e: Error) => e instanceof BlobError && e.problem === 'checksum');
        // With a CRC that matches the damage, the next layer still catches it.
        const next = sealer.encrypted ? ['authentication'] : compressible ? ['decompression', 'length', 'content hash'] : ['content hash'];
        assert.throws(
          () => decodeBlob(damaged, { ...blob, crc32: crc32(damaged) }, sealer),
          (e: Error) => e instanceof BlobError && next.includes(e.problem),
        );
      }
    }
  });

  it('a pack ends with its sealed index and trailer, identical to its index object', () => {
    const sealer = new Sealer(deriveWorkingKeys(seededBytes('m', 32), seededBytes('r', 16)));
    const builder = new PackBuilder();
    for (let i = 0; i < 3; i++) {
      const plain = seededBytes(`chunk ${i}`, 1000 + i);
      builder.add(encodeBlob(plain, sealer.chunkId(plain), BlobType.Chunk, sealer, null));
    }
    const pack = builder.finish(sealer);
    assert.equal(pack.body.length, pack.contents.packSize);
    const { contents, storedIndex } = parsePackTail(pack.body, pack.packId, sealer);
    assert.deepEqual(contents, pack.contents);
    const [record] = decodeIndexObject(pack.indexObject, FORMAT_VERSION);
    assert.ok(Buffer.from(record.stored).equals(storedIndex));
    assert.throws(() => parsePackTail(pack.body, seededBytes('other pack', 16), sealer), /failed authentication|names a different pack/);
  });
});

