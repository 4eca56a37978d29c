// The local-directory target: what the repository relies on from it, on a real file system.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AlreadyExistsError, NotFoundError, ObjectLockedError, TargetError } from '../../replication/target.js';
import { createLocalTarget } from '../../replication/targets/local.js';
import { openTarget, parseTargetSpec, TargetSpecError } from '../../replication/targets/open.js';
import { describeTargetConformance } from './target-conformance.js';

describe('local directory target', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'lifeboat-local-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  async function keys(t: ReturnType<typeof createLocalTarget>, prefix: string): Promise<string[]> {
    const out: string[] = [];
    for await (const o of t.list(prefix)) out.push(`${o.key}:${o.size}`);
    return out.sort();
  }

  it('stores, reads whole and in ranges, lists by prefix and deletes objects', async () => {
    const t = createLocalTarget(join(dir, 'repo'));
    await t.put('packs/ab/abc', Buffer.from('0123456789'));
    await t.put('packs/cd/cde', Buffer.from('xyz'));
    await t.put('points/p1', Buffer.from('point'));
    assert.equal((await t.get('packs/ab/abc')).toString(), '0123456789');
    assert.equal((await t.get('packs/ab/abc', { offset: 3, length: 4 })).toString(), '3456');
    assert.equal((await t.get('packs/ab/abc', { offset: 8, length: 10 })).toString(), '89', 'a range past the end returns what there is');
    assert.deepEqual(await t.head('points/p1'), { key: 'points/p1', size: 5 });
    assert.equal(await t.head('points/none'), null);
    assert.deepEqual(await keys(t, 'packs/'), ['packs/ab/abc:10', 'packs/cd/cde:3']);
    assert.deepEqual(await keys(t, 'packs/a'), ['packs/ab/abc:10']);
    assert.deepEqual(await keys(t, 'missing/'), []);
    assert.deepEqual((await keys(t, '')).length, 3);
    await t.delete('packs/ab/abc');
    await t.delete('packs/ab/abc');
    await assert.rejects(t.get('packs/ab/abc'), NotFoundError);
  });

  it('a create-only put is atomic: of many racing writers exactly one wins', async () => {
    const t = createLocalTarget(dir);
    const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => t.put('leases/gc', Buffer.from(`writer ${i}`), { ifNoneMatch: true })));
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    assert.ok(results.every((r) => r.status === 'fulfilled' || r.reason instanceof AlreadyExistsError));
    const winner = results.findIndex((r) => r.status === 'fulfilled');
    assert.equal((await t.get('leases/gc')).toString(), `writer ${winner}`);
    assert.deepEqual(readdirSync(join(dir, 'leases')), ['gc'], 'no temporary files are left behind');
  });

  it('a plain put replaces an object whole; readers never see a partial object', async () => {
    const t = createLocalTarget(dir);
    const a = Buffer.alloc(4 * 1024 * 1024, 'a');
    const b = Buffer.alloc(4 * 1024 * 1024, 'b');
    await t.put('obj', a);
    const writes = Promise.all([t.put('obj', b), t.put('obj', a), t.put('obj', b)]);
    for (let i = 0; i < 20; i++) {
      const got = await t.get('obj');
      assert.ok(got.equals(a) || got.equals(b), 'an object is always one whole version');
    }
    await writes;
  });

  it('an object written while it is produced (a pack as its blobs are sealed) appears only when finished, whole; an aborted one leaves nothing', async () => {
    const t = createLocalTarget(dir);
    const parts = Array.from({ length: 40 }, (_, i) => Buffer.alloc(256 * 1024, i));
    const w = t.openWriter('packs/ab/streamed', { ifNoneMatch: true });
    for (let i = 0; i < 36; i += 4) w.write(parts.slice(i, i + 4));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(await t.head('packs/ab/streamed'), null, 'not visible before finish');
    assert.deepEqual(await keys(t, 'packs/'), [], 'the temporary file is not listed');
    await w.finish(parts.slice(36));
    assert.ok((await t.get('packs/ab/streamed')).equals(Buffer.concat(parts)));
    assert.deepEqual(readdirSync(join(dir, 'packs', 'ab')), ['streamed'], 'no temporary file is left behind');

    const loser = t.openWriter('packs/ab/streamed', { ifNoneMatch: true });
    loser.write([Buffer.from('another writer')]);
    await assert.rejects(loser.finish([]), AlreadyExistsError);
    const dropped = t.openWriter('packs/cd/dropped', { ifNoneMatch: true });
    dropped.write(parts.slice(0, 8));
    await dropped.abort();
    assert.equal(await t.head('packs/cd/dropped'), null);
    assert.deepEqual(readdirSync(join(dir, 'packs', 'ab')), ['streamed']);
    assert.deepEqual(readdirSync(join(dir, 'packs', 'cd')), [], 'the aborted writer removed its temporary file');
  });

  it('ignores temporary files of interrupted puts and refuses keys that leave the directory', async () => {
    const t = createLocalTarget(dir);
    await t.put('index/x', Buffer.from('x'));
    writeFileSync(join(dir, 'index', '.tmp-deadbeef'), 'partial');
    assert.deepEqual(await keys(t, 'index/'), ['index/x:1']);
    for (const bad of ['../escape', '/abs', 'a//b', 'a/./b', '', '.hidden']) {
      await assert.rejects(t.put(bad, Buffer.from('x')), TargetError, bad);
    }
    assert.ok(!existsSync(join(dir, '..', 'escape')));
  });

  it('an immutable file (chattr +i) behaves as a retention-locked object', async () => {
    const t = createLocalTarget(dir);
    await t.put('packs/aa/locked', Buffer.from('keep me'));
    const path = join(dir, 'packs', 'aa', 'locked');
    try {
      execFileSync('chattr', ['+i', path], { stdio: 'pipe' });
    } catch (err) {
      throw new Error(`chattr +i needs root (CAP_LINUX_IMMUTABLE): ${(err as { stderr?: Buffer }).stderr?.toString().trim()}`);
    }
    try {
      await assert.rejects(t.delete('packs/aa/locked'), ObjectLockedError);
      assert.equal((await t.get('packs/aa/locked')).toString(), 'keep me');
    } finally {
      execFileSync('chattr', ['-i', path]);
    }
  });

  it('target specs: paths and file: are local; s3:// and lifeboat:// are parsed; anything else is refused', async () => {
    assert.deepEqual(parseTargetSpec('/srv/backups'), { kind: 'local', location: '/srv/backups' });
    assert.deepEqual(parseTargetSpec('file:rel/dir'), { kind: 'local', location: 'rel/dir' });
    assert.deepEqual(parseTargetSpec('file:///abs/dir'), { kind: 'local', location: '/abs/dir' });
    assert.deepEqual(parseTargetSpec('s3://my-bucket'), { kind: 's3', location: 'my-bucket' });
    assert.deepEqual(parseTargetSpec('s3://my-bucket/lifeboat/site-a/'), { kind: 's3', location: 'my-bucket', prefix: 'lifeboat/site-a' });
    assert.deepEqual(parseTargetSpec('lifeboat://dr.example.com:7443/vmrepo'), { kind: 'site', location: 'https://dr.example.com:7443', prefix: 'vmrepo' });
    assert.deepEqual(parseTargetSpec('http://127.0.0.1:8080/r'), { kind: 'site', location: 'http://127.0.0.1:8080', prefix: 'r' });
    assert.throws(() => parseTargetSpec('ftp://host/x'), TargetSpecError);
    assert.throws(() => parseTargetSpec('s3://UPPER_case'), /not a valid S3 bucket name/);
    const t = await openTarget(`file:${dir}`);
    assert.equal(t.description, `file:${dir}`);
  });
});

describe('local directory target, conformance', () => {
  const dirs: string[] = [];
  after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
  describeTargetConformance('local directory', async () => {
    const d = mkdtempSync(join(tmpdir(), 'lifeboat-local-conformance-'));
    dirs.push(d);
    return createLocalTarget(d);
  });
});
