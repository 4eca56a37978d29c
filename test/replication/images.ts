// Disk image files for the repository tests: holes, written zeros, random and compressible data, and a
// size that is not a multiple of any chunk size. Deterministic from a seed.

import { createCipheriv, createHash } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';

export const MiB = 1024 * 1024;

/** Deterministic pseudo-random bytes (AES-256-CTR keystream of a seed). */
export function seededBytes(seed: string, length: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

/** Text that compresses well but is not trivially repetitive. */
export function compressibleBytes(seed: string, length: number): Buffer {
  const words = ['disk', 'chunk', 'point', 'lifeboat', 'replica', 'failover', 'journal', 'ledger', 'guest', 'epoch'];
  const noise = seededBytes(seed, Math.ceil(length / 4));
  let out = '';
  for (let i = 0; out.length < length; i++) out += `${words[noise[i % noise.length] % words.length]} ${noise[(i * 7) % noise.length]}\n`;
  return Buffer.from(out.slice(0, length));
}

export interface ImageRegion {
  offset: number;
  data: Buffer;
}

/** Writes regions into a sparse file of `size` bytes (gaps stay holes). */
export function writeImage(path: string, size: number, regions: ImageRegion[]): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    for (const r of regions) writeSync(fd, r.data, 0, r.data.length, r.offset);
  } finally {
    closeSync(fd);
  }
}

/**
 * A mixed image: random data, explicitly written zeros, a hole, compressible text, a duplicated block,
 * more random data, and a final partial chunk. About 9 MiB.
 */
export function writeMixedImage(path: string, seed = 'mixed'): number {
  const size = 9 * MiB + 12345;
  const random = seededBytes(`${seed}/random`, 2 * MiB);
  writeImage(path, size, [
    { offset: 0, data: random.subarray(0, MiB) },
    { offset: MiB, data: Buffer.alloc(MiB) }, // zeros, written
    // 2..3 MiB: a hole
    { offset: 3 * MiB, data: compressibleBytes(`${seed}/text`, 2 * MiB) },
    { offset: 5 * MiB, data: random.subarray(0, 512 * 1024) }, // duplicate of the first half MiB
    { offset: 6 * MiB + 4096, data: random.subarray(MiB, 2 * MiB) }, // unaligned
    { offset: size - 5000, data: seededBytes(`${seed}/tail`, 5000) },
  ]);
  return size;
}

export function sameFile(a: string, b: string): boolean {
  return readFileSync(a).equals(readFileSync(b));
}

export function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Overwrites `count` distinct 4 KiB blocks chosen at (seeded) random with random data; returns their offsets. */
export function rewriteRandomBlocks(path: string, size: number, count: number, seed: string): number[] {
  const blocks = Math.floor(size / 4096);
  if (count > blocks) throw new Error(`cannot rewrite ${count} of ${blocks} blocks`);
  const chosen = new Set<number>();
  for (let round = 0; chosen.size < count; round++) {
    const picks = seededBytes(`${seed}/picks/${round}`, count * 4);
    for (let i = 0; i < count && chosen.size < count; i++) chosen.add(picks.readUInt32LE(i * 4) % blocks);
  }
  const offsets = [...chosen].sort((a, b) => a - b).map((b) => b * 4096);
  const data = seededBytes(`${seed}/data`, count * 4096);
  const fd = openSync(path, 'r+');
  try {
    offsets.forEach((o, i) => writeSync(fd, data, i * 4096, 4096, o));
  } finally {
    closeSync(fd);
  }
  return offsets;
}
