// Bit operations over a bitmap held in an Int32Array (usually a window on a SharedArrayBuffer, so that
// another thread may set bits concurrently: every write here is an Atomics operation). Bit i lives in
// word i >>> 5 at position i & 31, which is also the byte order of a little-endian byte bitmap
// (bit i = byte i >>> 3, bit i & 7), and of KVM's u64 dirty-log words read as pairs of u32.

/** Number of 32-bit words holding `bits` bits. */
export function wordsFor(bits: number): number {
  return Math.ceil(bits / 32);
}

/** Sets bits [first, last] (inclusive). */
export function setRange(words: Int32Array, first: number, last: number): void {
  if (last < first) return;
  const w0 = first >>> 5;
  const w1 = last >>> 5;
  const head = ~0 << (first & 31);
  const tail = ~0 >>> (31 - (last & 31));
  if (w0 === w1) {
    Atomics.or(words, w0, head & tail);
    return;
  }
  Atomics.or(words, w0, head);
  for (let w = w0 + 1; w < w1; w++) Atomics.store(words, w, -1);
  Atomics.or(words, w1, tail);
}

export function testBit(words: Int32Array, bit: number): boolean {
  return (Atomics.load(words, bit >>> 5) & (1 << (bit & 31))) !== 0;
}

export function setBit(words: Int32Array, bit: number): void {
  Atomics.or(words, bit >>> 5, 1 << (bit & 31));
}

/** Counts the set bits. */
export function popcount(words: Int32Array): number {
  let n = 0;
  for (let w = 0; w < words.length; w++) {
    let v = Atomics.load(words, w);
    v = v - ((v >>> 1) & 0x55555555);
    v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
    n += (Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24);
  }
  return n;
}

/** dst |= src, word by word (atomically per word, so concurrent setters of dst lose nothing). */
export function orInto(dst: Int32Array, src: Int32Array): void {
  for (let w = 0; w < src.length; w++) {
    const v = Atomics.load(src, w);
    if (v !== 0) Atomics.or(dst, w, v);
  }
}

export function clearAll(words: Int32Array): void {
  for (let w = 0; w < words.length; w++) Atomics.store(words, w, 0);
}

/** Runs of set bits, in order, as [firstBit, count], limited to bits < `limit`. */
export function* setRuns(words: Int32Array, limit: number): Generator<[first: number, count: number]> {
  let runStart = -1;
  const lastWord = Math.min(words.length, wordsFor(limit));
  for (let w = 0; w < lastWord; w++) {
    const v = Atomics.load(words, w);
    if (v === 0 && runStart < 0) continue;
    if (v === -1 && runStart >= 0) continue;
    for (let b = 0; b < 32; b++) {
      const bit = w * 32 + b;
      if (bit >= limit) break;
      const set = (v & (1 << b)) !== 0;
      if (set && runStart < 0) runStart = bit;
      else if (!set && runStart >= 0) {
        yield [runStart, bit - runStart];
        runStart = -1;
      }
    }
  }
  if (runStart >= 0) yield [runStart, Math.min(limit, lastWord * 32) - runStart];
}

/**
 * The bitmap at a coarser granularity: bit i of the result is set when any of bits [i * ratio,
 * (i + 1) * ratio) of `words` is. `ratio` is a power of two.
 */
export function coarsen(words: Int32Array, bits: number, ratio: number): { words: Int32Array; bits: number } {
  const coarseBits = Math.ceil(bits / ratio);
  const out = new Int32Array(wordsFor(coarseBits));
  for (const [first, count] of setRuns(words, bits)) setRange(out, Math.floor(first / ratio), Math.floor((first + count - 1) / ratio));
  return { words: out, bits: coarseBits };
}

/** Copies the bitmap out as little-endian bytes (bit i = byte i >>> 3, bit i & 7). */
export function toBytes(words: Int32Array, bits: number): Uint8Array {
  const out = new Uint8Array(Math.ceil(bits / 8));
  const view = new DataView(out.buffer);
  const full = Math.floor(out.length / 4);
  for (let w = 0; w < full; w++) view.setInt32(w * 4, Atomics.load(words, w), true);
  for (let i = full * 4; i < out.length; i++) out[i] = (Atomics.load(words, i >>> 2) >>> ((i & 3) * 8)) & 0xff;
  // Bits past `bits` in the last byte stay clear.
  if (bits % 8) out[out.length - 1]! &= (1 << (bits % 8)) - 1;
  return out;
}

/** ORs a little-endian byte bitmap into `words`. */
export function orBytesInto(words: Int32Array, bytes: Uint8Array, bits: number): void {
  for (let i = 0; i < bytes.length; i++) {
    let b = bytes[i]!;
    if (i === bytes.length - 1 && bits % 8) b &= (1 << (bits % 8)) - 1;
    if (b !== 0) Atomics.or(words, i >>> 2, b << ((i & 3) * 8));
  }
}
