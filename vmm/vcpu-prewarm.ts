// vCPU worker threads can be spawned before anything else happens: a worker spends most of its start-up
// bootstrapping Node and loading code (koffi, the devices), which then overlaps with the main thread's
// own loading and VM set-up. This module imports nothing heavy (the snapshot format's reader needs only
// node:fs and node:zlib), so the CLI calls it first thing (and the bundled CLI, scripts/bundle.ts, imports
// this very file: one pool per process).
import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { readStateMeta } from './snapshot/format.js';

/**
 * The worker's entry: its CommonJS form when the build has one made from the current code (npm run
 * build writes it after vcpu-worker.js; a later tsc rewrites vcpu-worker.js): a thread with a CommonJS
 * entry does not start Node's ES module loader, ~3 ms of CPU (scripts/bundle.ts).
 */
function workerUrl(): URL {
  const esm = new URL('./vcpu-worker.js', import.meta.url);
  const cjs = new URL('./vcpu-worker.cjs', import.meta.url);
  try {
    return statSync(fileURLToPath(cjs)).mtimeMs >= statSync(fileURLToPath(esm)).mtimeMs ? cjs : esm;
  } catch {
    return esm;
  }
}

let VCPU_WORKER_URL: URL | undefined;
const pool: Worker[] = [];
/** Per worker: settles once its code has loaded (its 'loaded' message) or it has ended. */
const loadedOf = new WeakMap<Worker, Promise<void>>();

/** LIFEBOAT_VMM_TRACE=1: when each worker was spawned (ms since the process started). */
const spawnTimes = process.env.LIFEBOAT_VMM_TRACE === '1' ? new WeakMap<Worker, number>() : undefined;

/** Most workers started ahead of time. */
export const MAX_PREWARM = 64;

/**
 * A new vCPU worker. Node pipes a worker's stdout and stderr into this process's, one 'error' listener
 * each: the limits grow with the workers, so that a VM with more than 10 vCPUs does not print
 * EventEmitter's leak warning on the VMM's stderr.
 */
function spawnVcpuWorker(): Worker {
  for (const stream of [process.stdout, process.stderr]) {
    const max = stream.getMaxListeners();
    if (max !== 0 && max !== Infinity) stream.setMaxListeners(max + 1);
  }
  const spawning = spawnTimes && performance.now();
  const worker = new Worker((VCPU_WORKER_URL ??= workerUrl()));
  if (spawning) spawnTimes!.set(worker, spawning);
  loadedOf.set(worker, new Promise<void>((resolve) => {
    const onMessage = (m: { type?: string } | undefined) => {
      if (m?.type === 'loaded') done();
    };
    const done = () => {
      worker.off('message', onMessage);
      resolve();
    };
    worker.on('message', onMessage);
    worker.once('exit', done);
  }));
  return worker;
}

/** When `worker` was spawned, in ms since the process started (LIFEBOAT_VMM_TRACE=1 only). */
export function spawnedAt(worker: Worker): number | undefined {
  return spawnTimes?.get(worker);
}

/**
 * Settles once `worker` (from this module) has loaded its code or ended. Node aborts the whole process
 * (koffi's "FATAL ERROR ... napi_throw") when a worker is terminated while a native module initialises,
 * so a vCPU worker is terminated only after this, and the process does not exit before it either.
 */
export function workerLoaded(worker: Worker): Promise<void> {
  return loadedOf.get(worker) ?? Promise.resolve();
}

/**
 * Starts `count` vCPU workers now (none for more than MAX_PREWARM: such a count is about to be
 * refused, or too large to start ahead); they wait for their vCPU and do not keep the process alive.
 */
export function prewarmVcpuWorkers(count: number): void {
  if (count > MAX_PREWARM) return;
  while (pool.length < count) {
    const worker = spawnVcpuWorker();
    // Unused, it does not keep the process alive, but only once it has loaded (see workerLoaded): a
    // command that fails early waits those few milliseconds rather than abort.
    void workerLoaded(worker).then(() => {
      if (pool.includes(worker)) worker.unref();
    });
    // An unused prewarmed worker that fails to load must not crash the process; a used one reports
    // its errors through its VcpuThread.
    worker.on('error', () => {});
    pool.push(worker);
  }
}

/** Settles once every worker waiting in the pool has loaded its code (a standby VMM is then warm). */
export async function prewarmedLoaded(): Promise<void> {
  await Promise.all(pool.map(workerLoaded));
}

/** The value of option `--name` in `args` (`--name V` or `--name=V`), first occurrence. */
function optionValue(args: readonly string[], name: string): string | undefined {
  const at = args.findIndex((a) => a === name || a.startsWith(`${name}=`));
  if (at < 0) return undefined;
  return args[at]!.includes('=') ? args[at]!.slice(name.length + 1) : args[at + 1];
}

/**
 * For the CLI's entry (src/cli/main.ts), before the command's code loads: the vCPU workers that `argv`
 * (the CLI's arguments) is about to need. `vm run` needs `--vcpus` of them (default 1). `vm restore`
 * needs as many as the snapshot has: the first `--from` snapshot's state says how many, read here at
 * once (a dynamic import of the reader would settle only after the command's code has loaded, and the
 * second vCPU's worker would start ~15 ms late). Anything unusual (help, a malformed count, an unreadable
 * snapshot) starts one worker, or none: the command reports it. Never fails.
 */
export function prewarmForCommand(argv: readonly string[]): void {
  const args = argv.filter((a) => a !== '--debug');
  if (args[0] !== 'vm' || (args[1] !== 'run' && args[1] !== 'restore')) return;
  if (args.includes('--help') || args.includes('-h')) return;
  if (args[1] === 'run') {
    const value = optionValue(args, '--vcpus') ?? '1';
    if (/^\d+$/.test(value.trim())) prewarmVcpuWorkers(Number(value));
    return;
  }
  prewarmVcpuWorkers(1);
  const from = optionValue(args, '--from');
  if (from === undefined) return;
  try {
    const count = readStateMeta(from).vcpuCount;
    if (typeof count === 'number' && Number.isSafeInteger(count)) prewarmVcpuWorkers(count);
  } catch {
    // The command reads the snapshot again and says what is wrong with it.
  }
}

/** A prewarmed worker if there is one, else a fresh one (it keeps the process alive until terminated). */
export function vcpuWorker(): Worker {
  const worker = pool.shift() ?? spawnVcpuWorker();
  worker.ref();
  return worker;
}
