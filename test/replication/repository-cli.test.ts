// The repository commands as a user runs them: lifeboat repo init / backup / points / restore / verify /
// forget / gc, their --json output, their one-line errors, and what happens when a backup is killed.

import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Repository } from '../../replication/repository/repository.js';
import { createLocalTarget } from '../../replication/targets/local.js';
import { MiB, sameFile, seededBytes, writeImage, writeMixedImage } from './images.js';

/** The CLI compiled next to this test (dist/ in CI, a helper's outDir while developing). */
const MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const PASSWORD = 'the repository passphrase';

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function lifeboat(args: string[], env: Record<string, string> = {}): Run {
  const r = spawnSync(process.execPath, [MAIN, ...args], {
    encoding: 'utf8',
    env: { ...process.env, LIFEBOAT_PASSWORD: PASSWORD, ...env },
    maxBuffer: 64 * MiB,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(args: string[], env: Record<string, string> = {}): Run {
  const r = lifeboat(args, env);
  assert.equal(r.status, 0, `lifeboat ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r;
}

function json<T = Record<string, unknown>>(args: string[], env: Record<string, string> = {}): T {
  return JSON.parse(ok([...args, '--json'], env).stdout) as T;
}

/** A failing command prints exactly one line on stderr. */
function failsWith(args: string[], status: number, pattern: RegExp, env: Record<string, string> = {}): string {
  const r = lifeboat(args, env);
  assert.equal(r.status, status, `lifeboat ${args.join(' ')}: expected exit ${status}, got ${r.status}; stderr: ${r.stderr}`);
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0], pattern);
  return lines[0];
}

function startBackup(args: string[]): { child: ChildProcess; done: Promise<Run> } {
  const child = spawn(process.execPath, [MAIN, 'backup', ...args], { env: { ...process.env, LIFEBOAT_PASSWORD: PASSWORD } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const done = new Promise<Run>((resolve) => child.on('close', (status) => resolve({ status, stdout, stderr })));
  return { child, done };
}

/** Waits until the repository holds at least `count` index objects (packs made durable by a backup). */
async function waitForIndexObjects(repoDir: string, count: number, child: ChildProcess): Promise<void> {
  const dir = join(repoDir, 'index');
  for (let i = 0; i < 6000; i++) {
    if (existsSync(dir) && readdirSync(dir).filter((n) => !n.startsWith('.')).length >= count) return;
    if (child.exitCode !== null) throw new Error('the backup ended before any pack was stored');
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('no pack appeared within 60 s');
}

/** Waits until a pack is being written: a temporary file of at least 1 MiB under packs/. */
async function waitForHalfWrittenPack(repoDir: string, child: ChildProcess): Promise<void> {
  const packs = join(repoDir, 'packs');
  const halfWritten = () =>
    readdirSync(packs).some((d) =>
      readdirSync(join(packs, d)).some((n) => {
        try {
          return n.startsWith('.tmp-') && statSync(join(packs, d, n)).size >= MiB;
        } catch {
          return false; // published or removed meanwhile
        }
      }),
    );
  for (let i = 0; i < 6000; i++) {
    if (halfWritten()) return;
    if (child.exitCode !== null) throw new Error('the backup ended before a pack was seen half written');
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error('no pack was seen half written within 30 s');
}

describe('lifeboat repository commands', function () {
  this.timeout(300_000);
  let dir: string;
  let repo: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'lifeboat-cli-test-'));
    repo = join(dir, 'repo');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('init, backup, list, restore and verify a disk image through the CLI, with --json', () => {
    const init = json(['repo', 'init', '--target', repo, '--pack-size', '1M']);
    assert.equal(init.encryption, 'aes-256-gcm');
    const img = join(dir, 'disk.img');
    const size = writeMixedImage(img);
    const b = json(['backup', img, '--target', repo, '--vm', 'web']);
    assert.match(String(b.point), /^[0-9a-f]{32}$/);
    assert.equal(b.bytesRead, size);
    assert.ok(Number(b.bytesAdded) > 0 && Number(b.chunksNew) > 0);
    for (const k of ['chunksReused', 'durationMs', 'zeroChunks']) assert.equal(typeof b[k], 'number', k);

    const points = json<{ id: string; vm: { name: string }; disks: { name: string; size: number }[] }[]>(['points', 'list', '--target', repo]);
    assert.deepEqual(points.map((p) => [p.id, p.vm.name, p.disks[0].name, p.disks[0].size]), [[b.point, 'web', 'disk', size]]);
    assert.match(ok(['points', 'list', '--target', repo]).stdout, new RegExp(`^${String(b.point).slice(0, 8)} .* web `));

    const out = join(dir, 'restored.img');
    const r = json(['restore', String(b.point).slice(0, 8), '--target', repo, '--to', out]);
    assert.equal(r.size, size);
    assert.ok(sameFile(img, out));
    failsWith(['restore', 'latest', '--target', repo, '--to', out], 1, /already exists; give --force to replace it$/);
    ok(['restore', 'latest', '--target', repo, '--to', out, '--force']);
    assert.ok(sameFile(img, out));

    const v = json(['verify', '--target', repo, '--read-data']);
    assert.equal(v.errors, 0);
    assert.match(ok(['verify', '--target', repo]).stdout, /^verified 1 points, \d+ packs, \d+ blobs: no errors\n$/);
  });

  it('every repository command has --help', () => {
    for (const cmd of [['repo', 'init'], ['repo', 'key', 'add'], ['repo', 'key', 'list'], ['repo', 'key', 'remove'], ['backup'], ['points', 'list'], ['points', 'show'], ['restore'], ['verify'], ['forget'], ['gc']]) {
      const r = ok([...cmd, '--help']);
      assert.match(r.stdout, new RegExp(`^Usage: lifeboat ${cmd.join(' ')}`));
    }
  });

  it('bad input gets one clear line and a non-zero exit', () => {
    failsWith(['points', 'list'], 2, /^lifeboat points list: missing --target T \(or set LIFEBOAT_TARGET\)$/);
    failsWith(['points', 'list', '--target', repo], 1, /^lifeboat points list: there is no Lifeboat repository at file:.*repo \(no config object\); create one with 'lifeboat repo init/);
    failsWith(['repo', 'init', '--target', repo], 2, /give --password-file FILE, LIFEBOAT_PASSWORD or --key-file FILE .* or --no-encryption$/, { LIFEBOAT_PASSWORD: '' });
    ok(['repo', 'init', '--target', repo]);
    failsWith(['repo', 'init', '--target', repo], 1, /a repository already exists at file:/);
    failsWith(['points', 'list', '--target', repo], 1, new RegExp(`^lifeboat points list: wrong passphrase or key file for repository at file:${repo}$`), { LIFEBOAT_PASSWORD: 'not it' });
    failsWith(['backup', join(dir, 'nope.img'), '--target', repo], 1, /cannot open disk nope image .*nope\.img/);
    failsWith(['backup', '--target', repo], 2, /give at least one disk image file/);
    failsWith(['restore', 'abcdef12', '--target', repo, '--to', join(dir, 'x')], 1, /no point abcdef12 in file:/);
    failsWith(['backup', dir, '--target', repo], 1, /is not a regular file/);
    const bitmap = join(dir, 'bad.bitmap');
    writeFileSync(bitmap, 'not a bitmap');
    writeImage(join(dir, 'd.img'), MiB, []);
    failsWith(['backup', join(dir, 'd.img'), '--bitmap', bitmap, '--target', repo], 1, /change bitmap .*bad\.bitmap is not a Lifeboat change bitmap/);
    failsWith(['gc', '--target', 's3://Bad_Bucket'], 2, /not a valid S3 bucket name/);
  });

  it('a key file created by repo init unlocks the repository; a wrong key file is refused', () => {
    const keyFile = join(dir, 'repo.key');
    const init = json(['repo', 'init', '--target', repo, '--key-file', keyFile]);
    assert.equal(init.createdKeyFile, true);
    assert.equal(statSync(keyFile).mode & 0o777, 0o600);
    const img = join(dir, 'disk.img');
    writeMixedImage(img);
    ok(['backup', img, '--target', repo, '--key-file', keyFile], { LIFEBOAT_PASSWORD: '' });
    const other = join(dir, 'other.key');
    writeFileSync(other, seededBytes('other', 32).toString('base64'));
    failsWith(['points', 'list', '--target', repo, '--key-file', other], 1, /wrong passphrase or key file for repository at/, { LIFEBOAT_PASSWORD: '' });
    const pw = join(dir, 'pw');
    writeFileSync(pw, 'second passphrase\n');
    ok(['repo', 'key', 'add', '--target', repo, '--key-file', keyFile, '--new-password-file', pw], { LIFEBOAT_PASSWORD: '' });
    assert.equal(json<unknown[]>(['points', 'list', '--target', repo, '--password-file', pw]).length, 1);
  });

  it('a corrupted chunk, a truncated pack and a missing pack each give a clear error naming what is lost', () => {
    ok(['repo', 'init', '--target', repo, '--pack-size', '1M']);
    const img = join(dir, 'disk.img');
    writeImage(img, 3 * MiB, [{ offset: 0, data: seededBytes('x', 3 * MiB) }]);
    const { point } = json<{ point: string }>(['backup', img, '--target', repo]);
    const packs = readdirSync(join(repo, 'packs'), { recursive: true, withFileTypes: true })
      .filter((e) => e.isFile())
      .map((e) => join(e.parentPath, e.name))
      .sort((a, b) => statSync(b).size - statSync(a).size);
    assert.ok(packs.length >= 3);
    const out = join(dir, 'out.img');

    // A flipped byte inside the first blob of the largest pack.
    const flip = spawnSync('sh', ['-c', `printf '\\377' | dd of='${packs[0]}' bs=1 seek=100 conv=notrunc status=none`]);
    assert.equal(flip.status, 0);
    failsWith(['restore', point, '--target', repo, '--to', out], 1, new RegExp(`^lifeboat restore: point ${point} disk disk: chunk at offset \\d+ is corrupt: .*\\(pack [0-9a-f]{32}, blob offset 0\\)$`));
    assert.ok(!existsSync(out));
    const v = lifeboat(['verify', '--target', repo, '--read-data']);
    assert.equal(v.status, 1);
    assert.match(v.stderr, new RegExp(`^lifeboat verify: error: point ${point} disk disk: chunk at offset \\d+ is corrupt`, 'm'));

    // A truncated pack.
    spawnSync('truncate', ['-s', '1000', packs[1]]);
    const vt = lifeboat(['verify', '--target', repo]);
    assert.equal(vt.status, 1);
    assert.match(vt.stderr, /^lifeboat verify: error: pack [0-9a-f]{32} is truncated: 1000 bytes, its index says \d+$/m);

    // A missing pack.
    rmSync(packs[2]);
    const vm = lifeboat(['verify', '--target', repo]);
    assert.equal(vm.status, 1);
    assert.match(vm.stderr, /^lifeboat verify: error: pack [0-9a-f]{32} is missing \(its index lists \d+ blobs\)$/m);
    assert.match(vm.stdout, /: \d+ errors/);
  });

  it('kill -9 during a backup, run it again: only the missing part is sent, no half point is ever listed, and the repository verifies', async () => {
    ok(['repo', 'init', '--target', repo, '--pack-size', '1M']);
    const img = join(dir, 'big.img');
    const size = 192 * MiB;
    writeImage(img, size, [{ offset: 0, data: seededBytes('big', size) }]);

    const first = startBackup([img, '--target', repo, '--json']);
    await waitForIndexObjects(repo, 8, first.child);
    first.child.kill('SIGKILL');
    const killed = await first.done;
    assert.equal(killed.status, null, 'the backup was killed, it did not finish');
    assert.deepEqual(json<unknown[]>(['points', 'list', '--target', repo]), [], 'no half point is listed');

    // What the dead run made durable: packs with their index objects.
    const stored = await Repository.open(createLocalTarget(repo), { secret: { passphrase: PASSWORD } });
    const index = await stored.loadIndex();
    const chunksStored = index.size;
    assert.ok(chunksStored >= 8 * 15, `the dead run stored ${chunksStored} chunks`);

    const again = json<{ point: string; bytesAdded: number; chunksReused: number; chunksNew: number }>(['backup', img, '--target', repo]);
    const chunks = size / 65536;
    assert.equal(again.chunksReused, chunksStored, 'every chunk the dead run stored is reused');
    assert.equal(again.chunksNew, chunks - chunksStored + 1, 'the rest, and the map page, are new');
    assert.ok(again.bytesAdded < size - chunksStored * 65536 + 2 * MiB, `re-sent ${again.bytesAdded} bytes`);

    const points = json<{ id: string }[]>(['points', 'list', '--target', repo]);
    assert.deepEqual(points.map((p) => p.id), [again.point]);
    const v = json<{ errors: number }>(['verify', '--target', repo, '--read-data']);
    assert.equal(v.errors, 0);
    const out = join(dir, 'out.img');
    ok(['restore', again.point, '--target', repo, '--to', out]);
    assert.ok(sameFile(img, out));
  });

  it('packs are written while the image is read: kill -9 with a pack half written, run again: nothing half-written is used, the repository verifies and restores', async () => {
    ok(['repo', 'init', '--target', repo]);
    const img = join(dir, 'big.img');
    const size = 96 * MiB;
    writeImage(img, size, [{ offset: 0, data: seededBytes('streamed', size) }]);

    const first = startBackup([img, '--target', repo, '--json']);
    await waitForIndexObjects(repo, 1, first.child);
    await waitForHalfWrittenPack(repo, first.child);
    first.child.kill('SIGKILL');
    assert.equal((await first.done).status, null, 'the backup was killed, it did not finish');
    assert.deepEqual(json<unknown[]>(['points', 'list', '--target', repo]), [], 'no half point is listed');
    const stored = await Repository.open(createLocalTarget(repo), { secret: { passphrase: PASSWORD } });
    const chunksStored = (await stored.loadIndex()).size;
    assert.ok(chunksStored > 0, 'the first pack is durable');
    assert.equal(json<{ errors: number }>(['verify', '--target', repo, '--read-data']).errors, 0, 'what the dead run left verifies');

    const again = json<{ point: string; chunksReused: number; chunksNew: number }>(['backup', img, '--target', repo]);
    assert.equal(again.chunksReused, chunksStored, 'every chunk of the durable packs is reused, nothing of a half-written one');
    assert.equal(again.chunksReused + again.chunksNew, size / 65536 + 1, 'the rest, and the map page, are new');
    assert.equal(json<{ errors: number }>(['verify', '--target', repo, '--read-data']).errors, 0);
    const out = join(dir, 'out.img');
    ok(['restore', again.point, '--target', repo, '--to', out]);
    assert.ok(sameFile(img, out));
  });

  it('gc run while a backup is running loses nothing; after the backup a second gc reclaims the space', async () => {
    ok(['repo', 'init', '--target', repo, '--pack-size', '1M']);
    const img = join(dir, 'big.img');
    writeImage(img, 32 * MiB, [{ offset: 0, data: seededBytes('old', 32 * MiB) }]);
    const old = json<{ point: string }>(['backup', img, '--target', repo]);
    ok(['forget', old.point, '--target', repo]);
    // The new image shares its first 32 MiB with the forgotten point, whose packs gc finds unused.
    writeImage(img, 160 * MiB, [{ offset: 0, data: seededBytes('old', 32 * MiB) }, { offset: 32 * MiB, data: seededBytes('new', 128 * MiB) }]);
    const running = startBackup([img, '--target', repo, '--json']);
    await waitForIndexObjects(repo, 40, running.child);
    const during = json<{ packsDeleted: number; packsWaiting: number }>(['gc', '--target', repo]);
    const finished = await running.done;
    assert.equal(finished.status, 0, finished.stderr);
    assert.ok(running.child.exitCode === 0);
    assert.equal(during.packsDeleted, 0);
    const point = JSON.parse(finished.stdout).point as string;
    const out = join(dir, 'out.img');
    ok(['restore', point, '--target', repo, '--to', out]);
    assert.ok(sameFile(img, out));
    assert.equal(json<{ errors: number }>(['verify', '--target', repo, '--read-data']).errors, 0);
    const after = json<{ packsWaiting: number; points: number }>(['gc', '--target', repo]);
    assert.equal(after.packsWaiting, 0);
    ok(['restore', point, '--target', repo, '--to', out, '--force']);
    assert.ok(sameFile(img, out));
  });

  it('forget keeps what the rules say, dry run first; gc then reclaims the rest', () => {
    ok(['repo', 'init', '--target', repo, '--pack-size', '1M']);
    const img = join(dir, 'disk.img');
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      writeImage(img, 2 * MiB, [{ offset: 0, data: seededBytes(`gen ${i}`, 2 * MiB) }]);
      ids.push(json<{ point: string }>(['backup', img, '--target', repo, '--vm', 'db']).point);
    }
    const dry = json<{ decisions: { id: string; keep: boolean }[]; removed: string[] }>(['forget', '--target', repo, '--keep-last', '1', '--dry-run']);
    assert.deepEqual(dry.removed, []);
    assert.deepEqual(dry.decisions.filter((d) => d.keep).map((d) => d.id), [ids[2]]);
    assert.equal(json<unknown[]>(['points', 'list', '--target', repo]).length, 3);
    const text = ok(['forget', '--target', repo, '--keep-last', '1']).stdout;
    assert.match(text, /removed 2 points, kept 1; run 'lifeboat gc' to reclaim space/);
    const g = json<{ packsDeleted: number }>(['gc', '--target', repo]);
    assert.ok(g.packsDeleted >= 4);
    const out = join(dir, 'out.img');
    ok(['restore', 'latest', '--target', repo, '--to', out]);
    assert.ok(sameFile(img, out));
  });
});
