// The one interface every repository target implements: a flat key/value object store with
// conditional create. The repository format (docs/repository-format.md) is written on top of it,
// identically on a local directory, an S3-compatible store and a remote Lifeboat site.

export interface ObjectInfo {
  key: string;
  size: number;
}

export interface PutOptions {
  /** Create only: fail with AlreadyExistsError when the key exists (S3 `If-None-Match: *`). */
  ifNoneMatch?: boolean;
}

export interface ByteRange {
  offset: number;
  length: number;
}

/**
 * An object written while its bytes are still being produced (a pack as its blobs are sealed). Nothing
 * is visible under the key until finish() resolves, and then it is durable, exactly as after putParts.
 */
export interface ObjectWriter {
  /** Appends `parts` (queued; their buffers must not change until finish() or abort() has resolved). */
  write(parts: readonly Uint8Array[]): void;
  /** Appends the last parts and publishes the object, durable, under its key (errors as putParts). */
  finish(parts: readonly Uint8Array[]): Promise<void>;
  /** Drops everything written; nothing appears under the key. */
  abort(): Promise<void>;
}

export interface Target {
  /** Human-readable location, safe to print (no secrets). */
  readonly description: string;
  /** Durable when the promise resolves (fsync on local disks; a completed request on S3). */
  put(key: string, body: Buffer, options?: PutOptions): Promise<void>;
  /**
   * put() of the bytes of `parts`, one after the other: a pack goes out from its blobs' own buffers
   * (a local target writes them with one writev; others may join them first).
   */
  putParts(key: string, parts: readonly Uint8Array[], options?: PutOptions): Promise<void>;
  /**
   * Optional: a writer that gets the bytes to storage as they come (a local disk writes and flushes
   * them in the background, so publishing waits only for the last few MB). Targets that send one
   * request per object leave it out; callers then use putParts.
   */
  openWriter?(key: string, options?: PutOptions): ObjectWriter;
  /** Throws NotFoundError when the key is absent. */
  get(key: string, range?: ByteRange): Promise<Buffer>;
  /** null when the key is absent. */
  head(key: string): Promise<ObjectInfo | null>;
  /** Every key beginning with `prefix`, in no particular order. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /** Deleting an absent key is not an error; a retention-locked key throws ObjectLockedError. */
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}

export class TargetError extends Error {
  constructor(message: string, readonly key?: string) {
    super(message);
    this.name = new.target.name;
  }
}
export class NotFoundError extends TargetError {}
export class AlreadyExistsError extends TargetError {}
export class ObjectLockedError extends TargetError {}
export class AuthError extends TargetError {}
/** The server cannot do conditional writes: features that need them must refuse to run. */
export class ConditionalWritesUnsupportedError extends TargetError {}
