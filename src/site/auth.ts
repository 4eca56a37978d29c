// Who may talk to the site: every request carries an HMAC-SHA256 signature made with a shared secret
// (the secret itself never crosses the wire), and/or comes over mutual TLS with a client certificate
// signed by the site's client CA. docs/site-protocol.md specifies the scheme.

import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import {
  SITE_CLOCK_SKEW_MS,
  SITE_HEADERS,
  hexEqual,
  parseAuthorization,
  secretKeyId,
  sha256Hex,
  signRequest,
  signResponse,
} from '../../replication/targets/site-client.js';
import { SiteHttpError } from './http-error.js';

export interface Authenticated {
  /** The secret that signed the request (null with mutual TLS only): also signs the answer. */
  secret: string | null;
  nonce: string;
  /** SHA-256 the body must have (null when not signed). */
  bodySha256: string | null;
}

export interface AuthenticatorOptions {
  secrets: readonly string[];
  requireClientCertificate: boolean;
  clockSkewMs?: number;
  now?: () => number;
}

export class RequestAuthenticator {
  private readonly byKeyId = new Map<string, string>();
  private readonly seenNonces = new Map<string, number>();
  private readonly skew: number;
  private readonly now: () => number;
  /** Requests signed before the server started are refused: the replay guard has no memory of them. */
  private readonly startedAt: number;
  private lastSweep = 0;

  constructor(private readonly options: AuthenticatorOptions) {
    for (const s of options.secrets) this.byKeyId.set(secretKeyId(s), s);
    this.skew = options.clockSkewMs ?? SITE_CLOCK_SKEW_MS;
    this.now = options.now ?? Date.now;
    this.startedAt = this.now();
  }

  /** Checks the request line and headers (the body is checked later against `bodySha256`). */
  authenticate(req: IncomingMessage): Authenticated {
    if (this.options.requireClientCertificate) {
      const socket = req.socket as TLSSocket;
      if (!socket.authorized) {
        const why = socket.authorizationError ? String(socket.authorizationError) : 'no certificate';
        throw new SiteHttpError(401, 'client-certificate-required', `a client certificate signed by the site's client CA is required (${why})`);
      }
    }
    if (this.byKeyId.size === 0) return { secret: null, nonce: '', bodySha256: null };

    const auth = parseAuthorization(header(req, SITE_HEADERS.authorization));
    if (!auth) throw new SiteHttpError(401, 'unauthenticated', 'the request is not signed; configure the site secret on the client');
    const secret = this.byKeyId.get(auth.keyId);
    if (!secret) throw new SiteHttpError(401, 'unknown-key', `no secret with key id ${auth.keyId} is configured at this site (wrong secret?)`);

    const timestamp = header(req, SITE_HEADERS.timestamp) ?? '';
    const nonce = header(req, SITE_HEADERS.nonce) ?? '';
    const bodySha256 = header(req, SITE_HEADERS.contentSha256) ?? '';
    if (!/^\d{1,16}$/.test(timestamp)) throw new SiteHttpError(401, 'unauthenticated', `missing or malformed ${SITE_HEADERS.timestamp}`);
    if (!/^[0-9a-f]{32,64}$/.test(nonce)) throw new SiteHttpError(401, 'unauthenticated', `missing or malformed ${SITE_HEADERS.nonce}`);
    if (!/^[0-9a-f]{64}$/.test(bodySha256)) throw new SiteHttpError(401, 'unauthenticated', `missing or malformed ${SITE_HEADERS.contentSha256}`);

    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const parts = {
      method: req.method ?? 'GET',
      path: q < 0 ? url : url.slice(0, q),
      query: q < 0 ? '' : url.slice(q + 1),
      timestamp,
      nonce,
      bodySha256,
    };
    if (!hexEqual(auth.signature, signRequest(secret, parts))) {
      throw new SiteHttpError(401, 'bad-signature', 'the request signature does not match (wrong secret, or the request was altered)');
    }
    const now = this.now();
    const ts = Number(timestamp);
    if (Math.abs(now - ts) > this.skew || ts < this.startedAt) {
      throw new SiteHttpError(401, 'clock-skew', `the request time is ${Math.round((ts - now) / 1000)} s off the site's clock (allowed ${this.skew / 1000} s); check NTP`, {
        serverTime: now,
      });
    }
    this.sweepNonces(now);
    if (this.seenNonces.has(nonce)) throw new SiteHttpError(401, 'replayed', 'this request was already received (replay refused)');
    this.seenNonces.set(nonce, ts + this.skew);
    return { secret, nonce, bodySha256 };
  }

  /** The response signature header value, or null when the request was not signed. */
  signResponse(auth: Authenticated | null, status: number, body: Buffer): string | null {
    if (!auth?.secret) return null;
    return signResponse(auth.secret, auth.nonce, status, sha256Hex(body));
  }

  private sweepNonces(now: number): void {
    if (now - this.lastSweep < 10_000) return;
    this.lastSweep = now;
    for (const [nonce, expires] of this.seenNonces) if (expires < now) this.seenNonces.delete(nonce);
  }
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}
