// The repository's binary records: sizes, field offsets that tile each record exactly, and round trips.
// A second reader written from docs/repository-format.md relies on exactly these numbers.

import assert from 'node:assert/strict';
import {
  CHANGE_BITMAP_HEADER,
  INDEX_OBJECT_HEADER,
  INDEX_OBJECT_RECORD,
  MAP_EXTENT,
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
  packIndexHeader,
} from '../../replication/repository/layout.js';
import { changeBitmapFromRanges, decodeChangeBitmap, dirtyChunks, encodeChangeBitmap, markDirtyChunks } from '../../replication/repository/change-bitmap.js';
import { Sealer, deriveWorkingKeys } from '../../replication/repository/crypto.js';
import { decodeBlob, encodeBlob, BlobError, looksIncompressible } from '../../replication/repository/blob.js';
import { BlobType, Compression, ENTROPY_SAMPLES, INCOMPRESSIBLE_BITS, RECORD_VERSION, SEAL_OVERHEAD } from '../../replication/repository/constants.js';
import { PackBuilder, packBody, parsePackTail } from '../../replication/repository/pack.js';
import { ChunkIndex } from '../../replication/repository/chunk-index.js';
import { ExtentMapBuilder, decodeExtentMap, encodeMapPages } from '../../replication/repository/extent-map.js';
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
    const t = encodePackTrailer({ indexLength: 1234, indexCrc32: 0xdeadbeef, version: RECORD_VERSION });
    assert.equal(t.toString('latin1', 12), 'LBPK');
    assert.deepEqual(decodePackTrailer(t), { indexLength: 1234, indexCrc32: 0xdeadbeef, version: RECORD_VERSION });
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
    const buf = encodePackIndex(contents, RECORD_VERSION);
    assert.equal(buf.length, 48 + 2 * 56);
    assert.equal(buf.readUInt32LE(PACK_INDEX_HEADER.entryCount), 2);
    assert.equal(buf.readUInt32LE(PACK_INDEX_HEADER.size + 56 + PACK_INDEX_ENTRY.offset), 100);
    assert.deepEqual(decodePackIndex(buf, RECORD_VERSION), contents);
    assert.throws(() => decodePackIndex(buf.subarray(0, buf.length - 1), RECORD_VERSION), FormatError);
  });

  it('index object: 16-byte header, 24-byte record headers', () => {
    assertTiles(INDEX_OBJECT_HEADER, { magic: 4, version: 2, reserved0: 2, packCount: 4, reserved1: 4 }, INDEX_OBJECT_HEADER.size);
    assertTiles(INDEX_OBJECT_RECORD, { packId: 16, storedLength: 4, crc32: 4 }, INDEX_OBJECT_RECORD.size);
    const records = [
      { packId: seededBytes('p1', 16), crc32: 1, stored: Buffer.from('first') },
      { packId: seededBytes('p2', 16), crc32: 2, stored: Buffer.from('second one') },
    ];
    const buf = encodeIndexObject(records, RECORD_VERSION);
    assert.equal(buf.length, 16 + 24 + 5 + 24 + 10);
    assert.deepEqual(
      decodeIndexObject(buf, RECORD_VERSION).map((r) => ({ ...r, stored: Buffer.from(r.stored) })),
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

  it('the dirty chunks of a bitmap: each chunk overlapping a set granule, once, in order, for granules finer and coarser than a chunk', () => {
    for (const [granularity, chunkSize] of [
      [4096, 65536],
      [65536, 16384],
      [512, 512],
    ]) {
      const size = 1000 * granularity - 100;
      const granules = Math.ceil(size / granularity);
      const set = Array.from({ length: 300 }, (_, i) => (i * 7919 + i * i) % granules);
      const b = changeBitmapFromRanges(size, granularity, set.map((g) => ({ offset: g * granularity, length: 1 })));
      // The bits at an odd byte offset, as in a bitmap read from a file after its header.
      const bits = Buffer.alloc(b.bits.length + 3).subarray(3);
      bits.set(b.bits);
      const want: number[] = [];
      for (let c = 0; c < Math.ceil(size / chunkSize); c++) {
        const first = Math.floor((c * chunkSize) / granularity);
        const last = Math.floor((Math.min(size, (c + 1) * chunkSize) - 1) / granularity);
        if (set.some((g) => g >= first && g <= last)) want.push(c);
      }
      assert.deepEqual([...dirtyChunks({ ...b, bits }, chunkSize)], want, `granules of ${granularity}, chunks of ${chunkSize}`);
    }
  });

  it('map extent: 40 bytes, blob id, offset in the blob, length; pages hold whole cells', () => {
    assertTiles(MAP_EXTENT, { id: 32, offset: 4, length: 4 }, MAP_EXTENT.size);
    const cs = 65536;
    const size = 3 * cs + 1000;
    const a = seededBytes('blob a', 32);
    const b = seededBytes('blob b', 32);
    const builder = new ExtentMapBuilder(size, cs);
    builder.add(a, 0, cs); // cell 0: one whole chunk
    builder.add(a, 0, 4096); // cell 1: a slice, zeros, a small chunk, then the rest of a
    builder.add(null, 0, 4096);
    builder.add(b, 0, 4096);
    builder.add(a, 12288, cs - 12288);
    builder.add(null, 0, cs); // cell 2: zeros
    builder.add(null, 0, 1000); // cell 3: the short last cell
    const map = builder.finish();
    assert.deepEqual([...map.cellFirst], [0, 1, 5, 6, 7]);
    assert.deepEqual(map.stats(), { extents: 7, dataExtents: 4, zeroExtents: 3, dataBytes: cs + 4096 + 4096 + cs - 12288 });
    const pages = encodeMapPages(map, 2);
    assert.deepEqual(pages.map((p) => p.length), [5 * 40, 2 * 40], 'page 0: cells 0-1, page 1: cells 2-3');
    assert.ok(pages[0].subarray(40, 72).equals(a));
    assert.equal(pages[0].readUInt32LE(40 * 4 + 32), 12288, 'offset of the fifth extent in its blob');
    assert.equal(pages[0].readUInt32LE(40 * 4 + 36), cs - 12288, 'its length');
    const back = decodeExtentMap(pages, { size, chunkSize: cs }, 2);
    assert.deepEqual([...back.positions], [...map.positions]);
    assert.ok(back.records.equals(map.records));
    // Two slices of one blob that continue each other merge; zeros after zeros merge.
    const merged = new ExtentMapBuilder(cs, cs);
    merged.add(a, 0, 4096);
    merged.add(a, 4096, 4096);
    merged.add(null, 0, 8192);
    merged.add(null, 0, cs - 16384);
    assert.equal(merged.finish().count, 2);
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

  it('random-looking data is not even tried with brotli; text and structured binary data are', () => {
    for (const size of [2048, 4096, 65536]) assert.equal(looksIncompressible(seededBytes(`random ${size}`, size)), true, `random ${size}`);
    assert.equal(looksIncompressible(compressibleBytes('text', 65536)), false);
    // Structured binary (floats, counters, masked words) has a fairly high byte entropy yet compresses.
    const binary = Buffer.alloc(65536);
    for (let o = 0; o + 8 <= binary.length; o += 8) {
      const k = (o >> 12) % 3;
      if (k === 0) binary.writeFloatLE(Math.sin(o / 977) * 1000 + (o % 13) / 13, o);
      else if (k === 1) binary.writeUInt32LE(((o >> 3) * 7 + (Math.imul(o, 0x9e3779b1) >>> 24)) >>> 0, o);
      else binary.writeUInt32LE(Math.imul(o, 0x9e3779b1) & 0x0f0f, o);
    }
    assert.equal(encodeBlob(binary, Buffer.alloc(32), BlobType.Chunk, new Sealer(null), 0).compression, Compression.Brotli, 'it does compress');
    assert.equal(looksIncompressible(binary), false);
    assert.equal(looksIncompressible(Buffer.concat([seededBytes('half', 32768), Buffer.alloc(32768)])), false, 'half zeros');
  });

  it('the entropy check decides as the estimate from all its samples would, for data of every entropy around the threshold', () => {
    /** The estimate from all samples (what looksIncompressible computed before it had a first pass). */
    const fullEstimate = (plain: Buffer): boolean => {
      const step = Math.max(1, Math.floor(plain.length / ENTROPY_SAMPLES));
      const counts = new Array<number>(256).fill(0);
      let n = 0;
      for (let i = 0; i < plain.length && n < ENTROPY_SAMPLES; i += step, n++) counts[plain[i]!]++;
      const sum = counts.reduce((a, c) => a + (c ? c * Math.log2(c) : 0), 0);
      return Math.log2(n) - sum / n + 255 / (2 * n * Math.LN2) >= INCOMPRESSIBLE_BITS;
    };
    let near = 0;
    for (let i = 0; i < 300; i++) {
      // Random bytes, a share of them from a smaller alphabet: entropies from ~7.4 to 8 bits per byte.
      const size = [2048, 4096, 24576, 65536][i % 4]!;
      const data = seededBytes(`entropy ${i}`, size);
      const alphabet = 64 + (i % 192);
      const share = (i * 7) % 100;
      for (let k = 0; k < size; k++) if ((k * 37) % 100 < share) data[k] = data[k]! % alphabet;
      const want = fullEstimate(data);
      assert.equal(looksIncompressible(data), want, `sample ${i} (${size} bytes, alphabet ${alphabet}, ${share}%)`);
      if (want) near++;
    }
    assert.ok(near > 30 && near < 270, `both decisions occur (${near} of 300 incompressible)`);
  });

  it('a pack ends with its sealed index and trailer, identical to its index object', () => {
    const sealer = new Sealer(deriveWorkingKeys(seededBytes('m', 32), seededBytes('r', 16)));
    const builder = new PackBuilder();
    for (let i = 0; i < 3; i++) {
      const plain = seededBytes(`chunk ${i}`, 1000 + i);
      builder.add(encodeBlob(plain, sealer.chunkId(plain), BlobType.Chunk, sealer, null));
    }
    const pack = builder.finish(sealer);
    const body = packBody(pack);
    assert.equal(body.length, pack.contents.packSize);
    assert.equal(pack.size, pack.contents.packSize);
    const { contents, storedIndex } = parsePackTail(body, pack.packId, sealer);
    assert.deepEqual(contents, pack.contents);
    const [record] = decodeIndexObject(pack.indexObject, RECORD_VERSION);
    assert.ok(Buffer.from(record.stored).equals(storedIndex));
    assert.throws(() => parsePackTail(body, seededBytes('other pack', 16), sealer), /failed authentication|names a different pack/);
  });

  it('a blob laid out from parts (nonce, body, tag) makes the same pack as the blob whole', () => {
    const sealer = new Sealer(deriveWorkingKeys(seededBytes('m', 32), seededBytes('r', 16)));
    const blobs = [0, 1, 2].map((i) => {
      const plain = seededBytes(`chunk ${i}`, 3000 + i);
      return encodeBlob(plain, sealer.chunkId(plain), BlobType.Chunk, sealer, null);
    });
    const whole = new PackBuilder();
    const parts = new PackBuilder();
    for (const b of blobs) {
      whole.add(b);
      const s = b.stored;
      parts.addParts(b, [s.subarray(0, 12), s.subarray(12, s.length - 16), s.subarray(s.length - 16)], s.length);
    }
    Object.assign(parts, { packId: whole.packId });
    const wholePack = whole.finish(sealer);
    const partsPack = parts.finish(sealer);
    assert.deepEqual(partsPack.contents.entries, wholePack.contents.entries);
    const a = packBody(wholePack);
    const b = packBody(partsPack);
    const blobBytes = a.length - parsePackTail(a, wholePack.packId, sealer).storedIndex.length - PACK_TRAILER.size;
    assert.ok(b.subarray(0, blobBytes).equals(a.subarray(0, blobBytes)), 'the blobs lie back to back, byte for byte');
  });

  it('a pack index added straight from its bytes indexes exactly what its decoded entries do', () => {
    const sealer = new Sealer(null);
    const builder = new PackBuilder();
    const ids: Buffer[] = [];
    for (let i = 0; i < 50; i++) {
      const plain = seededBytes(`chunk ${i}`, 100 + i);
      ids.push(sealer.chunkId(plain));
      builder.add(encodeBlob(plain, ids[i], i % 2 ? BlobType.Chunk : BlobType.MapPage, sealer, null));
    }
    const pack = builder.finish(sealer);
    const plain = encodePackIndex(pack.contents, RECORD_VERSION);
    const header = packIndexHeader(plain, RECORD_VERSION);
    assert.deepEqual(header, { packId: pack.packId, packSize: pack.contents.packSize, createdMs: pack.contents.createdMs, count: 50 });
    const fromBytes = new ChunkIndex();
    fromBytes.addPackIndex(plain, header);
    const fromEntries = new ChunkIndex();
    fromEntries.addPack(decodePackIndex(plain, RECORD_VERSION));
    for (const id of ids) assert.deepEqual(fromBytes.get(id), fromEntries.get(id));
    assert.equal(fromBytes.size, 50);
    // The header is checked as decodePackIndex checks the record.
    assert.throws(() => packIndexHeader(plain.subarray(0, plain.length - 1), RECORD_VERSION), /expected \d+ for 50 entries/);
    assert.throws(() => packIndexHeader(Buffer.concat([Buffer.from('XXXX'), plain.subarray(4)]), RECORD_VERSION), /bad magic/);
    assert.throws(() => packIndexHeader(plain, RECORD_VERSION + 1), /version 1 is not supported/);
  });
});

