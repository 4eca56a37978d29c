// The repository config object (`config`): the parameters every reader and writer must agree on.
// Plaintext JSON so that a reader can tell what it is looking at; in an encrypted repository its
// parameters are authenticated by a MAC under a key derived from the master key.

import { createHmac, timingSafeEqual } from 'node:crypto';
import {
  FORMAT_VERSION,
  MAX_CHUNK_SIZE,
  MAX_PACK_SIZE,
  MIN_CHUNK_SIZE,
  MIN_PACK_SIZE,
  REPOSITORY_ID_BYTES,
  HEX_ID_PATTERN,
} from './constants.js';
import { FormatError } from './layout.js';

export const CONFIG_FORMAT = 'lifeboat-repository';

export type EncryptionName = 'aes-256-gcm' | 'none';
export type ChunkIdName = 'hmac-sha256' | 'sha256';

export interface RepositoryConfig {
  format: typeof CONFIG_FORMAT;
  version: number;
  /** 32 hex digits. */
  id: string;
  createdAt: string;
  chunkSize: number;
  packSize: number;
  /** `lz4`, `brotli-Q` (Q = 0..11) or `none`. */
  compression: string;
  encryption: EncryptionName;
  chunkIdAlgorithm: ChunkIdName;
  /** Encrypted repositories: base64 HMAC-SHA256 under the config key over configMacInput(). */
  mac?: string;
}

/** The exact bytes the config MAC covers: a JSON array of the parameters in this order. */
export function configMacInput(c: RepositoryConfig): Buffer {
  return Buffer.from(
    JSON.stringify([c.version, c.id, c.createdAt, c.chunkSize, c.packSize, c.compression, c.encryption, c.chunkIdAlgorithm]),
    'utf8',
  );
}

export function computeConfigMac(c: RepositoryConfig, configKey: Buffer): string {
  return createHmac('sha256', configKey).update(configMacInput(c)).digest('base64');
}

export function checkConfigMac(c: RepositoryConfig, configKey: Buffer): boolean {
  if (!c.mac) return false;
  const want = Buffer.from(computeConfigMac(c, configKey), 'base64');
  const got = Buffer.from(c.mac, 'base64');
  return got.length === want.length && timingSafeEqual(got, want);
}

export type CompressionChoice = { algorithm: 'brotli'; quality: number } | { algorithm: 'lz4' } | { algorithm: 'none' };

/**
 * What writers compress new blobs with, as chunk workers take it: a number is brotli at that quality,
 * 'lz4' is LZ4, null is no compression.
 */
export type CompressionSetting = number | 'lz4' | null;

export function parseCompression(name: string): CompressionChoice {
  if (name === 'none') return { algorithm: 'none' };
  if (name === 'lz4') return { algorithm: 'lz4' };
  const m = /^brotli-(\d{1,2})$/.exec(name);
  if (m && Number(m[1]) <= 11) return { algorithm: 'brotli', quality: Number(m[1]) };
  throw new FormatError(
    `unknown compression '${name}' (expected lz4, brotli-0 ... brotli-11 or none; a repository that names another was written by a newer Lifeboat)`,
  );
}

/** The writers' setting for a config's `compression` name. */
export function compressionSetting(name: string): CompressionSetting {
  const c = parseCompression(name);
  return c.algorithm === 'brotli' ? c.quality : c.algorithm === 'lz4' ? 'lz4' : null;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

export function validateChunkSize(n: number): string | null {
  if (!isPowerOfTwo(n) || n < MIN_CHUNK_SIZE || n > MAX_CHUNK_SIZE) {
    return `chunk size must be a power of two from ${MIN_CHUNK_SIZE} to ${MAX_CHUNK_SIZE} bytes`;
  }
  return null;
}

export function validatePackSize(n: number): string | null {
  if (!Number.isInteger(n) || n < MIN_PACK_SIZE || n > MAX_PACK_SIZE) {
    return `pack size must be from ${MIN_PACK_SIZE} to ${MAX_PACK_SIZE} bytes`;
  }
  return null;
}

/** Parses and validates the stored config; throws FormatError naming the problem. */
export function decodeConfig(buf: Buffer): RepositoryConfig {
  let c: RepositoryConfig;
  try {
    c = JSON.parse(buf.toString('utf8'));
  } catch {
    throw new FormatError('the config object is not valid JSON');
  }
  if (!c || typeof c !== 'object' || c.format !== CONFIG_FORMAT) throw new FormatError('the config object is not a Lifeboat repository config');
  if (c.version !== FORMAT_VERSION) {
    const fix =
      typeof c.version === 'number' && c.version < FORMAT_VERSION
        ? 'it was written by an older, pre-release Lifeboat whose chunk maps this one does not read; create a new repository (lifeboat repo init) and back up into it'
        : 'it was written by a newer Lifeboat; use that version';
    throw new FormatError(`repository format version ${c.version} is not supported by this Lifeboat (it reads version ${FORMAT_VERSION}): ${fix}`);
  }
  if (typeof c.id !== 'string' || !HEX_ID_PATTERN.test(c.id) || c.id.length !== REPOSITORY_ID_BYTES * 2) {
    throw new FormatError('the config object has no valid repository id');
  }
  const chunkProblem = validateChunkSize(c.chunkSize);
  if (chunkProblem) throw new FormatError(`the config object is damaged: ${chunkProblem}`);
  const packProblem = validatePackSize(c.packSize);
  if (packProblem) throw new FormatError(`the config object is damaged: ${packProblem}`);
  parseCompression(c.compression);
  if (c.encryption !== 'aes-256-gcm' && c.encryption !== 'none') throw new FormatError(`unknown encryption '${c.encryption}'`);
  const wantId: ChunkIdName = c.encryption === 'none' ? 'sha256' : 'hmac-sha256';
  if (c.chunkIdAlgorithm !== wantId) throw new FormatError(`chunk id algorithm '${c.chunkIdAlgorithm}' does not match encryption '${c.encryption}'`);
  if (c.encryption !== 'none' && typeof c.mac !== 'string') throw new FormatError('the config object of an encrypted repository has no MAC');
  return c;
}

export function encodeConfig(c: RepositoryConfig): Buffer {
  return Buffer.from(JSON.stringify(c, null, 2) + '\n', 'utf8');
}
