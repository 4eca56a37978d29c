// The S3 endpoint for tests: a real Ceph RADOS Gateway on 127.0.0.1, started by scripts/ceph-rgw.sh
// (once per test process) and a fresh bucket per suite.
//
//   before(async function () {
//     this.timeout(180_000);             // a cold start (first run on a machine) takes ~10-60 s
//     bucket = await freshBucket();      // starts Ceph if needed
//     target = await openS3Target(bucket, { prefix: 'repo' });
//   });
//
// Without the Ceph packages this fails with the apt-get command that installs them: S3 tests never skip.

import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  DeleteBucketCommand,
  DeleteObjectsCommand,
  ListObjectVersionsCommand,
  ListMultipartUploadsCommand,
  AbortMultipartUploadCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { createS3Target, type EnsureBucketOptions, type S3Target, type S3TargetOptions } from '../../replication/targets/s3.js';
import { projectRoot } from '../../src/util/project-root.js';

export interface S3ServerInfo {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

const run = promisify(execFile);
const START_TIMEOUT_MS = 170_000;

export function cephScript(): string {
  return join(projectRoot(), 'scripts', 'ceph-rgw.sh');
}

/** Runs scripts/ceph-rgw.sh COMMAND; its one-line error (e.g. the install command) becomes the Error. */
export async function cephRgw(command: 'start' | 'stop' | 'stop-gateway' | 'env'): Promise<string> {
  try {
    const { stdout } = await run('bash', [cephScript(), command], { timeout: START_TIMEOUT_MS, maxBuffer: 1 << 20 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    const detail = (e.stderr ?? '').trim() || e.message;
    throw new Error(`scripts/ceph-rgw.sh ${command} failed: ${detail}`);
  }
}

let server: Promise<S3ServerInfo> | undefined;

/** Starts the test Ceph cluster (once per process; fast when it is already running) and returns its S3 endpoint. */
export function s3Server(): Promise<S3ServerInfo> {
  server ??= startServer().catch((err: unknown) => {
    server = undefined;
    throw err;
  });
  return server;
}

async function startServer(): Promise<S3ServerInfo> {
  await cephRgw('start');
  // On CI the daemons must not outlive the run (the next run on this machine needs the ports).
  if (process.env.CI) {
    process.once('exit', () => {
      spawnSync('bash', [cephScript(), 'stop'], { stdio: 'ignore', timeout: 60_000 });
    });
  }
  const vars = Object.fromEntries([...(await cephRgw('env')).matchAll(/(\w+)=(\S+)/g)].map((m) => [m[1], m[2]]));
  const info = {
    endpoint: vars.LIFEBOAT_S3_ENDPOINT,
    accessKeyId: vars.AWS_ACCESS_KEY_ID,
    secretAccessKey: vars.AWS_SECRET_ACCESS_KEY,
    region: vars.AWS_REGION,
  };
  for (const [name, value] of Object.entries(info)) {
    if (!value) throw new Error(`scripts/ceph-rgw.sh env printed no value for ${name}`);
  }
  return info as S3ServerInfo;
}

/** An S3 target on the test server (its credentials), for the given bucket. */
export async function openS3Target(bucket: string, options: Partial<S3TargetOptions> = {}): Promise<S3Target> {
  const s = await s3Server();
  return createS3Target({ bucket, endpoint: s.endpoint, region: s.region, accessKeyId: s.accessKeyId, secretAccessKey: s.secretAccessKey, ...options });
}

let bucketCount = 0;

/** Creates a new, uniquely named, empty bucket on the test server and returns its name. */
export async function freshBucket(options: EnsureBucketOptions = {}): Promise<string> {
  const name = `lifeboat-test-${process.pid}-${++bucketCount}-${randomBytes(4).toString('hex')}`;
  const target = await openS3Target(name);
  try {
    await target.ensureBucket(options);
  } finally {
    await target.close();
  }
  return name;
}

/**
 * Deletes a test bucket with everything in it, governance-mode retention included (the bucket owner
 * may bypass it). For an `after` hook; buckets left behind only cost disk space under .state/ceph.
 */
export async function removeBucket(bucket: string): Promise<void> {
  await withAdminClient(async (client) => {
    const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
    for (const u of uploads.Uploads ?? []) {
      await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: u.Key, UploadId: u.UploadId }));
    }
    for (;;) {
      const page = await client.send(new ListObjectVersionsCommand({ Bucket: bucket }));
      const objects = [...(page.Versions ?? []), ...(page.DeleteMarkers ?? [])].map((v) => ({ Key: v.Key, VersionId: v.VersionId }));
      if (objects.length === 0) break;
      // DeleteObjects needs Content-MD5, which WHEN_REQUIRED checksums supply.
      await client.send(new DeleteObjectsCommand({ Bucket: bucket, BypassGovernanceRetention: true, Delete: { Objects: objects, Quiet: true } }));
    }
    await client.send(new DeleteBucketCommand({ Bucket: bucket }));
  });
}

/**
 * Runs `fn` with a raw SDK client on the test server (the bucket owner's credentials), for what a
 * test must do behind the target's back: inspect versions, set retention, clean up.
 */
export async function withAdminClient<T>(fn: (client: S3Client) => Promise<T>): Promise<T> {
  const s = await s3Server();
  const client = new S3Client({
    endpoint: s.endpoint,
    region: s.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s.accessKeyId, secretAccessKey: s.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  try {
    return await fn(client);
  } finally {
    client.destroy();
  }
}
