// Leases (`leases/ID`): a backup, restore or verify announces itself so that garbage collection never
// deletes a pack it may be using; a garbage collection holds the one exclusive lease `leases/gc-N`.
// Created with a conditional write, refreshed by the holder, judged stale by expiry.

import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { AlreadyExistsError, AuthError, NotFoundError, ObjectLockedError, type Target } from '../target.js';
import { DEFAULT_LEASE_TTL_MS, GC_LEASE_PREFIX, LEASE_CLOCK_SKEW_MS, LEASES_PREFIX, OBJECT_ID_BYTES, gcLeaseKey, leaseKey } from './constants.js';
import { LeaseConflictError } from './errors.js';

export type LeaseKind = 'backup' | 'restore' | 'verify' | 'gc';
export const LEASE_FORMAT = 'lifeboat-lease';

export interface LeaseRecord {
  format: typeof LEASE_FORMAT;
  version: 1;
  id: string;
  kind: LeaseKind;
  host: string;
  pid: number;
  createdAt: string;
  expiresAt: string;
  released?: boolean;
}

export function leaseAlive(rec: LeaseRecord, now = Date.now()): boolean {
  return !rec.released && Date.parse(rec.expiresAt) + LEASE_CLOCK_SKEW_MS > now;
}

function decodeLease(buf: Buffer): LeaseRecord | null {
  try {
    const rec = JSON.parse(buf.toString('utf8')) as LeaseRecord;
    return rec && rec.format === LEASE_FORMAT && typeof rec.expiresAt === 'string' ? rec : null;
  } catch {
    return null;
  }
}

export async function readLease(target: Target, key: string): Promise<LeaseRecord | null> {
  try {
    return decodeLease(await target.get(key));
  } catch (err) {
    if (err instanceof NotFoundError) return null;
    throw err;
  }
}

/** Every lease on the target; unreadable ones count as alive until they are old (a writer may be mid-put). */
export async function listLeases(target: Target): Promise<{ key: string; record: LeaseRecord | null }[]> {
  const out: { key: string; record: LeaseRecord | null }[] = [];
  for await (const o of target.list(LEASES_PREFIX)) {
    out.push({ key: o.key, record: await readLease(target, o.key) });
  }
  return out;
}

export class Lease {
  private timer: NodeJS.Timeout | undefined;
  private refreshing: Promise<void> = Promise.resolve();
  private closed = false;
  /** When the lease was last known to be on the target with a fresh expiry. */
  private confirmedAt = Date.now();

  private constructor(
    private readonly target: Target,
    readonly key: string,
    private record: LeaseRecord,
    private readonly ttlMs: number,
  ) {}

  get id(): string {
    return this.record.id;
  }

  private static newRecord(id: string, kind: LeaseKind, ttlMs: number): LeaseRecord {
    const now = Date.now();
    return {
      format: LEASE_FORMAT,
      version: 1,
      id,
      kind,
      host: hostname(),
      pid: process.pid,
      createdAt: new Date(now).toISOString(),
      expiresAt: new Date(now + ttlMs).toISOString(),
    };
  }

  /** A shared lease for a backup, restore or verify. */
  static async acquire(target: Target, kind: Exclude<LeaseKind, 'gc'>, ttlMs = DEFAULT_LEASE_TTL_MS): Promise<Lease> {
    const id = randomBytes(OBJECT_ID_BYTES).toString('hex');
    const record = Lease.newRecord(id, kind, ttlMs);
    const key = leaseKey(id);
    await target.put(key, Buffer.from(JSON.stringify(record)), { ifNoneMatch: true });
    const lease = new Lease(target, key, record, ttlMs);
    lease.startRefresh();
    return lease;
  }

  /**
   * A lease for a reader (restore, verify) where one can be taken. With read-only access to the target
   * (e.g. credentials that may only read, at a recovery site) the reader goes ahead without one: it then
   * relies on no gc running meanwhile.
   */
  static async acquireIfWritable(target: Target, kind: 'restore' | 'verify', ttlMs = DEFAULT_LEASE_TTL_MS): Promise<Lease | null> {
    try {
      return await Lease.acquire(target, kind, ttlMs);
    } catch (err) {
      if (err instanceof AuthError || err instanceof ObjectLockedError) return null;
      throw err;
    }
  }

  /**
   * The exclusive garbage-collection lease. The current one is the highest-numbered `leases/gc-N`; when
   * it is not alive, the next gc creates `leases/gc-(N+1)` with a create-only put, so of two gcs racing
   * exactly one wins. Older gc leases are deleted where the store allows it.
   */
  static async acquireGc(target: Target, ttlMs = DEFAULT_LEASE_TTL_MS): Promise<Lease> {
    const numbers: number[] = [];
    for await (const o of target.list(GC_LEASE_PREFIX)) {
      const n = o.key.slice(GC_LEASE_PREFIX.length);
      if (/^\d{1,15}$/.test(n)) numbers.push(Number(n));
    }
    const current = numbers.length ? Math.max(...numbers) : 0;
    if (numbers.length) {
      // Puts are atomic, so an unreadable lease is damaged, not half-written: it holds nothing.
      const held = await readLease(target, gcLeaseKey(current));
      if (held && leaseAlive(held)) {
        throw new LeaseConflictError(
          `another gc is running (host ${held.host}, pid ${held.pid}, since ${held.createdAt}); try again after it ends or after ${held.expiresAt}`,
        );
      }
    }
    const key = gcLeaseKey(current + 1);
    const record = Lease.newRecord(`gc-${current + 1}`, 'gc', ttlMs);
    try {
      await target.put(key, Buffer.from(JSON.stringify(record)), { ifNoneMatch: true });
    } catch (err) {
      if (err instanceof AlreadyExistsError) throw new LeaseConflictError('another gc took the gc lease at the same moment; try again');
      throw err;
    }
    const lease = new Lease(target, key, record, ttlMs);
    lease.startRefresh();
    for (const n of numbers) await target.delete(gcLeaseKey(n)).catch(() => undefined); // leases of finished gcs
    return lease;
  }

  private startRefresh(): void {
    this.timer = setInterval(() => {
      this.refreshing = this.refresh().catch(() => undefined);
    }, Math.max(1000, Math.floor(this.ttlMs / 3)));
    this.timer.unref();
  }

  async refresh(): Promise<void> {
    if (this.closed) return;
    const now = Date.now();
    this.record = { ...this.record, expiresAt: new Date(now + this.ttlMs).toISOString() };
    await this.target.put(this.key, Buffer.from(JSON.stringify(this.record)));
    this.confirmedAt = now;
  }

  /** Throws when the lease may have lapsed (refreshes failed): a gc could have treated it as dead. */
  assertFresh(): void {
    if (Date.now() - this.confirmedAt >= this.ttlMs) {
      throw new LeaseConflictError(`the ${this.record.kind} lease ${this.key} lapsed (it could not be refreshed for ${Math.round(this.ttlMs / 1000)} s); run the ${this.record.kind} again`);
    }
  }

  /** Ends the lease: deletes it, or on a retention-locked store marks it released. */
  async release(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    await this.refreshing;
    try {
      await this.target.delete(this.key);
    } catch (err) {
      if (!(err instanceof ObjectLockedError)) throw err;
      await this.target.put(this.key, Buffer.from(JSON.stringify({ ...this.record, released: true })));
    }
  }
}
