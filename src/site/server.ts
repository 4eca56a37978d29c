// `lifeboat site serve`: an HTTP(S) service storing the objects of one or more repositories under a
// folder, with the Target semantics (create-only put, ranged get, head, paged list, delete) and
// resumable uploads, for Lifeboat agents at other sites. Every request is authenticated (request
// signatures with a shared secret and/or mutual TLS); nothing is acknowledged before it is on disk.
// The wire protocol is docs/site-protocol.md; the client is replication/targets/site-client.ts.

import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { AlreadyExistsError, AuthError, NotFoundError, ObjectLockedError, TargetError, type ByteRange, type ObjectInfo, type Target } from '../../replication/target.js';
import {
  SITE_API_PREFIX,
  SITE_HEADERS,
  SITE_MAX_PART_BYTES,
  SITE_MAX_PUT_BYTES,
  sha256Hex,
  type ListPage,
} from '../../replication/targets/site-client.js';
import { RequestAuthenticator, type Authenticated } from './auth.js';
import { SiteHttpError } from './http-error.js';
import { Repositories, checkObjectKey, openLocalRepository, type OpenRepository } from './repositories.js';
import { SiteConfigError } from './secrets.js';
import { UploadSessions, type UploadStats } from './uploads.js';

export { SiteConfigError } from './secrets.js';

export interface SiteServerOptions {
  /** Folder holding the repositories (repos/NAME/) and upload sessions (uploads/). */
  repoRoot: string;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** Shared secrets accepted for request signatures. */
  secrets?: readonly string[];
  /** PEM. With clientCa, clients must present a certificate it signed (mutual TLS). */
  tls?: { cert: string | Buffer; key: string | Buffer; clientCa?: string | Buffer };
  /** Opens the storage of one repository folder; default: the local-directory target. */
  openRepository?: OpenRepository;
  clockSkewMs?: number;
  /** The site's clock in ms (tests shift it to play a client with a wrong clock). */
  now?: () => number;
  maxPartBytes?: number;
  /** Upload sessions untouched this long are removed; default 24 h. */
  uploadTtlMs?: number;
  /** One JSON object per line for failures worth an operator's attention. */
  log?: (entry: Record<string, unknown>) => void;
}

export interface SiteServerStats {
  requests: number;
  refused: number;
  uploads: UploadStats;
}

export interface SiteServer {
  /** Base URL clients use, e.g. https://127.0.0.1:40123 */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly auth: ('secret' | 'mutual-tls')[];
  readonly stats: SiteServerStats;
  close(): Promise<void>;
}

const MAX_JSON_BYTES = 64 * 1024;
const LIST_PAGE_LIMIT = 1000;
const LIST_CACHE_ENTRIES = 64;

export async function startSiteServer(options: SiteServerOptions): Promise<SiteServer> {
  const secrets = options.secrets ?? [];
  const mutualTls = options.tls?.clientCa !== undefined;
  if (secrets.length === 0 && !mutualTls) {
    throw new SiteConfigError('refusing to start without authentication: give a secret file (--secret-file) and/or a client CA for mutual TLS (--client-ca with --tls-cert/--tls-key)');
  }
  const openRepository = options.openRepository ?? openLocalRepository;
  const repositories = new Repositories(options.repoRoot, openRepository);
  const uploads = new UploadSessions(join(options.repoRoot, 'uploads'), options.uploadTtlMs ?? 24 * 3600 * 1000, options.maxPartBytes ?? SITE_MAX_PART_BYTES);
  await uploads.init();
  const authenticator = new RequestAuthenticator({ secrets, requireClientCertificate: mutualTls, clockSkewMs: options.clockSkewMs, now: options.now });
  const stats: SiteServerStats = { requests: 0, refused: 0, uploads: uploads.stats };
  const log = options.log ?? (() => {});

  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    stats.requests++;
    void handle(req, res).catch((err) => {
      log({ level: 'error', msg: 'request failed', method: req.method, url: req.url, error: String(err) });
      if (!res.headersSent) res.destroy();
    });
  };

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let auth: Authenticated | null = null;
    try {
      auth = authenticator.authenticate(req);
    } catch (err) {
      stats.refused++;
      return refuse(req, res, err as SiteHttpError);
    }
    try {
      const reply = await route(req, auth);
      send(res, auth, reply.status, reply.body ?? Buffer.alloc(0), reply.headers);
    } catch (err) {
      const httpErr = toHttpError(err);
      if (httpErr.status >= 500) log({ level: 'error', msg: 'request failed', method: req.method, url: req.url, error: String(err) });
      if (!req.complete) res.setHeader('connection', 'close');
      send(res, auth, httpErr.status, req.method === 'HEAD' ? Buffer.alloc(0) : httpErr.body(), { 'content-type': 'application/json' });
    }
  }

  /** A refused request gets its 401 and no more: the body is not read, the connection closes. */
  function refuse(req: http.IncomingMessage, res: http.ServerResponse, err: SiteHttpError): void {
    const body = req.method === 'HEAD' ? Buffer.alloc(0) : err.body();
    res.writeHead(err.status, { 'content-type': 'application/json', 'content-length': body.length, connection: 'close' });
    res.end(body);
    req.resume();
  }

  function send(res: http.ServerResponse, auth: Authenticated | null, status: number, body: Buffer, headers: Record<string, string> = {}): void {
    const signature = authenticator.signResponse(auth, status, body);
    res.writeHead(status, {
      ...headers,
      'content-length': String(body.length),
      ...(signature ? { [SITE_HEADERS.responseSignature]: signature } : {}),
    });
    res.end(body);
  }

  async function route(req: http.IncomingMessage, auth: Authenticated): Promise<Reply> {
    // The raw path, not new URL(): that would resolve '..' segments before we can refuse them.
    const rawUrl = req.url ?? '/';
    const q = rawUrl.indexOf('?');
    const url = { pathname: q < 0 ? rawUrl : rawUrl.slice(0, q), searchParams: new URLSearchParams(q < 0 ? '' : rawUrl.slice(q + 1)) };
    const method = req.method ?? 'GET';
    const m = url.pathname.match(/^\/v1\/repos\/([^/]+)\/(objects|uploads)(?:\/(.*))?$/);
    if (!m) throw new SiteHttpError(404, 'no-route', `no such endpoint: ${method} ${url.pathname} (this site speaks ${SITE_API_PREFIX})`);
    const repoName = decode(m[1]);
    const rest = m[3];

    if (m[2] === 'objects') {
      if (rest === undefined || rest === '') {
        if (method !== 'GET') throw notAllowed(method, url.pathname);
        await readBody(req, auth, 0);
        return list(repoName, await repositories.get(repoName), url.searchParams);
      }
      const key = checkObjectKey(rest.split('/').map(decode).join('/'));
      const target = await repositories.get(repoName);
      switch (method) {
        case 'PUT': {
          const body = await readBody(req, auth, SITE_MAX_PUT_BYTES);
          await target.put(key, body, { ifNoneMatch: req.headers['if-none-match'] === '*' });
          return { status: 201 };
        }
        case 'GET': {
          await readBody(req, auth, 0);
          const range = parseRange(req.headers.range);
          const data = await target.get(key, range ?? undefined);
          if (!range) return { status: 200, body: data, headers: { 'content-type': 'application/octet-stream' } };
          return {
            status: 206,
            body: data,
            headers: { 'content-type': 'application/octet-stream', 'content-range': `bytes ${range.offset}-${range.offset + data.length - 1}/*` },
          };
        }
        case 'HEAD': {
          await readBody(req, auth, 0);
          const info = await target.head(key);
          if (!info) throw new SiteHttpError(404, 'not-found', `object ${key} not found`);
          return { status: 200, headers: { [SITE_HEADERS.objectSize]: String(info.size) } };
        }
        case 'DELETE':
          await readBody(req, auth, 0);
          await target.delete(key);
          return { status: 204 };
        default:
          throw notAllowed(method, url.pathname);
      }
    }

    // uploads
    const [uploadId, action, extra] = (rest ?? '').split('/');
    if (!uploadId) {
      if (method !== 'POST') throw notAllowed(method, url.pathname);
      const request = parseJson(await readBody(req, auth, MAX_JSON_BYTES));
      const target = await repositories.get(repoName);
      const key = (request as { key?: unknown } | null)?.key;
      if ((request as { ifNoneMatch?: unknown }).ifNoneMatch === true && typeof key === 'string' && (await target.head(checkObjectKey(key)))) {
        throw new SiteHttpError(412, 'exists', `object ${key} already exists`);
      }
      return json(201, await uploads.create(repoName, request));
    }
    if (extra !== undefined || (action !== undefined && action !== 'commit')) throw new SiteHttpError(404, 'no-route', `no such endpoint: ${url.pathname}`);
    if (action === 'commit') {
      if (method !== 'POST') throw notAllowed(method, url.pathname);
      await readBody(req, auth, 0);
      return json(201, await uploads.commit(repoName, uploadId, await repositories.get(repoName)));
    }
    switch (method) {
      case 'GET':
        await readBody(req, auth, 0);
        return json(200, await uploads.status(repoName, uploadId));
      case 'PUT': {
        const offset = Number(url.searchParams.get('offset'));
        if (!url.searchParams.has('offset') || !Number.isSafeInteger(offset) || offset < 0) {
          throw new SiteHttpError(400, 'bad-part', 'an append needs ?offset=N (a non-negative integer)');
        }
        await uploads.status(repoName, uploadId); // 404 before reading a body for a session that is gone
        const part = await readBody(req, auth, SITE_MAX_PART_BYTES);
        return json(200, await uploads.append(repoName, uploadId, offset, part));
      }
      case 'DELETE':
        await readBody(req, auth, 0);
        await uploads.abort(repoName, uploadId);
        return { status: 204 };
      default:
        throw notAllowed(method, url.pathname);
    }
  }

  /**
   * Listing walks the repository folder once per listing, not once per page: the sorted rest of a
   * listing waits here for its next page (a minute at most), keyed by repository, prefix and position.
   */
  const pendingListings = new Map<string, { rest: ObjectInfo[]; expires: number }>();

  async function list(repoName: string, target: Target, params: URLSearchParams): Promise<Reply> {
    const prefix = params.get('prefix') ?? '';
    const startAfter = params.get('start-after') ?? '';
    const maxKeys = Math.min(Number(params.get('max-keys') ?? LIST_PAGE_LIMIT) || LIST_PAGE_LIMIT, LIST_PAGE_LIMIT);
    const now = Date.now();
    for (const [k, v] of pendingListings) if (v.expires < now) pendingListings.delete(k);
    const cacheKey = `${repoName}\0${prefix}\0${startAfter}`;
    let rest = pendingListings.get(cacheKey)?.rest;
    pendingListings.delete(cacheKey);
    if (!rest) {
      rest = [];
      for await (const o of target.list(prefix)) if (o.key > startAfter) rest.push({ key: o.key, size: o.size });
      rest.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    }
    const objects = rest.slice(0, maxKeys);
    const nextStartAfter = rest.length > maxKeys ? objects[objects.length - 1].key : null;
    if (nextStartAfter !== null) {
      if (pendingListings.size >= LIST_CACHE_ENTRIES) pendingListings.delete(pendingListings.keys().next().value!);
      pendingListings.set(`${repoName}\0${prefix}\0${nextStartAfter}`, { rest: rest.slice(maxKeys), expires: now + 60_000 });
    }
    const page: ListPage = { objects, nextStartAfter };
    return json(200, page);
  }

  const server = options.tls
    ? https.createServer(
        {
          cert: options.tls.cert,
          key: options.tls.key,
          ca: options.tls.clientCa,
          requestCert: mutualTls,
          // Checked per request instead, so a client without a certificate gets a 401 it can read.
          rejectUnauthorized: false,
        },
        handler,
      )
    : http.createServer(handler);
  server.requestTimeout = 0; // long uploads on slow links; stalled sockets are caught by the header/keep-alive timeouts
  server.headersTimeout = 60_000;

  const host = options.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      server.off('listening', onListening);
      if (err.code === 'EADDRINUSE') reject(new SiteConfigError(`cannot listen on ${host}:${options.port ?? 0}: the address is already in use; stop the other process or choose another --listen port`));
      else if (err.code === 'EADDRNOTAVAIL') reject(new SiteConfigError(`cannot listen on ${host}:${options.port ?? 0}: no such address on this host`));
      else if (err.code === 'EACCES') reject(new SiteConfigError(`cannot listen on ${host}:${options.port ?? 0}: permission denied (ports below 1024 need privileges)`));
      else reject(err);
    };
    const onListening = () => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(options.port ?? 0, host);
  }).catch(async (err) => {
    await repositories.close();
    throw err;
  });

  const sweeper = setInterval(() => void uploads.sweep().catch((err) => log({ level: 'error', msg: 'upload sweep failed', error: String(err) })), 3600_000);
  sweeper.unref();
  const address = server.address() as AddressInfo;
  const urlHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  let closing: Promise<void> | undefined;
  return {
    url: `${options.tls ? 'https' : 'http'}://${urlHost}:${address.port}`,
    host: address.address,
    port: address.port,
    auth: [...(secrets.length ? (['secret'] as const) : []), ...(mutualTls ? (['mutual-tls'] as const) : [])],
    stats,
    close() {
      closing ??= (async () => {
        clearInterval(sweeper);
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeIdleConnections();
          setTimeout(() => server.closeAllConnections(), 2000).unref();
        });
        await repositories.close();
      })();
      return closing;
    },
  };
}

interface Reply {
  status: number;
  body?: Buffer;
  headers?: Record<string, string>;
}

function json(status: number, value: unknown): Reply {
  return { status, body: Buffer.from(JSON.stringify(value)), headers: { 'content-type': 'application/json' } };
}

function notAllowed(method: string, path: string): SiteHttpError {
  return new SiteHttpError(405, 'method-not-allowed', `${method} is not allowed on ${path}`);
}

function decode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new SiteHttpError(400, 'bad-path', `malformed percent-encoding in '${segment.slice(0, 100)}'`);
  }
}

function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    throw new SiteHttpError(400, 'bad-json', 'the request body is not JSON');
  }
}

/** `bytes=FIRST-LAST` (both inclusive), the only form Lifeboat clients send. */
function parseRange(header: string | undefined): ByteRange | null {
  if (header === undefined) return null;
  const m = header.match(/^bytes=(\d{1,16})-(\d{1,16})$/);
  if (!m || Number(m[2]) < Number(m[1])) throw new SiteHttpError(416, 'bad-range', `unsupported Range '${header}'; send bytes=FIRST-LAST`);
  return { offset: Number(m[1]), length: Number(m[2]) - Number(m[1]) + 1 };
}

/**
 * Reads the whole body (at most `limit` bytes) and checks it against the signed SHA-256. Rejects when
 * the client goes away mid-body: nothing of a partial body is ever used.
 */
function readBody(req: http.IncomingMessage, auth: Authenticated, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (req.headers['transfer-encoding'] || !Number.isSafeInteger(declared)) {
    return Promise.reject(new SiteHttpError(411, 'length-required', 'send the body with a Content-Length'));
  }
  if (declared > limit) {
    return Promise.reject(new SiteHttpError(413, 'too-large', `the body has ${declared} bytes; at most ${limit} are allowed here${limit === SITE_MAX_PUT_BYTES ? ' (use an upload session)' : ''}`));
  }
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let received = 0;
    req.on('data', (d: Buffer) => {
      received += d.length;
      parts.push(d);
    });
    req.on('error', reject);
    req.on('close', () => {
      if (!req.complete) reject(new SiteHttpError(400, 'incomplete-body', 'the connection closed before the whole body arrived'));
    });
    req.on('end', () => {
      const body = Buffer.concat(parts, received);
      if (body.length !== declared) return reject(new SiteHttpError(400, 'incomplete-body', `expected ${declared} bytes, got ${body.length}`));
      if (auth.bodySha256 !== null && sha256Hex(body) !== auth.bodySha256) {
        return reject(new SiteHttpError(400, 'body-digest-mismatch', `the body does not match ${SITE_HEADERS.contentSha256}; nothing was written`));
      }
      resolve(body);
    });
  });
}

function toHttpError(err: unknown): SiteHttpError {
  if (err instanceof SiteHttpError) return err;
  if (err instanceof NotFoundError) return new SiteHttpError(404, 'not-found', err.message);
  if (err instanceof AlreadyExistsError) return new SiteHttpError(412, 'exists', err.message);
  if (err instanceof ObjectLockedError) return new SiteHttpError(423, 'locked', err.message);
  if (err instanceof AuthError) return new SiteHttpError(500, 'internal', `the site cannot access its storage: ${err.message}`);
  if (err instanceof RangeError) return new SiteHttpError(416, 'bad-range', err.message);
  if (err instanceof TargetError) return new SiteHttpError(400, 'rejected', err.message);
  return new SiteHttpError(500, 'internal', `the site failed: ${err instanceof Error ? err.message : String(err)}`);
}
