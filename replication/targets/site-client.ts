// The remote Lifeboat site as a Target: an HTTP(S) client of `lifeboat site serve` (src/site/).
// docs/site-protocol.md specifies the wire protocol. The protocol pieces both ends need (paths, the
// request and response signature, header names) live in the first half of this file, and the server
// imports them from here, so the scheme has exactly one definition.

import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import {
  AlreadyExistsError,
  AuthError,
  NotFoundError,
  ObjectLockedError,
  TargetError,
  type ByteRange,
  type ObjectInfo,
  type PutOptions,
  type Target,
} from '../target.js';

// ---------------------------------------------------------------------------------------------------
// Protocol (shared with src/site/)

export const SITE_API_PREFIX = '/v1';
export const SIGNATURE_SCHEME = 'LIFEBOAT-HMAC-SHA256';
export const RESPONSE_SIGNATURE_SCHEME = 'LIFEBOAT-HMAC-SHA256-RESPONSE';
export const SITE_HEADERS = {
  authorization: 'authorization',
  timestamp: 'x-lifeboat-timestamp',
  nonce: 'x-lifeboat-nonce',
  contentSha256: 'x-lifeboat-content-sha256',
  responseSignature: 'x-lifeboat-response-signature',
  objectSize: 'x-lifeboat-object-size',
} as const;
/** Requests whose timestamp is further than this from the server's clock are refused. */
export const SITE_CLOCK_SKEW_MS = 5 * 60 * 1000;
/** The largest body one append to an upload session may carry. */
export const SITE_MAX_PART_BYTES = 16 * 1024 * 1024;
/** The largest body a single object PUT may carry; larger objects go through an upload session. */
export const SITE_MAX_PUT_BYTES = 64 * 1024 * 1024;
/** The largest object an upload session accepts. */
export const SITE_MAX_OBJECT_BYTES = 1024 * 1024 * 1024;
/** Minimum secret length in characters. */
export const SITE_MIN_SECRET_LENGTH = 32;
export const REPO_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const DEFAULT_REPO = 'default';

export const EMPTY_SHA256 = createHash('sha256').digest('hex');

export function sha256Hex(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Public name of a secret, sent with each request so a server holding several secrets knows which to check. */
export function secretKeyId(secret: string): string {
  return createHash('sha256').update(`lifeboat site key id\n${secret}`).digest('hex').slice(0, 16);
}

/** Query parameters sorted by name, then value, each part percent-encoded (RFC 3986 unreserved kept). */
export function canonicalQuery(query: string): string {
  const pairs = [...new URLSearchParams(query)];
  pairs.sort(([ak, av], [bk, bv]) => (ak < bk ? -1 : ak > bk ? 1 : av < bv ? -1 : av > bv ? 1 : 0));
  return pairs.map(([k, v]) => `${encodeRfc3986(k)}=${encodeRfc3986(v)}`).join('&');
}

function encodeRfc3986(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

export interface SignedRequestParts {
  method: string;
  /** The request path exactly as sent on the request line, without the query. */
  path: string;
  /** The raw query string without '?', possibly empty. */
  query: string;
  /** Milliseconds since the Unix epoch, decimal. */
  timestamp: string;
  nonce: string;
  bodySha256: string;
}

export function requestStringToSign(p: SignedRequestParts): string {
  return [SIGNATURE_SCHEME, p.method.toUpperCase(), p.path, canonicalQuery(p.query), p.timestamp, p.nonce, p.bodySha256].join('\n');
}

export function signRequest(secret: string, parts: SignedRequestParts): string {
  return createHmac('sha256', secret).update(requestStringToSign(parts)).digest('hex');
}

export function responseStringToSign(requestNonce: string, status: number, bodySha256: string): string {
  return [RESPONSE_SIGNATURE_SCHEME, requestNonce, String(status), bodySha256].join('\n');
}

export function signResponse(secret: string, requestNonce: string, status: number, bodySha256: string): string {
  return createHmac('sha256', secret).update(responseStringToSign(requestNonce, status, bodySha256)).digest('hex');
}

/** Constant-time comparison of two lowercase hex strings. */
export function hexEqual(a: string, b: string): boolean {
  if (a.length !== b.length || !/^[0-9a-f]*$/.test(a) || !/^[0-9a-f]*$/.test(b)) return false;
  return timingSafeEqual(Buffer.from(a, 'hex'), Buffer.from(b, 'hex'));
}

export function authorizationHeader(keyId: string, signature: string): string {
  return `${SIGNATURE_SCHEME} KeyId=${keyId}, Signature=${signature}`;
}

export function parseAuthorization(header: string | undefined): { keyId: string; signature: string } | null {
  const m = header?.match(/^LIFEBOAT-HMAC-SHA256 KeyId=([0-9a-f]{16}), Signature=([0-9a-f]{64})$/);
  return m ? { keyId: m[1], signature: m[2] } : null;
}

export const SITE_MAX_KEY_BYTES = 1024;

/** Why `key` cannot name an object (null when it can): relative slash-separated paths only. */
export function objectKeyProblem(key: string): string | null {
  if (key === '') return 'empty';
  if (Buffer.byteLength(key) > SITE_MAX_KEY_BYTES) return `longer than ${SITE_MAX_KEY_BYTES} bytes`;
  if (/[\0\\]/.test(key)) return 'contains NUL or a backslash';
  if (key.split('/').some((seg) => seg === '' || seg === '.' || seg === '..')) return "has an empty, '.' or '..' path segment";
  return null;
}

/** `/v1/repos/REPO/objects/K/E/Y`: each key segment percent-encoded. */
export function objectPath(repo: string, key: string): string {
  return `${reposPath(repo)}/objects/${key.split('/').map(encodeRfc3986).join('/')}`;
}
export function reposPath(repo: string): string {
  return `${SITE_API_PREFIX}/repos/${encodeRfc3986(repo)}`;
}

/** The JSON body of every error response. */
export interface SiteErrorBody {
  error: { code: string; message: string; committedOffset?: number; serverTime?: number };
}

export interface UploadSessionState {
  uploadId: string;
  key: string;
  size: number;
  sha256: string;
  committedOffset: number;
  maxPartBytes: number;
  state: 'open' | 'committed';
}

export interface ListPage {
  objects: ObjectInfo[];
  /** Pass as `start-after` to get the next page; null on the last page. */
  nextStartAfter: string | null;
}

// ---------------------------------------------------------------------------------------------------
// Client

export interface SiteTargetOptions {
  /** Base URL of the site, `http://HOST:PORT` or `https://HOST:PORT`. */
  url: string;
  /** Repository name on the site (one site stores several); default `default`. */
  repo?: string;
  /** Shared secret for request signatures; the same string is in the site's --secret-file. */
  secret?: string;
  /** CA certificate(s) that signed the site's TLS certificate (PEM). */
  ca?: string | Buffer;
  /** Client certificate and key (PEM) for mutual TLS. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Bodies larger than this go through a resumable upload session; default 8 MiB. */
  resumableThreshold?: number;
  /** Bytes per append in an upload session; default 4 MiB (capped by the server's limit). */
  partSize?: number;
  /** Attempts after a connection error or 5xx before giving up; default 6. */
  retries?: number;
  /** First backoff delay; doubles per attempt, with jitter; default 200 ms. */
  retryBaseMs?: number;
  /** A request with no progress for this long is aborted and retried; default 60 s. */
  requestTimeoutMs?: number;
}

interface SiteResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

interface RequestSpec {
  method: 'GET' | 'HEAD' | 'PUT' | 'POST' | 'DELETE';
  path: string;
  query?: Record<string, string>;
  body?: Buffer;
  headers?: Record<string, string>;
}

/** A failure worth retrying: the connection broke, timed out, or the server said 5xx. */
class TransientError extends Error {}

export function createSiteTarget(options: SiteTargetOptions): Target {
  return new SiteTarget(options);
}

class SiteTarget implements Target {
  readonly description: string;
  private readonly base: URL;
  private readonly repo: string;
  private readonly agent: http.Agent;
  private readonly transport: typeof http | typeof https;
  private readonly threshold: number;
  private readonly partSize: number;
  private readonly retries: number;
  private readonly retryBaseMs: number;
  private readonly timeoutMs: number;
  /** Server clock minus ours, learned from a clock-skew refusal. */
  private clockOffsetMs = 0;

  constructor(private readonly options: SiteTargetOptions) {
    let base: URL;
    try {
      base = new URL(options.url);
    } catch {
      throw new TargetError(`site URL '${options.url}' is not a URL; expected http(s)://HOST:PORT`);
    }
    if (base.protocol !== 'http:' && base.protocol !== 'https:') {
      throw new TargetError(`site URL '${options.url}' must start with http:// or https://`);
    }
    if (base.username || base.password) throw new TargetError(`site URL must not contain credentials; use the secret option`);
    this.base = base;
    this.repo = options.repo ?? DEFAULT_REPO;
    if (!REPO_NAME_PATTERN.test(this.repo)) {
      throw new TargetError(`site repository name '${this.repo}' is invalid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
    }
    if (base.protocol === 'http:' && (options.cert || options.key || options.ca)) {
      throw new TargetError(`site ${options.url}: TLS certificates were given but the URL is http://; use https://`);
    }
    this.description = `site ${base.origin}${base.pathname.replace(/\/$/, '')} repo ${this.repo}`;
    this.transport = base.protocol === 'https:' ? https : http;
    this.agent =
      base.protocol === 'https:'
        ? new https.Agent({ keepAlive: true, maxSockets: 8, ca: options.ca, cert: options.cert, key: options.key })
        : new http.Agent({ keepAlive: true, maxSockets: 8 });
    this.threshold = options.resumableThreshold ?? 8 * 1024 * 1024;
    this.partSize = Math.max(1, Math.min(options.partSize ?? 4 * 1024 * 1024, SITE_MAX_PART_BYTES));
    this.retries = options.retries ?? 6;
    this.retryBaseMs = options.retryBaseMs ?? 200;
    this.timeoutMs = options.requestTimeoutMs ?? 60_000;
  }

  async put(key: string, body: Buffer, options: PutOptions = {}): Promise<void> {
    if (body.length > this.threshold || body.length > SITE_MAX_PUT_BYTES) return this.putResumable(key, body, options);
    const headers: Record<string, string> = options.ifNoneMatch ? { 'if-none-match': '*' } : {};
    let attempts = 0;
    const res = await this.withRetries(`put ${key}`, () => {
      attempts++;
      return this.send({ method: 'PUT', path: this.objectPath(key), body, headers });
    });
    if (res.status === 412 && attempts > 1 && (await this.holds(key, body))) return; // our own earlier attempt landed
    this.expect(res, [201], key);
  }

  /** One body: a request carries the digest of the whole buffer it sends. */
  async putParts(key: string, parts: readonly Uint8Array[], options: PutOptions = {}): Promise<void> {
    await this.put(key, Buffer.concat(parts), options);
  }

  async get(key: string, range?: ByteRange): Promise<Buffer> {
    if (range && (!Number.isSafeInteger(range.offset) || !Number.isSafeInteger(range.length) || range.offset < 0 || range.length < 0)) {
      throw new TargetError(`${this.description}: invalid range offset=${range.offset} length=${range.length}`, key);
    }
    if (range && range.length === 0) {
      if (!(await this.head(key))) throw new NotFoundError(`${this.description}: object ${key} not found`, key);
      return Buffer.alloc(0);
    }
    const headers: Record<string, string> = range ? { range: `bytes=${range.offset}-${range.offset + range.length - 1}` } : {};
    const res = await this.withRetries(`get ${key}`, () => this.send({ method: 'GET', path: this.objectPath(key), headers }));
    this.expect(res, range ? [200, 206] : [200], key);
    return res.body;
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const res = await this.withRetries(`head ${key}`, () => this.send({ method: 'HEAD', path: this.objectPath(key) }));
    if (res.status === 404) return null;
    this.expect(res, [200], key);
    return { key, size: Number(res.headers[SITE_HEADERS.objectSize]) };
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    let startAfter: string | null = '';
    while (startAfter !== null) {
      const query: Record<string, string> = { prefix, 'start-after': startAfter };
      const res = await this.withRetries(`list ${prefix}`, () => this.send({ method: 'GET', path: `${reposPath(this.repo)}/objects`, query }));
      this.expect(res, [200]);
      const page = JSON.parse(res.body.toString('utf8')) as ListPage;
      yield* page.objects;
      startAfter = page.nextStartAfter;
    }
  }

  async delete(key: string): Promise<void> {
    const res = await this.withRetries(`delete ${key}`, () => this.send({ method: 'DELETE', path: this.objectPath(key) }));
    this.expect(res, [204], key);
  }

  async close(): Promise<void> {
    this.agent.destroy();
  }

  /** Large bodies: an upload session that survives broken connections; see docs/site-protocol.md. */
  private async putResumable(key: string, body: Buffer, options: PutOptions): Promise<void> {
    const uploads = `${reposPath(this.repo)}/uploads`;
    const create = Buffer.from(JSON.stringify({ key, size: body.length, sha256: sha256Hex(body), ifNoneMatch: options.ifNoneMatch === true }));
    const created = await this.withRetries(`upload ${key}`, () => this.send({ method: 'POST', path: uploads, body: create, headers: { 'content-type': 'application/json' } }));
    this.expect(created, [201], key);
    const session = JSON.parse(created.body.toString('utf8')) as UploadSessionState;
    const sessionPath = `${uploads}/${encodeURIComponent(session.uploadId)}`;
    const partSize = Math.min(this.partSize, session.maxPartBytes);

    let offset = session.committedOffset;
    let failures = 0;
    while (offset < body.length) {
      const part = body.subarray(offset, Math.min(offset + partSize, body.length));
      try {
        const res = await this.send({ method: 'PUT', path: sessionPath, query: { offset: String(offset) }, body: part });
        if (res.status >= 500) throw new TransientError(`HTTP ${res.status}`);
        if (res.status === 409) {
          offset = this.sessionState(res).committedOffset; // the server has a different offset: continue from its
          continue;
        }
        this.expect(res, [200], key);
        offset = (JSON.parse(res.body.toString('utf8')) as UploadSessionState).committedOffset;
        failures = 0;
      } catch (err) {
        if (!(err instanceof TransientError) || ++failures > this.retries) throw this.giveUp(err, `upload ${key}`);
        await this.backoff(failures);
        const state = await this.withRetries(`upload ${key}`, () => this.send({ method: 'GET', path: sessionPath }));
        this.expect(state, [200], key);
        offset = this.sessionState(state).committedOffset; // resume where the site's durable copy ends
      }
    }
    const committed = await this.withRetries(`upload ${key}`, () => this.send({ method: 'POST', path: `${sessionPath}/commit` }));
    this.expect(committed, [201], key);
  }

  private sessionState(res: SiteResponse): { committedOffset: number } {
    const parsed = JSON.parse(res.body.toString('utf8')) as UploadSessionState | SiteErrorBody;
    const offset = 'error' in parsed ? parsed.error.committedOffset : parsed.committedOffset;
    if (typeof offset !== 'number') throw new TargetError(`${this.description}: upload session answer without a committed offset`);
    return { committedOffset: offset };
  }

  /** After an ambiguous create-only put: is the object there with exactly our bytes? */
  private async holds(key: string, body: Buffer): Promise<boolean> {
    try {
      return (await this.get(key)).equals(body);
    } catch (err) {
      if (err instanceof NotFoundError) return false;
      throw err;
    }
  }

  private objectPath(key: string): string {
    const problem = objectKeyProblem(key);
    if (problem) throw new TargetError(`${this.description}: object key '${key.slice(0, 200)}' is invalid: ${problem}`, key);
    return objectPath(this.repo, key);
  }

  /** Throws the Target error matching an unexpected status. */
  private expect(res: SiteResponse, ok: number[], key?: string): void {
    if (ok.includes(res.status)) return;
    let message = `HTTP ${res.status}`;
    let code = '';
    if (res.body.length > 0) {
      try {
        const parsed = JSON.parse(res.body.toString('utf8')) as SiteErrorBody;
        message = parsed.error.message;
        code = parsed.error.code;
      } catch {
        // not one of our error bodies; keep the status
      }
    }
    const where = this.description;
    switch (res.status) {
      case 401:
        throw new AuthError(`${where} refused the request: ${message}`, key);
      case 404:
        throw new NotFoundError(`${where}: ${key ? `object ${key} not found` : message}`, key);
      case 412:
        throw new AlreadyExistsError(`${where}: object ${key} already exists`, key);
      case 423:
        throw new ObjectLockedError(`${where}: object ${key} is retention-locked`, key);
      default:
        throw new TargetError(`${where}: ${message}${code ? ` (${code})` : ''}`, key);
    }
  }

  private async withRetries(what: string, fn: () => Promise<SiteResponse>): Promise<SiteResponse> {
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await fn();
        // A 5xx is retried; the last one is returned so that its message reaches the caller.
        if (res.status < 500 || res.status === 501 || attempt >= this.retries) return res;
      } catch (err) {
        if (!(err instanceof TransientError) || attempt >= this.retries) throw this.giveUp(err, what);
      }
      await this.backoff(attempt + 1);
    }
  }

  private giveUp(err: unknown, what: string): Error {
    if (err instanceof TargetError) return err;
    const reason = err instanceof Error ? err.message : String(err);
    return new TargetError(`${this.description}: ${what} failed: ${reason}`);
  }

  private backoff(attempt: number): Promise<void> {
    const delay = Math.min(this.retryBaseMs * 2 ** (attempt - 1), 10_000) * (0.5 + Math.random() / 2);
    return new Promise((resolve) => setTimeout(resolve, delay));
  }

  /** One signed request; a clock-skew refusal is corrected once. Connection failures throw TransientError. */
  private async send(spec: RequestSpec): Promise<SiteResponse> {
    let res = await this.sendOnce(spec);
    if (res.status === 401 && this.options.secret) {
      const serverTime = skewServerTime(res);
      if (serverTime !== null) {
        this.clockOffsetMs = serverTime - Date.now();
        res = await this.sendOnce(spec);
      }
    }
    return res;
  }

  private sendOnce(spec: RequestSpec): Promise<SiteResponse> {
    const body = spec.body ?? Buffer.alloc(0);
    const basePath = this.base.pathname.replace(/\/$/, '');
    const path = basePath + spec.path;
    const query = spec.query ? new URLSearchParams(spec.query).toString() : '';
    const headers: Record<string, string> = { ...spec.headers, 'content-length': String(body.length) };
    const nonce = randomBytes(16).toString('hex');
    const secret = this.options.secret;
    if (secret) {
      const timestamp = String(Date.now() + this.clockOffsetMs);
      const bodySha256 = sha256Hex(body);
      const signature = signRequest(secret, { method: spec.method, path, query, timestamp, nonce, bodySha256 });
      Object.assign(headers, {
        [SITE_HEADERS.timestamp]: timestamp,
        [SITE_HEADERS.nonce]: nonce,
        [SITE_HEADERS.contentSha256]: bodySha256,
        [SITE_HEADERS.authorization]: authorizationHeader(secretKeyId(secret), signature),
      });
    }
    return new Promise<SiteResponse>((resolve, reject) => {
      const req = this.transport.request(
        {
          protocol: this.base.protocol,
          hostname: this.base.hostname,
          port: this.base.port,
          method: spec.method,
          path: query ? `${path}?${query}` : path,
          headers,
          agent: this.agent,
          timeout: this.timeoutMs,
        },
        (res) => {
          const parts: Buffer[] = [];
          res.on('data', (d: Buffer) => parts.push(d));
          res.on('error', (err) => reject(new TransientError(err.message)));
          res.on('aborted', () => reject(new TransientError('response cut short')));
          res.on('end', () => {
            const response: SiteResponse = { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) };
            try {
              if (secret) this.checkResponseSignature(secret, nonce, response);
              resolve(response);
            } catch (err) {
              reject(err);
            }
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this.timeoutMs} ms`)));
      req.on('error', (err) => reject(this.connectionError(err)));
      req.end(body);
    });
  }

  /** Every answer except a refusal must carry the site's signature: proof we talk to the right site. */
  private checkResponseSignature(secret: string, nonce: string, res: SiteResponse): void {
    if (res.status === 401) return;
    const expected = signResponse(secret, nonce, res.status, sha256Hex(res.body));
    const got = res.headers[SITE_HEADERS.responseSignature];
    if (typeof got !== 'string' || !hexEqual(got, expected)) {
      throw new AuthError(`${this.description}: the answer is not signed with our secret (wrong site, wrong secret, or something in between changed it)`);
    }
  }

  private connectionError(err: Error & { code?: string }): Error {
    const tlsCodes = ['DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'CERT_HAS_EXPIRED', 'ERR_TLS_CERT_ALTNAME_INVALID'];
    if (err.code && tlsCodes.includes(err.code)) {
      return new AuthError(`${this.description}: the site's TLS certificate is not trusted (${err.code}); pass the site's CA certificate`);
    }
    if (err.code === 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED' || err.code === 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE') {
      return new AuthError(`${this.description} refused our TLS client certificate (${err.code})`);
    }
    return new TransientError(`${err.message}${err.code && !err.message.includes(err.code) ? ` (${err.code})` : ''}`);
  }
}

function skewServerTime(res: SiteResponse): number | null {
  try {
    const parsed = JSON.parse(res.body.toString('utf8')) as SiteErrorBody;
    return parsed.error.code === 'clock-skew' && typeof parsed.error.serverTime === 'number' ? parsed.error.serverTime : null;
  } catch {
    return null;
  }
}
