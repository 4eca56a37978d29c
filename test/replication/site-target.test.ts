// The remote-site target against a real `site serve` server on 127.0.0.1, storing into a real folder.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthError, type Target } from '../../replication/target.js';
import {
  SITE_HEADERS,
  authorizationHeader,
  createSiteTarget,
  objectPath,
  secretKeyId,
  sha256Hex,
  signRequest,
} from '../../replication/targets/site-client.js';
import { SiteConfigError, startSiteServer, type SiteServer } from '../../src/site/server.js';

const SECRET = 'site-test-secret-0123456789abcdef0123456789';

/** Every file stored under the site's repository folders (upload staging excluded). */
function storedFiles(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.push(p.slice(root.length + 1));
    }
  };
  walk(join(root, 'repos'));
  return out;
}

async function collect(it: AsyncIterable<{ key: string; size: number }>): Promise<{ key: string; size: number }[]> {
  const out = [];
  for await (const o of it) out.push(o);
  return out.sort((a, b) => a.key.localeCompare(b.key));
}

/** Raw HTTP, for requests a well-behaved client never sends. */
function rawRequest(url: string, method: string, path: string, headers: Record<string, string>, body: Buffer): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const { hostname, port } = new URL(url);
    const req = http.request({ hostname, port, path, method, headers: { ...headers, 'content-length': String(body.length) } }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts).toString() }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

function signedHeaders(secret: string, method: string, path: string, body: Buffer, signedBody = body): Record<string, string> {
  const timestamp = String(Date.now());
  const nonce = randomBytes(16).toString('hex');
  const bodySha256 = sha256Hex(signedBody);
  const signature = signRequest(secret, { method, path, query: '', timestamp, nonce, bodySha256 });
  return {
    [SITE_HEADERS.timestamp]: timestamp,
    [SITE_HEADERS.nonce]: nonce,
    [SITE_HEADERS.contentSha256]: bodySha256,
    [SITE_HEADERS.authorization]: authorizationHeader(secretKeyId(secret), signature),
  };
}

describe('remote site target', () => {
  let root: string;
  let server: SiteServer;
  const targets: Target[] = [];
  const target = (options: Partial<Parameters<typeof createSiteTarget>[0]> = {}): Target => {
    const t = createSiteTarget({ url: server.url, secret: SECRET, retryBaseMs: 10, ...options });
    targets.push(t);
    return t;
  };

  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), 'lifeboat-site-'));
    server = await startSiteServer({ repoRoot: root, secrets: [SECRET] });
  });
  afterEach(async () => {
    for (const t of targets.splice(0)) await t.close();
    await server.close();
    rmSync(root, { recursive: true, force: true });
  });

  describe('repositories and keys', () => {
    it('keeps repositories apart on one site', async () => {
      const a = target({ repo: 'host-a' });
      const b = target({ repo: 'host-b' });
      await a.put('config', Buffer.from('a'));
      assert.equal(await b.head('config'), null);
      assert.deepEqual(await collect(b.list('')), []);
      assert.deepEqual(storedFiles(root).filter((f) => f.startsWith('repos/host-b')), []);
    });

    it('keys are carried exactly; keys the storage cannot hold or that would escape the folder are refused', async () => {
      const t = target();
      const key = 'snapshots/vm-web_01/2025-01-02T03-04-05.000Z.manifest';
      await t.put(key, Buffer.from('odd'));
      assert.deepEqual(await collect(t.list('snapshots/')), [{ key, size: 3 }]);
      await assert.rejects(t.put('odd/a b', Buffer.from('x')), (err: Error) => /^site .* repo default: .*invalid object key 'odd\/a b'/.test(err.message));
      await assert.rejects(t.put('../escape', Buffer.from('x')), /object key '..\/escape' is invalid/);
      await assert.rejects(t.put('a//b', Buffer.from('x')), /invalid/);
      // The site checks too, whatever a client sends.
      for (const path of ['/v1/repos/default/objects/../../escape', '/v1/repos/default/objects/a/%2E%2E/%2E%2E/%2E%2E/escape']) {
        const body = Buffer.from('x');
        const res = await rawRequest(server.url, 'PUT', path, signedHeaders(SECRET, 'PUT', path, body), body);
        assert.equal(res.status, 400, path);
        assert.equal(JSON.parse(res.body).error.code, 'bad-key');
      }
      assert.ok(!storedFiles(root).some((f) => f.includes('escape')));
    });
  });

  describe('authentication', () => {
    it('refuses to start without a secret or a client CA', async () => {
      await assert.rejects(startSiteServer({ repoRoot: root }), (err: Error) => err instanceof SiteConfigError && /refusing to start without authentication/.test(err.message));
    });

    it('a writer without credentials gets 401 and nothing is written', async () => {
      const anonymous = target({ secret: undefined });
      await assert.rejects(anonymous.put('data/x', Buffer.from('payload')), (err: Error) => {
        assert.ok(err instanceof AuthError);
        assert.equal(err.message, `site ${server.url} repo default refused the request: the request is not signed; configure the site secret on the client`);
        return true;
      });
      const raw = await rawRequest(server.url, 'PUT', objectPath('default', 'data/y'), {}, Buffer.from('payload'));
      assert.equal(raw.status, 401);
      assert.equal(JSON.parse(raw.body).error.code, 'unauthenticated');
      await assert.rejects(anonymous.get('data/x'), AuthError);
      await assert.rejects(anonymous.head('data/x'), AuthError);
      assert.deepEqual(storedFiles(root), []);
      assert.equal(await target().head('data/x'), null);
    });

    it('a writer with the wrong secret gets 401 and nothing is written', async () => {
      const wrong = target({ secret: 'not-the-site-secret-0123456789abcdef012345' });
      await assert.rejects(wrong.put('data/x', Buffer.from('payload')), AuthError);
      await assert.rejects(wrong.put('data/big', randomBytes(9 * 1024 * 1024)), AuthError);
      await assert.rejects(wrong.delete('data/x'), AuthError);
      assert.deepEqual(storedFiles(root), []);
      assert.deepEqual(readdirSync(join(root, 'uploads')), [], 'no upload session was opened either');
    });

    it('a captured request cannot be replayed, and a signed request with a swapped body is refused', async () => {
      const path = objectPath('default', 'data/once');
      const body = Buffer.from('original');
      const headers = signedHeaders(SECRET, 'PUT', path, body);
      assert.equal((await rawRequest(server.url, 'PUT', path, headers, body)).status, 201);
      await target().delete('data/once');
      const replay = await rawRequest(server.url, 'PUT', path, headers, body);
      assert.equal(replay.status, 401);
      assert.equal(JSON.parse(replay.body).error.code, 'replayed');
      assert.equal(await target().head('data/once'), null);

      const swapped = await rawRequest(server.url, 'PUT', path, signedHeaders(SECRET, 'PUT', path, Buffer.from('forged!!'), body), Buffer.from('forged!!'));
      assert.equal(swapped.status, 400);
      assert.equal(JSON.parse(swapped.body).error.code, 'body-digest-mismatch');
      assert.equal(await target().head('data/once'), null);
    });

    it('a client whose clock is 10 minutes off learns the site time from the refusal and gets through', async () => {
      const skewedRoot = mkdtempSync(join(tmpdir(), 'lifeboat-site-skew-'));
      // The site's clock runs 10 minutes ahead of the client's (the machine clock), beyond the 5-minute window.
      const skewed = await startSiteServer({ repoRoot: skewedRoot, secrets: [SECRET], now: () => Date.now() + 10 * 60_000 });
      try {
        const t = target({ url: skewed.url });
        await t.put('data/x', Buffer.from('on time'));
        assert.equal((await t.get('data/x')).toString(), 'on time');
        assert.equal(skewed.stats.refused, 1, 'one refusal taught the client the offset');
      } finally {
        await skewed.close();
        rmSync(skewedRoot, { recursive: true, force: true });
      }
    });

    it('a request signed for one key cannot be redirected to another', async () => {
      const body = Buffer.from('payload');
      const headers = signedHeaders(SECRET, 'PUT', objectPath('default', 'data/allowed'), body);
      const res = await rawRequest(server.url, 'PUT', objectPath('default', 'data/other'), headers, body);
      assert.equal(res.status, 401);
      assert.equal(JSON.parse(res.body).error.code, 'bad-signature');
      assert.deepEqual(storedFiles(root), []);
    });

    it('an answer altered on the way is rejected: the client trusts only what the site signed', async () => {
      await target().put('data/x', Buffer.from('genuine contents'));
      // An HTTP proxy that forwards requests untouched and flips one byte of every response body.
      const tamperer = http.createServer((req, res) => {
        const upstream = http.request(new URL(req.url ?? '/', server.url), { method: req.method, headers: req.headers }, (up) => {
          const parts: Buffer[] = [];
          up.on('data', (d: Buffer) => parts.push(d));
          up.on('end', () => {
            const body = Buffer.concat(parts);
            if (body.length > 0) body[0] ^= 1;
            res.writeHead(up.statusCode ?? 502, up.headers);
            res.end(body);
          });
        });
        req.pipe(upstream);
      });
      await new Promise<void>((resolve) => tamperer.listen(0, '127.0.0.1', resolve));
      try {
        const port = (tamperer.address() as { port: number }).port;
        const viaTamperer = target({ url: `http://127.0.0.1:${port}`, retries: 0 });
        await assert.rejects(viaTamperer.get('data/x'), (err: Error) => err instanceof AuthError && /not signed with our secret/.test(err.message));
      } finally {
        tamperer.closeAllConnections();
        await new Promise((resolve) => tamperer.close(resolve));
      }
    });
  });
});
