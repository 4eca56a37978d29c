// The bundled start-up path loads koffi's native module directly (scripts/bundle.ts): the same module
// koffi's package would load, and the package itself whenever that file is not there.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import koffi from 'koffi';
import { findKoffiNative, koffiShim } from '../../scripts/bundle.js';

// Beside this test in the build, so that the shim's fallback `import('koffi')` finds the project's packages.
const here = dirname(fileURLToPath(import.meta.url));

describe("the bundles' koffi loader", () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(here, '.koffi-shim-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** Imports `source` as module `name` (a new name each time: the module cache is per URL). */
  async function loadShim(name: string, source: string): Promise<typeof koffi> {
    const file = join(dir, `${name}.mjs`);
    writeFileSync(file, source);
    return ((await import(pathToFileURL(file).href)) as { default: typeof koffi }).default;
  }

  it('finds the native module koffi itself loads on this machine', () => {
    const native = findKoffiNative();
    assert.ok(native, 'found');
    assert.match(native.file, /koffi\.node$/);
    assert.equal(native.version, koffi.version);
  });

  it('loads that module directly, and it works like the package', async () => {
    const direct = await loadShim('direct', koffiShim(dir, findKoffiNative()!));
    assert.notEqual(direct, koffi, 'not the package instance');
    assert.equal(direct.version, koffi.version);
    assert.equal(direct.sizeof('uint64_t'), 8);
    const getpid = direct.load('libc.so.6').func('int getpid(void)');
    assert.equal(getpid(), process.pid);
  });

  it('falls back to the package when the module is gone or is another version', async () => {
    const gone = await loadShim('gone', koffiShim(dir, { file: join(dir, 'missing', 'koffi.node'), version: koffi.version }));
    assert.equal(gone, koffi, 'the package instance');
    const other = await loadShim('other', koffiShim(dir, { ...findKoffiNative()!, version: '0.0.0' }));
    assert.equal(other, koffi, 'the package instance');
  });
});
