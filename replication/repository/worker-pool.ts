// A small pool of chunk workers (one per core, chunk-worker.ts): backup and restore hand them batches so
// that reading, hashing, compression, AES-GCM and writing run in parallel while the main thread talks to
// the target and lays out packs. A pool may also run requests on the calling thread (a local lane),
// for jobs too small to repay starting another worker.

import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { chunkWork } from './chunk-worker.js';
import { CHUNK_ID_BYTES, GCM_NONCE_BYTES, SEAL_OVERHEAD, type BlobType } from './constants.js';
import type { CompressionSetting } from './config.js';
import type { WorkingKeys } from './crypto.js';

export interface WorkerData {
  role: 'chunk-worker';
  dataKey: Uint8Array | null;
  idKey: Uint8Array | null;
  /** What to compress new blobs with (config.ts: a brotli quality, 'lz4', or null). */
  quality: CompressionSetting;
}

export interface DecodeBlobRequest {
  offset: number;
  storedLength: number;
  rawLength: number;
  crc32: number;
  type: number;
  compression: number;
  id: Uint8Array;
}

export type WorkerRequest =
  /** The keys and compression for the requests that follow (a pool started before the repository was open). */
  | { task: number; op: 'configure'; config: WorkerData }
  /**
   * Read `runs` of the image (back to back they are the pieces, `lengths`), and cut the pieces into
   * chunks: a piece with `joinable` set joins the previous one's chunk while that stays within
   * `joinLimit` bytes (runs of changed granules, stored together), any other piece is a chunk alone.
   * All-zero pieces belong to no chunk.
   */
  | { task: number; op: 'read-hash'; fd: number; runs: { position: number; length: number }[]; lengths: number[]; joinable: Uint8Array | null; joinLimit: number }
  | { task: number; op: 'encode'; batch: number; chunks: number[]; ids: ArrayBuffer; type: BlobType }
  | { task: number; op: 'release'; batch: number }
  /** writes[k]: flat (image position, offset in blob k's plaintext, length) triples to write to fd. */
  | { task: number; op: 'decode'; data: ArrayBuffer; blobs: DecodeBlobRequest[]; fd?: number; writes?: number[][]; checkId?: boolean };

export type WorkerReply =
  | { task: number; op: 'configure' }
  | { task: number; op: 'read-hash'; ids: ArrayBuffer; chunkLengths: Uint32Array; pieceChunk: Int32Array; pieceOffset: Uint32Array }
  /**
   * Per blob its body (the sealed bytes between nonce and tag; unsealed: the stored bytes) and, when
   * sealed, in `ends`, its nonce and tag (SEAL_OVERHEAD bytes per blob): stored = nonce || body || tag.
   */
  | { task: number; op: 'encode'; bodies: ArrayBuffer[]; ends: ArrayBuffer | null; lengths: Uint32Array; crc32: Uint32Array; compression: Uint8Array }
  | { task: number; op: 'release' }
  | { task: number; op: 'decode'; errors: ({ problem: string; message: string } | null)[]; bytesWritten: number }
  | { task: number; op: 'error'; message: string };

type DistributiveOmit<T, K extends keyof T> = T extends unknown ? Omit<T, K> : never;
type Pending = { resolve: (r: WorkerReply) => void; reject: (e: Error) => void; worker: number };

/** A batch read and hashed by one worker, which holds its bytes until encode() or release(). */
export interface HashedBatch {
  worker: number;
  batch: number;
  /** 32 bytes per chunk. */
  ids: Buffer;
  chunkLengths: Uint32Array;
  /** Per piece: its chunk (-1: the piece is all zero), and where it starts in that chunk. */
  pieceChunk: Int32Array;
  pieceOffset: Uint32Array;
}

export interface EncodeResult {
  /** Per blob, the parts its stored form is, in order (stored = their concatenation). */
  parts: Buffer[][];
  lengths: Uint32Array;
  crc32: Uint32Array;
  compression: Uint8Array;
}

export interface DecodeResult {
  errors: ({ problem: string; message: string } | null)[];
  bytesWritten: number;
}

function workerConfig(keys: WorkingKeys | null, quality: CompressionSetting): WorkerData {
  return { role: 'chunk-worker', dataKey: keys ? new Uint8Array(keys.dataKey) : null, idKey: keys ? new Uint8Array(keys.idKey) : null, quality };
}

export function defaultWorkerCount(): number {
  return Math.max(1, Math.min(8, availableParallelism()));
}

/** A worker failed in a way that is not about the data (I/O error, bug). */
export class WorkerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WorkerError';
  }
}

export class ChunkWorkers {
  private readonly workers: Worker[] = [];
  private readonly outstanding: number[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextTask = 1;
  private failure: Error | null = null;

  private closed: Promise<void> | null = null;
  private config: WorkerData;
  /** The local lane (see addLocalLane): requests to lane workers.length run on this thread. */
  private local: ReturnType<typeof chunkWork> | null = null;
  /** The local lane's requests not yet run (the first is running or next). */
  private readonly localQueue: (() => void)[] = [];

  /**
   * Starts `count` workers. Without keys (undefined) they only load their code: configure() gives them
   * the repository's keys later, so that a command can start them while it opens the repository (a
   * worker takes ~100 ms to start, scrypt of a passphrase as long, and both run beside the main thread).
   */
  constructor(keys: WorkingKeys | null | undefined, quality: CompressionSetting, count = defaultWorkerCount()) {
    this.config = workerConfig(keys ?? null, quality);
    this.grow(count);
  }

  /** Starts more workers, up to `count` in all (a local lane not counted). */
  grow(count: number): void {
    const workerData = this.config;
    if (this.local && this.workers.length < count) throw new Error('internal: a pool with a local lane does not grow');
    while (this.workers.length < count) {
      const w = new Worker(new URL('./chunk-worker.js', import.meta.url), { workerData });
      w.on('message', (reply: WorkerReply) => this.settle(reply));
      w.on('error', (err) => this.fail(err));
      w.on('exit', (code) => {
        if (code !== 0) this.fail(new WorkerError(`chunk worker exited with status ${code}`));
      });
      this.workers.push(w);
      this.outstanding.push(0);
    }
  }

  /**
   * Makes the calling thread one more lane: its share of requests runs here, between other events.
   * For small jobs on few cores this beats starting another worker (~100 ms of CPU to load its code).
   */
  addLocalLane(): void {
    if (this.local) return;
    this.local = chunkWork(this.config);
    this.outstanding.push(0);
  }

  /** Sets the keys and compression for every later request (messages to a worker arrive in order). */
  configure(keys: WorkingKeys | null, quality: CompressionSetting): this {
    const config = workerConfig(keys, quality);
    this.config = config;
    for (let w = 0; w < this.size; w++) {
      this.submit(w, { op: 'configure', config }).reply.catch(() => undefined);
    }
    return this;
  }

  get size(): number {
    return this.workers.length + (this.local ? 1 : 0);
  }

  private fail(err: Error): void {
    this.failure = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  private settle(reply: WorkerReply): void {
    const p = this.pending.get(reply.task);
    if (!p) return;
    this.pending.delete(reply.task);
    this.outstanding[p.worker]--;
    if (reply.op === 'error') p.reject(new WorkerError(reply.message));
    else p.resolve(reply);
  }

  private leastBusy(): number {
    let w = 0;
    for (let i = 1; i < this.size; i++) if (this.outstanding[i] < this.outstanding[w]) w = i;
    return w;
  }

  private submit(worker: number, req: DistributiveOmit<WorkerRequest, 'task'>, transfer: ArrayBuffer[] = []): { task: number; reply: Promise<WorkerReply> } {
    if (this.failure) return { task: 0, reply: Promise.reject(this.failure) };
    const task = this.nextTask++;
    this.outstanding[worker]++;
    const reply = new Promise<WorkerReply>((resolve, reject) => {
      this.pending.set(task, { resolve, reject, worker });
      const message = { ...req, task } as WorkerRequest;
      const local = this.local;
      if (worker < this.workers.length || !local) {
        this.workers[worker].postMessage(message, transfer);
        return;
      }
      this.localQueue.push(() => {
        try {
          this.settle(local(message).reply);
        } catch (err) {
          this.settle({ task, op: 'error', message: err instanceof Error ? err.message : String(err) });
        }
      });
      if (this.localQueue.length === 1) setImmediate(this.runLocal);
    });
    return { task, reply };
  }

  /**
   * Runs the local lane's next request, one per turn of the event loop: between two (each takes
   * milliseconds), the loop delivers I/O completions and the workers' replies, so pack writes and the
   * other lanes are not held up behind a run of local requests.
   */
  private readonly runLocal = (): void => {
    const next = this.localQueue[0];
    next();
    this.localQueue.shift();
    if (this.localQueue.length) setImmediate(this.runLocal);
  };

  /**
   * Reads runs of an image file (fd), cuts the pieces they hold (lengths) into chunks (see the
   * 'read-hash' request) and returns the chunks' ids and where each piece lies.
   */
  async readAndHash(
    fd: number,
    runs: { position: number; length: number }[],
    lengths: number[],
    join: { joinable: Uint8Array; limit: number } | null = null,
  ): Promise<HashedBatch> {
    const worker = this.leastBusy();
    const { task, reply } = this.submit(worker, { op: 'read-hash', fd, runs, lengths, joinable: join?.joinable ?? null, joinLimit: join?.limit ?? 0 });
    const r = await reply;
    if (r.op !== 'read-hash') throw new Error('internal: unexpected worker reply');
    return { worker, batch: task, ids: Buffer.from(r.ids), chunkLengths: r.chunkLengths, pieceChunk: r.pieceChunk, pieceOffset: r.pieceOffset };
  }

  /** Compresses and seals chunks (numbers within the batch) of a held batch, and frees the batch. */
  async encode(batch: HashedBatch, chunks: number[], ids: Buffer, type: BlobType): Promise<EncodeResult> {
    if (ids.length !== chunks.length * CHUNK_ID_BYTES) throw new Error('internal: ids and chunks disagree');
    const idsAb = ids.buffer.slice(ids.byteOffset, ids.byteOffset + ids.length) as ArrayBuffer;
    const r = await this.submit(batch.worker, { op: 'encode', batch: batch.batch, chunks, ids: idsAb, type }, [idsAb]).reply;
    if (r.op !== 'encode') throw new Error('internal: unexpected worker reply');
    const ends = r.ends ? Buffer.from(r.ends) : null;
    const parts = r.bodies.map((body, k) => {
      if (!ends) return [Buffer.from(body)];
      const at = k * SEAL_OVERHEAD;
      return [ends.subarray(at, at + GCM_NONCE_BYTES), Buffer.from(body), ends.subarray(at + GCM_NONCE_BYTES, at + SEAL_OVERHEAD)];
    });
    return { parts, lengths: r.lengths, crc32: r.crc32, compression: r.compression };
  }

  async release(batch: HashedBatch): Promise<void> {
    await this.submit(batch.worker, { op: 'release', batch: batch.batch }).reply;
  }

  /**
   * Opens, decompresses and checks blobs lying in data (which is handed to the worker and must not be
   * used afterwards); with fd, writes the slices of each good blob that `writes` names (flat triples:
   * file position, offset in the blob, length). checkId false skips the content hash (see decodeBlob).
   */
  async decode(data: Buffer, blobs: DecodeBlobRequest[], output?: { fd: number; writes: number[][]; checkId?: boolean }): Promise<DecodeResult> {
    let ab: ArrayBuffer;
    if (data.byteOffset === 0 && data.length === data.buffer.byteLength && !(data.buffer instanceof SharedArrayBuffer)) {
      ab = data.buffer as ArrayBuffer;
    } else {
      ab = data.buffer.slice(data.byteOffset, data.byteOffset + data.length) as ArrayBuffer;
    }
    const r = await this.submit(this.leastBusy(), { op: 'decode', data: ab, blobs, ...(output ?? {}) }, [ab]).reply;
    if (r.op !== 'decode') throw new Error('internal: unexpected worker reply');
    return { errors: r.errors, bytesWritten: r.bytesWritten };
  }

  async close(): Promise<void> {
    this.closed ??= Promise.all(this.workers.map((w) => w.terminate())).then(() => undefined);
    await this.closed;
  }
}
