// The S3 target when the network or the server misbehaves. Real faults where they can be produced
// (the gateway stopped and restarted, a closed port); the rest through a small HTTP proxy in front of
// the real Ceph gateway that drops or replaces chosen answers, and those tests say "(injected fault)".

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, request, type IncomingHttpHeaders, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { AlreadyExistsError, AuthError, ConditionalWritesUnsupportedError, NotFoundError, TargetError } from '../../replication/target.js';
import { cephRgw, freshBucket, openS3Target, removeBucket, s3Server } from '../helpers/s3-server.js';

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

/** What the proxy does with one request: forward it, answer it itself, or forward it and then cut the connection instead of answering. */
type Verdict = { action: 'forward' } | { action: 'drop-answer' } | { action: 'answer'; status: number; body?: string; headers?: Record<string, string> };

interface FaultProxy {
  endpoint: string;
  seen: Seen[];
  close(): Promise<void>;
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

async function readAll(stream: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** An HTTP proxy in front of the real gateway; `decide` sees every request in order. */
async function faultProxy(decide: (req: Seen, index: number) => Verdict): Promise<FaultProxy> {
  const upstream = new URL((await s3Server()).endpoint);
  const seen: Seen[] = [];
  const server = createServer(async (req, res) => {
    const body = await readAll(req);
    const info = { method: req.method ?? 'GET', url: req.url ?? '/', headers: req.headers };
    seen.push(info);
    const verdict = decide(info, seen.length - 1);
    if (verdict.action === 'answer') {
      res.writeHead(verdict.status, { 'content-type': 'application/xml', ...verdict.headers });
      res.end(verdict.body ?? '');
      return;
    }
    // Headers go through unchanged (Host included), so the client's signature stays valid.
    const up = request({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers }, async (upRes) => {
      const upBody = await readAll(upRes);
      if (verdict.action === 'drop-answer') {
        req.socket.destroy(); // the server did the work; the client never hears about it
        return;
      }
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      res.end(upBody);
    });
    up.on('error', () => req.socket.destroy());
    up.end(body);
  });
  const port = await listen(server);
  return {
    endpoint: `http://127.0.0.1:${port}`,
    seen,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

const isCreateOnlyPut = (r: Seen) => r.method === 'PUT' && r.headers['if-none-match'] === '*';
const slowDown = { action: 'answer', status: 503, body: '<?xml version="1.0"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>' } as const;

describe('S3 target under faults', function () {
  this.timeout(120_000);
  let bucket: string;
  before(async function () {
    this.timeout(180_000);
    bucket = await freshBucket();
  });
  after(async () => {
    await cephRgw('start'); // whatever a failed test left stopped
    await removeBucket(bucket);
  });

  it('a put made while the gateway is down waits, and lands once the gateway is back (real outage: radosgw stopped and restarted)', async function () {
    this.timeout(180_000);
    const target = await openS3Target(bucket, { prefix: 'outage', maxAttempts: 30 });
    try {
      await target.put('before', Buffer.from('gateway up')); // the bucket check is done
      await cephRgw('stop-gateway');
      const body = randomBytes(3 * 1024 * 1024);
      let settled = false;
      const put = target.put('during', body).finally(() => (settled = true));
      await new Promise((resolve) => setTimeout(resolve, 1500));
      assert.equal(settled, false, 'the put gave up (or claimed success) while the gateway was down');
      await cephRgw('start');
      await put;
      assert.ok((await target.get('during')).equals(body));
    } finally {
      await cephRgw('start');
      await target.close();
    }
  });

  it('an endpoint where nothing listens fails after bounded retries with one line naming it', async () => {
    const probe = createServer();
    const port = await listen(probe);
    await new Promise((resolve) => probe.close(resolve)); // now nothing listens there
    const target = await openS3Target(bucket, { endpoint: `http://127.0.0.1:${port}`, maxAttempts: 3 });
    try {
      await assert.rejects(target.put('k', Buffer.from('x')), (err: Error) => {
        assert.ok(err instanceof TargetError);
        assert.match(err.message, new RegExp(`cannot reach S3 endpoint http://127\\.0\\.0\\.1:${port} \\(ECONNREFUSED\\) after 3 attempts`));
        return true;
      });
    } finally {
      await target.close();
    }
  });

  it('503 SlowDown answers are retried with backoff until the put goes through (injected fault)', async () => {
    const proxy = await faultProxy((r) => (r.method === 'PUT' && proxy.seen.filter((s) => s.method === 'PUT').length <= 2 ? slowDown : { action: 'forward' }));
    const target = await openS3Target(bucket, { endpoint: proxy.endpoint, prefix: 'throttled' });
    try {
      await target.put('k', Buffer.from('eventually'));
      assert.equal(proxy.seen.filter((r) => r.method === 'PUT').length, 3);
      assert.equal((await target.get('k')).toString(), 'eventually');
    } finally {
      await target.close();
      await proxy.close();
    }
  });

  it('definite answers are not retried: 412 on a create-only put, 404 on a get, 403 for a wrong secret (one request each)', async () => {
    const proxy = await faultProxy(() => ({ action: 'forward' }));
    const target = await openS3Target(bucket, { endpoint: proxy.endpoint, prefix: 'definite' });
    try {
      await target.put('manifest', Buffer.from('1'), { ifNoneMatch: true });
      const before = proxy.seen.length;
      await assert.rejects(target.put('manifest', Buffer.from('2'), { ifNoneMatch: true }), AlreadyExistsError);
      await assert.rejects(target.get('missing'), NotFoundError);
      assert.equal(proxy.seen.length - before, 2);
      const wrong = await openS3Target(bucket, { endpoint: proxy.endpoint, secretAccessKey: 'wrong' });
      const beforeWrong = proxy.seen.length;
      await assert.rejects(wrong.head('k'), AuthError);
      assert.equal(proxy.seen.length - beforeWrong, 1);
      await wrong.close();
    } finally {
      await target.close();
      await proxy.close();
    }
  });

  it('a create-only put whose answer is lost is retried and reported as created, not as "already exists" (injected fault)', async () => {
    const proxy = await faultProxy((r) => (isCreateOnlyPut(r) && proxy.seen.filter(isCreateOnlyPut).length === 1 ? { action: 'drop-answer' } : { action: 'forward' }));
    const target = await openS3Target(bucket, { endpoint: proxy.endpoint, prefix: 'lost-answer' });
    try {
      const body = Buffer.from(`lease held by ${randomBytes(8).toString('hex')}`);
      await target.put('lease', body, { ifNoneMatch: true });
      assert.equal(proxy.seen.filter(isCreateOnlyPut).length, 2, 'the first answer was dropped and the put retried');
      assert.ok((await target.get('lease')).equals(body));
    } finally {
      await target.close();
      await proxy.close();
    }
  });

  it('a create-only put that lost the race still gets AlreadyExistsError when its answer was lost too (injected fault)', async () => {
    const proxy = await faultProxy((r) => (isCreateOnlyPut(r) && proxy.seen.filter(isCreateOnlyPut).length === 1 ? { action: 'drop-answer' } : { action: 'forward' }));
    const target = await openS3Target(bucket, { endpoint: proxy.endpoint, prefix: 'lost-race' });
    const direct = await openS3Target(bucket, { prefix: 'lost-race' });
    try {
      await direct.put('lease', Buffer.from('the other writer'), { ifNoneMatch: true });
      await assert.rejects(target.put('lease', Buffer.from('us'), { ifNoneMatch: true }), AlreadyExistsError);
      assert.equal((await direct.get('lease')).toString(), 'the other writer');
    } finally {
      await Promise.all([target.close(), direct.close()]);
      await proxy.close();
    }
  });

  it('a multipart upload whose completion answer is lost is retried and the object is whole (injected fault)', async () => {
    const isComplete = (r: Seen) => r.method === 'POST' && /[?&]uploadId=/.test(r.url);
    const proxy = await faultProxy((r) => (isComplete(r) && proxy.seen.filter(isComplete).length === 1 ? { action: 'drop-answer' } : { action: 'forward' }));
    const target = await openS3Target(bucket, { endpoint: proxy.endpoint, prefix: 'multipart' });
    try {
      const body = randomBytes(40 * 1024 * 1024 + 7);
      await target.put('pack', body);
      assert.equal(proxy.seen.filter(isComplete).length, 2, 'the completion was retried once');
      assert.equal(proxy.seen.filter((r) => r.method === 'PUT' && /partNumber=/.test(r.url)).length, 3, 'three 16 MiB parts');
      assert.ok((await target.get('pack')).equals(body));
    } finally {
      await target.close();
      await proxy.close();
    }
  });

  it('a failed multipart upload is aborted: no upload is left behind to be billed (injected fault)', async () => {
    const proxy = await faultProxy((r) => (r.method === 'PUT' && /partNumber=2&/.test(r.url + '&') ? { action: 'answer', status: 400, body: '<Error><Code>InvalidPart</Code></Error>' } : { action: 'forward' }));
    const target = await openS3Target(bucket, { endpoint: proxy.endpoint, prefix: 'aborted' });
    try {
      await assert.rejects(target.put('pack', randomBytes(33 * 1024 * 1024)), /InvalidPart/);
      assert.ok(proxy.seen.some((r) => r.method === 'DELETE' && /uploadId=/.test(r.url)), 'no AbortMultipartUpload was sent');
      assert.equal(await target.head('pack'), null);
    } finally {
      await target.close();
      await proxy.close();
    }
  });

  it('a server answering 501 to If-None-Match gets ConditionalWritesUnsupportedError, not a silent overwrite (injected fault)', async () => {
    const proxy = await faultProxy((r) =>
      isCreateOnlyPut(r) ? { action: 'answer', status: 501, body: '<Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message></Error>' } : { action: 'forward' },
    );
    const target = await openS3Target(bucket, { endpoint: proxy.endpoint, prefix: 'swift-like' });
    try {
      await assert.rejects(target.put('manifest', Buffer.from('m'), { ifNoneMatch: true }), (err: Error) => {
        assert.ok(err instanceof ConditionalWritesUnsupportedError, `got ${err}`);
        assert.match(err.message, /does not support conditional writes/);
        return true;
      });
      assert.equal(proxy.seen.filter(isCreateOnlyPut).length, 1, '501 is not retried');
      await assert.rejects(target.verifyConditionalWrites(), ConditionalWritesUnsupportedError);
    } finally {
      await target.close();
      await proxy.close();
    }
  });

  it('verifyConditionalWrites catches a server that accepts If-None-Match but overwrites anyway (injected fault)', async () => {
    const proxy = await faultProxy((r) => (isCreateOnlyPut(r) ? { action: 'answer', status: 200, headers: { etag: '"0"' } } : { action: 'forward' }));
    const target = await openS3Target(bucket, { endpoint: proxy.endpoint, prefix: 's3rver-like' });
    try {
      await assert.rejects(target.verifyConditionalWrites(), (err: Error) => err instanceof ConditionalWritesUnsupportedError && /ignores conditional writes/.test(err.message));
    } finally {
      await target.close();
      await proxy.close();
    }
  });
});
