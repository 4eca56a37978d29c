// Test data and image inspection helpers for the virtio suites.
import fs from 'node:fs';

/** Deterministic bytes for (seed, length): xorshift32, so every test run writes the same data. */
export function seededBytes(seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
    if (i + 1 < length) out[i + 1] = (x >>> 8) & 0xff;
    if (i + 2 < length) out[i + 2] = (x >>> 16) & 0xff;
    if (i + 3 < length) out[i + 3] = x >>> 24;
  }
  return out;
}

export function readImage(path: string, offset: number, length: number): Uint8Array {
  const fd = fs.openSync(path, 'r');
  try {
    const buf = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = fs.readSync(fd, buf, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

export function writeImage(path: string, offset: number, data: Uint8Array): void {
  const fd = fs.openSync(path, 'r+');
  try {
    fs.writeSync(fd, data, 0, data.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

/** Bytes the filesystem actually allocated for the image (st_blocks * 512). */
export function allocatedBytes(path: string): number {
  return fs.statSync(path).blocks * 512;
}

export function isZero(data: Uint8Array): boolean {
  return data.every((b) => b === 0);
}
