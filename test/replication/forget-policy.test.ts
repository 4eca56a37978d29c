// Retention rules: which points keep-last / hourly / daily / weekly / monthly / yearly keep.

import assert from 'node:assert/strict';
import { applyPolicy } from '../../replication/repository/forget.js';

function points(times: string[]) {
  return times.map((t, i) => ({ id: `p${i}`, vm: 'vm', createdAt: t }));
}

function kept(times: string[], policy: Parameters<typeof applyPolicy>[1]): string[] {
  return applyPolicy(points(times), policy)
    .filter((d) => d.keep)
    .map((d) => d.createdAt)
    .sort();
}

describe('forget retention rules', () => {
  const hourly = Array.from({ length: 72 }, (_, h) => new Date(Date.UTC(2024, 4, 1, h, 30)).toISOString());

  it('keep-last keeps the newest N', () => {
    assert.deepEqual(kept(hourly, { keepLast: 2 }), hourly.slice(-2));
  });

  it('keep-daily keeps the newest point of each of the last N days that have one', () => {
    assert.deepEqual(kept(hourly, { keepDaily: 2 }), ['2024-05-02T23:30:00.000Z', '2024-05-03T23:30:00.000Z']);
  });

  it('keep-hourly counts hours with points, not wall-clock hours', () => {
    const sparse = ['2024-05-01T01:10:00.000Z', '2024-05-01T01:50:00.000Z', '2024-05-01T07:00:00.000Z'];
    assert.deepEqual(kept(sparse, { keepHourly: 2 }), ['2024-05-01T01:50:00.000Z', '2024-05-01T07:00:00.000Z']);
  });

  it('keep-weekly uses ISO weeks (Monday to Sunday, UTC)', () => {
    // 2024-12-30 (Mon) and 2025-01-05 (Sun) are both ISO week 2025-W01; 2024-12-29 is 2024-W52.
    const t = ['2024-12-29T12:00:00.000Z', '2024-12-30T12:00:00.000Z', '2025-01-05T12:00:00.000Z'];
    assert.deepEqual(kept(t, { keepWeekly: 5 }), ['2024-12-29T12:00:00.000Z', '2025-01-05T12:00:00.000Z']);
  });

  it('keep-monthly and keep-yearly', () => {
    const t = ['2023-11-03T00:00:00.000Z', '2023-12-31T00:00:00.000Z', '2024-01-15T00:00:00.000Z', '2024-01-20T00:00:00.000Z'];
    assert.deepEqual(kept(t, { keepMonthly: 2 }), ['2023-12-31T00:00:00.000Z', '2024-01-20T00:00:00.000Z']);
    assert.deepEqual(kept(t, { keepYearly: 5 }), ['2023-12-31T00:00:00.000Z', '2024-01-20T00:00:00.000Z']);
  });

  it('a point kept by any rule stays, with every reason listed', () => {
    const d = applyPolicy(points(hourly), { keepLast: 1, keepDaily: 1, keepMonthly: 1 });
    const newest = d.find((x) => x.createdAt === hourly[71])!;
    assert.deepEqual(newest.reasons, ['last 1', 'daily 2024-05-03', 'monthly 2024-05']);
    assert.equal(d.filter((x) => x.keep).length, 1);
  });
});
