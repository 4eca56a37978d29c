// A directory on a local (or mounted) file system as a Target. Keys are relative paths. A put is durable
// and atomic: the body goes to a temporary file in the destination directory, is fsynced, then renamed
// (or, for create-only puts, hard-linked, which fails if the name exists) into place, and the directory
// is fsynced. Files made immutable (`chattr +i`) behave like retention-locked objects.
//
// Only the steps that wait for the disk (writes of more than a little, fsync) go to the thread pool;
// open, close, link, unlink and rename are done synchronously (microseconds on a local file system).
// A backup's main thread also hashes and seals between its awaits: every await of an I/O step there
// waits for the thread to come back to its event loop, so a put made of a dozen awaited steps took
// that many turns of a busy loop.

import { randomBytes } from 'node:crypto';
import { closeSync, constants as fsConstants, fdatasync, fsync, linkSync, openSync, renameSync, unlinkSync, writev, writevSync } from 'node:fs';
import { mkdir, open, readdir, stat, unlink } from 'node:fs/promises';
import { promisify } from 'node:util';
import { dirname, join, resolve } from 'node:path';
import {
  AlreadyExistsError,
  AuthError,
  NotFoundError,
  ObjectLockedError,
  TargetError,
  type ByteRange,
  type ObjectInfo,
  type ObjectWriter,
  type PutOptions,
  type Target,
} from '../target.js';

export interface LocalTargetOptions {
  /** The directory holding the objects; created on the first put if missing. */
  path: string;
}

const TEMP_PREFIX = '.tmp-';
/**
 * An ObjectWriter starts an fdatasync of its temporary file after this many bytes (one at a time), so
 * the disk writes back while the object is still being produced and the final fsync waits only for
 * the last few MB.
 */
const WRITER_SYNC_BYTES = 4 * 1024 * 1024;
/** stat() calls in flight at once while listing (the thread pool has 4 threads by default). */
const LIST_STAT_CONCURRENCY = 32;
const KEY_SEGMENT = /^[A-Za-z0-9_-][A-Za-z0-9._-]*$/;
/** Writes up to this many bytes are done synchronously (a copy into the page cache). */
const SYNC_WRITE_MAX = 256 * 1024;

const fsyncAsync = promisify(fsync);
const fdatasyncAsync = promisify(fdatasync);
const writevAsync = promisify(writev);

/** A temporary file being written: its path and (raw) file descriptor. */
interface TempFile {
  temp: string;
  fd: number;
}

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

  /** A TargetError (or subclass) for an fs error, as the other methods throw. */
  translate(err: unknown, key: string, action: string): Error {
    if (err instanceof TargetError) return err;
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
    const fd = openSync(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
    try {
      await fsyncAsync(fd);
    } finally {
      closeSync(fd);
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
    const { temp, fd } = await this.openTemp(path, key);
    try {
      try {
        await writeAll(fd, parts, 0);
        await fsyncAsync(fd);
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      unlinkQuietly(temp);
      throw this.translate(err, key, 'write');
    }
    await this.publish(temp, path, key, options);
  }

  openWriter(key: string, options: PutOptions = {}): ObjectWriter {
    const path = this.pathOf(key);
    return new LocalObjectWriter(this, key, path, options);
  }

  /** Opens a new temporary file beside `path`, creating its directory first if it is missing. */
  async openTemp(path: string, key: string): Promise<TempFile> {
    const temp = tempPathBeside(path);
    const dir = dirname(path);
    try {
      if (!this.knownDirs.has(dir)) {
        // Tried first: a directory that exists then costs no stat.
        try {
          const fd = openSync(temp, 'wx', 0o644);
          this.knownDirs.add(dir);
          return { temp, fd };
        } catch (err) {
          if (errnoOf(err) !== 'ENOENT') throw err;
        }
        await this.ensureDir(dir);
      }
      return { temp, fd: openSync(temp, 'wx', 0o644) };
    } catch (err) {
      throw this.translate(err, key, 'write');
    }
  }

  /**
   * Puts a complete, fsynced (and closed) temporary file in place: renamed, or for create-only puts
   * hard-linked (which fails if the name exists) and unlinked; then the directory is fsynced. The
   * temporary file is gone afterwards, whatever happens.
   */
  async publish(temp: string, path: string, key: string, options: PutOptions): Promise<void> {
    try {
      if (options.ifNoneMatch) {
        try {
          linkSync(temp, path);
        } catch (err) {
          if (errnoOf(err) === 'EEXIST') throw new AlreadyExistsError(`${this.description}: ${key} already exists`, key);
          throw err;
        } finally {
          unlinkQuietly(temp);
        }
      } else {
        renameSync(temp, path);
      }
      await this.fsyncDir(dirname(path));
    } catch (err) {
      unlinkQuietly(temp);
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

function tempPathBeside(path: string): string {
  return join(dirname(path), `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone, or the error that matters is being reported
  }
}

/**
 * Writes the parts back to back from `position` (writev, again from where a short write stopped), on
 * this thread when they are small; returns the position after them.
 */
async function writeAll(fd: number, parts: readonly Uint8Array[], position: number): Promise<number> {
  let rest = parts.filter((p) => p.length > 0);
  const small = rest.reduce((a, p) => a + p.length, 0) <= SYNC_WRITE_MAX;
  while (rest.length) {
    let bytesWritten = small ? writevSync(fd, rest as Uint8Array[], position) : (await writevAsync(fd, rest as Uint8Array[], position)).bytesWritten;
    if (bytesWritten === 0) throw new Error('the file system wrote nothing');
    position += bytesWritten;
    let i = 0;
    while (i < rest.length && bytesWritten >= rest[i].length) bytesWritten -= rest[i++].length;
    rest = rest.slice(i);
    if (bytesWritten > 0) rest[0] = rest[0].subarray(bytesWritten);
  }
  return position;
}

/**
 * The temporary file is opened when the writer is made. Parts queue up and go out in one writev per turn
 * (whatever queued while the last one ran: the thread producing them may be busy for a while), and
 * every WRITER_SYNC_BYTES an fdatasync runs beside the writes. finish() writes the last parts, fsyncs
 * and publishes like putParts. Killed before that, only the temporary file is left (list() skips it,
 * as it does a killed put's).
 */
class LocalObjectWriter implements ObjectWriter {
  private readonly file: Promise<TempFile>;
  private pending: Uint8Array[] = [];
  private writing: Promise<void> | null = null;
  private failure: unknown = null;
  private position = 0;
  private unsynced = 0;
  private syncing: Promise<void> | null = null;
  private done = false;

  constructor(
    private readonly target: LocalTarget,
    private readonly key: string,
    private readonly path: string,
    private readonly options: PutOptions,
  ) {
    // Opened now, so that it is ready by the time the first parts come.
    this.file = target.openTemp(path, key);
    this.file.catch(() => undefined); // reported by finish()
  }

  write(parts: readonly Uint8Array[]): void {
    if (this.done) throw new Error(`internal: ${this.key} written after finish or abort`);
    for (const p of parts) this.pending.push(p);
    this.writing ??= this.drain();
  }

  private async drain(): Promise<void> {
    try {
      const { fd } = await this.file;
      while (this.pending.length && !this.failure) {
        const parts = this.pending;
        this.pending = [];
        const end = await writeAll(fd, parts, this.position);
        this.unsynced += end - this.position;
        this.position = end;
        if (this.unsynced >= WRITER_SYNC_BYTES && !this.syncing) {
          this.unsynced = 0;
          this.syncing = fdatasyncAsync(fd).then(
            () => {
              this.syncing = null;
            },
            (err) => {
              this.failure ??= err;
              this.syncing = null;
            },
          );
        }
      }
    } catch (err) {
      this.failure ??= err;
    } finally {
      this.writing = null;
    }
  }

  async finish(parts: readonly Uint8Array[]): Promise<void> {
    this.write(parts);
    this.done = true;
    await this.writing;
    await this.syncing;
    const { temp, fd } = await this.file;
    try {
      try {
        if (this.failure) throw this.failure;
        await fsyncAsync(fd);
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      unlinkQuietly(temp);
      throw this.target.translate(err, this.key, 'write');
    }
    await this.target.publish(temp, this.path, this.key, this.options);
  }

  async abort(): Promise<void> {
    this.done = true;
    this.pending = [];
    await this.writing;
    await this.syncing;
    const file = await this.file.catch(() => null);
    if (!file) return;
    closeSync(file.fd);
    unlinkQuietly(file.temp);
  }
}

export function createLocalTarget(options: LocalTargetOptions | string): LocalTarget {
  return new LocalTarget(typeof options === 'string' ? { path: options } : options);
}
