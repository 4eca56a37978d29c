// An S3-compatible bucket (AWS S3, Ceph RGW, MinIO...) as a Target. docs/s3.md is the user's view:
// configuration, supported servers, Object Lock, retries, multipart.
//
// Shape of every operation: check the bucket once (a clear error for a missing bucket or wrong
// credentials, before anything else), then send the request through withRetry (s3-retry.ts), then turn
// whatever failed into one of target.ts's errors with a one-line message.

import { randomBytes } from 'node:crypto';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetBucketVersioningCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  ListObjectVersionsCommand,
  PutObjectCommand,
  PutObjectLockConfigurationCommand,
  S3Client,
  UploadPartCommand,
  type BucketLocationConstraint,
  type CompletedPart,
} from '@aws-sdk/client-s3';
import {
  AlreadyExistsError,
  AuthError,
  ConditionalWritesUnsupportedError,
  NotFoundError,
  ObjectLockedError,
  TargetError,
  type ByteRange,
  type ObjectInfo,
  type PutOptions,
  type Target,
} from '../target.js';
import {
  DEFAULT_RETRY_POLICY,
  TruncatedBodyError,
  httpStatusOf,
  networkCodeOf,
  withRetry,
  type AttemptContext,
  type RetryPolicy,
  type S3ErrorLike,
} from './s3-retry.js';

const MiB = 1024 * 1024;
/** Bodies above this go up as a multipart upload (except create-only puts: see put()). */
export const MULTIPART_THRESHOLD = 16 * MiB;
export const PART_SIZE = 16 * MiB;
/** Parts of one upload in flight at once. */
export const PART_CONCURRENCY = 4;
/** S3's limit for a single PUT. */
export const MAX_SINGLE_PUT = 5 * 1024 * MiB;
/** Written by verifyConditionalWrites() under the prefix; outside the repository's own key space. */
export const CONDITIONAL_WRITE_PROBE_KEY = '.lifeboat-conditional-write-probe';

const CONNECT_TIMEOUT_MS = 10_000;
/** A socket silent this long (a hung server) fails the request, which is then retried. */
const SOCKET_IDLE_TIMEOUT_MS = 120_000;
const MAX_SOCKETS = 64;
/** Aborting a failed upload is a courtesy: do not hold the real error back for long. */
const ABORT_RETRY_POLICY: RetryPolicy = { maxAttempts: 2, baseDelayMs: 100, maxDelayMs: 200 };

export interface S3TargetOptions {
  bucket: string;
  /** Keys are stored as `PREFIX/KEY`. */
  prefix?: string;
  /** e.g. http://127.0.0.1:17480 (Ceph RGW); AWS S3 when omitted. */
  endpoint?: string;
  /** Default us-east-1. */
  region?: string;
  /** Path-style URLs (http://host/bucket/key). Default: true with an endpoint, false for AWS. */
  forcePathStyle?: boolean;
  /** Both or neither; with neither, the AWS SDK's credential chain (environment, ~/.aws...) is used. */
  accessKeyId?: string;
  secretAccessKey?: string;
  /** Tries per request for transient failures, the first included (default 10). */
  maxAttempts?: number;
}

export interface EnsureBucketOptions {
  /** Create the bucket with S3 Object Lock (which makes it versioned). Only possible at creation. */
  objectLock?: boolean;
  /** Retention applied to every new object version by default (implies objectLock). */
  defaultRetention?: { mode: 'GOVERNANCE' | 'COMPLIANCE'; days: number };
}

/** The bucket named by the target does not exist. */
export class BucketNotFoundError extends TargetError {}

type ObjectVersion = { VersionId?: string; LastModified?: Date };

export class S3Target implements Target {
  readonly description: string;
  readonly bucket: string;
  /** '' or 'some/prefix/'. */
  readonly keyPrefix: string;
  private readonly client: S3Client;
  private readonly endpointLabel: string;
  private readonly retryPolicy: RetryPolicy;
  private checked?: Promise<void>;
  private versioned?: Promise<boolean>;

  constructor(options: S3TargetOptions) {
    const { bucket, endpoint, accessKeyId, secretAccessKey } = options;
    const region = options.region ?? 'us-east-1';
    if (!bucket) throw new TargetError('an S3 target needs a bucket name');
    if ((accessKeyId === undefined) !== (secretAccessKey === undefined)) {
      throw new AuthError('give both an S3 access key id and a secret access key, or neither (to use the AWS credential chain)');
    }
    if (endpoint !== undefined && !URL.canParse(endpoint)) {
      throw new TargetError(`S3 endpoint '${endpoint}' is not a URL; give one like http://127.0.0.1:17480`);
    }
    this.bucket = bucket;
    const prefix = (options.prefix ?? '').replace(/^\/+|\/+$/g, '');
    this.keyPrefix = prefix ? `${prefix}/` : '';
    this.endpointLabel = endpoint ?? `AWS S3 (${region})`;
    this.description = `s3://${bucket}${prefix ? `/${prefix}` : ''} at ${this.endpointLabel}`;
    this.retryPolicy = { ...DEFAULT_RETRY_POLICY, ...(options.maxAttempts ? { maxAttempts: options.maxAttempts } : {}) };
    // Lifeboat decides which Node it supports; the SDK's own notice would land in every CLI's output.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.client = new S3Client({
      region,
      ...(endpoint ? { endpoint } : {}),
      forcePathStyle: options.forcePathStyle ?? endpoint !== undefined,
      ...(accessKeyId !== undefined && secretAccessKey !== undefined ? { credentials: { accessKeyId, secretAccessKey } } : {}),
      // Retries are ours (s3-retry.ts): one policy, and it knows which answers must not be retried.
      maxAttempts: 1,
      // The SDK's default sends bodies aws-chunked with a trailing CRC32, which Ceph 16 answers with
      // 411 and other servers store as data (see docs/s3.md).
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: {
        connectionTimeout: CONNECT_TIMEOUT_MS,
        socketTimeout: SOCKET_IDLE_TIMEOUT_MS,
        httpAgent: { keepAlive: true, maxSockets: MAX_SOCKETS },
        httpsAgent: { keepAlive: true, maxSockets: MAX_SOCKETS },
      },
    });
  }

  // --- Target ----------------------------------------------------------------------------------------

  async put(key: string, body: Buffer, options: PutOptions = {}): Promise<void> {
    const objectKey = this.objectKey(key);
    await this.checkBucket();
    // CompleteMultipartUpload ignores If-None-Match on Ceph RGW 16 (it overwrites), so a create-only
    // put is always one request; what uses it (manifests, leases) is small.
    if (options.ifNoneMatch || body.length <= MULTIPART_THRESHOLD) {
      if (body.length > MAX_SINGLE_PUT) {
        throw new TargetError(`${this.where(key)}: a create-only object cannot exceed ${MAX_SINGLE_PUT} bytes (got ${body.length})`, key);
      }
      await this.putSingle(key, objectKey, body, options.ifNoneMatch === true);
    } else {
      await this.putMultipart(key, objectKey, body);
    }
  }

  /** One body: a request signs and sends a whole buffer (and a create-only put is one request). */
  async putParts(key: string, parts: readonly Uint8Array[], options: PutOptions = {}): Promise<void> {
    await this.put(key, Buffer.concat(parts), options);
  }

  async get(key: string, range?: ByteRange): Promise<Buffer> {
    const objectKey = this.objectKey(key);
    if (range && !(Number.isSafeInteger(range.offset) && Number.isSafeInteger(range.length) && range.offset >= 0 && range.length >= 0)) {
      throw new TargetError(`${this.where(key)}: invalid byte range offset=${range.offset} length=${range.length}`, key);
    }
    if (range?.length === 0) {
      if (!(await this.head(key))) throw new NotFoundError(`${this.where(key)} does not exist`, key);
      return Buffer.alloc(0);
    }
    await this.checkBucket();
    return this.request('get', key, async () => {
      try {
        const out = await this.client.send(
          new GetObjectCommand({
            Bucket: this.bucket,
            Key: objectKey,
            ...(range ? { Range: `bytes=${range.offset}-${range.offset + range.length - 1}` } : {}),
          }),
        );
        const bytes = out.Body ? await out.Body.transformToByteArray() : new Uint8Array(0);
        if (out.ContentLength !== undefined && bytes.byteLength !== out.ContentLength) {
          throw new TruncatedBodyError(out.ContentLength, bytes.byteLength);
        }
        return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      } catch (err) {
        // A range starting at or past the end: like a short read of a file, nothing.
        if (range && httpStatusOf(err) === 416) return Buffer.alloc(0);
        throw err;
      }
    });
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const objectKey = this.objectKey(key);
    await this.checkBucket();
    return this.request('head', key, async () => {
      try {
        const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: objectKey }));
        return { key, size: out.ContentLength ?? 0 };
      } catch (err) {
        // The bucket is known to exist (checkBucket), so a 404 here is about the key.
        if (httpStatusOf(err) === 404) return null;
        throw err;
      }
    });
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    await this.checkBucket();
    let token: string | undefined;
    do {
      const page = await this.request('list', prefix, () =>
        this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.keyPrefix + prefix, ...(token ? { ContinuationToken: token } : {}) }),
        ),
      );
      for (const object of page.Contents ?? []) {
        if (object.Key) yield { key: object.Key.slice(this.keyPrefix.length), size: object.Size ?? 0 };
      }
      if (page.IsTruncated && !page.NextContinuationToken) {
        throw new TargetError(`${this.where(prefix)}: the server said the listing continues but gave no continuation token`);
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  /**
   * On a versioned bucket (every Object Lock bucket is), every version of the key is deleted, oldest
   * first, so that the data is really gone, or, when a version is retention-locked, ObjectLockedError is
   * thrown and the key still reads as it did. A plain DELETE there would only add a delete marker: the
   * key would vanish from listings while its data stayed.
   */
  async delete(key: string): Promise<void> {
    const objectKey = this.objectKey(key);
    await this.checkBucket();
    if (await this.isVersioned()) {
      const versions = await this.versionsOf(key, objectKey);
      for (const version of versions) await this.deleteObject(key, objectKey, version.VersionId);
    } else {
      await this.deleteObject(key, objectKey, undefined);
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }

  // --- beyond Target: setting a bucket up ------------------------------------------------------------

  /** Creates the bucket if it does not exist (for `repo init`); checks Object Lock when asked for it. */
  async ensureBucket(options: EnsureBucketOptions = {}): Promise<void> {
    const objectLock = options.objectLock === true || options.defaultRetention !== undefined;
    const region = await this.client.config.region();
    // AWS wants the region named for any region but us-east-1; other servers have their own names.
    const location = this.endpointLabel.startsWith('AWS S3') && region !== 'us-east-1' ? { CreateBucketConfiguration: { LocationConstraint: region as BucketLocationConstraint } } : {};
    await this.request('create bucket', undefined, async () => {
      try {
        await this.client.send(new CreateBucketCommand({ Bucket: this.bucket, ...(objectLock ? { ObjectLockEnabledForBucket: true } : {}), ...location }));
      } catch (err) {
        if ((err as S3ErrorLike).name !== 'BucketAlreadyOwnedByYou') throw err;
      }
    });
    this.checked = undefined;
    this.versioned = undefined;
    if (objectLock) {
      const lock = await this.request('check Object Lock of', undefined, async () => {
        try {
          return await this.client.send(new GetObjectLockConfigurationCommand({ Bucket: this.bucket }));
        } catch (err) {
          if (httpStatusOf(err) === 404) return undefined;
          throw err;
        }
      });
      if (lock?.ObjectLockConfiguration?.ObjectLockEnabled !== 'Enabled') {
        throw new TargetError(`S3 bucket '${this.bucket}' at ${this.endpointLabel} exists without Object Lock, which can only be enabled when a bucket is created: use a new bucket`);
      }
    }
    if (options.defaultRetention) {
      const { mode, days } = options.defaultRetention;
      await this.request('set Object Lock retention of', undefined, () =>
        this.client.send(
          new PutObjectLockConfigurationCommand({
            Bucket: this.bucket,
            ObjectLockConfiguration: { ObjectLockEnabled: 'Enabled', Rule: { DefaultRetention: { Mode: mode, Days: days } } },
          }),
        ),
      );
    }
  }

  /**
   * Proves that the server enforces `If-None-Match: *` by creating a probe object twice. Throws
   * ConditionalWritesUnsupportedError for a server that answers 501 or silently overwrites: Lifeboat's
   * leases and manifests depend on create-only writes.
   */
  async verifyConditionalWrites(): Promise<void> {
    const body = randomBytes(16);
    try {
      await this.put(CONDITIONAL_WRITE_PROBE_KEY, body, { ifNoneMatch: true });
    } catch (err) {
      if (err instanceof AlreadyExistsError) return; // left by an earlier check (e.g. retention-locked)
      throw err;
    }
    try {
      await this.put(CONDITIONAL_WRITE_PROBE_KEY, randomBytes(16), { ifNoneMatch: true });
    } catch (err) {
      if (err instanceof AlreadyExistsError) {
        await this.delete(CONDITIONAL_WRITE_PROBE_KEY).catch(() => undefined);
        return;
      }
      throw err;
    }
    throw new ConditionalWritesUnsupportedError(
      `${this.endpointLabel} ignores conditional writes (a create-only PUT with If-None-Match: * overwrote an existing object): Lifeboat cannot keep leases and manifests safe there; use Ceph RGW, AWS S3 or another server that enforces If-None-Match`,
    );
  }

  // --- internals -----------------------------------------------------------------------------------------

  private objectKey(key: string): string {
    if (!key || key.startsWith('/')) throw new TargetError(`invalid object key '${key}'`, key);
    return this.keyPrefix + key;
  }

  private where(key?: string): string {
    return `s3://${this.bucket}/${this.keyPrefix}${key ?? ''} at ${this.endpointLabel}`;
  }

  /** Once per target: the bucket exists and the credentials work (a GET, whose error names the cause). */
  private checkBucket(): Promise<void> {
    this.checked ??= this.request('list', undefined, async () => {
      await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.keyPrefix, MaxKeys: 1 }));
    }).catch((err: unknown) => {
      this.checked = undefined;
      throw err;
    });
    return this.checked;
  }

  private isVersioned(): Promise<boolean> {
    this.versioned ??= this.request('check versioning of', undefined, async () => {
      const out = await this.client.send(new GetBucketVersioningCommand({ Bucket: this.bucket }));
      return out.Status === 'Enabled' || out.Status === 'Suspended';
    }).catch((err: unknown) => {
      this.versioned = undefined;
      throw err;
    });
    return this.versioned;
  }

  private async request<T>(op: string, key: string | undefined, attempt: (context: AttemptContext) => Promise<T>, policy = this.retryPolicy): Promise<T> {
    try {
      return await withRetry(policy, attempt);
    } catch (err) {
      throw this.failure(err, op, key);
    }
  }

  private async putSingle(key: string, objectKey: string, body: Buffer, ifNoneMatch: boolean): Promise<void> {
    await this.request('put', key, async ({ earlierAttemptAmbiguous }) => {
      try {
        await this.client.send(
          new PutObjectCommand({ Bucket: this.bucket, Key: objectKey, Body: body, ContentLength: body.length, ...(ifNoneMatch ? { IfNoneMatch: '*' } : {}) }),
        );
      } catch (err) {
        // An earlier try may have created the object before its answer was lost: then the 412 is
        // our own object, and the put succeeded.
        if (ifNoneMatch && httpStatusOf(err) === 412 && earlierAttemptAmbiguous && (await this.holds(objectKey, body))) return;
        throw err;
      }
    });
  }

  private async holds(objectKey: string, body: Buffer): Promise<boolean> {
    const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: objectKey }));
    const stored = out.Body ? await out.Body.transformToByteArray() : new Uint8Array(0);
    return Buffer.compare(Buffer.from(stored), body) === 0;
  }

  private async putMultipart(key: string, objectKey: string, body: Buffer): Promise<void> {
    const created = await this.request('put', key, () => this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: objectKey })));
    const uploadId = created.UploadId;
    if (!uploadId) throw new TargetError(`${this.where(key)}: the server started a multipart upload without an upload id`, key);
    try {
      const parts = await this.uploadParts(key, objectKey, uploadId, body);
      await this.request('put', key, async ({ earlierAttemptAmbiguous }) => {
        try {
          // The answer's ETag is not used: Ceph RGW returns an empty one.
          await this.client.send(
            new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: objectKey, UploadId: uploadId, MultipartUpload: { Parts: parts } }),
          );
        } catch (err) {
          // Completed by an earlier try whose answer was lost: the upload is gone and the object is there.
          if (earlierAttemptAmbiguous && (err as S3ErrorLike).name === 'NoSuchUpload') {
            const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: objectKey }));
            if (head.ContentLength === body.length) return;
          }
          throw err;
        }
      });
    } catch (err) {
      await this.request('abort upload', key, () =>
        this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: objectKey, UploadId: uploadId })),
        ABORT_RETRY_POLICY,
      ).catch(() => undefined);
      throw err;
    }
  }

  /** PART_CONCURRENCY parts at a time; after the first failure no new part starts. */
  private async uploadParts(key: string, objectKey: string, uploadId: string, body: Buffer): Promise<CompletedPart[]> {
    const count = Math.ceil(body.length / PART_SIZE);
    const parts: CompletedPart[] = new Array(count);
    let next = 0;
    let failed = false;
    const worker = async () => {
      while (!failed && next < count) {
        const index = next++;
        const slice = body.subarray(index * PART_SIZE, Math.min(body.length, (index + 1) * PART_SIZE));
        try {
          const out = await this.request('put', key, () =>
            this.client.send(
              new UploadPartCommand({ Bucket: this.bucket, Key: objectKey, UploadId: uploadId, PartNumber: index + 1, Body: slice, ContentLength: slice.length }),
            ),
          );
          parts[index] = { PartNumber: index + 1, ETag: out.ETag };
        } catch (err) {
          failed = true;
          throw err;
        }
      }
    };
    const results = await Promise.allSettled(Array.from({ length: Math.min(PART_CONCURRENCY, count) }, worker));
    const rejected = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (rejected) throw rejected.reason;
    return parts;
  }

  /** Every version and delete marker of exactly this key, oldest first. */
  private async versionsOf(key: string, objectKey: string): Promise<ObjectVersion[]> {
    const found: ObjectVersion[] = [];
    let keyMarker: string | undefined;
    let versionMarker: string | undefined;
    for (;;) {
      const page = await this.request('list versions of', key, () =>
        this.client.send(
          new ListObjectVersionsCommand({
            Bucket: this.bucket,
            Prefix: objectKey,
            ...(keyMarker !== undefined ? { KeyMarker: keyMarker } : {}),
            ...(versionMarker !== undefined ? { VersionIdMarker: versionMarker } : {}),
          }),
        ),
      );
      // The server lists a key's versions newest first; reversed, a stable sort by time keeps ties oldest first.
      for (const v of [...(page.Versions ?? []), ...(page.DeleteMarkers ?? [])].reverse()) {
        if (v.Key === objectKey) found.push(v);
      }
      if (!page.IsTruncated) break;
      keyMarker = page.NextKeyMarker;
      versionMarker = page.NextVersionIdMarker;
      // Past this key, the rest of the listing is other keys that merely share its prefix.
      if (keyMarker !== objectKey) break;
    }
    return found.sort((a, b) => (a.LastModified?.getTime() ?? 0) - (b.LastModified?.getTime() ?? 0));
  }

  private async deleteObject(key: string, objectKey: string, versionId: string | undefined): Promise<void> {
    await this.request('delete', key, async () => {
      try {
        await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: objectKey, ...(versionId ? { VersionId: versionId } : {}) }));
      } catch (err) {
        if (httpStatusOf(err) === 404 && (err as S3ErrorLike).name !== 'NoSuchBucket') return;
        throw err;
      }
    });
  }

  /** The one place S3's answers become target.ts errors with a message a user can act on. */
  private failure(err: unknown, op: string, key: string | undefined): Error {
    if (err instanceof TargetError) return err;
    const e = err as S3ErrorLike & { attempts?: number };
    const status = httpStatusOf(err);
    const code = e.name && e.name !== 'Unknown' && e.name !== 'Error' ? e.name : undefined;
    const what = key === undefined ? `s3://${this.bucket}` : `s3://${this.bucket}/${this.keyPrefix}${key}`;
    const tries = (e.attempts ?? 1) > 1 ? ` after ${e.attempts} attempts` : '';
    const network = networkCodeOf(err);
    if (network) {
      return new TargetError(`cannot reach S3 endpoint ${this.endpointLabel} (${network})${tries}: check that the server is running and the endpoint is right`, key);
    }
    if ((err as NodeJS.ErrnoException).code === 'ENOTFOUND') {
      return new TargetError(`cannot resolve the host of S3 endpoint ${this.endpointLabel} (ENOTFOUND): check the endpoint`, key);
    }
    if (code === 'CredentialsProviderError') {
      return new AuthError(`no S3 credentials for ${this.endpointLabel}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY`, key);
    }
    if (code === 'InvalidAccessKeyId' || code === 'SignatureDoesNotMatch') {
      return new AuthError(`S3 endpoint ${this.endpointLabel} rejected the credentials: the access key or secret key is wrong (${code})`, key);
    }
    if (code === 'RequestTimeTooSkewed') {
      return new TargetError(`S3 endpoint ${this.endpointLabel} refused the request because this machine's clock is wrong (RequestTimeTooSkewed): set the clock (NTP)`, key);
    }
    if (code === 'NoSuchBucket') {
      return new BucketNotFoundError(`S3 bucket '${this.bucket}' does not exist at ${this.endpointLabel}: create the bucket or correct the target`, key);
    }
    if (op === 'put' && status === 412) return new AlreadyExistsError(`${what} already exists`, key);
    if (op === 'put' && status === 501) {
      return new ConditionalWritesUnsupportedError(
        `S3 endpoint ${this.endpointLabel} does not support conditional writes (If-None-Match answered 501 Not Implemented): Lifeboat needs them for leases and manifests; use Ceph RGW, AWS S3 or another server that supports them`,
        key,
      );
    }
    if (op === 'get' && (code === 'NoSuchKey' || status === 404)) return new NotFoundError(`${what} does not exist`, key);
    if (status === 403) {
      if (op === 'delete' && /object lock|retention|legal hold/i.test(e.message ?? '')) {
        return new ObjectLockedError(`${what} is protected by S3 Object Lock (retention or legal hold); it cannot be deleted yet`, key);
      }
      return new AuthError(`S3 endpoint ${this.endpointLabel} denied ${op} on ${what} (${code ?? 'HTTP 403'}): the credentials lack permission for this bucket`, key);
    }
    const detail = e.message && e.message !== 'UnknownError' && e.message !== code ? `: ${e.message}` : '';
    return new TargetError(`S3 ${op} ${what} at ${this.endpointLabel} failed${tries}: ${code ?? 'error'}${status ? ` (HTTP ${status})` : ''}${detail}`, key);
  }
}

export function createS3Target(options: S3TargetOptions): S3Target {
  return new S3Target(options);
}
