// The one home for the repository format's constants: object names, magic numbers, sizes and defaults.
// docs/repository-format.md specifies every value here; change both together.

/**
 * The repository format: the config's and every manifest's `version`. Version 2 made chunk maps extent
 * maps (docs/repository-format.md §9); a version-1 repository is refused, never misread.
 */
export const FORMAT_VERSION = 2;
/** Version of the binary pack records (pack trailer, pack index, index object): unchanged since version 1. */
export const RECORD_VERSION = 1;

// ---------------------------------------------------------------------------------------------------
// Object names on a target (all relative to the repository root)

export const CONFIG_KEY = 'config';
export const KEYS_PREFIX = 'keys/';
export const PACKS_PREFIX = 'packs/';
export const INDEX_PREFIX = 'index/';
export const POINTS_PREFIX = 'points/';
export const LEASES_PREFIX = 'leases/';
/**
 * The exclusive lease one garbage collection holds while it runs: `leases/gc-N`, the highest N being the
 * current one. Numbering (instead of one fixed key) keeps gc working where old leases cannot be deleted
 * (retention-locked stores): the next gc creates N+1.
 */
export const GC_LEASE_PREFIX = 'leases/gc-';
export function gcLeaseKey(n: number): string {
  return `${GC_LEASE_PREFIX}${n}`;
}
/** Packs a garbage collection found unreferenced and will delete once no older lease can use them. */
export const CONDEMNED_KEY = 'gc/condemned';

/** Pack ids and index object ids: 16 random bytes, 32 lowercase hex digits. */
export const PACK_ID_BYTES = 16;
/** Point ids: the first 16 bytes of SHA-256 over the manifest's JSON text, 32 lowercase hex digits. */
export const POINT_ID_BYTES = 16;
/** Key and lease ids: 16 random bytes, 32 lowercase hex digits. */
export const OBJECT_ID_BYTES = 16;
/** Repository ids: 16 random bytes, 32 lowercase hex digits. */
export const REPOSITORY_ID_BYTES = 16;

export function packKey(packId: string): string {
  return `${PACKS_PREFIX}${packId.slice(0, 2)}/${packId}`;
}
export function indexKey(indexId: string): string {
  return `${INDEX_PREFIX}${indexId}`;
}
export function pointKey(pointId: string): string {
  return `${POINTS_PREFIX}${pointId}`;
}
export function keyObjectKey(keyId: string): string {
  return `${KEYS_PREFIX}${keyId}`;
}
export function leaseKey(leaseId: string): string {
  return `${LEASES_PREFIX}${leaseId}`;
}

export const HEX_ID_PATTERN = /^[0-9a-f]{32}$/;

// ---------------------------------------------------------------------------------------------------
// Chunks and blobs

/** Chunk ids (content addresses) are 32 bytes: SHA-256, or HMAC-SHA256 under the id key when encrypted. */
export const CHUNK_ID_BYTES = 32;
/** In a chunk map, an all-zero chunk has this id (32 zero bytes) and no blob. */
export const ZERO_CHUNK_ID = Buffer.alloc(CHUNK_ID_BYTES);

/** Chosen by measurement (docs/benchmarks.md, "Choosing the chunk size"). */
export const DEFAULT_CHUNK_SIZE = 64 * 1024;
export const MIN_CHUNK_SIZE = 4 * 1024;
export const MAX_CHUNK_SIZE = 16 * 1024 * 1024;

/** A pack is closed once its blobs reach this many bytes (fewer, larger objects keep S3 requests low). */
export const DEFAULT_PACK_SIZE = 16 * 1024 * 1024;
export const MIN_PACK_SIZE = 1024 * 1024;
export const MAX_PACK_SIZE = 512 * 1024 * 1024;

/**
 * Chunk-grid cells per map page: page p holds the extents of cells [p * MAP_PAGE_CELLS, (p + 1) *
 * MAP_PAGE_CELLS). A 4 GiB disk at 64 KiB chunks has 65536 cells, 16 pages.
 */
export const MAP_PAGE_CELLS = 4096;
/**
 * Writers keep at most this many extents in one chunk-grid cell: an incremental that would leave more
 * reads the whole cell and stores it as one chunk again, so fragmentation stays bounded.
 */
export const MAX_EXTENTS_PER_CELL = 4;

export enum BlobType {
  /** A chunk of a disk or memory image. */
  Chunk = 0,
  /** A page of an extent map: the extents of MAP_PAGE_CELLS chunk-grid cells (fewer for the last page). */
  MapPage = 1,
  /** Opaque metadata a point carries, e.g. a VM's device state. */
  Metadata = 2,
}

/** A blob's compression id (pack index entry byte 49, and the last byte of its AAD). */
export enum Compression {
  None = 0,
  Brotli = 1,
  /** LZ4 block format after a u32 little-endian uncompressed length (docs/repository-format.md §6). */
  Lz4 = 2,
}

/** Compression is kept only when it saves at least 1/COMPRESSION_MIN_SAVING_DIVISOR of the blob. */
export const COMPRESSION_MIN_SAVING_DIVISOR = 8;
/**
 * Chosen by measurement (docs/benchmarks.md, "Measurements behind the defaults"): lz4 decompresses 4-6x
 * faster than brotli-0, so restores (a DR product's recovery time) are CPU-cheap, for ~10-15% more bytes.
 */
export const DEFAULT_COMPRESSION = 'lz4';
/** Bytes before an LZ4 block in a blob: the u32 little-endian length of the uncompressed data. */
export const LZ4_SIZE_PREFIX_BYTES = 4;
/**
 * Writers do not try to compress a chunk whose sampled order-0 entropy is at least this many bits per
 * byte (random-looking: encrypted or compressed data); see looksIncompressible in blob.ts.
 */
export const INCOMPRESSIBLE_BITS = 7.95;
/** Bytes sampled for that estimate (evenly spaced), and the smallest chunk it is made for. */
export const ENTROPY_SAMPLES = 8192;
export const MIN_ENTROPY_SAMPLES = 2048;

// ---------------------------------------------------------------------------------------------------
// Encryption

export const AES_KEY_BYTES = 32;
export const GCM_NONCE_BYTES = 12;
export const GCM_TAG_BYTES = 16;
/** Bytes an encrypted blob adds to its plaintext: nonce before, tag after. */
export const SEAL_OVERHEAD = GCM_NONCE_BYTES + GCM_TAG_BYTES;
export const MASTER_KEY_BYTES = 32;

/** HKDF-SHA256 info strings deriving the working keys from the master key (salt: the repository id). */
export const HKDF_INFO_DATA_KEY = 'lifeboat/v1/data-key';
export const HKDF_INFO_ID_KEY = 'lifeboat/v1/chunk-id-key';
export const HKDF_INFO_CONFIG_KEY = 'lifeboat/v1/config-mac-key';
/** HKDF info deriving a key-wrapping key from a key file's contents (salt: the key object's salt). */
export const HKDF_INFO_KEY_FILE = 'lifeboat/v1/key-file';

/** scrypt parameters for passphrases: about 100 ms and 32 MiB here. */
export const SCRYPT_N = 32768;
export const SCRYPT_R = 8;
export const SCRYPT_P = 1;
export const KDF_SALT_BYTES = 16;
export const MIN_KEY_FILE_BYTES = 32;

// ---------------------------------------------------------------------------------------------------
// Leases

/** A lease not refreshed for this long is stale. Writers refresh it every third of this. */
export const DEFAULT_LEASE_TTL_MS = 15 * 60 * 1000;
/** Allowance for clocks that disagree between hosts when judging a lease stale. */
export const LEASE_CLOCK_SKEW_MS = 2 * 60 * 1000;
