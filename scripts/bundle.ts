// Bundles the start-up path of `lifeboat vm run` / `vm restore` in place, after `tsc` (npm run build):
//   - dist/src/cli/main.js, with the `vm run` and `vm restore` commands and the VMM code they load
//     (split into chunks dist/src/cli/startup-HASH.js, loaded only when one of those commands runs);
//   - dist/vmm/vcpu-worker.js and dist/vmm/devices/virtio/io-worker.js, the worker threads' entries.
// Node 20 loads ES modules one by one (resolve, read, compile, link: ~0.7 ms each on this project's
// machine, more while other threads start); `vm run` loaded 67 on its main thread, 27 in each vCPU
// worker and 13 in the virtio I/O worker. Measurements: docs/benchmarks.md, "VMM (issue 3)".
//
// Each bundle is a drop-in replacement for the file it overwrites: every other module of the build is
// untouched, other commands still load theirs, and `tsc` alone gives back the unbundled build. Inside a
// bundle each module still sees its own location as `import.meta.url` (worker scripts and the project
// root are found relative to it), and the modules whose identity other code shares (the command error
// classes, the prewarmed vCPU worker pool) stay outside it.
//
//   node dist/scripts/bundle.js [--dist DIR]    (default: the build this script belongs to)
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
  const bundledCommands = new Set(['index.js', 'vm-run.js', 'restore-vm.js'].map((f) => join(cli, 'commands', f)));
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
  ];
}

/** `to` as a relative import specifier from directory `fromDir` ('./x.js', '../../y/x.js'). */
function specifier(fromDir: string, to: string): string {
  const r = relative(fromDir, to).split(sep).join('/');
  return r.startsWith('.') ? r : `./${r}`;
}

function plugin(root: string, outDir: string, target: Target): Plugin {
  return {
    name: 'lifeboat-in-place',
    setup(build) {
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

async function bundle(esbuild: Esbuild, root: string, target: Target): Promise<string> {
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
    plugins: [plugin(root, outDir, target)],
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
  for (const t of targets(root)) process.stdout.write(`bundle: ${await bundle(esbuild, root, t)}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    await main();
  } catch (err) {
    process.stderr.write(`bundle: ${(err as Error).message}\n`);
    process.exitCode = 1;
  }
}
