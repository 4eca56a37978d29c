// Bundles the start-up path of `lifeboat vm run` / `vm restore` / `backup` in place, after `tsc` (npm run build):
//   - dist/src/cli/main.js, with the `vm run`, `vm restore` and `backup` commands and the code they load
//     (split into chunks dist/src/cli/startup-HASH.js, loaded only when one of those commands runs);
//   - dist/vmm/vcpu-worker.js, dist/vmm/devices/virtio/io-worker.js and
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
//   node dist/scripts/bundle.js [--dist DIR]    (default: the build this script belongs to)
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve, sep } from 'node:path';
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
    ['index.js', 'vm-run.js', 'restore-vm.js', 'backup.js', 'repository-cli.js', 'catalog-record.js'].map((f) => join(cli, 'commands', f)),
  );
  return [
    {
      entry: 'src/cli/main.js',
      chunks: 'startup-[hash]',
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

const KOFFI_NAMESPACE = 'lifeboat-koffi';

/** The module that stands for 'koffi' inside a bundle written to `outDir` (see the header). */
export function koffiShim(outDir: string, native: KoffiNative): string {
  return [
    "import { fileURLToPath } from 'node:url';",
    'let koffi;',
    'try {',
    '  const m = { exports: {} };',
    `  process.dlopen(m, fileURLToPath(new URL(${JSON.stringify(specifier(outDir, native.file))}, import.meta.url)));`,
    `  if (m.exports.version !== ${JSON.stringify(native.version)}) throw new Error('another koffi version');`,
    '  koffi = m.exports;',
    '} catch {',
    "  koffi = (await import('koffi')).default;",
    '}',
    'export default koffi;',
  ].join('\n');
}

function plugin(root: string, outDir: string, target: Target, koffi: KoffiNative | undefined): Plugin {
  return {
    name: 'lifeboat-in-place',
    setup(build) {
      if (koffi) {
        build.onResolve({ filter: /^koffi$/ }, (a) => (a.namespace === KOFFI_NAMESPACE ? { path: 'koffi', external: true } : { path: 'koffi', namespace: KOFFI_NAMESPACE }));
        build.onLoad({ filter: /.*/, namespace: KOFFI_NAMESPACE }, () => ({ contents: koffiShim(outDir, koffi), loader: 'js', resolveDir: outDir }));
      }
      build.onResolve({ filter: /^\.\.?\// }, (a) => {
        const path = resolve(a.resolveDir, a.path);
        if (!target.keepOut?.(path)) return undefined;
        return { path: specifier(outDir, path), external: true };
      });
      build.onLoad({ filter: /\.js$/ }, (a) => {
        if (!a.path.startsWith(root + sep)) return undefined;
        const source = readFileSync(a.path, 'utf8');
        if (!source.includes('import.meta')) return undefined;
        const rest = source.replaceAll('import.meta.url', '');
        if (rest.includes('import.meta')) throw new Error(`${a.path} uses import.meta other than import.meta.url: teach scripts/bundle.ts about it`);
        // The module's own URL, as it was before bundling.
        const own = `new URL(${JSON.stringify(specifier(outDir, a.path))}, import.meta.url).href`;
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

async function bundle(esbuild: Esbuild, root: string, target: Target, koffi: KoffiNative | undefined): Promise<string> {
  const entry = join(root, target.entry);
  if (!existsSync(entry)) throw new Error(`${entry} does not exist: run tsc first`);
  if (isBundled(entry)) return `${target.entry}: already bundled (run tsc, then this script, to rebuild it)`;
  const outDir = dirname(entry);
  const result = await esbuild.build({
    entryPoints: [entry],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    packages: 'external',
    keepNames: true,
    sourcemap: 'linked',
    banner: { js: BANNER },
    logLevel: 'warning',
    write: false,
    outdir: outDir,
    entryNames: '[name]',
    ...(target.chunks ? { splitting: true, chunkNames: target.chunks } : {}),
    plugins: [plugin(root, outDir, target, koffi)],
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

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { dist: { type: 'string' } } });
  const root = resolve(values.dist ?? join(dirname(fileURLToPath(import.meta.url)), '..'));
  const esbuild = await loadEsbuild();
  const koffi = findKoffiNative();
  if (!koffi) process.stdout.write("bundle: koffi's native module not found: bundles load koffi through its package\n");
  for (const t of targets(root)) process.stdout.write(`bundle: ${await bundle(esbuild, root, t, koffi)}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    await main();
  } catch (err) {
    process.stderr.write(`bundle: ${(err as Error).message}\n`);
    process.exitCode = 1;
  }
}
