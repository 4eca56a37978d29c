// Bundles the start-up path of `lifeboat vm run` / `vm restore` / `backup` in place, after `tsc` (npm run build):
//   - dist/src/cli/main.js, with the `backup` command and the code it loads (split into chunks
//     dist/src/cli/startup-HASH.js, loaded only when it runs);
//   - `vm run` and `vm restore`: dist/src/cli/vm-startup.js and the script it runs (below);
//   - dist/vmm/vcpu-worker.js (and its CommonJS form, below), dist/vmm/devices/virtio/io-worker.js and
//     dist/replication/repository/chunk-worker.js, the worker threads' entries.
// Node 20 loads ES modules one by one (resolve, read, compile, link: ~0.7 ms each on this project's
// machine, more while other threads start); `vm run` loaded 67 on its main thread, 27 in each vCPU
// worker and 13 in the virtio I/O worker; `backup` ~60 on its main thread. Measurements:
// docs/benchmarks.md, "VMM (issue 3)" and "Repository (issue 5)".
//
// Each bundle is a drop-in replacement for the file it overwrites: every other module of the build is
// untouched, other commands still load theirs, and `tsc` alone gives back the unbundled build. Inside a
// bundle each module still sees its own location as `import.meta.url` (worker scripts and the project
// root are found relative to it), and the modules whose identity other code shares (the command error
// classes, the prewarmed vCPU worker pool) stay outside it.
//
// koffi: inside a bundle, `import koffi from 'koffi'` loads koffi's native module with one
// `process.dlopen` of the file koffi itself loads on this machine (found at bundle time, addressed
// relative to the bundle). koffi's package entry gets there through an ES module, the CommonJS loader
// for its platform package and a read of node's ELF header to tell glibc from musl: 9-14 ms in every
// thread that loads it (the main thread and each worker), against ~1 ms. If the file is gone or is
// another koffi version, the bundle falls back to the package (`import('koffi')`).
//
// lz4-napi: the same, with one `process.dlopen` of the native module its package entry picks on this
// machine. The entry is a CommonJS file of ~20 KiB that tells glibc from musl by reading /usr/bin/ldd;
// imported from an ES module, Node also scans it for its export names: ~15 ms in every thread that loads
// it (the main thread of `backup` and `restore`, each chunk worker), against ~2 ms. If the file is gone
// or does not export what Lifeboat calls, the bundle falls back to the package.
//
// `vm run` and `vm restore` (dist/src/cli/vm-startup.js): their code is one CommonJS script
// (vm-startup.script.js) that a small ES module compiles with `vm.Script` and V8's code cache
// (vm-startup.script.js.HASH.v8cache, HASH from the script's text), so a start-up does not parse and
// compile ~290 KiB of JavaScript again: the script's functions the previous start-up compiled come back
// from the cache. The cache is written after the first of these commands completes (then it holds
// everything a boot compiled), again whenever V8 rejects it (another Node version or V8 flags), and
// deleted by this script. Node 20 has no code
// cache for ES modules, hence the script; it cannot `require` the two modules whose instances it shares
// with the CLI's entry, so the loader passes them in.
//
// The vCPU worker also gets a CommonJS form (dist/vmm/vcpu-worker.cjs, which vmm/vcpu-prewarm.ts starts
// when it is newer than vcpu-worker.js): a thread with a CommonJS entry does not start Node's ES module
// loader. It runs the worker's code (vcpu-worker.script.js) the same way, with V8's code cache, written
// when the first worker that had none ends.
//
//   node dist/scripts/bundle.js [--dist DIR]    (default: the build this script belongs to)
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

type Esbuild = typeof import('esbuild');
type Plugin = import('esbuild').Plugin;

const BANNER = '// Bundled by scripts/bundle.ts from the tsc output of the same build: rebuild with `npm run build`.';

/** Whether `file` (a build's JS file) is one of these bundles rather than tsc output. */
export function isBundled(file: string): boolean {
  return readFileSync(file, 'utf8').startsWith(BANNER);
}

interface Target {
  /** The entry, relative to the build root; the bundle replaces it. */
  entry: string;
  /** Imports (absolute paths) served by another bundle instead: path -> that bundle, relative to the build root. */
  redirect?: (path: string) => string | undefined;
  /** Modules (absolute paths) left out of the bundle and imported from where tsc put them. */
  keepOut?: (path: string) => boolean;
  /** Code split into chunks next to the entry (for code only some runs of the entry load). */
  chunks?: string;
}

function targets(root: string): Target[] {
  const cli = join(root, 'src', 'cli');
  // `backup` with the helpers it shares with other commands: one copy of each module per process (the
  // target error classes are told apart with instanceof).
  const bundledCommands = new Set(
    ['index.js', 'backup.js', 'repository-cli.js', 'catalog-record.js'].map((f) => join(cli, 'commands', f)),
  );
  const scripted = new Set(VM_STARTUP_COMMANDS.map((c) => join(cli, 'commands', c.file)));
  return [
    {
      entry: 'src/cli/main.js',
      chunks: 'startup-[hash]',
      redirect: (p) => (scripted.has(p) ? VM_STARTUP_LOADER : undefined),
      keepOut: (p) =>
        p === join(cli, 'command.js') || // UsageError/UserError: main.ts tells them apart with instanceof
        p === join(root, 'vmm', 'vcpu-prewarm.js') || // one pool of prewarmed workers per process (main.ts imports it too)
        (dirname(p) === join(cli, 'commands') && !bundledCommands.has(p)), // every other command, as before
    },
    { entry: 'vmm/vcpu-worker.js' },
    { entry: 'vmm/devices/virtio/io-worker.js' },
    { entry: 'replication/repository/chunk-worker.js' },
  ];
}

/** The commands compiled with V8's code cache (see the header): their files and exports. */
const VM_STARTUP_COMMANDS = [
  { file: 'vm-run.js', name: 'vmRun' },
  { file: 'restore-vm.js', name: 'vmRestore' },
];
/** The loader of that script (an ES module), relative to the build root. */
const VM_STARTUP_LOADER = 'src/cli/vm-startup.js';
const VM_STARTUP_SCRIPT = 'src/cli/vm-startup.script.js';
/** Beside the script: V8's code cache of it (see codeCacheFile). */
export const CODE_CACHE_SUFFIX = '.v8cache';

/**
 * Where V8's code cache of `scriptFile` is kept: a name with a hash of the script's text, so a cache only
 * ever meets the code it was made from (V8 itself checks the source's length, not its text: a build
 * copied over another must not run functions compiled from the other's code).
 */
export function codeCacheFile(scriptFile: string, source = readFileSync(scriptFile, 'utf8')): string {
  return `${scriptFile}.${createHash('sha256').update(source).digest('hex').slice(0, 16)}${CODE_CACHE_SUFFIX}`;
}

/** Deletes every code cache (and unfinished one) of `scriptFile`. */
function removeCodeCaches(scriptFile: string): void {
  const dir = dirname(scriptFile);
  const prefix = `${basename(scriptFile)}.`;
  for (const f of readdirSync(dir)) {
    if (f.startsWith(prefix) && (f.endsWith(CODE_CACHE_SUFFIX) || f.endsWith('.tmp'))) rmSync(join(dir, f), { force: true });
  }
}
/** Modules whose instances the script shares with the CLI's entry (see targets()): passed in by the loader. */
const VM_STARTUP_SHARED = ['src/cli/command.js', 'vmm/vcpu-prewarm.js'];

/** `to` as a relative import specifier from directory `fromDir` ('./x.js', '../../y/x.js'). */
function specifier(fromDir: string, to: string): string {
  const r = relative(fromDir, to).split(sep).join('/');
  return r.startsWith('.') ? r : `./${r}`;
}

/** The native module koffi loads on this machine, and its version (undefined: leave koffi to its package). */
export interface KoffiNative {
  file: string;
  version: string;
}

export function findKoffiNative(): KoffiNative | undefined {
  try {
    const require = createRequire(import.meta.url);
    // koffi's own loader picks the platform package's glibc or musl build; whichever it loaded is cached.
    const platformPackage = `@koromix/koffi-${process.platform}-${process.arch}`;
    const { version } = require(platformPackage) as { version?: unknown };
    const file = Object.keys(require.cache).find((k) => k.endsWith('.node') && k.includes(`${sep}${platformPackage.replace('/', sep)}${sep}`));
    return file && typeof version === 'string' ? { file, version } : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A native module a bundle loads with one `process.dlopen` of its file (see the header), falling back to
 * its package when the file is gone or is not the module the bundle was built for.
 */
export interface DirectNative {
  /** The package's name, as the code imports it. */
  pkg: string;
  file: string;
  /** A statement that throws when `m.exports` is not the module the bundle was built for. */
  check: string;
  /** Exports the ES module form also gives by name, beside the default export. */
  named: readonly string[];
}

/** The module that stands for `n.pkg` inside an ES module bundle written to `outDir`. */
export function nativeShim(outDir: string, n: DirectNative): string {
  return [
    "import { fileURLToPath } from 'node:url';",
    'let native;',
    'try {',
    '  const m = { exports: {} };',
    `  process.dlopen(m, fileURLToPath(new URL(${JSON.stringify(specifier(outDir, n.file))}, import.meta.url)));`,
    `  ${n.check}`,
    '  native = m.exports;',
    '} catch {',
    `  native = (await import(${JSON.stringify(n.pkg)})).default;`,
    '}',
    ...n.named.map((f) => `export const ${f} = native.${f};`),
    'export default native;',
  ].join('\n');
}

/** The CommonJS form of nativeShim, for the code-cached scripts: `baseUrl` names the script's own URL. */
export function nativeShimCjs(outDir: string, n: DirectNative, baseUrl: string): string {
  return [
    "const { fileURLToPath } = require('node:url');",
    'try {',
    '  const m = { exports: {} };',
    `  process.dlopen(m, fileURLToPath(new URL(${JSON.stringify(specifier(outDir, n.file))}, ${baseUrl})));`,
    `  ${n.check}`,
    '  module.exports = m.exports;',
    '} catch {',
    `  module.exports = require(${JSON.stringify(n.pkg)});`,
    '}',
  ].join('\n');
}

/** koffi, loaded directly while its file is the version the bundle was built with. */
export function koffiDirect(native: KoffiNative): DirectNative {
  return { pkg: 'koffi', file: native.file, check: `if (m.exports.version !== ${JSON.stringify(native.version)}) throw new Error('another koffi version');`, named: [] };
}

/** The module that stands for 'koffi' inside a bundle written to `outDir`. */
export function koffiShim(outDir: string, native: KoffiNative): string {
  return nativeShim(outDir, koffiDirect(native));
}

/** The native module lz4-napi loads on this machine (undefined: leave lz4-napi to its package). */
export interface Lz4Native {
  file: string;
}

/** What Lifeboat calls in lz4-napi (blob.ts): a native module without them is not the one to load. */
const LZ4_FUNCTIONS = ['compressSync', 'uncompressSync'];

export function findLz4Native(): Lz4Native | undefined {
  try {
    const require = createRequire(import.meta.url);
    // The package entry loads its platform package's .node file (napi-rs: @antoniomuso/lz4-napi-PLATFORM).
    require('lz4-napi');
    const file = Object.keys(require.cache).find((k) => k.endsWith('.node') && k.includes(`${sep}lz4-napi`));
    return file ? { file } : undefined;
  } catch {
    return undefined;
  }
}

/** lz4-napi, loaded directly while its file exports what Lifeboat calls. */
export function lz4Direct(native: Lz4Native): DirectNative {
  return {
    pkg: 'lz4-napi',
    file: native.file,
    check: `for (const f of ${JSON.stringify(LZ4_FUNCTIONS)}) if (typeof m.exports[f] !== 'function') throw new Error('another lz4-napi');`,
    named: LZ4_FUNCTIONS,
  };
}

/** The module that stands for 'lz4-napi' inside a bundle written to `outDir`. */
export function lz4Shim(outDir: string, native: Lz4Native): string {
  return nativeShim(outDir, lz4Direct(native));
}

const SHARED_NAMESPACE = 'lifeboat-shared';
/** In the code-cached script: the loader's argument holding the shared modules, and the script's URL. */
const SHARED_ARG = '__lifeboatShared';
const URL_ARG = '__lifeboatScriptUrl';

interface PluginOptions {
  /** The code-cached script: CommonJS, `import.meta.url` from URL_ARG, shared modules from SHARED_ARG. */
  script?: boolean;
}

function plugin(root: string, outDir: string, target: Target, natives: readonly DirectNative[], o: PluginOptions = {}): Plugin {
  const metaUrl = o.script ? URL_ARG : 'import.meta.url';
  return {
    name: 'lifeboat-in-place',
    setup(build) {
      for (const n of natives) {
        const namespace = `lifeboat-${n.pkg}`;
        // The shim's own fallback import of the package stays external.
        build.onResolve({ filter: new RegExp(`^${n.pkg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) }, (a) => (a.namespace === namespace ? { path: n.pkg, external: true } : { path: n.pkg, namespace }));
        build.onLoad({ filter: /.*/, namespace }, () => ({ contents: o.script ? nativeShimCjs(outDir, n, URL_ARG) : nativeShim(outDir, n), loader: 'js', resolveDir: outDir }));
      }
      if (o.script) {
        build.onLoad({ filter: /.*/, namespace: SHARED_NAMESPACE }, (a) => ({ contents: `module.exports = ${SHARED_ARG}[${JSON.stringify(a.path)}];`, loader: 'js' }));
      }
      build.onResolve({ filter: /^\.\.?\// }, (a) => {
        const path = resolve(a.resolveDir, a.path);
        const other = target.redirect?.(path);
        if (other) return { path: specifier(outDir, join(root, other)), external: true };
        if (!target.keepOut?.(path)) return undefined;
        if (o.script) return { path: relative(root, path).split(sep).join('/'), namespace: SHARED_NAMESPACE };
        return { path: specifier(outDir, path), external: true };
      });
      build.onLoad({ filter: /\.js$/ }, (a) => {
        if (!a.path.startsWith(root + sep)) return undefined;
        const source = readFileSync(a.path, 'utf8');
        if (!source.includes('import.meta')) return undefined;
        const rest = source.replaceAll('import.meta.url', '');
        if (rest.includes('import.meta')) throw new Error(`${a.path} uses import.meta other than import.meta.url: teach scripts/bundle.ts about it`);
        // The module's own URL, as it was before bundling.
        const own = `new URL(${JSON.stringify(specifier(outDir, a.path))}, ${metaUrl}).href`;
        return { contents: source.replaceAll('import.meta.url', own), loader: 'js', resolveDir: dirname(a.path) };
      });
    },
  };
}

/** esbuild, loaded only when bundling (the benchmarks import isBundled from here without it). */
async function loadEsbuild(): Promise<Esbuild> {
  try {
    return await import('esbuild');
  } catch {
    throw new Error("esbuild is not installed: run 'npm install' (it is a devDependency of Lifeboat)");
  }
}

/** What every bundle of this script shares: Node 20 code, packages left to node_modules, kept in memory. */
const ESBUILD_COMMON = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  packages: 'external',
  keepNames: true,
  logLevel: 'warning',
  write: false,
} as const;

async function bundle(esbuild: Esbuild, root: string, target: Target, natives: readonly DirectNative[]): Promise<string> {
  const entry = join(root, target.entry);
  if (!existsSync(entry)) throw new Error(`${entry} does not exist: run tsc first`);
  if (isBundled(entry)) return `${target.entry}: already bundled (run tsc, then this script, to rebuild it)`;
  const outDir = dirname(entry);
  const result = await esbuild.build({
    ...ESBUILD_COMMON,
    entryPoints: [entry],
    format: 'esm',
    sourcemap: 'linked',
    banner: { js: BANNER },
    outdir: outDir,
    entryNames: '[name]',
    ...(target.chunks ? { splitting: true, chunkNames: target.chunks } : {}),
    plugins: [plugin(root, outDir, target, natives)],
  });
  if (target.chunks) {
    const stale = new RegExp(`^${target.chunks.replace('[hash]', '[A-Z0-9]+')}\\.js(\\.map)?$`);
    for (const f of readdirSync(outDir)) if (stale.test(f)) rmSync(join(outDir, f));
  }
  let bytes = 0;
  for (const f of result.outputFiles) {
    writeFileSync(f.path, f.contents);
    if (f.path.endsWith('.js')) bytes += f.contents.length;
  }
  const files = result.outputFiles.filter((f) => f.path.endsWith('.js')).length;
  return `${target.entry}: ${files} file${files === 1 ? '' : 's'}, ${(bytes / 1024).toFixed(0)} KiB`;
}

/** The vCPU worker's CommonJS form, beside its bundle (see the header); vmm/vcpu-prewarm.ts prefers it. */
const VCPU_WORKER = 'vmm/vcpu-worker.js';
export const VCPU_WORKER_CJS = 'vmm/vcpu-worker.cjs';
/** Its code, compiled by vcpu-worker.cjs with V8's code cache (like the vm start-up script). */
export const VCPU_WORKER_SCRIPT = 'vmm/vcpu-worker.script.js';

/** `import ... from "m";` statements of an esbuild ES module bundle as `require` calls (null: another form). */
function importsAsRequires(statement: string): string | null {
  const m = /^import\s+([\s\S]+?)\s+from\s+("[^"]+");$/.exec(statement);
  if (!m) return null;
  const [, what, from] = m as unknown as [string, string, string];
  const named = (list: string) => list.replace(/\s+as\s+/g, ': ');
  let n: RegExpExecArray | null;
  if ((n = /^\*\s+as\s+(\w+)$/.exec(what))) return `const ${n[1]} = require(${from});`;
  if ((n = /^(\{[\s\S]*\})$/.exec(what))) return `const ${named(n[1]!)} = require(${from});`;
  if ((n = /^(\w+)$/.exec(what))) return `const ${n[1]} = require(${from});`;
  if ((n = /^(\w+),\s*(\{[\s\S]*\})$/.exec(what))) return `const ${n[1]} = require(${from});\nconst ${named(n[2]!)} = ${n[1]};`;
  return null;
}

/**
 * The vCPU worker as a CommonJS file: a worker thread whose entry is CommonJS never starts Node's ES
 * module loader (~3 ms of CPU per thread here, measured with /proc/.../schedstat). Built from the
 * same code as the ES module bundle; its top-level awaits run inside an async function, compiled with
 * V8's code cache.
 */
async function bundleWorkerCjs(esbuild: Esbuild, root: string, natives: readonly DirectNative[]): Promise<() => string> {
  const entry = join(root, VCPU_WORKER);
  if (!existsSync(entry)) throw new Error(`${entry} does not exist: run tsc first`);
  if (isBundled(entry)) return () => `${VCPU_WORKER_CJS}: kept (${VCPU_WORKER} is bundled already)`;
  const outDir = dirname(entry);
  const result = await esbuild.build({
    ...ESBUILD_COMMON,
    entryPoints: [entry],
    format: 'esm',
    outdir: outDir,
    plugins: [plugin(root, outDir, { entry: VCPU_WORKER }, natives, { script: true })],
  });
  const code = result.outputFiles.find((f) => f.path.endsWith('.js'))?.text;
  if (code === undefined) throw new Error('esbuild wrote no vCPU worker');
  const requires: string[] = [];
  const body = code.replace(/^import\s[\s\S]*?;$/gm, (statement) => {
    const r = importsAsRequires(statement);
    if (r === null) throw new Error(`the vCPU worker bundle has an import that scripts/bundle.ts cannot turn into require: ${statement}`);
    requires.push(r);
    return '';
  });
  if (/^(import|export)\s/m.test(body) || body.includes('import.meta') || /\bimport\(/.test(body)) {
    throw new Error('the vCPU worker bundle has an import or export scripts/bundle.ts cannot turn into CommonJS');
  }
  // The worker's code as a function (run by the loader below with V8's code cache); its top-level
  // awaits run inside an async function.
  const script = [
    BANNER,
    `(function (require, ${URL_ARG}) {`,
    "'use strict';",
    ...requires,
    'return (async () => {',
    body,
    '})();',
    '})',
    '',
  ].join('\n');
  const loader = [
    BANNER,
    "'use strict';",
    "const { readFileSync, renameSync, rmSync, writeFileSync } = require('node:fs');",
    "const { join } = require('node:path');",
    "const { pathToFileURL } = require('node:url');",
    "const { Script } = require('node:vm');",
    `const file = join(__dirname, ${JSON.stringify(basename(VCPU_WORKER_SCRIPT))});`,
    `const cacheFile = join(__dirname, ${JSON.stringify(basename(codeCacheFile(join(root, VCPU_WORKER_SCRIPT), script)))});`,
    'let cachedData;',
    'try {',
    '  cachedData = readFileSync(cacheFile);',
    '} catch {',
    '  // none yet: written at exit',
    '}',
    "const script = new Script(readFileSync(file, 'utf8'), { filename: file, cachedData });",
    'if (cachedData === undefined || script.cachedDataRejected === true) {',
    '  // When this thread ends (its vCPU has run: V8 holds the functions it compiled), for the next start-up.',
    "  process.once('exit', () => {",
    ...writeCodeCache('`${cacheFile}.${process.pid}.${require(\'node:worker_threads\').threadId}.tmp`', '    '),
    '  });',
    '}',
    'script.runInThisContext()(require, pathToFileURL(file).href).catch((err) => process.nextTick(() => {',
    '  throw err;',
    '}));',
    '',
  ].join('\n');
  // Written once the ES module bundle is (vcpu-prewarm.ts takes the newer of the two).
  return () => {
    removeCodeCaches(join(root, VCPU_WORKER_SCRIPT));
    writeFileSync(join(root, VCPU_WORKER_SCRIPT), script);
    writeFileSync(join(root, VCPU_WORKER_CJS), loader);
    return `${VCPU_WORKER_CJS}: CommonJS, its code (${VCPU_WORKER_SCRIPT}, ${(script.length / 1024).toFixed(0)} KiB) code-cached`;
  };
}

/**
 * Lines of a loader that write `script`'s code cache to `cacheFile` through the temporary file named by
 * the expression `tmp` (a rename: a reader never sees half a cache), each line prefixed by `indent`.
 */
function writeCodeCache(tmp: string, indent: string): string[] {
  return [
    `const tmp = ${tmp};`,
    'try {',
    '  writeFileSync(tmp, script.createCachedData());',
    '  renameSync(tmp, cacheFile);',
    '} catch {',
    '  rmSync(tmp, { force: true }); // a read-only build: every start-up compiles',
    '}',
  ].map((line) => indent + line);
}

/** The ES module that compiles and runs the code-cached script (see the header). */
function vmStartupLoader(loaderDir: string, root: string, cacheFile: string): string {
  const script = specifier(loaderDir, join(root, VM_STARTUP_SCRIPT));
  const shared = VM_STARTUP_SHARED.map((m, i) => ({ key: m, name: `shared${i}`, from: specifier(loaderDir, join(root, m)) }));
  return [
    BANNER,
    "import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';",
    "import { createRequire } from 'node:module';",
    "import { fileURLToPath } from 'node:url';",
    "import { Script } from 'node:vm';",
    ...shared.map((s) => `import * as ${s.name} from ${JSON.stringify(s.from)};`),
    '',
    `const url = new URL(${JSON.stringify(script)}, import.meta.url);`,
    'const file = fileURLToPath(url);',
    `const cacheFile = fileURLToPath(new URL(${JSON.stringify(specifier(loaderDir, cacheFile))}, import.meta.url));`,
    'let cachedData;',
    'try {',
    '  cachedData = readFileSync(cacheFile);',
    '} catch {',
    '  // none yet: written below',
    '}',
    'const script = new Script(readFileSync(file, "utf8"), { filename: file, cachedData });',
    'const module = { exports: {} };',
    `script.runInThisContext()(module.exports, createRequire(file), module, { ${shared.map((s) => `${JSON.stringify(s.key)}: ${s.name}`).join(', ')} }, url.href);`,
    'let saveCache = cachedData === undefined || script.cachedDataRejected === true;',
    '',
    "// `command`, saving V8's code cache once its first run has completed (it then holds what a boot compiled).",
    'function savingCache(command) {',
    '  return {',
    '    ...command,',
    '    async run(argv) {',
    '      const status = await command.run(argv);',
    '      if (saveCache) {',
    '        saveCache = false;',
    ...writeCodeCache('`${cacheFile}.${process.pid}.tmp`', '        '),
    '      }',
    '      return status;',
    '    },',
    '  };',
    '}',
    '',
    ...VM_STARTUP_COMMANDS.map((c) => `export const ${c.name} = savingCache(module.exports.${c.name});`),
    '',
  ].join('\n');
}

/** `vm run` and `vm restore` as one CommonJS script for V8's code cache, and its loader (see the header). */
async function bundleVmStartup(esbuild: Esbuild, root: string, natives: readonly DirectNative[]): Promise<string> {
  const commandsDir = join(root, 'src', 'cli', 'commands');
  for (const c of VM_STARTUP_COMMANDS) if (!existsSync(join(commandsDir, c.file))) throw new Error(`${join(commandsDir, c.file)} does not exist: run tsc first`);
  const scriptFile = join(root, VM_STARTUP_SCRIPT);
  const outDir = dirname(scriptFile);
  const shared = new Set(VM_STARTUP_SHARED.map((m) => join(root, m)));
  const result = await esbuild.build({
    stdin: {
      contents: VM_STARTUP_COMMANDS.map((c) => `export { ${c.name} } from ${JSON.stringify(specifier(outDir, join(commandsDir, c.file)))};`).join('\n'),
      resolveDir: outDir,
      sourcefile: 'vm-startup.js',
    },
    ...ESBUILD_COMMON,
    format: 'cjs',
    outfile: scriptFile,
    plugins: [plugin(root, outDir, { entry: VM_STARTUP_SCRIPT, keepOut: (p) => shared.has(p) }, natives, { script: true })],
  });
  const code = result.outputFiles.find((f) => f.path === scriptFile)?.text;
  if (code === undefined) throw new Error('esbuild wrote no vm start-up script');
  if (/\bimport\(/.test(code)) throw new Error('the vm start-up script has a dynamic import(), which vm.Script cannot run: bundle that module or load it otherwise');
  // A function expression: the loader calls it like Node calls a CommonJS module, plus the shared modules and the URL.
  const script = `${BANNER}\n(function (exports, require, module, ${SHARED_ARG}, ${URL_ARG}) {\n${code}\n})`;
  removeCodeCaches(scriptFile);
  writeFileSync(scriptFile, script);
  writeFileSync(join(root, VM_STARTUP_LOADER), vmStartupLoader(dirname(join(root, VM_STARTUP_LOADER)), root, codeCacheFile(scriptFile, script)));
  return `${VM_STARTUP_SCRIPT}: ${(code.length / 1024).toFixed(0)} KiB, code-cached (loader ${VM_STARTUP_LOADER})`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { dist: { type: 'string' } } });
  const root = resolve(values.dist ?? join(dirname(fileURLToPath(import.meta.url)), '..'));
  const esbuild = await loadEsbuild();
  const koffi = findKoffiNative();
  if (!koffi) process.stdout.write("bundle: koffi's native module not found: bundles load koffi through its package\n");
  const lz4 = findLz4Native();
  if (!lz4) process.stdout.write("bundle: lz4-napi's native module not found: bundles load lz4-napi through its package\n");
  const natives = [...(koffi ? [koffiDirect(koffi)] : []), ...(lz4 ? [lz4Direct(lz4)] : [])];
  // Built before the worker's ES module bundle replaces its tsc output.
  const writeWorkerCjs = await bundleWorkerCjs(esbuild, root, natives);
  for (const t of targets(root)) process.stdout.write(`bundle: ${await bundle(esbuild, root, t, natives)}\n`);
  process.stdout.write(`bundle: ${writeWorkerCjs()}\n`);
  process.stdout.write(`bundle: ${await bundleVmStartup(esbuild, root, natives)}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    await main();
  } catch (err) {
    process.stderr.write(`bundle: ${(err as Error).message}\n`);
    process.exitCode = 1;
  }
}
