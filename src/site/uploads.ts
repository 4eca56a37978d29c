// Resumable upload sessions: a large object arrives as appends at explicit offsets into a staging file
// under <repo-root>/uploads/<id>/. Each append is fsynced, and only then counted in the session's
// committed offset, so a client whose connection broke asks for that offset and sends the rest. The
// commit checks the whole body's SHA-256 and publishes the object through the repository Target.

import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { AlreadyExistsError, NotFoundError, type Target } from '../../replication/target.js';
import { SITE_MAX_OBJECT_BYTES, SITE_MAX_PART_BYTES, sha256Hex, type UploadSessionState } from '../../replication/targets/site-client.js';
import { fsyncDirectory, writeAtDurably, writeFileDurably } from './durable.js';
import { SiteHttpError } from './http-error.js';
import { checkObjectKey } from './repositories.js';

interface SessionMeta {
  uploadId: string;
  repo: string;
  key: string;
  size: number;
  sha256: string;
  ifNoneMatch: boolean;
  committedOffset: number;
  state: 'open' | 'committed';
  createdAt: number;
  updatedAt: number;
}

export interface UploadStats {
  /** Bytes of append bodies received in full (accepted or not). */
  receivedBytes: number;
  /** Bytes appended and made durable. */
  committedBytes: number;
  /** The most recent durable appends, oldest first (bounded). */
  appends: { uploadId: string; offset: number; length: number }[];
}

const ID_PATTERN = /^[0-9a-f]{32}$/;
const APPEND_LOG_LIMIT = 10_000;

export class UploadSessions {
  private readonly cache = new Map<string, SessionMeta>();
  private readonly locks = new Map<string, Promise<unknown>>();
  readonly stats: UploadStats = { receivedBytes: 0, committedBytes: 0, appends: [] };

  constructor(
    private readonly dir: string,
    private readonly ttlMs: number,
    private readonly maxPartBytes = SITE_MAX_PART_BYTES,
  ) {}

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await this.sweep();
  }

  async create(repo: string, request: unknown): Promise<UploadSessionState> {
    const { key, size, sha256, ifNoneMatch } = parseCreate(request);
    const uploadId = randomBytes(16).toString('hex');
    const now = Date.now();
    const meta: SessionMeta = { uploadId, repo, key, size, sha256, ifNoneMatch, committedOffset: 0, state: 'open', createdAt: now, updatedAt: now };
    const dir = join(this.dir, uploadId);
    await mkdir(dir);
    await (await open(join(dir, 'data'), 'w', 0o600)).close();
    await writeFileDurably(join(dir, 'meta.json'), JSON.stringify(meta));
    await fsyncDirectory(this.dir);
    this.cache.set(uploadId, meta);
    return this.state(meta);
  }

  async status(repo: string, uploadId: string): Promise<UploadSessionState> {
    return this.state(await this.load(repo, uploadId));
  }

  /** Appends `part` at `offset`. Repeating an append already made durable is accepted and changes nothing. */
  append(repo: string, uploadId: string, offset: number, part: Buffer): Promise<UploadSessionState> {
    this.stats.receivedBytes += part.length;
    return this.locked(uploadId, async () => {
      const meta = await this.load(repo, uploadId);
      if (meta.state === 'committed') throw new SiteHttpError(409, 'upload-committed', `upload ${uploadId} is already committed`);
      if (part.length === 0 || part.length > this.maxPartBytes) {
        throw new SiteHttpError(part.length === 0 ? 400 : 413, 'bad-part', `an append must carry 1 to ${this.maxPartBytes} bytes (got ${part.length})`);
      }
      if (offset + part.length > meta.size) {
        throw new SiteHttpError(400, 'bad-part', `append at ${offset} of ${part.length} bytes runs past the declared size ${meta.size}`);
      }
      const data = join(this.dir, uploadId, 'data');
      if (offset + part.length <= meta.committedOffset) {
        const fh = await open(data, 'r');
        try {
          const existing = Buffer.alloc(part.length);
          await fh.read(existing, 0, part.length, offset);
          if (existing.equals(part)) return this.state(meta);
        } finally {
          await fh.close();
        }
        throw new SiteHttpError(409, 'offset-mismatch', `bytes at offset ${offset} were already received with different contents`, {
          committedOffset: meta.committedOffset,
        });
      }
      if (offset !== meta.committedOffset) {
        throw new SiteHttpError(409, 'offset-mismatch', `append at offset ${offset} but the upload has ${meta.committedOffset} bytes; continue from there`, {
          committedOffset: meta.committedOffset,
        });
      }
      await writeAtDurably(data, part, offset);
      const next = { ...meta, committedOffset: offset + part.length, updatedAt: Date.now() };
      await writeFileDurably(join(this.dir, uploadId, 'meta.json'), JSON.stringify(next));
      this.cache.set(uploadId, next);
      this.stats.committedBytes += part.length;
      this.stats.appends.push({ uploadId, offset, length: part.length });
      if (this.stats.appends.length > APPEND_LOG_LIMIT) this.stats.appends.shift();
      return this.state(next);
    });
  }

  /** Verifies the whole body and publishes it. Committing a committed session again succeeds again. */
  commit(repo: string, uploadId: string, target: Target): Promise<UploadSessionState> {
    return this.locked(uploadId, async () => {
      const meta = await this.load(repo, uploadId);
      if (meta.state === 'committed') return this.state(meta);
      if (meta.committedOffset !== meta.size) {
        throw new SiteHttpError(409, 'upload-incomplete', `upload has ${meta.committedOffset} of ${meta.size} bytes; append the rest before committing`, {
          committedOffset: meta.committedOffset,
        });
      }
      const dir = join(this.dir, uploadId);
      const body = await readFile(join(dir, 'data'));
      if (body.length !== meta.size || sha256Hex(body) !== meta.sha256) {
        await this.discard(uploadId);
        throw new SiteHttpError(422, 'digest-mismatch', `the uploaded bytes do not have the declared SHA-256; the session was discarded, upload again`);
      }
      try {
        await target.put(meta.key, body, { ifNoneMatch: meta.ifNoneMatch });
      } catch (err) {
        // A commit that published but crashed before recording it finds its own bytes there.
        if (!(err instanceof AlreadyExistsError) || !(await holds(target, meta.key, body))) throw err;
      }
      const done: SessionMeta = { ...meta, state: 'committed', updatedAt: Date.now() };
      await writeFileDurably(join(dir, 'meta.json'), JSON.stringify(done));
      await rm(join(dir, 'data'), { force: true });
      this.cache.set(uploadId, done);
      return this.state(done);
    });
  }

  abort(repo: string, uploadId: string): Promise<void> {
    return this.locked(uploadId, async () => {
      await this.load(repo, uploadId);
      await this.discard(uploadId);
    });
  }

  /** Removes sessions (open or committed) untouched for longer than the TTL. */
  async sweep(now = Date.now()): Promise<number> {
    let removed = 0;
    for (const id of await readdir(this.dir)) {
      if (!ID_PATTERN.test(id)) continue;
      try {
        const meta = JSON.parse(await readFile(join(this.dir, id, 'meta.json'), 'utf8')) as SessionMeta;
        if (now - meta.updatedAt <= this.ttlMs) continue;
      } catch {
        // unreadable meta (crash during create): judge by the directory's age
        if (now - (await stat(join(this.dir, id))).mtimeMs <= this.ttlMs) continue;
      }
      await this.locked(id, () => this.discard(id));
      removed++;
    }
    return removed;
  }

  private async discard(uploadId: string): Promise<void> {
    this.cache.delete(uploadId);
    await rm(join(this.dir, uploadId), { recursive: true, force: true });
  }

  private async load(repo: string, uploadId: string): Promise<SessionMeta> {
    const missing = () => new SiteHttpError(404, 'no-such-upload', `upload session ${uploadId} does not exist (expired, aborted or never created); start a new upload`);
    if (!ID_PATTERN.test(uploadId)) throw missing();
    let meta = this.cache.get(uploadId);
    if (!meta) {
      try {
        meta = JSON.parse(await readFile(join(this.dir, uploadId, 'meta.json'), 'utf8')) as SessionMeta;
      } catch {
        throw missing();
      }
      if (meta.state === 'open') {
        const onDisk = (await stat(join(this.dir, uploadId, 'data'))).size;
        meta.committedOffset = Math.min(meta.committedOffset, onDisk);
      }
      this.cache.set(uploadId, meta);
    }
    if (meta.repo !== repo) throw missing();
    return meta;
  }

  private state(meta: SessionMeta): UploadSessionState {
    return {
      uploadId: meta.uploadId,
      key: meta.key,
      size: meta.size,
      sha256: meta.sha256,
      committedOffset: meta.committedOffset,
      maxPartBytes: this.maxPartBytes,
      state: meta.state,
    };
  }

  /** Runs `fn` after every earlier operation on the same session has finished. */
  private locked<T>(uploadId: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(uploadId) ?? Promise.resolve();
    const run = previous.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.locks.set(uploadId, tail);
    void tail.then(() => {
      if (this.locks.get(uploadId) === tail) this.locks.delete(uploadId);
    });
    return run;
  }
}

function parseCreate(request: unknown): { key: string; size: number; sha256: string; ifNoneMatch: boolean } {
  const r = request as Record<string, unknown> | null;
  const bad = (why: string) => new SiteHttpError(400, 'bad-upload', `upload request: ${why}`);
  if (!r || typeof r !== 'object') throw bad('expected a JSON object {key, size, sha256, ifNoneMatch}');
  if (typeof r.key !== 'string') throw bad('key must be a string');
  checkObjectKey(r.key);
  if (typeof r.size !== 'number' || !Number.isSafeInteger(r.size) || r.size < 0 || r.size > SITE_MAX_OBJECT_BYTES) {
    throw bad(`size must be an integer from 0 to ${SITE_MAX_OBJECT_BYTES}`);
  }
  if (typeof r.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(r.sha256)) throw bad('sha256 must be 64 lowercase hex digits');
  if (r.ifNoneMatch !== undefined && typeof r.ifNoneMatch !== 'boolean') throw bad('ifNoneMatch must be true or false');
  return { key: r.key, size: r.size, sha256: r.sha256, ifNoneMatch: r.ifNoneMatch === true };
}

async function holds(target: Target, key: string, body: Buffer): Promise<boolean> {
  try {
    return (await target.get(key)).equals(body);
  } catch (err) {
    if (err instanceof NotFoundError) return false;
    throw err;
  }
}
