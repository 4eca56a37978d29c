// A blob as stored in a pack: optionally compressed (kept only when it pays), then sealed, with a CRC-32
// of the stored bytes. Decoding checks every layer and says which one failed.

import zlib from 'node:zlib';
import { compressSync as lz4CompressSync, uncompressSync as lz4UncompressSync } from 'lz4-napi';
import type { CompressionSetting } from './config.js';
import {
  BlobType,
  CHUNK_ID_BYTES,
  COMPRESSION_MIN_SAVING_DIVISOR,
  Compression,
  ENTROPY_SAMPLES,
  INCOMPRESSIBLE_BITS,
  LZ4_SIZE_PREFIX_BYTES,
  MIN_ENTROPY_SAMPLES,
} from './constants.js';
import { AuthenticationError, type Sealer } from './crypto.js';

export interface EncodedBlob {
  id: Buffer;
  type: BlobType;
  compression: Compression;
  rawLength: number;
  crc32: number;
  stored: Buffer;
}

export interface BlobDescriptor {
  id: Buffer;
  type: number;
  compression: number;
  rawLength: number;
  crc32: number;
}

export type BlobProblem = 'checksum' | 'authentication' | 'decompression' | 'length' | 'content hash';

/** The stored bytes of a blob do not decode to what the index says. */
export class BlobError extends Error {
  constructor(readonly problem: BlobProblem, message: string) {
    super(message);
    this.name = 'BlobError';
  }
}

export function blobAad(id: Uint8Array, type: number, compression: number): Buffer {
  const aad = Buffer.alloc(CHUNK_ID_BYTES + 2);
  aad.set(id, 0);
  aad[CHUNK_ID_BYTES] = type;
  aad[CHUNK_ID_BYTES + 1] = compression;
  return aad;
}

const histogram = new Uint32Array(256);
/** SAMPLE_LOG[n] = n * log2(n), for the entropy estimate. */
const SAMPLE_LOG = Float64Array.from({ length: ENTROPY_SAMPLES + 1 }, (_, n) => (n ? n * Math.log2(n) : 0));

/** The order-0 entropy of the n samples counted in `histogram`, in bits per byte, Miller-Madow corrected. */
function sampledEntropy(n: number): number {
  let sum = 0;
  for (let v = 0; v < 256; v++) sum += SAMPLE_LOG[histogram[v]];
  return Math.log2(n) - sum / n + 255 / (2 * n * Math.LN2);
}

/**
 * Every FIRST_PASS-th sample makes a first estimate; it decides alone when it lies further from
 * INCOMPRESSIBLE_BITS than the full estimate could plausibly be: above by FIRST_PASS_SIGMAS standard
 * deviations of the estimate for uniformly random bytes (sqrt(2 * 255) / (2 n ln 2) bits for n
 * samples), or below by CLEARLY_COMPRESSIBLE bits. Random data (8 bits) and compressible data (well
 * below) then cost a quarter of the samples; only data near the threshold takes them all.
 */
const FIRST_PASS = 4;
const FIRST_PASS_SIGMAS = 4;
const CLEARLY_COMPRESSIBLE = 0.25;

/**
 * Whether a chunk's bytes look random (encrypted or already compressed data): the order-0 entropy of
 * up to ENTROPY_SAMPLES evenly spaced bytes, corrected for the sample's size, is at least
 * INCOMPRESSIBLE_BITS per byte. Such data cannot lose the 1/8 that compression must save, so neither
 * brotli nor lz4 is tried (it costs more than the estimate, on every chunk of random data).
 */
export function looksIncompressible(plain: Uint8Array): boolean {
  if (plain.length < MIN_ENTROPY_SAMPLES) return false;
  const step = Math.max(1, Math.floor(plain.length / ENTROPY_SAMPLES));
  const n = Math.min(ENTROPY_SAMPLES, Math.ceil(plain.length / step));
  histogram.fill(0);
  const far = FIRST_PASS * step;
  for (let i = 0, end = n * step; i < end; i += far) histogram[plain[i]]++;
  const first = Math.ceil(n / FIRST_PASS);
  const estimate = sampledEntropy(first);
  if (estimate >= INCOMPRESSIBLE_BITS + (FIRST_PASS_SIGMAS * Math.sqrt(2 * 255)) / (2 * first * Math.LN2)) return true;
  if (estimate < INCOMPRESSIBLE_BITS - CLEARLY_COMPRESSIBLE) return false;
  // Near the threshold: the other samples too (the estimate from all n).
  for (let k = 0; k < n; k++) if (k % FIRST_PASS !== 0) histogram[plain[k * step]]++;
  return sampledEntropy(n) >= INCOMPRESSIBLE_BITS;
}

const KNOWN_COMPRESSION = new Set<number>([Compression.None, Compression.Brotli, Compression.Lz4]);

function asBuffer(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.length);
}

/**
 * Compresses a new blob with the writers' setting (a number: brotli at that quality; 'lz4'; null: none)
 * and keeps the result only when it saves at least 1/COMPRESSION_MIN_SAVING_DIVISOR of the bytes, the
 * LZ4 size prefix included.
 */
export function compress(plain: Uint8Array, setting: CompressionSetting): { data: Uint8Array; compression: Compression } {
  if (setting === null || plain.length < 64 || looksIncompressible(plain)) return { data: plain, compression: Compression.None };
  let packed: Buffer;
  let compression: Compression;
  if (setting === 'lz4') {
    // lz4-napi's compressSync is lz4_flex's compress_prepend_size: u32 LE length, then one LZ4 block.
    packed = lz4CompressSync(asBuffer(plain));
    compression = Compression.Lz4;
  } else {
    packed = zlib.brotliCompressSync(plain, {
      params: {
        [zlib.constants.BROTLI_PARAM_QUALITY]: setting,
        [zlib.constants.BROTLI_PARAM_SIZE_HINT]: plain.length,
        [zlib.constants.BROTLI_PARAM_LGWIN]: Math.max(16, Math.min(24, Math.ceil(Math.log2(plain.length)))),
      },
    });
    compression = Compression.Brotli;
  }
  if (packed.length <= plain.length - Math.floor(plain.length / COMPRESSION_MIN_SAVING_DIVISOR)) return { data: packed, compression };
  return { data: plain, compression: Compression.None };
}

/** Decompresses the data of a blob with compression `compression` that the index says is rawLength bytes. */
export function decompress(data: Buffer, compression: number, rawLength: number, bounded: boolean): Buffer {
  if (compression === Compression.None) return data;
  if (compression === Compression.Brotli) {
    try {
      // Sealed blobs are authenticated, so their size is trusted; a bound (which halves brotli's speed)
      // guards only unencrypted repositories against a forged blob that expands without limit.
      return bounded ? zlib.brotliDecompressSync(data, { maxOutputLength: rawLength + 1 }) : zlib.brotliDecompressSync(data);
    } catch {
      throw new BlobError('decompression', 'blob does not decompress (brotli)');
    }
  }
  if (compression === Compression.Lz4) {
    // The decoder allocates what the prefix says: check it against the index before (a forged or damaged
    // prefix must not make a reader allocate up to 4 GiB).
    if (data.length < LZ4_SIZE_PREFIX_BYTES) throw new BlobError('decompression', 'blob is shorter than its LZ4 size prefix');
    const declared = data.readUInt32LE(0);
    if (declared !== rawLength) throw new BlobError('length', `blob's LZ4 size prefix says ${declared} bytes, index says ${rawLength}`);
    try {
      return lz4UncompressSync(data);
    } catch {
      throw new BlobError('decompression', 'blob does not decompress (lz4)');
    }
  }
  throw unknownCompression(compression);
}

function unknownCompression(id: number): BlobError {
  return new BlobError('decompression', `unknown compression id ${id} (this Lifeboat reads 0 none, 1 brotli, 2 lz4; a newer Lifeboat may have written it)`);
}

/** id must already be the chunk id of plain. */
export function encodeBlob(plain: Uint8Array, id: Buffer, type: BlobType, sealer: Sealer, setting: CompressionSetting): EncodedBlob {
  const { data, compression } = compress(plain, setting);
  const stored = sealer.seal(data, blobAad(id, type, compression));
  // seal() returns a view of the input when unencrypted: copy so the caller may reuse its buffer.
  const owned = sealer.encrypted || data !== plain ? stored : Buffer.from(stored);
  return { id, type, compression, rawLength: plain.length, crc32: zlib.crc32(owned), stored: owned };
}

/**
 * checkId false skips the content hash for a sealed blob (restore does: the GCM tag, whose AAD holds
 * the id, already authenticates it; verify --read-data keeps it). An unencrypted blob is always hashed:
 * its CRC-32 guards only against accidents.
 */
export function decodeBlob(stored: Uint8Array, d: BlobDescriptor, sealer: Sealer, options: { checkId?: boolean } = {}): Buffer {
  if (!KNOWN_COMPRESSION.has(d.compression)) throw unknownCompression(d.compression);
  // A sealed blob is authenticated by its GCM tag, which covers every stored byte; the CRC is then
  // computed only to tell storage damage from tampering. An unencrypted blob is checked by its CRC first.
  if (!sealer.encrypted && zlib.crc32(stored) !== d.crc32) throw new BlobError('checksum', 'stored bytes do not match their CRC-32 (damaged in storage)');
  let data: Buffer;
  try {
    data = sealer.open(stored, blobAad(d.id, d.type, d.compression));
  } catch (err) {
    if (!(err instanceof AuthenticationError)) throw err;
    if (zlib.crc32(stored) !== d.crc32) throw new BlobError('checksum', 'stored bytes do not match their CRC-32 (damaged in storage)');
    throw new BlobError('authentication', 'blob failed authentication (damaged or tampered with)');
  }
  const plain = decompress(data, d.compression, d.rawLength, !sealer.encrypted);
  if (plain.length !== d.rawLength) throw new BlobError('length', `blob decodes to ${plain.length} bytes, index says ${d.rawLength}`);
  if ((options.checkId !== false || !sealer.encrypted) && !sealer.chunkId(plain).equals(d.id)) {
    throw new BlobError('content hash', 'blob content does not hash to its id');
  }
  return plain;
}
