// The seeded disk pattern of the Lifeboat guest (docs/guest.md, "Seeded pattern"): the 64-bit
// little-endian word at absolute disk byte offset 8*k is splitmix64(splitmix64(SEED) ^ k).
// The guest's C implementation and this one must agree bit for bit.

const MASK64 = (1n << 64n) - 1n;
const TWO32 = 4294967296;

/** Reference splitmix64 on BigInt (all arithmetic mod 2^64). */
export function splitmix64(x: bigint): bigint {
  let z = (x + 0x9e3779b97f4a7c15n) & MASK64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

/** The pattern word for word index k (byte offset 8*k). */
export function patternWord(seed: bigint, k: bigint | number): bigint {
  return splitmix64(splitmix64(seed & MASK64) ^ BigInt(k));
}

// Fast path: 64-bit values as [high, low] unsigned 32-bit halves, no BigInt per word.
let hi = 0;
let lo = 0;

/** (hi:lo) *= (bh:bl) mod 2^64, using 16-bit limbs for the exact low 64 bits. */
function mul(bh: number, bl: number): void {
  const a0 = lo & 0xffff;
  const a1 = lo >>> 16;
  const b0 = bl & 0xffff;
  const b1 = bl >>> 16;
  const mid = a0 * b1 + a1 * b0; // < 2^33
  const low = a0 * b0 + (mid % 65536) * 65536; // < 2^33
  const carry = Math.floor(low / TWO32);
  const high = a1 * b1 + Math.floor(mid / 65536) + carry + Math.imul(hi, bl) + Math.imul(lo, bh);
  hi = high >>> 0;
  lo = low >>> 0;
}

function xorShiftRight(n: number): void {
  const sl = ((lo >>> n) | (hi << (32 - n))) >>> 0;
  const sh = hi >>> n;
  hi = (hi ^ sh) >>> 0;
  lo = (lo ^ sl) >>> 0;
}

function splitmix64Halves(h: number, l: number): void {
  const sum = l + 0x7f4a7c15;
  lo = sum >>> 0;
  hi = (h + 0x9e3779b9 + (sum >= TWO32 ? 1 : 0)) >>> 0;
  xorShiftRight(30);
  mul(0xbf58476d, 0x1ce4e5b9);
  xorShiftRight(27);
  mul(0x94d049bb, 0x133111eb);
  xorShiftRight(31);
}

/** The pattern bytes for [offset, offset + length) of a disk (any offset and length). */
export function patternBuffer(seed: bigint, offset: number, length: number): Buffer {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new RangeError(`pattern range must be non-negative integers (got offset ${offset}, length ${length})`);
  }
  const base = splitmix64(seed & MASK64);
  const bh = Number(base >> 32n);
  const bl = Number(base & 0xffffffffn);
  const firstWord = Math.floor(offset / 8);
  const lastWord = Math.ceil((offset + length) / 8);
  const words = Buffer.allocUnsafe((lastWord - firstWord) * 8);
  const view = new DataView(words.buffer, words.byteOffset, words.byteLength);
  for (let k = firstWord, pos = 0; k < lastWord; k++, pos += 8) {
    const kh = Math.floor(k / TWO32);
    const kl = k >>> 0;
    splitmix64Halves((bh ^ kh) >>> 0, (bl ^ kl) >>> 0);
    view.setUint32(pos, lo, true);
    view.setUint32(pos + 4, hi, true);
  }
  const start = offset - firstWord * 8;
  return words.subarray(start, start + length);
}

/** Absolute offset of the first byte of data (read at offset) that differs from the pattern, or -1. */
export function firstPatternMismatch(data: Buffer, seed: bigint, offset: number): number {
  const want = patternBuffer(seed, offset, data.length);
  if (want.equals(data)) return -1;
  for (let i = 0; i < data.length; i++) if (data[i] !== want[i]) return offset + i;
  return -1;
}
