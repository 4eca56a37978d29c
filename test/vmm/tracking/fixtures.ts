// Real image files and deterministic write data for the change-tracking tests.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Deterministic bytes for (seed, length): xorshift32, so a write can be replayed from its log entry. */
export function seededBytes(seed: number, length: number): Buffer {
  const words = new Uint32Array(Math.ceil(length / 4));
  let x = (seed ^ 0x9e3779b9) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    words[i] = x;
  }
  return Buffer.from(words.buffer, 0, length);
}

export function tempDir(name: string): string {
  return mkdtempSync(join(tmpdir(), `lifeboat-${name}-`));
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** A disk image of `size` bytes filled with seeded data (so every write changes what it covers). */
export function makeImage(path: string, size: number, seed = 1): void {
  const fd = openSync(path, 'w');
  const chunk = 1024 * 1024;
  for (let pos = 0; pos < size; pos += chunk) writeSync(fd, seededBytes(seed + pos / chunk, Math.min(chunk, size - pos)), 0, Math.min(chunk, size - pos), pos);
  closeSync(fd);
}

/** Indices of the `granularity`-sized chunks whose bytes differ between two equally long byte arrays. */
export function differingChunks(before: Uint8Array, after: Uint8Array, granularity: number): number[] {
  if (before.length !== after.length) throw new Error('images differ in size');
  const out: number[] = [];
  const a = Buffer.from(before.buffer, before.byteOffset, before.length);
  const b = Buffer.from(after.buffer, after.byteOffset, after.length);
  for (let off = 0, i = 0; off < a.length; off += granularity, i++) {
    const end = Math.min(off + granularity, a.length);
    if (a.compare(b, off, end, off, end) !== 0) out.push(i);
  }
  return out;
}

/** Chunk indices covered by byte ranges. */
export function chunksOfRanges(ranges: readonly { offset: number; length: number }[], granularity: number): number[] {
  const out: number[] = [];
  for (const r of ranges) {
    for (let c = Math.floor(r.offset / granularity); c * granularity < r.offset + r.length; c++) out.push(c);
  }
  return out;
}

export function readImage(path: string): Buffer {
  return readFileSync(path);
}

/** One write as the test writer performed it. */
export interface WriteLogEntry {
  offset: number;
  length: number;
  seed: number;
  /** The active generation while the write was in flight: writes with generation <= P precede point P. */
  generation: number;
}

/** Applies logged writes to an image held in memory. */
export function replay(image: Buffer, log: readonly WriteLogEntry[]): void {
  for (const w of log) seededBytes(w.seed, w.length).copy(image, w.offset);
}
