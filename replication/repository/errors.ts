// Expected repository failures. Each message is one line that names the object (and, for data, the
// point, disk and offset) and, where there is one, the fix. The CLI prints them as they are.

export class RepositoryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

export class NotARepositoryError extends RepositoryError {}
export class WrongKeyError extends RepositoryError {}
export class MissingObjectError extends RepositoryError {}
export class TruncatedObjectError extends RepositoryError {}
/** Stored bytes that fail a checksum, authentication or content hash. */
export class CorruptDataError extends RepositoryError {}
export class LeaseConflictError extends RepositoryError {}
export class PointNotFoundError extends RepositoryError {}
export class InputError extends RepositoryError {}
