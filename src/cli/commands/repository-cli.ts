// What the repository commands (repo, backup, points, restore, verify, forget, gc) share: the target and
// key options, opening the repository, turning library errors into one-line user errors, byte
// formatting, and the progress line shown on a terminal.

import { readFileSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { TargetError, type Target } from '../../../replication/target.js';
import { openTarget, TargetSpecError } from '../../../replication/targets/open.js';
import { RepositoryError } from '../../../replication/repository/errors.js';
import { KeyFileError, validateKeyFile, type KeySecret } from '../../../replication/repository/keys.js';
import { Repository, type OpenOptions } from '../../../replication/repository/repository.js';
import { UsageError, UserError } from '../command.js';

export const TARGET_HELP = `  --target T            where the repository lives (or LIFEBOAT_TARGET): a directory, file:PATH,
                        s3://BUCKET[/PREFIX], lifeboat://HOST:PORT/REPO or https://HOST:PORT/REPO`;
export const KEY_HELP = `  --password-file FILE  read the passphrase from FILE (first line); or set LIFEBOAT_PASSWORD
  --key-file FILE       unlock with a key file instead of a passphrase`;

export const TARGET_OPTIONS = {
  target: { type: 'string' },
  'password-file': { type: 'string' },
  'key-file': { type: 'string' },
  json: { type: 'boolean', default: false },
} as const satisfies NonNullable<ParseArgsConfig['options']>;

export function parse<O extends NonNullable<ParseArgsConfig['options']>>(argv: string[], options: O, positionals = false) {
  try {
    return parseArgs({ args: argv, options, strict: true, allowPositionals: positionals });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

export function targetSpec(values: { target?: string }): string {
  const spec = values.target ?? process.env.LIFEBOAT_TARGET;
  if (!spec) throw new UsageError('missing --target T (or set LIFEBOAT_TARGET)');
  return spec;
}

/** The passphrase or key file the user gave, or null. */
export function readSecret(values: { 'password-file'?: string; 'key-file'?: string }): KeySecret | null {
  if (values['password-file'] && values['key-file']) throw new UsageError('give --password-file or --key-file, not both');
  if (values['key-file']) {
    const path = values['key-file'];
    let contents: Buffer;
    try {
      contents = readFileSync(path);
    } catch (err) {
      throw new UserError(`cannot read key file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    try {
      validateKeyFile(contents, path);
    } catch (err) {
      if (err instanceof KeyFileError) throw new UserError(err.message);
      throw err;
    }
    return { keyFile: contents };
  }
  if (values['password-file']) {
    const path = values['password-file'];
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new UserError(`cannot read password file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    const passphrase = text.split(/\r?\n/)[0];
    if (!passphrase) throw new UserError(`password file ${path} is empty`);
    return { passphrase };
  }
  const env = process.env.LIFEBOAT_PASSWORD;
  return env ? { passphrase: env } : null;
}

/** Runs fn and turns expected failures (repository, target, spec) into one-line user errors. */
export async function userErrors<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof RepositoryError || err instanceof TargetError || err instanceof KeyFileError) throw new UserError(err.message);
    if (err instanceof TargetSpecError) throw new UsageError(err.message);
    throw err;
  }
}

export async function openTargetFromArgs(values: { target?: string }): Promise<Target> {
  const spec = targetSpec(values);
  return userErrors(() => openTarget(spec));
}

/**
 * Opens the repository named by --target with the user's key and runs fn on it, then closes the target.
 * `open`: Repository.open's other options (a backup reads the index objects while the key is derived).
 */
export async function withRepository<T>(
  values: { target?: string; 'password-file'?: string; 'key-file'?: string },
  fn: (repo: Repository) => Promise<T>,
  open: Omit<OpenOptions, 'secret'> = {},
): Promise<T> {
  const secret = readSecret(values);
  const target = await openTargetFromArgs(values);
  try {
    return await userErrors(async () => fn(await Repository.open(target, { ...open, secret })));
  } finally {
    await target.close().catch(() => undefined);
  }
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + '\n');
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

/** Parses a size such as 65536, 64K, 64KiB, 16M. */
export function parseSize(option: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const m = /^(\d+)\s*([KMG]?)(i?B)?$/i.exec(value.trim());
  if (!m) throw new UsageError(`--${option} must be a size such as 65536, 64K or 16M, got '${value}'`);
  const mult = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[m[2].toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(m[1]) * mult;
}

export function wholeNumber(option: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new UsageError(`--${option} must be a whole number, got '${value}'`);
  return Number(value);
}

/** One updating line on stderr when it is a terminal (bytes, rate, ETA); nothing otherwise. */
export class ProgressLine {
  private readonly enabled: boolean;
  private readonly started = Date.now();
  private shown = false;

  constructor(private readonly label: string, enabled = Boolean(process.stderr.isTTY)) {
    this.enabled = enabled;
  }

  update(done: number, total: number, extra = ''): void {
    if (!this.enabled) return;
    const secs = (Date.now() - this.started) / 1000;
    const rate = secs > 0 ? done / secs : 0;
    const pct = total > 0 ? Math.min(100, (100 * done) / total) : 100;
    const eta = rate > 0 && total > done ? ` ETA ${formatDuration(((total - done) / rate) * 1000)}` : '';
    const line = `${this.label} ${pct.toFixed(1)}% ${formatBytes(done)}/${formatBytes(total)} ${formatBytes(rate)}/s${eta}${extra ? ` ${extra}` : ''}`;
    const width = process.stderr.columns || 100;
    process.stderr.write(`\r${line.slice(0, width - 1)}\x1b[K`);
    this.shown = true;
  }

  done(): void {
    if (this.enabled && this.shown) process.stderr.write('\r\x1b[K');
    this.shown = false;
  }
}
