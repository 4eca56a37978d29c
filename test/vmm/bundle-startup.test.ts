// The bundled start-up of `lifeboat vm run` (scripts/bundle.ts): its code, and the vCPU worker's (which
// starts from a CommonJS form), is compiled with V8's code cache, kept beside each script. A cache that
// is damaged, or made by another Node, must never stop a VM from booting: it is ignored and rewritten.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Script } from 'node:vm';
import { codeCacheFile, isBundled, VCPU_WORKER_CJS, VCPU_WORKER_SCRIPT } from '../../scripts/bundle.js';
import { LIFEBOAT_MAIN, requireKvm, runVm, tempDir, tinyKernel, X86 } from '../helpers/vmm.js';

const buildRoot = join(dirname(LIFEBOAT_MAIN), '..', '..');
/** The main thread's code and the vCPU worker's. */
const scripts = [join(dirname(LIFEBOAT_MAIN), 'vm-startup.script.js'), join(buildRoot, VCPU_WORKER_SCRIPT)];
const cacheOf = (script: string) => codeCacheFile(script);

/** Whether V8 accepts the code cache beside `script`. */
function acceptedByV8(script: string): boolean {
  const compiled = new Script(readFileSync(script, 'utf8'), { filename: script, cachedData: readFileSync(cacheOf(script)) });
  return compiled.cachedDataRejected === false;
}

describe('lifeboat vm run: the bundled start-up', function () {
  this.timeout(120_000);
  let dir: ReturnType<typeof tempDir>;
  let kernel: string;

  before(() => {
    requireKvm();
    if (!isBundled(LIFEBOAT_MAIN)) throw new Error(`${LIFEBOAT_MAIN} is not bundled: these tests need 'npm run build' (tsc, then scripts/bundle.js)`);
    dir = tempDir();
    kernel = join(dir.path, 'hello.bin');
    writeFileSync(kernel, tinyKernel([...X86.print('hello from the guest\n'), ...X86.exit(7)]));
  });
  after(() => dir.remove());

  it('boots without code caches, then writes ones V8 accepts', async () => {
    for (const s of scripts) rmSync(cacheOf(s), { force: true });
    const exit = await runVm(['--kernel', kernel]);
    assert.equal(exit.code, 7, exit.stderr);
    assert.equal(exit.stdout, 'hello from the guest\n');
    for (const s of scripts) {
      assert.ok(existsSync(cacheOf(s)), `${cacheOf(s)} was written after the run`);
      assert.ok(acceptedByV8(s), `V8 accepts ${cacheOf(s)}`);
    }
  });

  it('damaged code caches: the VM still boots, and the caches are rewritten', async () => {
    for (const s of scripts) writeFileSync(cacheOf(s), Buffer.from('not a V8 code cache'.repeat(100)));
    const exit = await runVm(['--kernel', kernel, '--vcpus', '2']);
    assert.equal(exit.code, 7, exit.stderr);
    assert.equal(exit.stdout, 'hello from the guest\n');
    for (const s of scripts) assert.ok(acceptedByV8(s), `the damaged ${cacheOf(s)} was replaced by one V8 accepts`);
  });

  it('starts the vCPU worker from its CommonJS form, made after the ES module bundle', () => {
    const cjs = join(buildRoot, VCPU_WORKER_CJS);
    assert.ok(existsSync(cjs), `${cjs} exists`);
    assert.ok(statSync(cjs).mtimeMs >= statSync(join(buildRoot, 'vmm', 'vcpu-worker.js')).mtimeMs, 'newer than vcpu-worker.js, so vcpu-prewarm.ts uses it');
  });
});
