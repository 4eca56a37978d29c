// Keys and sealing: the working keys derived from a repository's master key, chunk ids (content
// addresses), and AES-256-GCM sealing of stored objects. An unencrypted repository uses plain SHA-256
// ids and stores objects as they are.

import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomFillSync } from 'node:crypto';
import {
  AES_KEY_BYTES,
  GCM_NONCE_BYTES,
  GCM_TAG_BYTES,
  HKDF_INFO_CONFIG_KEY,
  HKDF_INFO_DATA_KEY,
  HKDF_INFO_ID_KEY,
  SEAL_OVERHEAD,
} from './constants.js';

/** Sealed bytes failed authentication: wrong key, or the stored bytes were changed. */
export class AuthenticationError extends Error {
  constructor(message = 'authentication failed') {
    super(message);
    this.name = 'AuthenticationError';
  }
}

export interface WorkingKeys {
  /** AES-256-GCM key for every sealed object. */
  dataKey: Buffer;
  /** HMAC-SHA256 key for chunk ids. */
  idKey: Buffer;
  /** HMAC-SHA256 key authenticating the config's parameters. */
  configKey: Buffer;
}

export function deriveWorkingKeys(masterKey: Buffer, repositoryId: Buffer): WorkingKeys {
  const derive = (info: string) => Buffer.from(hkdfSync('sha256', masterKey, repositoryId, info, AES_KEY_BYTES));
  return {
    dataKey: derive(HKDF_INFO_DATA_KEY),
    idKey: derive(HKDF_INFO_ID_KEY),
    configKey: derive(HKDF_INFO_CONFIG_KEY),
  };
}

/** The content address of a chunk (or map page, or metadata blob). */
export function chunkId(data: Uint8Array, idKey: Buffer | null): Buffer {
  return idKey ? createHmac('sha256', idKey).update(data).digest() : createHash('sha256').update(data).digest();
}

/** nonce (12) || AES-256-GCM ciphertext || tag (16). */
export function seal(plain: Uint8Array, key: Buffer, aad: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(plain.length + SEAL_OVERHEAD);
  sealInto(plain, key, aad, out, 0);
  return out;
}

/** seal() into out at `at` (plain.length + SEAL_OVERHEAD bytes); returns the bytes written. */
export function sealInto(plain: Uint8Array, key: Buffer, aad: Uint8Array, out: Buffer, at: number): number {
  randomFillSync(out, at, GCM_NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, out.subarray(at, at + GCM_NONCE_BYTES));
  cipher.setAAD(aad);
  let p = at + GCM_NONCE_BYTES;
  p += cipher.update(plain).copy(out, p);
  p += cipher.final().copy(out, p);
  p += cipher.getAuthTag().copy(out, p);
  return p - at;
}

/**
 * seal() as its parts, with a nonce the caller drew (a worker sealing many blobs draws all their nonces
 * at once): the stored form is nonce || body || tag. The body is a buffer of its own (not a view).
 */
export function sealParts(plain: Uint8Array, key: Buffer, aad: Uint8Array, nonce: Uint8Array): { body: Buffer; tag: Buffer } {
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad);
  const body = cipher.update(plain);
  const tail = cipher.final();
  return { body: tail.length ? Buffer.concat([body, tail]) : body, tag: cipher.getAuthTag() };
}

export function open(stored: Uint8Array, key: Buffer, aad: Uint8Array): Buffer {
  if (stored.length < SEAL_OVERHEAD) throw new AuthenticationError('sealed object is shorter than its nonce and tag');
  const buf = Buffer.from(stored.buffer, stored.byteOffset, stored.length);
  const nonce = buf.subarray(0, GCM_NONCE_BYTES);
  const tag = buf.subarray(buf.length - GCM_TAG_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', key, nonce);
  decipher.setAAD(aad);
  decipher.setAuthTag(tag);
  const body = decipher.update(buf.subarray(GCM_NONCE_BYTES, buf.length - GCM_TAG_BYTES));
  try {
    const tail = decipher.final();
    return tail.length ? Buffer.concat([body, tail]) : body;
  } catch {
    throw new AuthenticationError();
  }
}

/** Sealing for a repository: identity when unencrypted. */
export class Sealer {
  constructor(readonly keys: WorkingKeys | null) {}

  get encrypted(): boolean {
    return this.keys !== null;
  }

  seal(plain: Uint8Array, aad: Uint8Array): Buffer {
    return this.keys ? seal(plain, this.keys.dataKey, aad) : Buffer.from(plain.buffer, plain.byteOffset, plain.length);
  }

  /** The stored form of plain written into out at `at` (storedLength(plain.length) bytes); returns its length. */
  sealInto(plain: Uint8Array, aad: Uint8Array, out: Buffer, at: number): number {
    if (this.keys) return sealInto(plain, this.keys.dataKey, aad, out, at);
    out.set(plain, at);
    return plain.length;
  }

  /** sealParts() with the data key (encrypted repositories only). */
  sealParts(plain: Uint8Array, aad: Uint8Array, nonce: Uint8Array): { body: Buffer; tag: Buffer } {
    if (!this.keys) throw new Error('internal: sealParts on an unencrypted repository');
    return sealParts(plain, this.keys.dataKey, aad, nonce);
  }

  storedLength(plainLength: number): number {
    return plainLength + (this.keys ? SEAL_OVERHEAD : 0);
  }

  open(stored: Uint8Array, aad: Uint8Array): Buffer {
    return this.keys ? open(stored, this.keys.dataKey, aad) : Buffer.from(stored.buffer, stored.byteOffset, stored.length);
  }

  chunkId(data: Uint8Array): Buffer {
    return chunkId(data, this.keys ? this.keys.idKey : null);
  }

  /** The chunk id of the concatenation of `parts` (without concatenating them). */
  chunkIdOf(parts: Uint8Array[]): Buffer {
    if (parts.length === 1) return this.chunkId(parts[0]);
    const h = this.keys ? createHmac('sha256', this.keys.idKey) : createHash('sha256');
    for (const p of parts) h.update(p);
    return h.digest();
  }
}
