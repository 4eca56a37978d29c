// Worker thread for the CPU-heavy part of backup, restore and verify. Chunk data stays on this thread:
// for a backup it reads a batch of chunks from the image file itself, hashes them, keeps the batch until
// the main thread says which chunks are new, then compresses and seals those; for a restore it opens,
// decompresses and checks blobs and writes them into the output file itself. Only ids, encoded blobs
// and problems cross threads. ChunkWorkers (worker-pool.ts) is the other side; it may also run the same
// work (chunkWork) on its own thread as a local lane.

import { randomFillSync } from 'node:crypto';
import { readSync, writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import zlib from 'node:zlib';
import { BlobError, blobAad, compress, decodeBlob } from './blob.js';
import type { CompressionSetting } from './config.js';
import { CHUNK_ID_BYTES, GCM_NONCE_BYTES, SEAL_OVERHEAD } from './constants.js';
import { Sealer } from './crypto.js';
import type { WorkerData, WorkerReply, WorkerRequest } from './worker-pool.js';

let zeros = Buffer.alloc(1024 * 1024);

function isZero(b: Buffer): boolean {
  if (zeros.length < b.length) zeros = Buffer.alloc(b.length);
  return b.equals(zeros.subarray(0, b.length));
}

/**
 * Whether buf[at, at + length) is all zero. Most pieces of an incremental are data whose first bytes
 * already differ: those are told in place, without a view per piece; the rest are compared whole.
 */
function isZeroAt(buf: Buffer, at: number, length: number): boolean {
  for (let i = at, end = Math.min(at + 64, at + length); i < end; i++) if (buf[i] !== 0) return false;
  return length <= 64 || isZero(buf.subarray(at, at + length));
}

/** `data` as a Buffer that owns its whole ArrayBuffer (so that it can be transferred), copied if need be. */
function ownBuffer(data: Uint8Array, mustCopy = false): Buffer {
  if (!mustCopy && data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer) {
    return Buffer.from(data.buffer, 0, data.byteLength);
  }
  const copy = Buffer.allocUnsafeSlow(data.byteLength);
  copy.set(data);
  return copy;
}

function readFully(fd: number, buf: Buffer, at: number, length: number, position: number): void {
  let got = 0;
  while (got < length) {
    const n = readSync(fd, buf, at + got, length - got, position + got);
    if (n === 0) throw new Error('the image became shorter while it was being read');
    got += n;
  }
}

function writeFully(fd: number, buf: Buffer, position: number): void {
  let done = 0;
  while (done < buf.length) done += writeSync(fd, buf, done, buf.length - done, position + done);
}

/**
 * The work of one chunk worker, with its own keys and held batches: what a worker thread runs, and what
 * a pool runs on the calling thread as a local lane (worker-pool.ts).
 */
export function chunkWork(initial: WorkerData): (req: WorkerRequest) => { reply: WorkerReply; transfer: ArrayBuffer[] } {
  let sealer: Sealer;
  let quality: CompressionSetting;

  /** Keys and compression: from workerData, or from a 'configure' request when the pool started first. */
  const configure = (config: WorkerData): void => {
    sealer = new Sealer(
      config.dataKey && config.idKey
        ? { dataKey: Buffer.from(config.dataKey), idKey: Buffer.from(config.idKey), configKey: Buffer.alloc(0) }
        : null,
    );
    quality = config.quality;
  };
  configure(initial);

  /** Batches read and hashed, waiting for the main thread to ask for their new chunks. */
  const held = new Map<number, { buf: Buffer; chunks: { offset: number; length: number }[][] }>();
  const spare: Buffer[] = [];

  const takeBuffer = (size: number): Buffer => {
    const i = spare.findIndex((b) => b.length >= size);
    if (i >= 0) return spare.splice(i, 1)[0];
    return Buffer.allocUnsafeSlow(size);
  };

  const giveBuffer = (b: Buffer): void => {
    if (spare.length < 4) spare.push(b);
  };

  return (req: WorkerRequest): { reply: WorkerReply; transfer: ArrayBuffer[] } => {
    switch (req.op) {
      case 'configure': {
        configure(req.config);
        return { reply: { task: req.task, op: 'configure' }, transfer: [] };
      }
      case 'read-hash': {
        const total = req.lengths.reduce((a, b) => a + b, 0);
        const buf = takeBuffer(total);
        let pos = 0;
        for (const run of req.runs) {
          readFully(req.fd, buf, pos, run.length, run.position);
          pos += run.length;
        }
        // Pieces -> chunks: each chunk is a list of segments of buf (one, unless joinable pieces joined).
        const chunks: { offset: number; length: number }[][] = [];
        const chunkLengths: number[] = [];
        const pieceChunk = new Int32Array(req.lengths.length);
        const pieceOffset = new Uint32Array(req.lengths.length);
        let open = -1; // the chunk joinable pieces may still join
        pos = 0;
        req.lengths.forEach((len, i) => {
          const at = pos;
          pos += len;
          if (isZeroAt(buf, at, len)) {
            pieceChunk[i] = -1;
            return;
          }
          const joinable = req.joinable?.[i] === 1;
          if (joinable && open >= 0 && chunkLengths[open] + len <= req.joinLimit) {
            pieceChunk[i] = open;
            pieceOffset[i] = chunkLengths[open];
            // Pieces lie back to back in buf unless an all-zero piece came between: one segment, no copy.
            const segments = chunks[open];
            const last = segments[segments.length - 1];
            if (last.offset + last.length === at) last.length += len;
            else segments.push({ offset: at, length: len });
            chunkLengths[open] += len;
            return;
          }
          pieceChunk[i] = chunks.length;
          chunks.push([{ offset: at, length: len }]);
          chunkLengths.push(len);
          open = joinable ? chunks.length - 1 : -1;
        });
        const ids = Buffer.alloc(chunks.length * CHUNK_ID_BYTES);
        chunks.forEach((segments, c) => sealer.chunkIdOf(segments.map((s) => buf.subarray(s.offset, s.offset + s.length))).copy(ids, c * CHUNK_ID_BYTES));
        held.set(req.task, { buf, chunks });
        const idsAb = ids.buffer.slice(ids.byteOffset, ids.byteOffset + ids.length) as ArrayBuffer;
        const lengths = Uint32Array.from(chunkLengths);
        return {
          reply: { task: req.task, op: 'read-hash', ids: idsAb, chunkLengths: lengths, pieceChunk, pieceOffset },
          transfer: [idsAb, lengths.buffer as ArrayBuffer, pieceChunk.buffer as ArrayBuffer, pieceOffset.buffer as ArrayBuffer],
        };
      }
      case 'encode': {
        const batch = held.get(req.batch);
        if (!batch) throw new Error(`internal: batch ${req.batch} is not held by this worker`);
        held.delete(req.batch);
        // Compress each chunk, then seal them all straight into the one buffer that goes back.
        const packed = req.chunks.map((c) => {
          const segments = batch.chunks[c];
          const plain =
            segments.length === 1
              ? batch.buf.subarray(segments[0].offset, segments[0].offset + segments[0].length)
              : Buffer.concat(segments.map((s) => batch.buf.subarray(s.offset, s.offset + s.length)));
          return compress(plain, quality);
        });
        // Each blob goes back as its body (the AES-GCM output, a buffer of its own: handed over, not
        // copied) and, when sealed, its nonce and tag (all nonces drawn at once, in one small buffer).
        const lengths = new Uint32Array(packed.length);
        const crc32 = new Uint32Array(packed.length);
        const compression = new Uint8Array(packed.length);
        const bodies: ArrayBuffer[] = [];
        const ends = sealer.encrypted ? randomFillSync(Buffer.allocUnsafeSlow(packed.length * SEAL_OVERHEAD)) : null;
        const ids = new Uint8Array(req.ids);
        packed.forEach((b, k) => {
          let body: Buffer;
          if (ends) {
            const aad = blobAad(ids.subarray(k * CHUNK_ID_BYTES, (k + 1) * CHUNK_ID_BYTES), req.type, b.compression);
            const nonce = ends.subarray(k * SEAL_OVERHEAD, k * SEAL_OVERHEAD + GCM_NONCE_BYTES);
            const sealed = sealer.sealParts(b.data, aad, nonce);
            sealed.tag.copy(ends, k * SEAL_OVERHEAD + GCM_NONCE_BYTES);
            body = ownBuffer(sealed.body);
            crc32[k] = zlib.crc32(sealed.tag, zlib.crc32(body, zlib.crc32(nonce)));
          } else {
            // Unsealed, the data may be a view of the batch's buffer, which is reused: copied.
            body = ownBuffer(b.data, b.data.buffer === batch.buf.buffer);
            crc32[k] = zlib.crc32(body);
          }
          lengths[k] = body.length + (ends ? SEAL_OVERHEAD : 0);
          compression[k] = b.compression;
          bodies.push(body.buffer as ArrayBuffer);
        });
        const small = ends ? (ends.buffer as ArrayBuffer) : null;
        giveBuffer(batch.buf);
        return {
          reply: { task: req.task, op: 'encode', bodies, ends: small, lengths, crc32, compression },
          transfer: small ? [...bodies, small] : bodies,
        };
      }
      case 'release': {
        const batch = held.get(req.batch);
        held.delete(req.batch);
        if (batch) giveBuffer(batch.buf);
        return { reply: { task: req.task, op: 'release' }, transfer: [] };
      }
      case 'decode': {
        const src = Buffer.from(req.data);
        const errors: ({ problem: string; message: string } | null)[] = [];
        let bytesWritten = 0;
        req.blobs.forEach((b, k) => {
          try {
            const plain = decodeBlob(src.subarray(b.offset, b.offset + b.storedLength), { ...b, id: Buffer.from(b.id) }, sealer, { checkId: req.checkId ?? true });
            const writes = req.writes?.[k] ?? [];
            for (let w = 0; w < writes.length; w += 3) {
              const [position, offset, length] = [writes[w], writes[w + 1], writes[w + 2]];
              writeFully(req.fd!, offset === 0 && length === plain.length ? plain : plain.subarray(offset, offset + length), position);
              bytesWritten += length;
            }
            errors.push(null);
          } catch (err) {
            if (!(err instanceof BlobError)) throw err;
            errors.push({ problem: err.problem, message: err.message });
          }
        });
        return { reply: { task: req.task, op: 'decode', errors, bytesWritten }, transfer: [] };
      }
    }
  };
}

const data = workerData as WorkerData | null;
if (parentPort && data?.role === 'chunk-worker') {
  const port = parentPort;
  const handle = chunkWork(data);
  port.on('message', (req: WorkerRequest) => {
    try {
      const { reply, transfer } = handle(req);
      port.postMessage(reply, transfer);
    } catch (err) {
      port.postMessage({ task: req.task, op: 'error', message: err instanceof Error ? err.message : String(err) });
    }
  });
}
