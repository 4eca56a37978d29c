// A directory on a local (or mounted) file system as a Target. Keys are relative paths. A put is durable
// and atomic: the body goes to a temporary file in the destination directory, is fsynced, then renamed
// (or, for create-only puts, hard-linked, which fails if the name exists) into place, and the directory
// is fsynced. Files made immutable (`chattr +i`) behave like retention-locked objects.

import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { link, mkdir, open, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
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

export interface LocalTargetOptions {
  /** The directory holding the objects; created on the first put if missing. */
  path: string;
}

const TEMP_PREFIX = '.tmp-';
/** stat() calls in flight at once while listing (the thread pool has 4 threads by default). */
const LIST_STAT_CONCURRENCY = 32;
const KEY_SEGMENT = /^[A-Za-z0-9_-][A-Za-z0-9._-]*$/;

function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

export class LocalTarget implements Target {
  readonly description: string;
  private readonly root: string;
  private readonly knownDirs = new Set<string>();

  constructor(options: LocalTargetOptions) {
    this.root = resolve(options.path);
    this.description = `file:${this.root}`;
  }

  private pathOf(key: string): string {
    const segments = key.split('/');
    if (key.length === 0 || !segments.every((s) => KEY_SEGMENT.test(s))) {
      throw new TargetError(`invalid object key '${key}'`, key);
    }
    return join(this.root, ...segments);
  }

  private translate(err: unknown, key: string, action: string): Error {
    switch (errnoOf(err)) {
      case 'ENOENT':
      case 'ENOTDIR':
        return new NotFoundError(`${this.description}: ${key} does not exist`, key);
      case 'EACCES':
      case 'EROFS':
        return new AuthError(`${this.description}: permission denied to ${action} ${key}`, key);
      case 'EPERM':
        return new ObjectLockedError(`${this.description}: ${key} is immutable (locked); it cannot be ${action === 'delete' ? 'deleted' : 'changed'}`, key);
      default:
        return new TargetError(`${this.description}: cannot ${action} ${key}: ${(err as Error).message}`, key);
    }
  }

  private async fsyncDir(dir: string): Promise<void> {
    const fh = await open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  /** Creates dir and any missing parents below the root, making each new entry durable in its parent. */
  private async ensureDir(dir: string): Promise<void> {
    if (this.knownDirs.has(dir)) return;
    const missing: string[] = [];
    for (let d = dir; ; d = dirname(d)) {
      try {
        await stat(d);
        break;
      } catch (err) {
        if (errnoOf(err) !== 'ENOENT') throw err;
        missing.push(d);
        if (d === dirname(d)) break;
      }
    }
    for (const d of missing.reverse()) {
      await mkdir(d).catch((err) => {
        if (errnoOf(err) !== 'EEXIST') throw err;
      });
      await this.fsyncDir(dirname(d));
    }
    this.knownDirs.add(dir);
  }

  async put(key: string, body: Buffer, options: PutOptions = {}): Promise<void> {
    await this.putParts(key, [body], options);
  }

  async putParts(key: string, parts: readonly Uint8Array[], options: PutOptions = {}): Promise<void> {
    const path = this.pathOf(key);
    const dir = dirname(path);
    const temp = join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
    try {
      await this.ensureDir(dir);
      const fh = await open(temp, 'wx', 0o644);
      try {
        await writeAll(fh, parts);
        await fh.sync();
      } finally {
        await fh.close();
      }
      if (options.ifNoneMatch) {
        try {
          await link(temp, path);
        } catch (err) {
          if (errnoOf(err) === 'EEXIST') throw new AlreadyExistsError(`${this.description}: ${key} already exists`, key);
          throw err;
        } finally {
          await unlink(temp).catch(() => undefined);
        }
      } else {
        await rename(temp, path);
      }
      await this.fsyncDir(dir);
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      if (err instanceof TargetError) throw err;
      throw this.translate(err, key, 'write');
    }
  }

  async get(key: string, range?: ByteRange): Promise<Buffer> {
    const path = this.pathOf(key);
    let fh;
    try {
      fh = await open(path, 'r');
    } catch (err) {
      throw this.translate(err, key, 'read');
    }
    try {
      const size = (await fh.stat()).size;
      const offset = range ? Math.min(range.offset, size) : 0;
      const length = range ? Math.max(0, Math.min(range.length, size - offset)) : size;
      const buf = Buffer.allocUnsafeSlow(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return got === length ? buf : buf.subarray(0, got);
    } catch (err) {
      throw this.translate(err, key, 'read');
    } finally {
      await fh.close();
    }
  }

  async head(key: string): Promise<ObjectInfo | null> {
    try {
      const st = await stat(this.pathOf(key));
      return st.isFile() ? { key, size: st.size } : null;
    } catch (err) {
      if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ENOTDIR') return null;
      throw this.translate(err, key, 'read');
    }
  }

  /**
   * The directories of one level are read together and the files found stat()ed together (a few
   * dozen at a time): a repository lists hundreds of packs and index objects per backup, and one
   * stat after another costs a round trip through the thread pool each.
   */
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const slash = prefix.lastIndexOf('/');
    const base = slash < 0 ? '' : prefix.slice(0, slash);
    const start = base ? join(this.root, ...base.split('/')) : this.root;
    let level: { dir: string; keyPrefix: string }[] = [{ dir: start, keyPrefix: base ? `${base}/` : '' }];
    while (level.length) {
      const listed = await Promise.all(
        level.map(async ({ dir, keyPrefix }) => {
          try {
            return { keyPrefix, dir, entries: await readdir(dir, { withFileTypes: true }) };
          } catch (err) {
            if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ENOTDIR') return { keyPrefix, dir, entries: [] };
            throw this.translate(err, keyPrefix || '.', 'list');
          }
        }),
      );
      const next: typeof level = [];
      const files: { key: string; path: string }[] = [];
      for (const { dir, keyPrefix, entries } of listed) {
        for (const e of entries) {
          if (e.name.startsWith(TEMP_PREFIX)) continue;
          const key = keyPrefix + e.name;
          if (e.isDirectory()) {
            if (prefix.startsWith(key + '/') || (key + '/').startsWith(prefix) || key.startsWith(prefix)) {
              next.push({ dir: join(dir, e.name), keyPrefix: key + '/' });
            }
          } else if (e.isFile() && key.startsWith(prefix)) {
            files.push({ key, path: join(dir, e.name) });
          }
        }
      }
      for (let i = 0; i < files.length; i += LIST_STAT_CONCURRENCY) {
        const sizes = await Promise.all(
          files.slice(i, i + LIST_STAT_CONCURRENCY).map(async ({ path }) => {
            try {
              return (await stat(path)).size;
            } catch (err) {
              if (errnoOf(err) !== 'ENOENT') throw err;
              return null; // deleted while listing
            }
          }),
        );
        for (const [j, size] of sizes.entries()) if (size !== null) yield { key: files[i + j].key, size };
      }
      level = next;
    }
  }

  async delete(key: string): Promise<void> {
    const path = this.pathOf(key);
    try {
      await unlink(path);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return;
      throw this.translate(err, key, 'delete');
    }
    await this.fsyncDir(dirname(path)).catch(() => undefined);
  }

  async close(): Promise<void> {}
}

/** Writes the parts back to back from the start of the file: writev, again from where a short write stopped. */
async function writeAll(fh: FileHandle, parts: readonly Uint8Array[]): Promise<void> {
  let rest = parts.filter((p) => p.length > 0);
  let position = 0;
  while (rest.length) {
    let { bytesWritten } = rest.length === 1 ? await fh.write(rest[0], 0, rest[0].length, position) : await fh.writev(rest as Uint8Array[], position);
    if (bytesWritten === 0) throw new Error('the file system wrote nothing');
    position += bytesWritten;
    let i = 0;
    while (i < rest.length && bytesWritten >= rest[i].length) bytesWritten -= rest[i++].length;
    rest = rest.slice(i);
    if (bytesWritten > 0) rest[0] = rest[0].subarray(bytesWritten);
  }
}

export function createLocalTarget(options: LocalTargetOptions | string): LocalTarget {
  return new LocalTarget(typeof options === 'string' ? { path: options } : options);
}
