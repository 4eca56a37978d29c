// The S3 target against a real Ceph RADOS Gateway (scripts/ceph-rgw.sh): the shared target conformance
// suite, then what only S3 has: credentials, buckets, prefixes, Object Lock, versioned deletes.

import assert from 'node:assert/strict';
import { ListObjectVersionsCommand } from '@aws-sdk/client-s3';
import { AuthError, NotFoundError, ObjectLockedError, type ObjectInfo } from '../../replication/target.js';
import { BucketNotFoundError, type S3Target } from '../../replication/targets/s3.js';
import { freshBucket, openS3Target, removeBucket, s3Server, withAdminClient } from '../helpers/s3-server.js';
import { describeTargetConformance } from './target-conformance.js';

async function keysOf(iterable: AsyncIterable<ObjectInfo>): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of iterable) keys.push(o.key);
  return keys.sort();
}

describe('S3 target on Ceph RGW', function () {
  this.timeout(120_000);
  const buckets: string[] = [];
  async function bucket(options: Parameters<typeof freshBucket>[0] = {}): Promise<string> {
    const name = await freshBucket(options);
    buckets.push(name);
    return name;
  }
  after(async () => {
    for (const name of buckets) await removeBucket(name);
  });

  describeTargetConformance('S3 target with a prefix (Ceph RGW)', async () => openS3Target(await bucket(), { prefix: 'site-a/repo' }));

  describe('credentials, buckets and prefixes', () => {
    let name: string;
    before(async function () {
      this.timeout(180_000);
      name = await bucket();
    });

    it('a wrong secret key is refused with one line naming the endpoint and the bad key (a real 403 from RGW)', async () => {
      const { endpoint } = await s3Server();
      const target = await openS3Target(name, { secretAccessKey: 'not-the-secret', maxAttempts: 3 });
      try {
        const err = await target.put('k', Buffer.from('x')).then(
          () => assert.fail('a put with a wrong secret succeeded'),
          (e: unknown) => e as Error,
        );
        assert.ok(err instanceof AuthError, `got ${err}`);
        assert.match(err.message, new RegExp(`${endpoint.replace(/[.:/]/g, '\\$&')}.*access key or secret key is wrong`));
        assert.doesNotMatch(err.message, /\n/);
        await assert.rejects(target.get('k'), AuthError);
        await assert.rejects(target.head('k'), AuthError);
      } finally {
        await target.close();
      }
    });

    it('an access key the server does not know is refused with AuthError', async () => {
      const target = await openS3Target(name, { accessKeyId: 'NOSUCHKEY0000000000', maxAttempts: 3 });
      try {
        await assert.rejects(target.head('k'), (err: Error) => err instanceof AuthError && /InvalidAccessKeyId/.test(err.message));
      } finally {
        await target.close();
      }
    });

    it('a bucket that does not exist is named in one clear error, for reads and writes alike', async () => {
      const target = await openS3Target(`${name}-missing`);
      try {
        for (const op of [() => target.put('k', Buffer.from('x')), () => target.head('k'), () => target.get('k')]) {
          await assert.rejects(op(), (err: Error) => err instanceof BucketNotFoundError && err.message.includes(`'${name}-missing' does not exist`));
        }
      } finally {
        await target.close();
      }
    });

    it('ensureBucket creates a missing bucket and accepts an existing one', async () => {
      const target = await openS3Target(`${name}-made`);
      buckets.push(`${name}-made`);
      try {
        await target.ensureBucket();
        await target.ensureBucket();
        await target.put('k', Buffer.from('x'));
        assert.equal((await target.get('k')).toString(), 'x');
      } finally {
        await target.close();
      }
    });

    it('two repositories with different prefixes share a bucket without seeing each other', async () => {
      const a = await openS3Target(name, { prefix: 'vm-a' });
      const b = await openS3Target(name, { prefix: 'vm-b/' });
      const whole = await openS3Target(name);
      try {
        await a.put('config', Buffer.from('a'));
        await b.put('config', Buffer.from('b'));
        assert.equal((await a.get('config')).toString(), 'a');
        assert.equal((await b.get('config')).toString(), 'b');
        assert.deepEqual(await keysOf(a.list('')), ['config']);
        assert.deepEqual((await keysOf(whole.list('vm-'))), ['vm-a/config', 'vm-b/config']);
        await a.delete('config');
        assert.equal((await b.get('config')).toString(), 'b');
      } finally {
        await Promise.all([a.close(), b.close(), whole.close()]);
      }
    });

    it('verifyConditionalWrites passes on Ceph RGW (it enforces If-None-Match)', async () => {
      const target = await openS3Target(name, { prefix: 'probe' });
      try {
        await target.verifyConditionalWrites();
        await target.verifyConditionalWrites();
      } finally {
        await target.close();
      }
    });
  });

  describe('Object Lock', () => {
    let locked: S3Target;
    let versionedOnly: S3Target;
    before(async function () {
      this.timeout(180_000);
      locked = await openS3Target(await bucket({ defaultRetention: { mode: 'GOVERNANCE', days: 1 } }), { prefix: 'repo' });
      versionedOnly = await openS3Target(await bucket({ objectLock: true }), { prefix: 'repo' });
    });
    after(async () => {
      await locked?.close();
      await versionedOnly?.close();
    });

    it('a pack written to a bucket with default retention cannot be deleted: ObjectLockedError, and it still reads back', async () => {
      const pack = Buffer.from('pack that ransomware must not erase');
      await locked.put('packs/p1', pack);
      await locked.put('manifest', Buffer.from('m'), { ifNoneMatch: true });
      await assert.rejects(locked.delete('packs/p1'), (err: Error) => err instanceof ObjectLockedError && /Object Lock/.test(err.message));
      assert.ok((await locked.get('packs/p1')).equals(pack));
      assert.deepEqual(await keysOf(locked.list('packs/')), ['packs/p1']);
    });

    it('on a versioned bucket without retention, delete removes every version, not just adds a delete marker', async () => {
      await versionedOnly.put('lease', Buffer.from('v1'));
      await versionedOnly.put('lease', Buffer.from('v2'));
      await versionedOnly.delete('lease');
      await assert.rejects(versionedOnly.get('lease'), NotFoundError);
      assert.deepEqual(await keysOf(versionedOnly.list('')), []);
      const versions = await withAdminClient((client) => client.send(new ListObjectVersionsCommand({ Bucket: versionedOnly.bucket, Prefix: 'repo/lease' })));
      assert.equal((versions.Versions ?? []).length + (versions.DeleteMarkers ?? []).length, 0, 'versions or delete markers left behind');
      await versionedOnly.put('lease', Buffer.from('v3'), { ifNoneMatch: true });
      assert.equal((await versionedOnly.get('lease')).toString(), 'v3');
    });

    it('ensureBucket refuses to promise Object Lock on an existing bucket that was created without it', async () => {
      const plain = await openS3Target(await bucket());
      try {
        await assert.rejects(plain.ensureBucket({ objectLock: true }), /exists without Object Lock/);
      } finally {
        await plain.close();
      }
    });
  });
});
