// How the repository commands keep the catalog up to date: which target row a repository is, and a
// recorder that writes a command's job, events and changes to recovery points into the catalog.
//
// The repository is the source of truth and the catalog only an index of it, so the catalog never
// decides whether a command succeeds: a catalog that cannot be opened or written is remembered and
// reported after the command's own result as one warning line naming the fix, and the exit status is
// the command's own. When the command itself fails, catalog problems are not reported at all (the
// command's error is the one line the user needs).

import { resolve } from 'node:path';
import type { Catalog, EventLevel, TargetRecord } from '../../../catalog/index.js';
import { parseTargetSpec, TargetSpecError } from '../../../replication/targets/open.js';
import { UsageError } from '../command.js';
import { catalogLocation, openCatalogAt, type CatalogLocation } from '../catalog-location.js';

/**
 * The printable, canonical form of a target spec, the same however the user spelled it (a relative
 * path, file:PATH, lifeboat:// or https://): what `catalog points --target T` matches. Never a secret
 * (an S3 endpoint or credentials are not part of it, nor URL user info).
 */
export function targetLocation(spec: string): string {
  let p;
  try {
    p = parseTargetSpec(spec);
  } catch (err) {
    if (err instanceof TargetSpecError) throw new UsageError(err.message);
    throw err;
  }
  switch (p.kind) {
    case 'local':
      return resolve(p.location);
    case 's3':
      return `s3://${p.location}${p.prefix ? `/${p.prefix}` : ''}`;
    case 'site':
      return `${p.location}${p.prefix ? `/${p.prefix}` : ''}`;
  }
}

/**
 * The catalog's row for a repository. A target is keyed by the repository's id, not by where it was
 * reached: the same repository under another path or URL is the same set of points and chunks.
 */
export function catalogTarget(spec: string, repositoryId: string): TargetRecord {
  return { id: repositoryId, kind: parseTargetSpec(spec).kind, location: targetLocation(spec), siteId: null };
}

export interface JobStart {
  kind: string;
  target: TargetRecord;
  vmId?: string | null;
}

export interface JobEnd {
  /** One event describing the outcome. */
  message: string;
  details?: unknown;
  level?: EventLevel;
  vmId?: string | null;
  /** The job's work is done but found problems (e.g. verify errors): the job is recorded as failed. */
  error?: string;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class CatalogRecorder {
  private catalog: Catalog | null = null;
  /** The first thing that went wrong with the catalog, for the warning. */
  private problem: string | null = null;
  /** The catalog's record of recovery points or chunks may now be behind the repository. */
  private stale = false;
  private jobId: number | null = null;
  private job: JobStart | null = null;
  private progress: { done: number; total: number | null } | null = null;

  private constructor(
    readonly location: CatalogLocation,
    private readonly command: string,
  ) {}

  /**
   * Where the command will record; the catalog is opened by `startJob`, once the repository is open, so
   * that a command refused for bad arguments or a wrong key never touches it.
   */
  static open(values: { catalog?: string }, command: string): CatalogRecorder {
    return new CatalogRecorder(catalogLocation(values), command);
  }

  private attempt<T>(fn: (catalog: Catalog) => T): T | undefined {
    if (!this.catalog) return undefined;
    try {
      return fn(this.catalog);
    } catch (err) {
      this.problem ??= messageOf(err);
      return undefined;
    }
  }

  /** Opens the catalog and records the job as running. Never throws: see `warning()`. */
  startJob(job: JobStart): void {
    this.job = job;
    try {
      this.catalog = openCatalogAt(this.location);
    } catch (err) {
      this.problem = messageOf(err);
    }
    this.jobId = this.attempt((c) => c.startJob({ kind: job.kind, vmId: job.vmId ?? null, targetId: job.target.id })) ?? null;
  }

  /** Runs the command's work; its failure is recorded (if the catalog allows) and rethrown. */
  async track<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (err) {
      this.failed(err);
      throw err;
    }
  }

  /** False when the catalog's points or chunks may be behind the repository (see `warning`). */
  get upToDate(): boolean {
    return !this.stale;
  }

  /** Remembers the job's progress; written when the job ends (a row per progress tick is not worth it). */
  setProgress(done: number, total: number | null): void {
    this.progress = { done, total };
  }

  /**
   * Applies a change to the derived tables (points, chunks). `prepare` may read the repository; `apply`
   * runs in one catalog transaction. If either fails, the catalog is stale and the warning says so.
   */
  async update<T>(prepare: () => Promise<T>, apply: (catalog: Catalog, prepared: T) => void, end?: JobEnd): Promise<void> {
    if (!this.catalog) {
      this.stale = true;
      return;
    }
    let prepared: T;
    try {
      prepared = await prepare();
    } catch (err) {
      this.problem ??= `cannot read what to record: ${messageOf(err)}`;
      this.stale = true;
      if (end) this.succeeded(end);
      return;
    }
    // With `end`, the job's end is written in the same transaction: one commit (one fsync) less.
    const done = this.attempt((c) => {
      c.transaction(() => {
        apply(c, prepared);
        if (end) this.writeEnd(c, end);
      });
      return true;
    });
    if (!done) {
      this.stale = true;
      if (end) this.succeeded(end);
    }
  }

  /** The command's work succeeded (or, with `end.error`, completed with problems). */
  succeeded(end: JobEnd): void {
    this.attempt((c) => {
      c.transaction(() => this.writeEnd(c, end));
    });
  }

  private writeEnd(c: Catalog, end: JobEnd): void {
    const job = this.job;
    if (this.jobId !== null) {
      if (this.progress) c.updateJobProgress(this.jobId, this.progress.done, this.progress.total);
      c.finishJob(this.jobId, end.error ? { state: 'failed', error: end.error } : { state: 'succeeded' });
    }
    c.addEvent({
      level: end.level ?? (end.error ? 'error' : 'info'),
      kind: `${job?.kind ?? this.command}.${end.error ? 'failed' : 'succeeded'}`,
      message: end.message,
      details: end.details,
      vmId: end.vmId ?? job?.vmId ?? null,
      jobId: this.jobId,
    });
    if (this.stale && this.problem) {
      c.addEvent({ level: 'warn', kind: 'catalog.stale', message: `the catalog may be behind target ${job?.target.location}: ${this.problem}`, jobId: this.jobId });
    }
  }

  /** The command failed: recorded if the catalog allows, silently otherwise. */
  failed(err: unknown): void {
    const job = this.job;
    if (!job || !this.catalog) return;
    const error = messageOf(err);
    try {
      this.catalog.transaction(() => {
        if (this.jobId !== null) {
          if (this.progress) this.catalog!.updateJobProgress(this.jobId, this.progress.done, this.progress.total);
          this.catalog!.finishJob(this.jobId, { state: 'failed', error });
        }
        this.catalog!.addEvent({ level: 'error', kind: `${job.kind}.failed`, message: error, vmId: job.vmId ?? null, jobId: this.jobId });
      });
    } catch {
      // The command's own error is what the user sees.
    }
  }

  /**
   * One line for stderr when the catalog could not be used, else null. `what` names what is safe on the
   * target (e.g. "point 1a2b3c4d is stored"), for commands whose change the catalog missed.
   */
  warning(what?: string): string | null {
    if (!this.problem) return null;
    const name = `lifeboat ${this.command}`;
    if (this.stale && this.job) {
      const catalogOption = this.location.fromOption ? ` --catalog ${this.location.path}` : '';
      return (
        `${name}: warning: ${what ? `${what}, but ` : ''}the catalog was not updated (${this.problem}); the repository is the source of truth: ` +
        `once the catalog can be written, run 'lifeboat catalog rebuild --target ${this.job.target.location}${catalogOption}' to bring it up to date`
      );
    }
    return `${name}: warning: this ${this.command} was not recorded in the catalog (${this.problem})`;
  }

  /** Prints the warning, if any, and closes the catalog. */
  finish(what?: string): void {
    const line = this.warning(what);
    if (line) process.stderr.write(line + '\n');
    this.close();
  }

  close(): void {
    this.catalog?.close();
    this.catalog = null;
  }
}
