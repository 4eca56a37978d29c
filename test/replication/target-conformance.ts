// What the repository relies on from every Target (replication/target.ts), as one mocha suite that each
// target runs: `describeTargetConformance('local directory', async () => createLocalTarget(dir))`.
// Every test writes under its own random key namespace, so a target may be shared and reused.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { AlreadyExistsError, NotFoundError, type ObjectInfo, type Target } from '../../replication/target.js';

const MiB = 1024 * 1024;
/** Above the S3 target's multipart threshold (16 MiB), with a part boundary to read across. */
const LARGE_OBJECT_BYTES = 20 * MiB + 12345;
/** S3 lists at most 1000 keys per page: more than that needs continuation. */
const MANY_KEYS = 1100;
const CONCURRENT_CREATORS = 8;
/** Parts of the pack put from its parts: a sealed blob is three (nonce, body, tag). */
const PACK_PARTS = 3 * 1000 + 2;

async function collect(iterable: AsyncIterable<ObjectInfo>): Promise<ObjectInfo[]> {
  const all: ObjectInfo[] = [];
  for await (const info of iterable) all.push(info);
  return all.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/** Runs fn over items, `limit` at a time. */
async function eachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}

export function describeTargetConformance(name: string, makeTarget: () => Promise<Target>): void {
  describe(`${name}: target conformance`, function () {
    let target: Target;
    let ns: string;

    before(async function () {
      this.timeout(180_000);
      target = await makeTarget();
    });
    after(async () => {
      await target?.close();
    });
    beforeEach(() => {
      ns = `conformance-${randomBytes(6).toString('hex')}`;
    });

    it('returns an empty, a small and a 20 MiB object byte for byte as they were put', async function () {
      this.timeout(120_000);
      const bodies = { empty: Buffer.alloc(0), small: Buffer.from('recovery point manifest\n'), large: randomBytes(LARGE_OBJECT_BYTES) };
      for (const [key, body] of Object.entries(bodies)) await target.put(`${ns}/${key}`, body);
      for (const [key, body] of Object.entries(bodies)) {
        const got = await target.get(`${ns}/${key}`);
        assert.equal(got.length, body.length, `${key}: size`);
        assert.ok(got.equals(body), `${key}: contents differ`);
      }
    });

    it('reads byte ranges: inside an object, across 16 MiB, and running past the end (up to the end)', async function () {
      this.timeout(120_000);
      const body = randomBytes(LARGE_OBJECT_BYTES);
      await target.put(`${ns}/pack`, body);
      const ranges = [
        { offset: 0, length: 1 },
        { offset: 4096, length: 65536 },
        { offset: 16 * MiB - 100, length: 200 },
        { offset: body.length - 10, length: 10 },
      ];
      for (const range of ranges) {
        const got = await target.get(`${ns}/pack`, range);
        assert.ok(got.equals(body.subarray(range.offset, range.offset + range.length)), `range ${range.offset}+${range.length}`);
      }
      const tail = await target.get(`${ns}/pack`, { offset: body.length - 5, length: 100 });
      assert.ok(tail.equals(body.subarray(body.length - 5)), 'a range past the end returns the bytes up to the end');
    });

    it('head gives the size of a present object and null for an absent one', async () => {
      await target.put(`${ns}/present`, Buffer.alloc(777, 7));
      assert.deepEqual(await target.head(`${ns}/present`), { key: `${ns}/present`, size: 777 });
      assert.equal(await target.head(`${ns}/absent`), null);
    });

    it('get of a key that was never written throws NotFoundError, with or without a range', async () => {
      await assert.rejects(target.get(`${ns}/missing`), NotFoundError);
      await assert.rejects(target.get(`${ns}/missing`, { offset: 0, length: 10 }), NotFoundError);
    });

    it('a plain put replaces an existing object', async () => {
      await target.put(`${ns}/lease`, Buffer.from('first'));
      await target.put(`${ns}/lease`, Buffer.from('second, longer'));
      assert.equal((await target.get(`${ns}/lease`)).toString(), 'second, longer');
    });

    it('lists every key under a prefix with its size, and nothing outside it', async () => {
      const keys = [`${ns}/packs/aa/1`, `${ns}/packs/ab/2`, `${ns}/packs/ab/3`, `${ns}/points/x`, `${ns}/packsx`];
      for (const [i, key] of keys.entries()) await target.put(key, Buffer.alloc(i + 1));
      assert.deepEqual(await collect(target.list(`${ns}/packs/`)), [
        { key: `${ns}/packs/aa/1`, size: 1 },
        { key: `${ns}/packs/ab/2`, size: 2 },
        { key: `${ns}/packs/ab/3`, size: 3 },
      ]);
      assert.deepEqual((await collect(target.list(`${ns}/packs/a`))).map((o) => o.key), [`${ns}/packs/aa/1`, `${ns}/packs/ab/2`, `${ns}/packs/ab/3`]);
      assert.deepEqual((await collect(target.list(`${ns}/packs/ab/`))).map((o) => o.key), [`${ns}/packs/ab/2`, `${ns}/packs/ab/3`]);
      assert.deepEqual(await collect(target.list(`${ns}/nothing-here/`)), []);
      assert.equal((await collect(target.list(`${ns}/`))).length, keys.length);
    });

    it(`lists all of ${MANY_KEYS} keys (more than one page of an S3 listing)`, async function () {
      this.timeout(300_000);
      const keys = Array.from({ length: MANY_KEYS }, (_, i) => `${ns}/many/${String(i).padStart(5, '0')}`);
      await eachLimited(keys, 16, (key) => target.put(key, Buffer.from(key)));
      const listed = await collect(target.list(`${ns}/many/`));
      assert.equal(listed.length, MANY_KEYS);
      assert.deepEqual(listed.map((o) => o.key), keys);
      assert.ok(listed.every((o, i) => o.size === keys[i].length));
    });

    it('delete removes an object (gone from get, head and list); deleting an absent key succeeds', async () => {
      await target.put(`${ns}/old-pack`, Buffer.from('garbage'));
      await target.put(`${ns}/kept-pack`, Buffer.from('live'));
      await target.delete(`${ns}/old-pack`);
      await assert.rejects(target.get(`${ns}/old-pack`), NotFoundError);
      assert.equal(await target.head(`${ns}/old-pack`), null);
      assert.deepEqual((await collect(target.list(`${ns}/`))).map((o) => o.key), [`${ns}/kept-pack`]);
      await target.delete(`${ns}/old-pack`);
      await target.delete(`${ns}/never-written`);
    });

    it('a create-only put of an existing key throws AlreadyExistsError and leaves the first body in place', async () => {
      await target.put(`${ns}/manifest`, Buffer.from('first writer'), { ifNoneMatch: true });
      await assert.rejects(target.put(`${ns}/manifest`, Buffer.from('second writer'), { ifNoneMatch: true }), AlreadyExistsError);
      assert.equal((await target.get(`${ns}/manifest`)).toString(), 'first writer');
    });

    it('a pack put from its parts (thousands of buffers: views, empty ones, nonce-body-tag triples) is stored as their bytes back to back, create-only', async function () {
      this.timeout(120_000);
      // More parts than one writev takes (IOV_MAX is 1024 on Linux), some of them views into one buffer.
      const shared = randomBytes(64 * 1024);
      const parts: Uint8Array[] = [];
      for (let i = 0; i < PACK_PARTS; i++) {
        if (i % 3 === 0) parts.push(shared.subarray(i % 1000, (i % 1000) + 12));
        else if (i % 3 === 1) parts.push(randomBytes(i % 97 === 0 ? 0 : 1 + (i % 5000)));
        else parts.push(new Uint8Array(shared.buffer, shared.byteOffset + 2000 + (i % 3000), 16));
      }
      const whole = Buffer.concat(parts);
      await target.putParts(`${ns}/pack`, parts, { ifNoneMatch: true });
      const got = await target.get(`${ns}/pack`);
      assert.equal(got.length, whole.length);
      assert.ok(got.equals(whole), 'contents differ');
      assert.deepEqual(await target.head(`${ns}/pack`), { key: `${ns}/pack`, size: whole.length });
      await assert.rejects(target.putParts(`${ns}/pack`, [Buffer.from('another'), Buffer.from(' writer')], { ifNoneMatch: true }), AlreadyExistsError);
      assert.ok((await target.get(`${ns}/pack`)).equals(whole), 'the first body stays');
    });

    it('a create-only put succeeds again once the key has been deleted', async () => {
      await target.put(`${ns}/lock`, Buffer.from('holder 1'), { ifNoneMatch: true });
      await target.delete(`${ns}/lock`);
      await target.put(`${ns}/lock`, Buffer.from('holder 2'), { ifNoneMatch: true });
      assert.equal((await target.get(`${ns}/lock`)).toString(), 'holder 2');
    });

    it(`of ${CONCURRENT_CREATORS} writers racing to create the same lock, exactly one wins and its body is stored`, async function () {
      this.timeout(60_000);
      for (let round = 0; round < 5; round++) {
        const key = `${ns}/lease-${round}`;
        const bodies = Array.from({ length: CONCURRENT_CREATORS }, (_, i) => Buffer.from(`writer ${i} ${randomBytes(8).toString('hex')}`));
        const results = await Promise.allSettled(bodies.map((body) => target.put(key, body, { ifNoneMatch: true })));
        const winners = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
        assert.equal(winners.length, 1, `round ${round}: ${winners.length} writers won`);
        for (const r of results) {
          if (r.status === 'rejected') assert.ok(r.reason instanceof AlreadyExistsError, `round ${round}: a loser got ${r.reason}`);
        }
        assert.ok((await target.get(key)).equals(bodies[winners[0]]), `round ${round}: stored body is not the winner's`);
      }
    });
  });
}
