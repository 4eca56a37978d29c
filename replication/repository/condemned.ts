// The condemned-pack record (`gc/condemned`): packs a garbage collection found unreferenced but has not yet
// deleted, and the leases that were alive when it condemned them. Writers read it after taking their lease
// and never reuse a chunk from a condemned pack, so a pack is deleted only once no lease that could have
// chosen to reuse it is alive. See "Garbage collection" in docs/repository-format.md.

import { NotFoundError, type Target } from '../target.js';
import { CONDEMNED_KEY } from './constants.js';

export const CONDEMNED_FORMAT = 'lifeboat-condemned';

export interface CondemnedRecord {
  format: typeof CONDEMNED_FORMAT;
  version: 1;
  updatedAt: string;
  /** False while a gc has condemned packs but not yet listed leases: any alive lease then protects them. */
  complete: boolean;
  /** Hex pack ids. */
  packs: string[];
  /** Ids of the leases alive when these packs were condemned. */
  waitForLeases: string[];
}

export async function readCondemned(target: Target): Promise<CondemnedRecord | null> {
  let buf: Buffer;
  try {
    buf = await target.get(CONDEMNED_KEY);
  } catch (err) {
    if (err instanceof NotFoundError) return null;
    throw err;
  }
  try {
    const rec = JSON.parse(buf.toString('utf8')) as CondemnedRecord;
    if (rec.format === CONDEMNED_FORMAT && Array.isArray(rec.packs) && Array.isArray(rec.waitForLeases)) return rec;
  } catch {
    // fall through
  }
  throw new Error(`the condemned-pack record ${CONDEMNED_KEY} on ${target.description} is damaged; delete it and run gc again`);
}
