// The repository suite against S3 (the local Ceph RGW). Every bucket has Object Lock enabled, so the
// whole suite also proves a repository on an Object-Lock bucket accepts backups, restores and gc;
// `lock` puts a governance-mode retention on one object (the bucket owner bypasses it to clean up).
import { PutObjectRetentionCommand } from '@aws-sdk/client-s3';
import type { Target } from '../../replication/target.js';
import type { S3Target } from '../../replication/targets/s3.js';
import { freshBucket, openS3Target, removeBucket, withAdminClient } from '../helpers/s3-server.js';
import { describeRepositorySuite } from './repository-suite.js';

const PREFIX = 'repo';
const buckets = new WeakMap<Target, string>();

describeRepositorySuite('S3 (Ceph RGW, Object Lock bucket)', {
  async make() {
    const bucket = await freshBucket({ objectLock: true });
    const target: S3Target = await openS3Target(bucket, { prefix: PREFIX });
    buckets.set(target, bucket);
    return target;
  },
  async lock(target, key) {
    const bucket = buckets.get(target)!;
    await withAdminClient((client) =>
      client.send(new PutObjectRetentionCommand({
        Bucket: bucket,
        Key: `${PREFIX}/${key}`,
        Retention: { Mode: 'GOVERNANCE', RetainUntilDate: new Date(Date.now() + 24 * 3600 * 1000) },
      })),
    );
  },
  async unlock() {
    // removeBucket (destroy) deletes governance-locked versions with the owner's bypass.
  },
  async destroy(target) {
    const bucket = buckets.get(target);
    if (bucket) await removeBucket(bucket);
  },
});
