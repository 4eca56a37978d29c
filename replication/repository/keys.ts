// Key objects (`keys/ID`): the master key wrapped (AES-256-GCM) under a key-encryption key derived from
// a passphrase (scrypt) or from the contents of a key file (HKDF-SHA256). A repository may hold several.

import { createHash, hkdfSync, randomBytes, scrypt as scryptCallback, timingSafeEqual } from 'node:crypto';
import { hostname } from 'node:os';
import {
  AES_KEY_BYTES,
  HKDF_INFO_KEY_FILE,
  KDF_SALT_BYTES,
  MASTER_KEY_BYTES,
  MIN_KEY_FILE_BYTES,
  OBJECT_ID_BYTES,
  SCRYPT_N,
  SCRYPT_P,
  SCRYPT_R,
} from './constants.js';
import { AuthenticationError, open, seal } from './crypto.js';
import { AAD_KEY, FormatError } from './layout.js';

export const KEY_FORMAT = 'lifeboat-key';

/** What unlocks a repository: a passphrase, or the bytes of a key file. */
export type KeySecret = { passphrase: string } | { keyFile: Buffer };

export interface KeyObject {
  format: typeof KEY_FORMAT;
  version: 1;
  id: string;
  kind: 'passphrase' | 'key-file';
  kdf: { name: 'scrypt'; N: number; r: number; p: number } | { name: 'hkdf-sha256' };
  /** base64 */
  salt: string;
  /** base64 of nonce || AES-256-GCM(master key) || tag, AAD = "LBKY" || repository id. */
  wrapped: string;
  /** hex SHA-256 of the JSON array [format, version, id, kind, kdf as [name, N, r, p] or [name], salt, wrapped, createdAt, host, label or null]. */
  check: string;
  createdAt: string;
  host: string;
  label?: string;
}

function scrypt(passphrase: string, salt: Buffer, N: number, r: number, p: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scryptCallback(passphrase.normalize('NFC'), salt, AES_KEY_BYTES, { N, r, p, maxmem: 256 * N * r + 1024 * 1024 }, (err, key) =>
      err ? reject(err) : resolve(key),
    );
  });
}

async function keyEncryptionKey(obj: Pick<KeyObject, 'kind' | 'kdf'>, salt: Buffer, secret: KeySecret): Promise<Buffer | null> {
  if (obj.kind === 'passphrase' && 'passphrase' in secret && obj.kdf.name === 'scrypt') {
    return scrypt(secret.passphrase, salt, obj.kdf.N, obj.kdf.r, obj.kdf.p);
  }
  if (obj.kind === 'key-file' && 'keyFile' in secret && obj.kdf.name === 'hkdf-sha256') {
    return Buffer.from(hkdfSync('sha256', secret.keyFile, salt, HKDF_INFO_KEY_FILE, AES_KEY_BYTES));
  }
  return null; // this key object is for the other kind of secret
}

/** Covers every field but itself, so a damaged key object is told apart from a wrong secret. */
function checksum(o: Omit<KeyObject, 'check'>): string {
  const kdf = o.kdf.name === 'scrypt' ? [o.kdf.name, o.kdf.N, o.kdf.r, o.kdf.p] : [o.kdf.name];
  const fields = [o.format, o.version, o.id, o.kind, kdf, o.salt, o.wrapped, o.createdAt, o.host, o.label ?? null];
  return createHash('sha256').update(JSON.stringify(fields)).digest('hex');
}

export function validateKeyFile(contents: Buffer, path: string): void {
  if (contents.length < MIN_KEY_FILE_BYTES) {
    throw new KeyFileError(`key file ${path} holds ${contents.length} bytes; a key file needs at least ${MIN_KEY_FILE_BYTES} (create one with 'lifeboat repo init --key-file NEWFILE')`);
  }
}

export class KeyFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeyFileError';
  }
}

export function newMasterKey(): Buffer {
  return randomBytes(MASTER_KEY_BYTES);
}

export async function createKeyObject(masterKey: Buffer, repositoryId: Buffer, secret: KeySecret, label?: string): Promise<KeyObject> {
  const salt = randomBytes(KDF_SALT_BYTES);
  const base =
    'passphrase' in secret
      ? { kind: 'passphrase' as const, kdf: { name: 'scrypt' as const, N: SCRYPT_N, r: SCRYPT_R, p: SCRYPT_P } }
      : { kind: 'key-file' as const, kdf: { name: 'hkdf-sha256' as const } };
  const kek = await keyEncryptionKey(base, salt, secret);
  if (!kek) throw new Error('unreachable: key kind and secret disagree');
  const wrapped = seal(masterKey, kek, Buffer.concat([AAD_KEY, repositoryId]));
  const obj: Omit<KeyObject, 'check'> = {
    format: KEY_FORMAT,
    version: 1,
    id: randomBytes(OBJECT_ID_BYTES).toString('hex'),
    ...base,
    salt: salt.toString('base64'),
    wrapped: wrapped.toString('base64'),
    createdAt: new Date().toISOString(),
    host: hostname(),
    ...(label ? { label } : {}),
  };
  return { ...obj, check: checksum(obj) };
}

export function decodeKeyObject(buf: Buffer, key: string): KeyObject {
  let obj: KeyObject;
  try {
    obj = JSON.parse(buf.toString('utf8'));
  } catch {
    throw new FormatError(`key object ${key} is damaged (not valid JSON)`);
  }
  if (!obj || obj.format !== KEY_FORMAT || obj.version !== 1 || typeof obj.salt !== 'string' || typeof obj.wrapped !== 'string') {
    throw new FormatError(`key object ${key} is damaged (missing fields)`);
  }
  const want = Buffer.from(checksum(obj), 'hex');
  const got = Buffer.from(String(obj.check), 'hex');
  if (got.length !== want.length || !timingSafeEqual(got, want)) throw new FormatError(`key object ${key} is damaged (checksum mismatch)`);
  return obj;
}

/** The master key, or null when the secret does not unlock this key object. */
export async function unwrapKeyObject(obj: KeyObject, repositoryId: Buffer, secret: KeySecret): Promise<Buffer | null> {
  const salt = Buffer.from(obj.salt, 'base64');
  const kek = await keyEncryptionKey(obj, salt, secret);
  if (!kek) return null;
  try {
    return open(Buffer.from(obj.wrapped, 'base64'), kek, Buffer.concat([AAD_KEY, repositoryId]));
  } catch (err) {
    if (err instanceof AuthenticationError) return null;
    throw err;
  }
}
