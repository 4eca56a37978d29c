// The seeded pattern is the contract between the guest and every host-side test.
import assert from 'node:assert/strict';
import { firstPatternMismatch, patternBuffer, patternWord, splitmix64 } from '../helpers/pattern.js';

describe('seeded disk pattern (test/helpers/pattern.ts)', () => {
  it('splitmix64 matches the published SplitMix64 output for state 0', () => {
    assert.equal(splitmix64(0n), 0xe220a8397b1dcdafn);
    assert.equal(splitmix64(0xffffffffffffffffn) < 1n << 64n, true);
  });

  it('patternBuffer equals the BigInt definition word by word, at any offset and length', () => {
    for (const seed of [0n, 1n, 42n, 0xfeedbeefn, 0xffffffffffffffffn]) {
      for (const offset of [0, 8, 512, 1 << 20, 2 ** 41 + 4096, 3, 1021]) {
        const length = 77;
        const first = Math.floor(offset / 8);
        const words = Buffer.alloc(8 * 12);
        for (let i = 0; i < 12; i++) words.writeBigUInt64LE(patternWord(seed, first + i), 8 * i);
        const start = offset - first * 8;
        assert.ok(patternBuffer(seed, offset, length).equals(words.subarray(start, start + length)), `seed ${seed} offset ${offset}`);
      }
    }
  });

  it('firstPatternMismatch points at the first differing byte', () => {
    const data = patternBuffer(5n, 4096, 8192);
    assert.equal(firstPatternMismatch(data, 5n, 4096), -1);
    data[777] ^= 1;
    assert.equal(firstPatternMismatch(data, 5n, 4096), 4096 + 777);
  });
});
