// Repository benchmark (issue 5): Lifeboat against restic and borg on the same disk image.
//
//   node dist/scripts/bench-repository.js [--dir DIR] [--rounds N] [--no-docs]
//   node dist/scripts/bench-repository.js --sweep [--dir DIR] [--no-docs]
//
// Builds a 4 GiB ext4 image half full of mixed files (text, structured binary, random, zeros,
// duplicates) with mkfs.ext4 -d (no root or mount needed), then per round and per tool, interleaved: a
// full backup, 1% of the image's 4 KiB blocks rewritten at random, an incremental backup, and a restore
// of the incremental. Lifeboat's incremental is given the change bitmap a VMM tracking 4 KiB granules
// (`vm run --track-granularity 4K`) would export; restic and borg read the whole image. Reports medians
// and ratios, and writes the "Repository (issue 5)" section of docs/benchmarks.md. --sweep measures chunk
// sizes and compression choices instead (the measurements behind the defaults).
//
// Each round gives Lifeboat a fresh catalog (LIFEBOAT_HOME in the scratch directory), as it gives every
// tool a fresh repository. NODE_EXTRA_CA_CERTS, which this environment sets, makes Node parse a CA bundle
// at every process start (40-140 ms here; restic and borg are not Node programs): it is removed from
// Lifeboat's environment unless --keep-node-extra-ca-certs is given.

import { spawnSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { cpus, freemem, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeChangeBitmap, changeBitmapFromRanges } from '../replication/repository/change-bitmap.js';
import { DEFAULT_COMPRESSION } from '../replication/repository/constants.js';
import { projectRoot } from '../src/util/project-root.js';
import { lifeboatNodeOptions } from './lifeboat-node.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const PASSWORD = 'lifeboat benchmark passphrase';
const IMAGE_VERSION = 'v1';
/** The change-tracking granularity of the VM whose bitmap the incremental gets (docs/change-tracking.md: 4K..1M). */
const VMM_GRANULARITY = 4 * 1024;
/** The VMM's default granularity, for the line that shows what the coarser bitmap costs. */
const VMM_DEFAULT_GRANULARITY = 64 * 1024;
const EPOCH_FULL = '01'.repeat(16);
const EPOCH_INCR = '02'.repeat(16);

interface Options {
  dir: string;
  rounds: number;
  sweep: boolean;
  docs: boolean;
  sizeGiB: number;
  keepCaCerts: boolean;
}

function parseOptions(argv: string[]): Options {
  const o: Options = { dir: '/tmp/lifeboat-bench-repository', rounds: 3, sweep: false, docs: true, sizeGiB: 4, keepCaCerts: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--dir') o.dir = argv[++i];
    else if (a === '--rounds') o.rounds = Number(argv[++i]);
    else if (a === '--sweep') o.sweep = true;
    else if (a === '--no-docs') o.docs = false;
    else if (a === '--size-gib') o.sizeGiB = Number(argv[++i]);
    else if (a === '--keep-node-extra-ca-certs') o.keepCaCerts = true;
    else if (a === '--help') {
      process.stdout.write('Usage: node dist/scripts/bench-repository.js [--dir DIR] [--rounds N] [--sweep] [--no-docs] [--size-gib N] [--keep-node-extra-ca-certs]\n');
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  return o;
}

// ---------------------------------------------------------------------------------------------------
// The image

/** xoshiro128** seeded generator: the tree is the same on every machine. */
class Prng {
  private s = new Uint32Array([0x9e3779b9, 0x243f6a88, 0xb7e15162, 0x12345678]);
  next(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }
  float(): number {
    return this.next() / 4294967296;
  }
}
function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

function randomBytes(seed: string, n: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n));
}

function makeText(rng: Prng, vocab: string[], n: number): Buffer {
  const zipf = () => vocab[Math.min(vocab.length - 1, Math.floor(Math.exp(rng.float() * Math.log(vocab.length))) - 1)];
  const parts: string[] = [];
  let len = 0;
  while (len < n) {
    const k = rng.float();
    let line: string;
    if (k < 0.4) {
      line = `2024-0${1 + (rng.next() % 9)}-1${rng.next() % 9}T${10 + (rng.next() % 13)}:${10 + (rng.next() % 49)}:${10 + (rng.next() % 49)}Z INFO [worker-${rng.next() % 16}] ${zipf()} ${zipf()} id=${rng.next().toString(16)} took ${rng.next() % 900}ms`;
    } else if (k < 0.7) {
      const words: string[] = [];
      for (let i = 0, m = 5 + (rng.next() % 12); i < m; i++) words.push(zipf());
      line = words.join(' ') + '.';
    } else {
      line = `  { "${zipf()}": ${rng.next() % 100000}, "${zipf()}": "${zipf()} ${zipf()}", "ok": ${rng.float() < 0.5} },`;
    }
    parts.push(line);
    len += line.length + 1;
  }
  return Buffer.from(parts.join('\n')).subarray(0, n);
}

function makeBinary(rng: Prng, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let o = 0; o + 8 <= n; o += 8) {
    const k = (o >> 12) % 3;
    if (k === 0) b.writeFloatLE(Math.sin(o / 977) * 1000 + rng.float(), o);
    else if (k === 1) b.writeUInt32LE(((o >> 3) * 7 + (rng.next() & 0xff)) >>> 0, o);
    else b.writeUInt32LE(rng.next() & 0x0f0f, o);
  }
  return b;
}

/** A tree of about `bytes` of mixed files. */
function generateTree(dir: string, bytes: number): Record<string, number> {
  const rng = new Prng();
  const syllables = ['ka', 'ro', 'mi', 'te', 'su', 'lo', 'an', 'er', 'in', 'on', 'at', 've', 'ri', 'co', 'de', 'ul', 'ma', 'po', 'si', 'ne', 'tra', 'ble', 'st', 'ch'];
  const vocab = Array.from({ length: 5000 }, () => {
    let w = '';
    for (let i = 0, n = 1 + (rng.next() % 4); i < n; i++) w += syllables[rng.next() % syllables.length];
    return w;
  });
  mkdirSync(dir, { recursive: true });
  const made: string[] = [];
  const stats: Record<string, number> = {};
  let total = 0;
  for (let i = 0; total < bytes; i++) {
    const kind = rng.float();
    let size = Math.floor(Math.exp(Math.log(4096) + rng.float() * (Math.log(48 * MiB) - Math.log(4096))));
    size = Math.min(size, bytes - total + 4096);
    let data: Buffer;
    let k: string;
    if (kind < 0.3) [k, data] = ['text', makeText(rng, vocab, size)];
    else if (kind < 0.5) [k, data] = ['binary', makeBinary(rng, size)];
    else if (kind < 0.8) [k, data] = ['random', randomBytes(`file ${i}`, size)];
    else if (kind < 0.87) [k, data] = ['zeros', Buffer.alloc(size)];
    else if (made.length) [k, data] = ['duplicate', readFileSync(made[rng.next() % made.length])];
    else continue;
    const sub = join(dir, `d${i % 37}`);
    mkdirSync(sub, { recursive: true });
    const f = join(sub, `f${i}.${k}`);
    writeFileSync(f, data);
    made.push(f);
    total += data.length;
    stats[k] = (stats[k] ?? 0) + data.length;
  }
  return stats;
}

interface Images {
  base: string;
  changes: { offset: number; data: Buffer }[];
  bitmapFull: string;
  /** The change at the tracking granularity (4 KiB: exact for 4 KiB writes). */
  bitmapIncr: string;
  /** The change at the VMM's default 64 KiB granularity. */
  bitmapCoarse: string;
  treeStats: Record<string, number>;
  used: number;
}

/** opts.env is added to this process's environment; a variable set to undefined there is removed. */
function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): { stdout: string; stderr: string } {
  const env = Object.fromEntries(Object.entries({ ...process.env, ...opts.env }).filter(([, v]) => v !== undefined));
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 * MiB, ...opts, env });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return { stdout: r.stdout, stderr: r.stderr };
}

function prepareImages(o: Options): Images {
  mkdirSync(o.dir, { recursive: true });
  const base = join(o.dir, `base-${IMAGE_VERSION}-${o.sizeGiB}g.img`);
  const statsFile = `${base}.json`;
  if (!existsSync(base) || !existsSync(statsFile)) {
    const tree = join(o.dir, 'tree');
    rmSync(tree, { recursive: true, force: true });
    log(`generating a ${o.sizeGiB / 2} GiB tree of mixed files...`);
    const treeStats = generateTree(tree, (o.sizeGiB * GiB) / 2);
    log(`mkfs.ext4 -d: ${base}`);
    rmSync(base, { force: true });
    run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', tree, base, `${o.sizeGiB}G`]);
    rmSync(tree, { recursive: true, force: true });
    writeFileSync(statsFile, JSON.stringify(treeStats));
  }
  const size = statSync(base).size;
  const used = statSync(base).blocks * 512;
  // 1% of the 4 KiB blocks, chosen at random (seeded), rewritten with random data.
  const blocks = size / 4096;
  const count = Math.round(blocks / 100);
  const rng = new Prng();
  const chosen = new Set<number>();
  while (chosen.size < count) chosen.add(rng.next() % blocks);
  const data = randomBytes('rewrite', count * 4096);
  const changes = [...chosen].sort((a, b) => a - b).map((b, i) => ({ offset: b * 4096, data: data.subarray(i * 4096, (i + 1) * 4096) }));
  const ranges = changes.map((c) => ({ offset: c.offset, length: 4096 }));
  const bitmapFull = join(o.dir, 'full.bitmap');
  const bitmapIncr = join(o.dir, 'incr.bitmap');
  const bitmapCoarse = join(o.dir, 'coarse.bitmap');
  writeFileSync(bitmapFull, encodeChangeBitmap({ ...changeBitmapFromRanges(size, VMM_GRANULARITY, []), baseEpoch: null, epoch: EPOCH_FULL }));
  writeFileSync(bitmapIncr, encodeChangeBitmap({ ...changeBitmapFromRanges(size, VMM_GRANULARITY, ranges), baseEpoch: EPOCH_FULL, epoch: EPOCH_INCR }));
  writeFileSync(bitmapCoarse, encodeChangeBitmap({ ...changeBitmapFromRanges(size, VMM_DEFAULT_GRANULARITY, ranges), baseEpoch: EPOCH_FULL, epoch: EPOCH_INCR }));
  return { base, changes, bitmapFull, bitmapIncr, bitmapCoarse, treeStats: JSON.parse(readFileSync(statsFile, 'utf8')), used };
}

function freshCopy(src: string, dst: string): void {
  rmSync(dst, { force: true });
  run('cp', ['--sparse=always', src, dst]);
  run('sync', []);
  run('sh', ['-c', `cat '${dst}' > /dev/null`]); // warm the page cache
}

function applyChanges(path: string, changes: Images['changes']): void {
  const fd = openSync(path, 'r+');
  try {
    for (const c of changes) writeSync(fd, c.data, 0, c.data.length, c.offset);
  } finally {
    closeSync(fd);
  }
  run('sync', []);
}

// ---------------------------------------------------------------------------------------------------
// Measuring

interface Timed {
  seconds: number;
  cpu: number;
  stdout: string;
  stderr: string;
}

/** Runs a command under /usr/bin/time: wall seconds and CPU seconds (user + system, children included). */
function timed(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Timed {
  const timeFile = join(process.env.TMPDIR ?? '/tmp', `lifeboat-bench-time-${process.pid}`);
  const start = process.hrtime.bigint();
  const out = run('/usr/bin/time', ['-o', timeFile, '-f', '%U %S', cmd, ...args], opts);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const [user, sys] = readFileSync(timeFile, 'utf8').trim().split(/\s+/).slice(-2).map(Number);
  rmSync(timeFile, { force: true });
  return { seconds, cpu: user + sys, stdout: out.stdout, stderr: out.stderr };
}

function duBytes(path: string): number {
  return Number(run('du', ['-sb', path]).stdout.split(/\s+/)[0]);
}

function sameContent(a: string, b: string): boolean {
  return spawnSync('cmp', ['-s', a, b]).status === 0;
}

interface ToolRound {
  full: Timed;
  fullBytes: number;
  incr: Timed;
  incrBytes: number;
  restore: Timed;
  restoredOk: boolean;
  /** Lifeboat only: the same restore into tmpfs (/dev/shm), where its fsyncs cost nothing: the pipeline without the device. */
  restoreTmpfs?: Timed;
  /** Lifeboat only: incremental without a bitmap (chunks compared by hash). */
  incrNoBitmap?: Timed;
  incrNoBitmapBytes?: number;
  /** Lifeboat only: incremental with the VMM's default 64 KiB bitmap. */
  incrCoarse?: Timed;
  incrCoarseBytes?: number;
  /** Lifeboat only: where the incremental's time went (LIFEBOAT_TRACE milestones, seconds since start). */
  incrMilestones?: { open: number; stored: number; recorded: number };
}

interface Tool {
  name: string;
  version: string;
  round(work: string, scratch: string, images: Images, verifyRestore: boolean): ToolRound;
}

let keepCaCerts = false;

/** The Lifeboat CLI with its own home (catalog) and, unless kept, without NODE_EXTRA_CA_CERTS. */
function lifeboatCli(args: string[], pwFile: string, home: string, env: NodeJS.ProcessEnv = {}): Timed {
  return timed(process.execPath, [...lifeboatNodeOptions(projectRoot()), MAIN, ...args, '--password-file', pwFile], {
    env: { LIFEBOAT_HOME: home, ...(keepCaCerts ? {} : { NODE_EXTRA_CA_CERTS: undefined }), ...env },
  });
}

/** Seconds since process start of the backup command's LIFEBOAT_TRACE milestones. */
function milestones(stderr: string): { open: number; stored: number; recorded: number } {
  const at = (what: string) => Number(new RegExp(`(\\d+) ms since start: ${what}`).exec(stderr)?.[1] ?? NaN) / 1000;
  return { open: at('repository open'), stored: at('point stored'), recorded: at('point recorded in the catalog') };
}

function lifeboatTool(options: { chunkSize?: string; compression?: string; extraRuns?: boolean; workers?: number } = {}): Tool {
  return {
    name: 'Lifeboat',
    version: JSON.parse(readFileSync(join(projectRoot(), 'package.json'), 'utf8')).version,
    round(work, scratch, images, verifyRestore) {
      const pw = join(scratch, 'password');
      writeFileSync(pw, PASSWORD + '\n');
      const repo = join(scratch, 'lifeboat-repo');
      const home = join(scratch, 'lifeboat-home');
      const initArgs = ['repo', 'init', '--target', repo];
      if (options.chunkSize) initArgs.push('--chunk-size', options.chunkSize);
      if (options.compression) initArgs.push('--compression', options.compression);
      lifeboatCli(initArgs, pw, home);
      const base = duBytes(repo);
      const w = options.workers ? ['--workers', String(options.workers)] : [];
      const backupArgs = (target: string, bitmap: string | null) => ['backup', work, '--target', target, '--vm', 'bench', '--disk', 'vda', ...(bitmap ? ['--bitmap', bitmap] : []), '--json', ...w];
      const full = lifeboatCli(backupArgs(repo, images.bitmapFull), pw, home);
      const fullBytes = duBytes(repo) - base;
      // The other incrementals start from copies of the same full backup (repository and catalog).
      const extra = options.extraRuns ? ['coarse', 'hash'].map((k) => ({ repo: `${repo}-${k}`, home: `${home}-${k}` })) : [];
      for (const e of extra) {
        run('cp', ['-a', repo, e.repo]);
        run('cp', ['-a', home, e.home]);
      }
      applyChanges(work, images.changes);
      const incr = lifeboatCli(backupArgs(repo, images.bitmapIncr), pw, home, { LIFEBOAT_TRACE: '1' });
      const incrBytes = duBytes(repo) - base - fullBytes;
      const out = join(scratch, 'restored.img');
      rmSync(out, { force: true });
      const restore = lifeboatCli(['restore', 'latest', '--target', repo, '--to', out, '--json', ...w], pw, home);
      let restoredOk = verifyRestore ? sameContent(work, out) : true;
      rmSync(out, { force: true });
      const r: ToolRound = { full, fullBytes, incr, incrBytes, restore, restoredOk, incrMilestones: milestones(incr.stderr) };
      if (verifyRestore && tmpfsRestoreDir()) { // the comparison only, not the sweep
        const inMemory = join(tmpfsRestoreDir()!, `lifeboat-bench-restored-${process.pid}.img`);
        rmSync(inMemory, { force: true });
        try {
          r.restoreTmpfs = lifeboatCli(['restore', 'latest', '--target', repo, '--to', inMemory, '--json', ...w], pw, home);
          if (verifyRestore) r.restoredOk = restoredOk = restoredOk && sameContent(work, inMemory);
        } finally {
          rmSync(inMemory, { force: true });
        }
      }
      if (extra.length) {
        // The same change with the VMM's default 64 KiB granules, and without a trusted bitmap (every
        // chunk read and hashed, only new ones stored).
        const [coarse, hash] = extra;
        const before = duBytes(coarse.repo);
        r.incrCoarse = lifeboatCli(backupArgs(coarse.repo, images.bitmapCoarse), pw, coarse.home);
        r.incrCoarseBytes = duBytes(coarse.repo) - before;
        r.incrNoBitmap = lifeboatCli(backupArgs(hash.repo, null), pw, hash.home);
        r.incrNoBitmapBytes = duBytes(hash.repo) - before;
        for (const e of extra) rmSync(e.repo, { recursive: true, force: true });
      }
      rmSync(repo, { recursive: true, force: true });
      return r;
    },
  };
}

function resticTool(): Tool {
  return {
    name: 'restic',
    version: run('restic', ['version']).stdout.split(' ')[1],
    round(work, scratch, images, verifyRestore) {
      const repo = join(scratch, 'restic-repo');
      const env = { RESTIC_PASSWORD: PASSWORD, RESTIC_CACHE_DIR: join(scratch, 'restic-cache'), RESTIC_REPOSITORY: repo };
      const opts = { cwd: scratch, env };
      run('restic', ['init', '-q'], opts);
      const base = duBytes(repo);
      const rel = work.startsWith(scratch + '/') ? work.slice(scratch.length + 1) : work;
      const full = timed('restic', ['backup', '-q', rel], opts);
      const fullBytes = duBytes(repo) - base;
      applyChanges(work, images.changes);
      const incr = timed('restic', ['backup', '-q', rel], opts);
      const incrBytes = duBytes(repo) - base - fullBytes;
      const out = join(scratch, 'restic-out');
      rmSync(out, { recursive: true, force: true });
      const restore = timed('restic', ['restore', '-q', 'latest', '--target', out], opts);
      const restoredOk = verifyRestore ? sameContent(work, join(out, rel)) : true;
      rmSync(out, { recursive: true, force: true });
      rmSync(repo, { recursive: true, force: true });
      rmSync(env.RESTIC_CACHE_DIR, { recursive: true, force: true });
      return { full, fullBytes, incr, incrBytes, restore, restoredOk };
    },
  };
}

function borgTool(): Tool {
  return {
    name: 'borg',
    version: run('borg', ['--version']).stdout.trim().split(' ')[1],
    round(work, scratch, images, verifyRestore) {
      const repo = join(scratch, 'borg-repo');
      const env = { BORG_PASSPHRASE: PASSWORD, BORG_BASE_DIR: join(scratch, 'borg-base'), BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes' };
      const opts = { cwd: scratch, env };
      run('borg', ['init', '-e', 'repokey-blake2', repo], opts);
      const base = duBytes(repo);
      const rel = work.startsWith(scratch + '/') ? work.slice(scratch.length + 1) : work;
      const full = timed('borg', ['create', `${repo}::full`, rel], opts);
      const fullBytes = duBytes(repo) - base;
      applyChanges(work, images.changes);
      const incr = timed('borg', ['create', `${repo}::incr`, rel], opts);
      const incrBytes = duBytes(repo) - base - fullBytes;
      const out = join(scratch, 'borg-out');
      rmSync(out, { recursive: true, force: true });
      mkdirSync(out);
      const restore = timed('borg', ['extract', `${repo}::incr`], { cwd: out, env });
      const restoredOk = verifyRestore ? sameContent(work, join(out, rel)) : true;
      rmSync(out, { recursive: true, force: true });
      rmSync(repo, { recursive: true, force: true });
      rmSync(env.BORG_BASE_DIR, { recursive: true, force: true });
      return { full, fullBytes, incr, incrBytes, restore, restoredOk };
    },
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function log(msg: string): void {
  process.stderr.write(`[bench-repository] ${msg}\n`);
}

function fmtBytes(n: number): string {
  return n >= GiB ? `${(n / GiB).toFixed(2)} GiB` : `${(n / MiB).toFixed(1)} MiB`;
}

function catSeconds(path: string): number {
  const times: number[] = [];
  for (let i = 0; i < 4; i++) times.push(timed('sh', ['-c', `cat '${path}' > /dev/null`]).seconds);
  return median(times.slice(1));
}

/** A tmpfs with room for a restored image (twice the bench image, to be safe), or undefined. */
function tmpfsRestoreDir(): string | undefined {
  try {
    const fs = statfsSync('/dev/shm');
    return fs.type === TMPFS_MAGIC && fs.bavail * fs.bsize > 2 * 4 * 2 ** 30 ? '/dev/shm' : undefined;
  } catch {
    return undefined;
  }
}
const TMPFS_MAGIC = 0x01021994;

/**
 * Writing the restored image's bytes into tmpfs with dd (64 KiB blocks, the restore's chunk size; holes
 * left as holes): what this machine's kernel alone needs to take 2 GB into new page-cache pages.
 */
function ddTmpfsSeconds(path: string, dir: string): number {
  const copy = join(dir, `lifeboat-bench-dd-${process.pid}.img`);
  const times: number[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      rmSync(copy, { force: true });
      times.push(timed('dd', [`if=${path}`, `of=${copy}`, 'bs=64k', 'conv=sparse', 'status=none']).seconds);
    }
  } finally {
    rmSync(copy, { force: true });
  }
  return median(times);
}

/**
 * The device floor for a restore: writing the restored image's bytes durably with dd (from the page
 * cache, all-zero 4 MiB blocks left as holes, one fsync at the end), as the restore must.
 */
function ddFsyncSeconds(path: string, scratch: string): number {
  const copy = join(scratch, 'dd-floor.img');
  const times: number[] = [];
  for (let i = 0; i < 2; i++) {
    rmSync(copy, { force: true });
    run('sync', []);
    times.push(timed('dd', [`if=${path}`, `of=${copy}`, 'bs=4M', 'conv=sparse,fsync', 'status=none']).seconds);
  }
  rmSync(copy, { force: true });
  return median(times);
}

// ---------------------------------------------------------------------------------------------------
// The comparison

interface Summary {
  tool: string;
  version: string;
  full: number;
  fullCpu: number;
  fullBytes: number;
  incr: number;
  incrCpu: number;
  incrBytes: number;
  restore: number;
  restoreCpu: number;
  restoreTmpfs?: number;
  restoreTmpfsCpu?: number;
  incrNoBitmap?: number;
  incrNoBitmapBytes?: number;
  incrCoarse?: number;
  incrCoarseBytes?: number;
  incrMilestones?: { open: number; stored: number; recorded: number };
  allRestoresOk: boolean;
}

function summarise(tool: Tool, rounds: ToolRound[]): Summary {
  const m = (f: (r: ToolRound) => number) => median(rounds.map(f));
  return {
    tool: tool.name,
    version: tool.version,
    full: m((r) => r.full.seconds),
    fullCpu: m((r) => r.full.cpu),
    fullBytes: m((r) => r.fullBytes),
    incr: m((r) => r.incr.seconds),
    incrCpu: m((r) => r.incr.cpu),
    incrBytes: m((r) => r.incrBytes),
    restore: m((r) => r.restore.seconds),
    restoreCpu: m((r) => r.restore.cpu),
    ...(rounds[0].restoreTmpfs ? { restoreTmpfs: m((r) => r.restoreTmpfs!.seconds), restoreTmpfsCpu: m((r) => r.restoreTmpfs!.cpu) } : {}),
    ...(rounds[0].incrNoBitmap ? { incrNoBitmap: m((r) => r.incrNoBitmap!.seconds), incrNoBitmapBytes: m((r) => r.incrNoBitmapBytes!) } : {}),
    ...(rounds[0].incrCoarse ? { incrCoarse: m((r) => r.incrCoarse!.seconds), incrCoarseBytes: m((r) => r.incrCoarseBytes!) } : {}),
    ...(rounds[0].incrMilestones
      ? {
          incrMilestones: {
            open: m((r) => r.incrMilestones!.open),
            stored: m((r) => r.incrMilestones!.stored),
            recorded: m((r) => r.incrMilestones!.recorded),
          },
        }
      : {}),
    allRestoresOk: rounds.every((r) => r.restoredOk),
  };
}

function comparison(o: Options, images: Images): string {
  const tools = [lifeboatTool({ extraRuns: true }), resticTool(), borgTool()];
  const results = new Map<string, ToolRound[]>(tools.map((t) => [t.name, []]));
  const scratch = join(o.dir, 'scratch');
  const work = join(scratch, 'disk.img');
  let catTimes: number[] = [];
  const ddTimes: number[] = [];
  const ddTmpfsTimes: number[] = [];
  for (let round = 0; round < o.rounds; round++) {
    // Rotate the order so that no tool always runs first (or last) on a shared, noisy machine.
    const order = tools.map((_, i) => tools[(i + round) % tools.length]);
    for (const tool of order) {
      rmSync(scratch, { recursive: true, force: true });
      mkdirSync(scratch, { recursive: true });
      freshCopy(images.base, work);
      log(`round ${round + 1}/${o.rounds}: ${tool.name}`);
      const r = tool.round(work, scratch, images, true);
      results.get(tool.name)!.push(r);
      log(`  full ${r.full.seconds.toFixed(1)} s, incremental ${r.incr.seconds.toFixed(2)} s, restore ${r.restore.seconds.toFixed(1)} s, restore ok: ${r.restoredOk}`);
      if (tool.name === 'Lifeboat') {
        catTimes.push(catSeconds(work));
        ddTimes.push(ddFsyncSeconds(work, scratch)); // the restored image is the work image, bit for bit
        const shm = tmpfsRestoreDir();
        if (shm) ddTmpfsTimes.push(ddTmpfsSeconds(work, shm));
      }
    }
  }
  rmSync(scratch, { recursive: true, force: true });
  const s = tools.map((t) => summarise(t, results.get(t.name)!));
  const [lb, restic, borg] = s;
  const cat = median(catTimes);
  const dd = median(ddTimes);
  const ddTmpfs = ddTmpfsTimes.length ? median(ddTmpfsTimes) : undefined;
  catTimes = [];

  const row = (label: string, f: (x: Summary) => string) => `| ${label} | ${s.map(f).join(' | ')} |`;
  const secs = (x: number) => `${x.toFixed(x < 10 ? 2 : 1)} s`;
  const table = [
    `| | ${s.map((x) => `${x.tool} ${x.version}`).join(' | ')} |`,
    `|---|${s.map(() => '---').join('|')}|`,
    row('full backup, wall (CPU)', (x) => `${secs(x.full)} (${secs(x.fullCpu)})`),
    row('full backup, bytes added', (x) => fmtBytes(x.fullBytes)),
    row('incremental after 1% of 4 KiB blocks rewritten, wall (CPU)', (x) => `${secs(x.incr)} (${secs(x.incrCpu)})${x.tool === 'Lifeboat' ? ', with bitmap' : ''}`),
    row('incremental, bytes added', (x) => fmtBytes(x.incrBytes)),
    row('restore of the incremental, wall (CPU)', (x) => `${secs(x.restore)} (${secs(x.restoreCpu)})`),
    row('every restore bit-exact', (x) => (x.allRestoresOk ? 'yes' : '**NO**')),
    ...(lb.restoreTmpfs !== undefined ? [`| the same restore into tmpfs (\`/dev/shm\`: no device, its fsyncs free), wall (CPU) | ${secs(lb.restoreTmpfs)} (${secs(lb.restoreTmpfsCpu!)}) |${s.slice(1).map(() => ' |').join('')}`] : []),
    ...(ddTmpfs !== undefined ? [`| reference: \`dd bs=64k conv=sparse\` of the restored bytes into tmpfs (the kernel's cost of taking them into new pages) | ${secs(ddTmpfs)} |${s.slice(1).map(() => ' |').join('')}`] : []),
    `| reference (same rounds): \`cat IMAGE > /dev/null\` (page cache warm); \`dd bs=4M conv=sparse,fsync\` of the restored bytes (device floor) | ${secs(cat)}; ${secs(dd)} |${s.slice(1).map(() => ' |').join('')}`,
  ].join('\n');

  const bar = (ok: boolean) => (ok ? 'met' : '**missed**');
  const bars = [
    `- Full backup at least as fast as restic: ${secs(lb.full)} vs ${secs(restic.full)} (${(restic.full / lb.full).toFixed(2)}x): ${bar(lb.full <= restic.full)}.`,
    `- Restore at least as fast as restic: ${secs(lb.restore)} vs ${secs(restic.restore)} (${(restic.restore / lb.restore).toFixed(2)}x): ${bar(lb.restore <= restic.restore)}.`,
    `- Incremental with a bitmap at least 20x faster than restic's incremental: ${secs(lb.incr)} vs ${secs(restic.incr)} (${(restic.incr / lb.incr).toFixed(1)}x): ${bar(restic.incr / lb.incr >= 20)}.`,
    `- Restore throughput within 3x of \`cat IMAGE > /dev/null\` (page cache warm, ${secs(cat)}): restore takes ${(lb.restore / cat).toFixed(1)}x as long: ${bar(lb.restore <= 3 * cat)}. Writing the same bytes durably with dd takes ${secs(dd)} (${(dd / cat).toFixed(1)}x cat); the restore takes ${(lb.restore / dd).toFixed(2)}x that.${lb.restoreTmpfs !== undefined ? ` Into tmpfs, without the device, the restore takes ${secs(lb.restoreTmpfs)}: ${(lb.restoreTmpfs / cat).toFixed(1)}x cat${ddTmpfs !== undefined ? `, where dd alone needs ${secs(ddTmpfs)} (${(ddTmpfs / cat).toFixed(1)}x cat) to write the same bytes` : ''}.` : ''}`,
    `- Where Lifeboat's incremental went (medians of the milestones it traces, seconds since the process started): repository open (Node start, modules, scrypt of the passphrase) ${secs(lb.incrMilestones?.open ?? NaN)}; point stored (manifest durable) ${secs(lb.incrMilestones?.stored ?? NaN)}; point recorded in the local catalog ${secs(lb.incrMilestones?.recorded ?? NaN)}; process exit ${secs(lb.incr)}.`,
    `- For reference, the same change: with the VMM's default 64 KiB granules Lifeboat's incremental took ${secs(lb.incrCoarse ?? NaN)} and added ${fmtBytes(lb.incrCoarseBytes ?? NaN)}; without a bitmap (every chunk read and hashed) ${secs(lb.incrNoBitmap ?? NaN)} and ${fmtBytes(lb.incrNoBitmapBytes ?? NaN)}; borg took ${secs(borg.incr)}.`,
  ].join('\n');
  return [table, '', bars].join('\n');
}

// ---------------------------------------------------------------------------------------------------
// The sweep (chunk size and compression)

function sweep(o: Options, images: Images): string {
  const scratch = join(o.dir, 'scratch');
  const work = join(scratch, 'disk.img');
  const once = (tool: Tool) => {
    rmSync(scratch, { recursive: true, force: true });
    mkdirSync(scratch, { recursive: true });
    freshCopy(images.base, work);
    return tool.round(work, scratch, images, false);
  };
  const chunkRows: string[] = [];
  for (const cs of ['16K', '32K', '64K', '128K', '256K', '1M', '4M']) {
    log(`sweep: chunk size ${cs}`);
    const r = once(lifeboatTool({ chunkSize: cs }));
    const incr = JSON.parse(r.incr.stdout) as { bytesRead: number };
    chunkRows.push(
      `| ${cs} | ${r.full.seconds.toFixed(1)} s (${r.full.cpu.toFixed(1)} s) | ${fmtBytes(r.fullBytes)} | ${fmtBytes(incr.bytesRead)} | ${fmtBytes(r.incrBytes)} | ${r.incr.seconds.toFixed(2)} s | ${r.restore.seconds.toFixed(1)} s (${r.restore.cpu.toFixed(1)} s) |`,
    );
  }
  const compRows: string[] = [];
  for (const c of ['none', 'lz4', 'brotli-0', 'brotli-1', 'brotli-2']) {
    log(`sweep: compression ${c}`);
    const r = once(lifeboatTool({ compression: c }));
    compRows.push(`| ${c} | ${r.full.seconds.toFixed(1)} s (${r.full.cpu.toFixed(1)} s) | ${fmtBytes(r.fullBytes)} | ${r.restore.seconds.toFixed(1)} s (${r.restore.cpu.toFixed(1)} s) |`);
  }
  const workerRows: string[] = [];
  for (const workers of [1, 2]) {
    log(`sweep: ${workers} worker(s)`);
    const r = once(lifeboatTool({ workers }));
    workerRows.push(`| ${workers} | ${r.full.seconds.toFixed(1)} s (${r.full.cpu.toFixed(1)} s) | ${r.restore.seconds.toFixed(1)} s (${r.restore.cpu.toFixed(1)} s) |`);
  }
  rmSync(scratch, { recursive: true, force: true });
  return [
    '#### Chunk size',
    '',
    'Incremental: the same 1% of 4 KiB blocks rewritten, with a 4 KiB change bitmap: only the changed blocks are read (and stored, spliced into the parent\'s extents), plus the cells that would hold too many extents, read whole.',
    '',
    '| chunk size | full backup, wall (CPU) | full, bytes added | incremental, bytes read | incremental, bytes added | incremental, wall | restore, wall (CPU) |',
    '|---|---|---|---|---|---|---|',
    ...chunkRows,
    '',
    '#### Compression (64 KiB chunks)',
    '',
    '| compression | full backup, wall (CPU) | full, bytes added | restore, wall (CPU) |',
    '|---|---|---|---|',
    ...compRows,
    '',
    `#### Worker threads (64 KiB chunks, ${DEFAULT_COMPRESSION})`,
    '',
    '| workers | full backup, wall (CPU) | restore, wall (CPU) |',
    '|---|---|---|',
    ...workerRows,
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------
// docs/benchmarks.md

const START = '<!-- bench-repository:start -->';
const END = '<!-- bench-repository:end -->';
const SWEEP_START = '<!-- bench-repository-sweep:start -->';
const SWEEP_END = '<!-- bench-repository-sweep:end -->';

function replaceBetween(text: string, start: string, end: string, body: string): string | null {
  const a = text.indexOf(start);
  const b = text.indexOf(end);
  if (a < 0 || b < a) return null;
  return text.slice(0, a + start.length) + '\n' + body + '\n' + text.slice(b);
}

function writeDocs(o: Options, body: string): void {
  const path = join(projectRoot(), 'docs', 'benchmarks.md');
  let text = existsSync(path) ? readFileSync(path, 'utf8') : '# Benchmarks\n\nEach section names the command that produced it; numbers are from a shared 2-core machine, so medians and ratios matter more than absolute values.\n';
  const [start, end] = o.sweep ? [SWEEP_START, SWEEP_END] : [START, END];
  const replaced = replaceBetween(text, start, end, body);
  if (replaced !== null) {
    text = replaced;
  } else if (text.includes(END) || text.includes(SWEEP_END)) {
    // The section exists with the other half: add this half after it.
    const anchor = text.includes(END) ? END : SWEEP_END;
    const i = text.indexOf(anchor) + anchor.length;
    text = text.slice(0, i) + `\n\n${start}\n${body}\n${end}` + text.slice(i);
  } else {
    text = text.trimEnd() + `\n\n## Repository (issue 5)\n\n${start}\n${body}\n${end}\n`;
  }
  writeFileSync(path, text);
  log(`wrote ${path}`);
}

function machine(): string {
  return `${cpus().length} × ${cpus()[0]?.model ?? 'CPU'}, ${(totalmem() / GiB).toFixed(0)} GiB RAM (${(freemem() / GiB).toFixed(0)} GiB free), Node ${process.version}, ${new Date().toISOString().slice(0, 10)}`;
}

function main(): void {
  const o = parseOptions(process.argv.slice(2));
  keepCaCerts = o.keepCaCerts;
  const images = prepareImages(o);
  const size = statSync(images.base).size;
  const kinds = Object.entries(images.treeStats)
    .map(([k, v]) => `${k} ${fmtBytes(v)}`)
    .join(', ');
  const setup =
    `Image: ${fmtBytes(size)} ext4 (\`mkfs.ext4 -d\`), ${fmtBytes(images.used)} allocated; files: ${kinds}. ` +
    `Change: ${images.changes.length} random 4 KiB blocks (1%) rewritten with random data. Machine: ${machine()}.`;
  if (o.sweep) {
    const body = sweep(o, images);
    const text = ['### Measurements behind the defaults', '', `Command: \`node dist/scripts/bench-repository.js --sweep\` (one run each; wall and CPU seconds). ${setup}`, '', body].join('\n');
    process.stdout.write(text + '\n');
    if (o.docs) writeDocs(o, text);
    return;
  }
  const body = comparison(o, images);
  const text = [
    '### Lifeboat, restic and borg on one disk image',
    '',
    `Command: \`node dist/scripts/bench-repository.js\` (${o.rounds} rounds, tools interleaved in rotating order; medians). ${setup}`,
    'Each round and tool starts from a fresh repository and a fresh copy of the image, in the page cache. Lifeboat is driven through its CLI,',
    `encrypted (AES-256-GCM, ${DEFAULT_COMPRESSION}, a passphrase like the others), with a fresh catalog per round; its incremental gets the change bitmap`,
    `a VM tracking ${VMM_GRANULARITY / 1024} KiB granules exports (\`vm run --track-granularity 4K\`; the VMM's default is 64 KiB). restic uses its`,
    'defaults (repository v2, auto compression); borg uses `repokey-blake2` and lz4. Lifeboat fsyncs the restored image before it reports',
    `success; restic and borg do not. Bytes added are \`du -sb\` of the repository.${keepCaCerts ? '' : ' NODE_EXTRA_CA_CERTS, set in this environment, is removed from Lifeboat\'s environment (it costs every Node process start 40-140 ms here parsing a CA bundle; restic and borg are not Node programs).'}`,
    '',
    body,
  ].join('\n');
  process.stdout.write(text + '\n');
  if (o.docs) writeDocs(o, text);
}

main();
