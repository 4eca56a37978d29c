// Forget: removes points' manifests, by id or by a retention policy (keep-last / hourly / daily / weekly /
// monthly / yearly, per VM). Every point is a complete chunk map, so forgetting a point never breaks
// another one; `gc` later removes the chunks no remaining point uses.

import { ObjectLockedError } from '../target.js';
import { pointKey } from './constants.js';
import { InputError } from './errors.js';
import type { PointSummary, Repository } from './repository.js';

export interface RetentionPolicy {
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
}

export const RETENTION_RULES: readonly (keyof RetentionPolicy)[] = ['keepLast', 'keepHourly', 'keepDaily', 'keepWeekly', 'keepMonthly', 'keepYearly'];

export interface ForgetDecision {
  id: string;
  vm: string;
  createdAt: string;
  keep: boolean;
  /** Why it is kept, e.g. ['last 1', 'daily 2024-05-01']. */
  reasons: string[];
}

function isoWeek(d: Date): string {
  // ISO 8601 week: the week with the year's first Thursday is week 1.
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86400000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

const BUCKETS: Record<Exclude<keyof RetentionPolicy, 'keepLast'>, { name: string; key: (d: Date) => string }> = {
  keepHourly: { name: 'hourly', key: (d) => d.toISOString().slice(0, 13) },
  keepDaily: { name: 'daily', key: (d) => d.toISOString().slice(0, 10) },
  keepWeekly: { name: 'weekly', key: isoWeek },
  keepMonthly: { name: 'monthly', key: (d) => d.toISOString().slice(0, 7) },
  keepYearly: { name: 'yearly', key: (d) => d.toISOString().slice(0, 4) },
};

export function policyIsEmpty(p: RetentionPolicy): boolean {
  return RETENTION_RULES.every((r) => !p[r]);
}

/**
 * Which points of one VM a policy keeps. Points are taken newest first; keep-last keeps the first N; each
 * calendar rule keeps the newest point of each of the N most recent periods (UTC) that have a point.
 */
export function applyPolicy(points: { id: string; vm: string; createdAt: string }[], policy: RetentionPolicy): ForgetDecision[] {
  const sorted = [...points].sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.id.localeCompare(a.id));
  const decisions = sorted.map((p) => ({ ...p, keep: false, reasons: [] as string[] }));
  decisions.slice(0, policy.keepLast ?? 0).forEach((d, i) => {
    d.keep = true;
    d.reasons.push(`last ${i + 1}`);
  });
  for (const [rule, bucket] of Object.entries(BUCKETS) as [keyof typeof BUCKETS, (typeof BUCKETS)[keyof typeof BUCKETS]][]) {
    const n = policy[rule] ?? 0;
    let kept = 0;
    let lastKey: string | null = null;
    for (const d of decisions) {
      if (kept >= n) break;
      const key = bucket.key(new Date(d.createdAt));
      if (key === lastKey) continue;
      lastKey = key;
      d.keep = true;
      d.reasons.push(`${bucket.name} ${key}`);
      kept++;
    }
  }
  return decisions;
}

export interface ForgetOptions {
  /** Point ids (full) to forget. */
  points?: string[];
  policy?: RetentionPolicy;
  /** Apply the policy only to this VM's points. */
  vm?: string;
  dryRun?: boolean;
}

export interface ForgetResult {
  decisions: ForgetDecision[];
  removed: string[];
  /** Points that are retention-locked on the target and stay. */
  locked: string[];
}

export async function forget(repo: Repository, options: ForgetOptions): Promise<ForgetResult> {
  const policy = options.policy ?? {};
  const explicit = options.points ?? [];
  if (policyIsEmpty(policy) && explicit.length === 0) {
    throw new InputError('nothing to forget: give point ids or at least one --keep-* rule');
  }
  const points: PointSummary[] = await repo.listPoints();
  const decisions: ForgetDecision[] = [];
  if (explicit.length) {
    for (const id of explicit) {
      const p = points.find((x) => x.id === id);
      if (!p) throw new InputError(`no point ${id} in ${repo.description}`);
      decisions.push({ id, vm: p.manifest.vm.name, createdAt: p.manifest.createdAt, keep: false, reasons: [] });
    }
  }
  if (!policyIsEmpty(policy)) {
    const byVm = new Map<string, { id: string; vm: string; createdAt: string }[]>();
    for (const p of points) {
      if (options.vm && p.manifest.vm.name !== options.vm) continue;
      if (explicit.includes(p.id)) continue;
      const list = byVm.get(p.manifest.vm.name) ?? [];
      list.push({ id: p.id, vm: p.manifest.vm.name, createdAt: p.manifest.createdAt });
      byVm.set(p.manifest.vm.name, list);
    }
    for (const list of byVm.values()) decisions.push(...applyPolicy(list, policy));
  }
  const removed: string[] = [];
  const locked: string[] = [];
  if (!options.dryRun) {
    for (const d of decisions) {
      if (d.keep) continue;
      try {
        await repo.target.delete(pointKey(d.id));
        removed.push(d.id);
      } catch (err) {
        if (!(err instanceof ObjectLockedError)) throw err;
        locked.push(d.id);
      }
    }
  }
  return { decisions, removed, locked };
}
