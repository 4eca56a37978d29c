// A repository on a target: opening it (config, key), the index, packs, blobs, chunk maps and point
// manifests. Operations (backup, restore, verify, forget, gc) build on this class.

import { randomBytes } from 'node:crypto';
import { AlreadyExistsError, NotFoundError, type ObjectWriter, type Target } from '../target.js';
import { BlobError, decodeBlob, encodeBlob } from './blob.js';
import { ChunkIndex, PACK_RANK, type BlobLocation } from './chunk-index.js';
import { Semaphore, mapLimit } from './concurrency.js';
import {
  BlobType,
  CONFIG_KEY,
  DEFAULT_CHUNK_SIZE,
  DEFAULT_COMPRESSION,
  DEFAULT_PACK_SIZE,
  FORMAT_VERSION,
  HEX_ID_PATTERN,
  INDEX_PREFIX,
  KEYS_PREFIX,
  PACKS_PREFIX,
  POINTS_PREFIX,
  RECORD_VERSION,
  REPOSITORY_ID_BYTES,
  indexKey,
  keyObjectKey,
  packKey,
  pointKey,
} from './constants.js';
import {
  CONFIG_FORMAT,
  checkConfigMac,
  compressionSetting,
  computeConfigMac,
  decodeConfig,
  encodeConfig,
  parseCompression,
  validateChunkSize,
  validatePackSize,
  type CompressionSetting,
  type RepositoryConfig,
} from './config.js';
import { Sealer, deriveWorkingKeys, type WorkingKeys } from './crypto.js';
import {
  CorruptDataError,
  InputError,
  MissingObjectError,
  NotARepositoryError,
  PointNotFoundError,
  RepositoryError,
  TruncatedObjectError,
  WrongKeyError,
} from './errors.js';
import { createKeyObject, decodeKeyObject, newMasterKey, unwrapKeyObject, type KeyObject, type KeySecret } from './keys.js';
import { FormatError, decodeIndexObject, decodePackIndex, packIndexHeader, type PackIndexContents, type PackIndexHeader } from './layout.js';
import { decodeExtentMap, type ExtentMap } from './extent-map.js';
import { decodeManifest, encodeManifest, type ImageEntry, type PointManifest } from './manifest.js';
import { openPackIndex, openPackIndexPlain, type FinishedPack } from './pack.js';

export interface InitOptions {
  /** null: an unencrypted repository (must be asked for explicitly). */
  secret: KeySecret | null;
  chunkSize?: number;
  packSize?: number;
  compression?: string;
  keyLabel?: string;
}

export interface OpenOptions {
  secret?: KeySecret | null;
  /**
   * Start reading the index objects while the key is being derived (scrypt of a passphrase takes ~0.1 s
   * on a thread of its own): for a command that loads the index right after opening (backup). Index
   * objects never change once written; loadIndex still lists them itself and reads any it has not got.
   */
  prefetchIndex?: boolean;
}

export interface PointSummary {
  id: string;
  manifest: PointManifest;
}

/** Target requests in flight when loading many small objects. */
const LOAD_CONCURRENCY = 16;
/** Ranged reads: neighbouring blobs closer than this are fetched in one request. */
export const READ_MAX_GAP = 512 * 1024;
export const READ_MAX_SPAN = 16 * 1024 * 1024;

export interface RangeRead {
  packId: string;
  offset: number;
  length: number;
  blobs: BlobLocation[];
}

/** Groups blob reads by pack into as few ranged requests as is sensible. */
export function planReads(locations: Iterable<BlobLocation>, maxGap = READ_MAX_GAP, maxSpan = READ_MAX_SPAN): RangeRead[] {
  const byPack = new Map<string, BlobLocation[]>();
  for (const l of locations) {
    const list = byPack.get(l.packId);
    if (list) list.push(l);
    else byPack.set(l.packId, [l]);
  }
  const reads: RangeRead[] = [];
  for (const [packId, list] of byPack) {
    list.sort((a, b) => a.offset - b.offset);
    let cur: RangeRead | null = null;
    for (const l of list) {
      const end = l.offset + l.storedLength;
      if (cur && l.offset - (cur.offset + cur.length) <= maxGap && end - cur.offset <= maxSpan) {
        cur.length = Math.max(cur.length, end - cur.offset);
        cur.blobs.push(l);
      } else {
        cur = { packId, offset: l.offset, length: l.storedLength, blobs: [l] };
        reads.push(cur);
      }
    }
  }
  return reads;
}

export class Repository {
  private constructor(
    readonly target: Target,
    readonly config: RepositoryConfig,
    readonly keys: WorkingKeys | null,
    private readonly masterKey: Buffer | null,
  ) {
    this.sealer = new Sealer(keys);
  }

  readonly sealer: Sealer;
  /** Index objects read while the repository was being opened (OpenOptions.prefetchIndex), by id. */
  private prefetched: Map<string, Promise<Buffer | null>> | null = null;

  get description(): string {
    return this.target.description;
  }
  get id(): string {
    return this.config.id;
  }
  get chunkSize(): number {
    return this.config.chunkSize;
  }
  get packSize(): number {
    return this.config.packSize;
  }
  /** What writers compress new blobs with: a brotli quality, 'lz4', or null when compression is off. */
  get compressionQuality(): CompressionSetting {
    return compressionSetting(this.config.compression);
  }

  // -------------------------------------------------------------------------------------------------
  // Creating and opening

  static async init(target: Target, options: InitOptions): Promise<Repository> {
    const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    const packSize = options.packSize ?? DEFAULT_PACK_SIZE;
    const compression = options.compression ?? DEFAULT_COMPRESSION;
    const problem = validateChunkSize(chunkSize) ?? validatePackSize(packSize);
    if (problem) throw new InputError(problem);
    try {
      parseCompression(compression);
    } catch (err) {
      throw new InputError((err as Error).message);
    }
    if (await target.head(CONFIG_KEY)) throw new RepositoryError(`a repository already exists at ${target.description}`);
    for (const prefix of [KEYS_PREFIX, PACKS_PREFIX, INDEX_PREFIX, POINTS_PREFIX]) {
      for await (const o of target.list(prefix)) {
        throw new RepositoryError(`${target.description} is not empty (it holds ${o.key}) but has no repository config; choose an empty location`);
      }
    }
    const idBytes = randomBytes(REPOSITORY_ID_BYTES);
    const config: RepositoryConfig = {
      format: CONFIG_FORMAT,
      version: FORMAT_VERSION,
      id: idBytes.toString('hex'),
      createdAt: new Date().toISOString(),
      chunkSize,
      packSize,
      compression,
      encryption: options.secret ? 'aes-256-gcm' : 'none',
      chunkIdAlgorithm: options.secret ? 'hmac-sha256' : 'sha256',
    };
    let keys: WorkingKeys | null = null;
    let master: Buffer | null = null;
    if (options.secret) {
      master = newMasterKey();
      keys = deriveWorkingKeys(master, idBytes);
      config.mac = computeConfigMac(config, keys.configKey);
      const keyObject = await createKeyObject(master, idBytes, options.secret, options.keyLabel);
      await target.put(keyObjectKey(keyObject.id), Buffer.from(JSON.stringify(keyObject, null, 2) + '\n'), { ifNoneMatch: true });
    }
    // The config is written last: its presence is what makes the location a repository.
    try {
      await target.put(CONFIG_KEY, encodeConfig(config), { ifNoneMatch: true });
    } catch (err) {
      if (err instanceof AlreadyExistsError) throw new RepositoryError(`a repository was created at ${target.description} at the same moment`);
      throw err;
    }
    return new Repository(target, config, keys, master);
  }

  static async open(target: Target, options: OpenOptions = {}): Promise<Repository> {
    let raw: Buffer;
    try {
      raw = await target.get(CONFIG_KEY);
    } catch (err) {
      if (err instanceof NotFoundError) {
        throw new NotARepositoryError(
          `there is no Lifeboat repository at ${target.description} (no config object); create one with 'lifeboat repo init --target ...'`,
        );
      }
      throw err;
    }
    let config: RepositoryConfig;
    try {
      config = decodeConfig(raw);
    } catch (err) {
      if (err instanceof FormatError) throw new NotARepositoryError(`${target.description}: ${err.message}`);
      throw err;
    }
    const prefetched = options.prefetchIndex ? prefetchIndexObjects(target) : null;
    const opened = (repo: Repository) => {
      repo.prefetched = prefetched;
      return repo;
    };
    const keyIds: string[] = [];
    for await (const o of target.list(KEYS_PREFIX)) keyIds.push(o.key);
    if (config.encryption === 'none') {
      if (keyIds.length) {
        throw new CorruptDataError(`${target.description}: the config says the repository is unencrypted but it holds key objects; the config has been tampered with`);
      }
      return opened(new Repository(target, config, null, null));
    }
    const secret = options.secret;
    if (!secret) {
      throw new WrongKeyError(
        `the repository at ${target.description} is encrypted; give --password-file FILE, LIFEBOAT_PASSWORD or --key-file FILE`,
      );
    }
    const idBytes = Buffer.from(config.id, 'hex');
    let damaged: string | null = null;
    for (const key of keyIds.sort()) {
      let obj: KeyObject;
      try {
        obj = decodeKeyObject(await target.get(key), key);
      } catch (err) {
        if (err instanceof FormatError) {
          damaged = err.message;
          continue;
        }
        throw err;
      }
      const master = await unwrapKeyObject(obj, idBytes, secret);
      if (!master) continue;
      const keys = deriveWorkingKeys(master, idBytes);
      if (!checkConfigMac(config, keys.configKey)) {
        throw new CorruptDataError(`${target.description}: the config object failed authentication (damaged or tampered with)`);
      }
      return opened(new Repository(target, config, keys, master));
    }
    if (keyIds.length === 0) throw new CorruptDataError(`${target.description}: the repository is encrypted but holds no key objects (keys/ is missing)`);
    throw new WrongKeyError(
      `wrong passphrase or key file for repository at ${target.description}` + (damaged ? ` (also: ${damaged})` : ''),
    );
  }

  // -------------------------------------------------------------------------------------------------
  // Keys

  async listKeys(): Promise<KeyObject[]> {
    const out: KeyObject[] = [];
    for await (const o of this.target.list(KEYS_PREFIX)) out.push(decodeKeyObject(await this.target.get(o.key), o.key));
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  async addKey(secret: KeySecret, label?: string): Promise<KeyObject> {
    if (!this.masterKey) throw new InputError(`the repository at ${this.description} is not encrypted; it has no keys`);
    const obj = await createKeyObject(this.masterKey, Buffer.from(this.id, 'hex'), secret, label);
    await this.target.put(keyObjectKey(obj.id), Buffer.from(JSON.stringify(obj, null, 2) + '\n'), { ifNoneMatch: true });
    return obj;
  }

  async removeKey(keyId: string): Promise<void> {
    const keys = await this.listKeys();
    const matches = keys.filter((k) => k.id.startsWith(keyId));
    if (matches.length !== 1) throw new InputError(matches.length ? `key id '${keyId}' is ambiguous` : `no key '${keyId}' in ${this.description}`);
    if (keys.length === 1) throw new InputError('refusing to remove the only key: the repository would become unreadable');
    await this.target.delete(keyObjectKey(matches[0].id));
  }

  // -------------------------------------------------------------------------------------------------
  // Packs and the index

  /** Every pack object on the target: hex id -> size. */
  async listPacks(): Promise<Map<string, number>> {
    const packs = new Map<string, number>();
    for await (const o of this.target.list(PACKS_PREFIX)) {
      const id = o.key.slice(o.key.lastIndexOf('/') + 1);
      if (HEX_ID_PATTERN.test(id) && o.key === packKey(id)) packs.set(id, o.size);
    }
    return packs;
  }

  async listIndexIds(): Promise<string[]> {
    const ids: string[] = [];
    for await (const o of this.target.list(INDEX_PREFIX)) {
      const id = o.key.slice(INDEX_PREFIX.length);
      if (HEX_ID_PATTERN.test(id)) ids.push(id);
    }
    return ids;
  }

  /** The pack indexes held by one index object. Throws CorruptDataError naming the object. */
  async readIndexObject(indexId: string): Promise<PackIndexContents[]> {
    // readPackIndexes checked each record's header, which covers everything decoding can refuse.
    return (await this.readPackIndexes(indexId)).map(({ plain }) => decodePackIndex(plain, RECORD_VERSION));
  }

  /**
   * The index of every blob. `exclude`: packs whose blobs must not be used at all (condemned, for a
   * backup). `present`: the packs on the target (listPacks()); a blob in several packs is then looked up
   * in one that exists with the right size and is not in `avoid`; with `onlyPresent`, packs that are
   * missing or the wrong size are left out (writers use this so that they never reuse a lost chunk).
   * `present` may be a listing still under way: the index objects are listed meanwhile.
   */
  async loadIndex(
    options: { exclude?: Set<string>; present?: Map<string, number> | Promise<Map<string, number>>; avoid?: Set<string>; onlyPresent?: boolean } = {},
  ): Promise<ChunkIndex> {
    const index = new ChunkIndex();
    const [ids, present] = await Promise.all([this.listIndexIds(), options.present]);
    const packs = (await mapLimit(ids, LOAD_CONCURRENCY, (id) => this.readPackIndexes(id))).flat();
    this.prefetched = null;
    const ranked: { header: PackIndexHeader; plain: Buffer; rank: number }[] = [];
    let blobs = 0;
    for (const { header, plain } of packs) {
      const packId = header.packId.toString('hex');
      if (options.exclude?.has(packId)) continue;
      const here = !present || present.get(packId) === header.packSize;
      if (!here && options.onlyPresent) continue;
      ranked.push({ header, plain, rank: !here ? PACK_RANK.missing : options.avoid?.has(packId) ? PACK_RANK.condemned : PACK_RANK.present });
      blobs += header.count;
    }
    // Sized once for every blob: the table is not rebuilt as it fills.
    index.reserve(blobs);
    for (const { header, plain, rank } of ranked) index.addPackIndex(plain, header, rank);
    return index;
  }

  /**
   * The pack indexes of an index object, without decoding each entry: their checked plaintexts and
   * headers (for ChunkIndex.addPackIndex; readIndexObject decodes them). Uses the object prefetched
   * while opening, if there is one.
   */
  private async readPackIndexes(indexId: string): Promise<{ header: PackIndexHeader; plain: Buffer }[]> {
    const early = this.prefetched?.get(indexId);
    this.prefetched?.delete(indexId);
    let buf = early ? await early : null;
    try {
      buf ??= await this.target.get(indexKey(indexId));
    } catch (err) {
      if (err instanceof NotFoundError) throw new MissingObjectError(`index object ${indexKey(indexId)} is missing`);
      throw err;
    }
    try {
      return decodeIndexObject(buf, RECORD_VERSION).map((r) => {
        const plain = openPackIndexPlain(r.stored, r.crc32, r.packId, this.sealer);
        const header = packIndexHeader(plain, RECORD_VERSION);
        if (!header.packId.equals(r.packId)) throw new FormatError('pack index names a different pack');
        return { header, plain };
      });
    } catch (err) {
      if (err instanceof FormatError) throw new CorruptDataError(`index object ${indexKey(indexId)} is damaged: ${err.message}`);
      throw err;
    }
  }

  /**
   * A writer for a pack still filling (its blobs' buffers go to it with PackBuilder.takeNew, the rest
   * with writePack), or null when the target takes an object in one request only.
   */
  openPackWriter(packId: Buffer): ObjectWriter | null {
    return this.target.openWriter?.(packKey(packId.toString('hex')), { ifNoneMatch: true }) ?? null;
  }

  /**
   * Writes a pack (the rest of it, through `writer` if it was streamed), then its index object: a pack's
   * chunks are reusable only once both are durable.
   */
  async writePack(pack: FinishedPack, writer: ObjectWriter | null = null): Promise<void> {
    const id = pack.packId.toString('hex');
    if (writer) await writer.finish(pack.unsent);
    else await this.target.putParts(packKey(id), pack.parts, { ifNoneMatch: true });
    await this.target.put(indexKey(id), pack.indexObject, { ifNoneMatch: true });
  }

  /** Reads a byte range of a pack; MissingObjectError / TruncatedObjectError name the pack. */
  async readPackRange(packId: string, offset: number, length: number): Promise<Buffer> {
    let buf: Buffer;
    try {
      buf = await this.target.get(packKey(packId), { offset, length });
    } catch (err) {
      if (err instanceof NotFoundError) throw new MissingObjectError(`pack ${packId} is missing`);
      throw err;
    }
    if (buf.length < length) {
      throw new TruncatedObjectError(`pack ${packId} is truncated (it ends before byte ${offset + length}; the index expects more)`);
    }
    return buf;
  }

  /** Reads and decodes blobs on this thread (for map pages and metadata; restore uses workers). */
  async readBlobs(locations: BlobLocation[]): Promise<Map<string, Buffer>> {
    const out = new Map<string, Buffer>();
    await mapLimit(planReads(locations), LOAD_CONCURRENCY, async (r) => {
      const data = await this.readPackRange(r.packId, r.offset, r.length);
      for (const l of r.blobs) {
        const stored = data.subarray(l.offset - r.offset, l.offset - r.offset + l.storedLength);
        try {
          out.set(l.id.toString('hex'), decodeBlob(stored, l, this.sealer));
        } catch (err) {
          if (err instanceof BlobError) {
            throw new CorruptDataError(`blob ${l.id.toString('hex').slice(0, 16)}... in pack ${r.packId} at offset ${l.offset}: ${err.message}`);
          }
          throw err;
        }
      }
    });
    return out;
  }

  encodeBlob(plain: Buffer, type: BlobType) {
    const id = this.sealer.chunkId(plain);
    return encodeBlob(plain, id, type, this.sealer, this.compressionQuality);
  }

  // -------------------------------------------------------------------------------------------------
  // Points

  async listPointIds(): Promise<string[]> {
    const ids: string[] = [];
    for await (const o of this.target.list(POINTS_PREFIX)) {
      const id = o.key.slice(POINTS_PREFIX.length);
      if (HEX_ID_PATTERN.test(id)) ids.push(id);
    }
    return ids;
  }

  async readManifest(pointId: string): Promise<PointManifest> {
    let stored: Buffer;
    try {
      stored = await this.target.get(pointKey(pointId));
    } catch (err) {
      if (err instanceof NotFoundError) throw new PointNotFoundError(`point ${pointId} does not exist in ${this.description}`);
      throw err;
    }
    try {
      return decodeManifest(stored, pointId, this.sealer, this.id);
    } catch (err) {
      if (err instanceof FormatError) throw new CorruptDataError(err.message);
      throw err;
    }
  }

  /** Every committed point, oldest first. Damaged manifests are reported through onDamaged (or thrown). */
  async listPoints(onDamaged?: (pointId: string, err: Error) => void): Promise<PointSummary[]> {
    const ids = await this.listPointIds();
    const out: (PointSummary | null)[] = await mapLimit(ids, LOAD_CONCURRENCY, async (id) => {
      try {
        return { id, manifest: await this.readManifest(id) };
      } catch (err) {
        if (onDamaged && (err instanceof CorruptDataError || err instanceof PointNotFoundError)) {
          onDamaged(id, err);
          return null;
        }
        throw err;
      }
    });
    return out
      .filter((p): p is PointSummary => p !== null)
      .sort((a, b) => a.manifest.createdAt.localeCompare(b.manifest.createdAt) || a.id.localeCompare(b.id));
  }

  /** A full point id from a full id, a unique prefix (4+ digits), or `latest` (optionally for one VM). */
  async resolvePoint(ref: string, vmName?: string): Promise<string> {
    if (ref === 'latest') {
      const points = (await this.listPoints()).filter((p) => !vmName || p.manifest.vm.name === vmName);
      if (!points.length) throw new PointNotFoundError(`no points${vmName ? ` for VM ${vmName}` : ''} in ${this.description}`);
      return points[points.length - 1].id;
    }
    if (!/^[0-9a-f]{4,32}$/.test(ref)) throw new InputError(`'${ref}' is not a point id (32 hex digits, a unique prefix of 4 or more, or 'latest')`);
    const matches = (await this.listPointIds()).filter((id) => id.startsWith(ref));
    if (matches.length === 0) throw new PointNotFoundError(`no point ${ref} in ${this.description}; 'lifeboat points list' shows them`);
    if (matches.length > 1) throw new InputError(`point id prefix ${ref} is ambiguous (${matches.length} points); give more digits`);
    return matches[0];
  }

  /** Commits a point: the manifest is created under its derived name and never overwritten. */
  async writeManifest(m: PointManifest): Promise<{ pointId: string; bytes: number }> {
    const { pointId, stored } = encodeManifest(m, this.sealer);
    await this.target.put(pointKey(pointId), stored, { ifNoneMatch: true });
    return { pointId, bytes: stored.length };
  }

  /**
   * The extent map of an image, from its map pages. A map that does not tile the image exactly, or that
   * disagrees with the manifest's counts, is damaged (CorruptDataError naming the context).
   */
  async readExtentMap(image: ImageEntry, index: ChunkIndex, context: string): Promise<ExtentMap> {
    const locations: BlobLocation[] = [];
    for (const [i, page] of image.pages.entries()) {
      const loc = index.get(Buffer.from(page, 'hex'));
      if (!loc) throw new MissingObjectError(`${context}: map page ${i} (${page.slice(0, 16)}...) is not in the index; its pack is missing`);
      locations.push(loc);
    }
    let blobs: Map<string, Buffer>;
    try {
      blobs = await this.readBlobs(locations);
    } catch (err) {
      throw withContext(err, `${context}: extent map`);
    }
    let map: ExtentMap;
    try {
      map = decodeExtentMap(image.pages.map((p) => blobs.get(p)!), image, image.pageCells);
    } catch (err) {
      if (err instanceof FormatError) throw new CorruptDataError(`${context}: the extent map is damaged: ${err.message}`);
      throw err;
    }
    const s = map.stats();
    if (s.extents !== image.extents || s.zeroExtents !== image.zeroExtents || s.dataBytes !== image.dataBytes) {
      throw new CorruptDataError(
        `${context}: the extent map is damaged: it holds ${s.extents} extents (${s.zeroExtents} of zeros, ${s.dataBytes} bytes of data), the manifest says ${image.extents} (${image.zeroExtents}, ${image.dataBytes})`,
      );
    }
    return map;
  }
}

/**
 * Starts reading every index object (at most LOAD_CONCURRENCY at once); a failed read is null (the
 * loader reads that object again and reports what is wrong).
 */
function prefetchIndexObjects(target: Target): Map<string, Promise<Buffer | null>> {
  const objects = new Map<string, Promise<Buffer | null>>();
  const limit = new Semaphore(LOAD_CONCURRENCY);
  void (async () => {
    for await (const o of target.list(INDEX_PREFIX)) {
      const id = o.key.slice(INDEX_PREFIX.length);
      if (HEX_ID_PATTERN.test(id)) objects.set(id, limit.run(() => target.get(o.key)).catch(() => null));
    }
  })().catch(() => undefined);
  return objects;
}

/** The same kind of repository error with a context prefix (point, disk, offset...). */
export function withContext(err: unknown, context: string): unknown {
  if (err instanceof RepositoryError) {
    const Kind = err.constructor as new (message: string) => RepositoryError;
    return new Kind(`${context}: ${err.message}`);
  }
  return err;
}
