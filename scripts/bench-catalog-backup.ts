// Benchmark (not a test; mocha does not run it): `lifeboat backup` of a half-full disk, then an
// incremental after 1% of its 4 KiB blocks were rewritten, given a 4 KiB change bitmap, with
// LIFEBOAT_TRACE=1: prints when the point was stored and when it was recorded in the catalog.
// Run: node dist/scripts/bench-catalog-backup.js [SIZE_GIB] [DIR]   (default 4 GiB, /tmp/lifeboat-bench-catalog)

import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, rmSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { changeBitmapFromRanges, encodeChangeBitmap } from '../replication/repository/change-bitmap.js';

const GiB = 1024 ** 3;
const size = Number(process.argv[2] ?? 4) * GiB;
const dir = process.argv[3] ?? '/tmp/lifeboat-bench-catalog';
const main = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

rmSync(dir, { recursive: true, force: true });
mkdirSync(dir, { recursive: true });
const image = join(dir, 'vda.img');
const fd = openSync(image, 'w');
ftruncateSync(fd, size);
// Half the disk holds (incompressible) data: every other 64 KiB cell.
const cell = randomBytes(65536);
for (let at = 0; at < size; at += 2 * 65536) {
  cell.writeUInt32LE(at / 65536, 0);
  writeSync(fd, cell, 0, cell.length, at);
}
const blocks = size / 4096;
const changed = new Set<number>();
while (changed.size < Math.round(blocks / 100)) changed.add(Math.floor(Math.random() * blocks));
closeSync(fd);
const ranges = [...changed].sort((a, b) => a - b).map((b) => ({ offset: b * 4096, length: 4096 }));
const E1 = '1'.repeat(32);
const E2 = '2'.repeat(32);
writeFileSync(join(dir, 'full.bitmap'), encodeChangeBitmap({ ...changeBitmapFromRanges(size, 4096, []), baseEpoch: null, epoch: E1 }));
writeFileSync(join(dir, 'incr.bitmap'), encodeChangeBitmap({ ...changeBitmapFromRanges(size, 4096, ranges), baseEpoch: E1, epoch: E2 }));
writeFileSync(join(dir, 'password'), 'benchmark\n');

const env = { ...process.env, LIFEBOAT_HOME: join(dir, 'home'), LIFEBOAT_TRACE: '1', NODE_EXTRA_CA_CERTS: undefined };
const lifeboat = (args: string[]) => {
  const started = Date.now();
  const r = spawnSync(process.execPath, [main, ...args, '--password-file', join(dir, 'password')], { env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`lifeboat ${args.join(' ')} failed: ${r.stderr}`);
  return { ms: Date.now() - started, stderr: r.stderr, stdout: r.stdout };
};
const repo = join(dir, 'repo');
lifeboat(['repo', 'init', '--target', repo]);
const backup = (bitmap: string) => lifeboat(['backup', image, '--target', repo, '--vm', 'bench', '--disk', 'vda', '--bitmap', join(dir, bitmap)]);
const at = (stderr: string, what: string) => Number(new RegExp(`(\\d+) ms since start: ${what}`).exec(stderr)?.[1] ?? NaN);
const full = backup('full.bitmap');
process.stdout.write(`full backup: ${full.ms} ms; ${full.stdout}`);
// Rewrite the changed blocks.
const w = openSync(image, 'r+');
for (const r of ranges) writeSync(w, randomBytes(4096), 0, 4096, r.offset);
closeSync(w);
const incr = backup('incr.bitmap');
process.stdout.write(`incremental: ${incr.ms} ms; ${incr.stdout}`);
for (const line of incr.stderr.split('\n')) if (/since start|catalog record/.test(line)) process.stdout.write(`  ${line}\n`);
const stored = at(incr.stderr, 'point stored');
const recorded = at(incr.stderr, 'point recorded in the catalog');
process.stdout.write(`point stored at ${stored} ms, recorded in the catalog at ${recorded} ms: recording took ${recorded - stored} ms\n`);
rmSync(dir, { recursive: true, force: true });
