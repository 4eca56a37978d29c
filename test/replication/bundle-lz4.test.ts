// The bundled backup and restore load lz4-napi's native module directly (scripts/bundle.ts): the same
// module lz4-napi's package would load, compressing exactly as it does, and the package itself whenever
// that file is not there or is not an lz4-napi.
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type * as lz4 from 'lz4-napi';
import { findKoffiNative, findLz4Native, lz4Shim } from '../../scripts/bundle.js';

// Beside this test in the build, so that the shim's fallback `import('lz4-napi')` finds the project's packages.
const here = dirname(fileURLToPath(import.meta.url));
const packageLz4 = createRequire(import.meta.url)('lz4-napi') as typeof lz4;

type Lz4 = { compressSync: typeof lz4.compressSync; uncompressSync: typeof lz4.uncompressSync; default: unknown };

describe("the bundles' lz4-napi loader", () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(here, '.lz4-shim-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** Imports `source` as module `name` (a new name each time: the module cache is per URL). */
  async function loadShim(name: string, source: string): Promise<Lz4> {
    const file = join(dir, `${name}.mjs`);
    writeFileSync(file, source);
    return (await import(pathToFileURL(file).href)) as Lz4;
  }

  const data = Buffer.from('a disk block of text that repeats, '.repeat(2000));

  it('finds the native module lz4-napi itself loads on this machine', () => {
    const native = findLz4Native();
    assert.ok(native, 'found');
    assert.match(native.file, /lz4-napi[^/]*\.node$/);
  });

  it('loads that module directly, and it compresses exactly like the package', async () => {
    const direct = await loadShim('direct', lz4Shim(dir, findLz4Native()!));
    assert.notEqual(direct.default, packageLz4, 'not the package instance');
    const packed = direct.compressSync(data);
    assert.ok(packed.equals(packageLz4.compressSync(data)), 'the same bytes as the package');
    assert.ok(packed.length < data.length / 4);
    assert.ok(direct.uncompressSync(packed).equals(data));
    assert.ok(packageLz4.uncompressSync(packed).equals(data));
  });

  it('falls back to the package when the module is gone or is not lz4-napi', async () => {
    const gone = await loadShim('gone', lz4Shim(dir, { file: join(dir, 'missing', 'lz4-napi.node') }));
    assert.equal(gone.default, packageLz4, 'the package instance');
    assert.ok(gone.uncompressSync(gone.compressSync(data)).equals(data));
    // Another native module where lz4-napi's was: it loads, but has none of lz4-napi's functions.
    const impostor = join(dir, 'impostor.node');
    copyFileSync(findKoffiNative()!.file, impostor);
    const other = await loadShim('other', lz4Shim(dir, { file: impostor }));
    assert.equal(other.default, packageLz4, 'the package instance');
  });
});
