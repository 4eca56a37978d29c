// Garbage collection: deletes packs no committed point needs, without ever racing a backup.
//
//   1. Take the exclusive gc lease; read the previous condemned record.
//   2. List packs and read every index object; read every manifest and extent map (mark).
//   3. Unreferenced packs are condemned: the record is written (incomplete) before leases are listed.
//   4. List leases. A backup whose lease appears later read the record, so it never reuses those packs;
//      a backup whose lease is listed might, so its packs wait for it (the record names the lease).
//   5. List points again and mark any committed meanwhile (a backup that finished before step 4).
//   6. Delete: packs condemned by an earlier run whose listed leases have all ended, and newly condemned
//      packs when no lease at all is alive. Index object first, then the pack. Retention-locked
//      objects are left alone and reported.
//   7. Rewrite the record with what is still condemned and the leases it waits for.
// docs/repository-format.md ("Garbage collection") argues why this never deletes a chunk a point needs.

import { ObjectLockedError } from '../target.js';
import { ChunkIndex, PACK_RANK } from './chunk-index.js';
import { mapLimit } from './concurrency.js';
import { CONDEMNED_FORMAT, readCondemned, type CondemnedRecord } from './condemned.js';
import { CONDEMNED_KEY, GC_LEASE_PREFIX, indexKey, packKey } from './constants.js';
import type { ExtentMap } from './extent-map.js';
import { PointNotFoundError, RepositoryError } from './errors.js';
import type { PackIndexContents } from './layout.js';
import { Lease, leaseAlive, listLeases } from './leases.js';
import { pointImages } from './manifest.js';
import type { Repository } from './repository.js';

export interface GcOptions {
  dryRun?: boolean;
  leaseTtlMs?: number;
  onProgress?: (p: { phase: string; done: number; total: number }) => void;
}

export interface GcResult {
  points: number;
  packs: number;
  packsReferenced: number;
  /** Packs no point needs (deleted now or waiting). */
  packsUnreferenced: number;
  packsDeleted: number;
  bytesFreed: number;
  /** Unreferenced packs kept because a backup, restore or verify that may use them is still running. */
  packsWaiting: number;
  /** Leases those packs wait for. */
  waitingForLeases: string[];
  /** Objects the target refused to delete (retention lock). */
  locked: string[];
  /** Stale leases of processes that died, removed. */
  staleLeasesRemoved: number;
  dryRun: boolean;
}

export class GcAbortedError extends RepositoryError {}

/** Packs holding the copy of a needed blob that the index chose (see ChunkIndex ranks). */
type Marked = Set<string>;

/**
 * Marks the packs the points need. `refresh` loads index objects written since gc listed them: a point
 * committed while gc runs keeps its map pages in packs gc had not seen.
 */
async function markPoints(repo: Repository, pointIds: string[], index: ChunkIndex, marked: Marked, refresh: () => Promise<void>): Promise<void> {
  const need = (id: Buffer) => {
    const loc = index.get(id);
    if (loc) marked.add(loc.packId);
  };
  for (const pointId of pointIds) {
    let manifest;
    try {
      manifest = await repo.readManifest(pointId);
    } catch (err) {
      if (err instanceof PointNotFoundError) continue; // forgotten meanwhile
      throw new GcAbortedError(
        `gc deleted nothing: point ${pointId} cannot be read (${(err as Error).message}); restore the object or forget the point, then run gc again`,
      );
    }
    for (const { label, image } of pointImages(manifest)) {
      if (image.pages.some((page) => !index.has(Buffer.from(page, 'hex')))) await refresh();
      for (const page of image.pages) need(Buffer.from(page, 'hex'));
      let map: ExtentMap;
      try {
        map = await repo.readExtentMap(image, index, `point ${pointId} ${label}`);
      } catch (err) {
        throw new GcAbortedError(
          `gc deleted nothing: ${(err as Error).message}; until this point is forgotten gc cannot tell which chunks it needs`,
        );
      }
      // Every blob an extent takes bytes from, however few: blobs are never cut, packs deleted whole.
      for (const { id } of map.dataExtents()) need(id);
    }
    if (manifest.memory?.deviceState) need(Buffer.from(manifest.memory.deviceState, 'hex'));
  }
}

export async function gc(repo: Repository, options: GcOptions = {}): Promise<GcResult> {
  const dryRun = options.dryRun ?? false;
  const lease = await Lease.acquireGc(repo.target, options.leaseTtlMs);
  try {
    const old: CondemnedRecord | null = await readCondemned(repo.target);

    // 2. What exists, and what the points need. Index objects are listed before packs: a writer puts a
    // pack before its index object, so every index object seen has its pack in the later listing
    // unless the pack is really gone.
    const indexIds = await repo.listIndexIds();
    const packs = await repo.listPacks();
    const condemnedBefore = new Set(old?.packs ?? []);
    const contentsByPack = new Map<string, { contents: PackIndexContents; indexId: string }>();
    const loadIndexObjects = async (ids: string[], candidates: boolean) => {
      const loaded: PackIndexContents[] = [];
      await mapLimit(ids, 16, async (indexId) => {
        let list: PackIndexContents[];
        try {
          list = await repo.readIndexObject(indexId);
        } catch (err) {
          throw new GcAbortedError(`gc deleted nothing: ${(err as Error).message}; run 'lifeboat verify' and repair or remove it first`);
        }
        for (const contents of list) {
          if (candidates) contentsByPack.set(contents.packId.toString('hex'), { contents, indexId });
          loaded.push(contents);
        }
      });
      return loaded;
    };
    await loadIndexObjects(indexIds, true);
    // A blob stored twice (after an interrupted backup, or re-stored because its pack was condemned) is
    // needed in one pack only: the index chooses the copy in an existing, not condemned, newer pack.
    const index = new ChunkIndex();
    for (const [packId, { contents }] of contentsByPack) {
      const rank = packs.get(packId) !== contents.packSize ? PACK_RANK.missing : condemnedBefore.has(packId) ? PACK_RANK.condemned : PACK_RANK.present;
      index.addPack(contents, rank);
    }
    // Packs written after the listing are never deleted by this run; their index objects only help to
    // read the chunk maps of points committed meanwhile.
    const seenIndexIds = new Set(indexIds);
    const refresh = async () => {
      const fresh = (await repo.listIndexIds()).filter((id) => !seenIndexIds.has(id));
      fresh.forEach((id) => seenIndexIds.add(id));
      for (const contents of await loadIndexObjects(fresh, false)) index.addPack(contents, PACK_RANK.present);
    };
    const pointsBefore = await repo.listPointIds();
    const marked: Marked = new Set();
    await markPoints(repo, pointsBefore, index, marked, refresh);

    // A pack without an index object cannot be read for chunks: it is garbage, or still being written,
    // which the lease check below covers.
    const unreferenced = new Set([...packs.keys()].filter((id) => !marked.has(id)));
    // Index objects whose pack is gone and whose chunks no point needs.
    const danglingIndexes = [...contentsByPack.entries()].filter(([packId]) => !packs.has(packId) && !marked.has(packId)).map(([, { indexId }]) => indexId);

    if (dryRun) {
      const leases = (await listLeases(repo.target)).filter((l) => !l.key.startsWith(GC_LEASE_PREFIX));
      const alive = leases.filter((l) => !l.record || leaseAlive(l.record));
      const bytes = [...unreferenced].reduce((a, id) => a + (packs.get(id) ?? 0), 0);
      return {
        points: pointsBefore.length,
        packs: packs.size,
        packsReferenced: packs.size - unreferenced.size,
        packsUnreferenced: unreferenced.size,
        packsDeleted: 0,
        bytesFreed: alive.length ? 0 : bytes,
        packsWaiting: alive.length ? unreferenced.size : 0,
        waitingForLeases: alive.map((l) => l.record?.id ?? l.key),
        locked: [],
        staleLeasesRemoved: 0,
        dryRun,
      };
    }

    // 3. Condemn before looking at leases (incomplete: a crash here leaves the packs protected by any lease).
    const carried = new Set([...(old?.packs ?? [])].filter((id) => unreferenced.has(id)));
    await writeRecord(repo, unreferenced, [], false);

    // 4. Leases alive now; stale ones belong to dead processes and are removed.
    let staleLeasesRemoved = 0;
    const aliveLeases = new Set<string>();
    for (const l of await listLeases(repo.target)) {
      if (l.key === lease.key || l.key.startsWith(GC_LEASE_PREFIX)) continue; // gc leases guard gc, not data
      if (l.record && !leaseAlive(l.record)) {
        // Released or expired: its holder is gone. (A retention-locked one stays, and is harmless.)
        if (await repo.target.delete(l.key).then(() => true, () => false)) staleLeasesRemoved++;
        continue;
      }
      aliveLeases.add(l.record?.id ?? l.key);
    }

    // 5. Points committed since the first listing keep their packs.
    const pointsAfter = await repo.listPointIds();
    const before = new Set(pointsBefore);
    await markPoints(repo, pointsAfter.filter((id) => !before.has(id)), index, marked, refresh);
    for (const id of [...unreferenced]) if (marked.has(id)) unreferenced.delete(id);

    // 6. Delete what no lease can still reach.
    const oldWaitAlive = old ? (old.complete === false ? aliveLeases.size > 0 : old.waitForLeases.some((id) => aliveLeases.has(id))) : true;
    const deletable = [...unreferenced].filter((id) => (carried.has(id) ? !oldWaitAlive : aliveLeases.size === 0));
    const locked: string[] = [];
    const deleted = new Set<string>();
    let bytesFreed = 0;
    let done = 0;
    await mapLimit(deletable, 8, async (packId) => {
      const entry = contentsByPack.get(packId);
      try {
        if (entry) await repo.target.delete(indexKey(entry.indexId));
        await repo.target.delete(packKey(packId));
        deleted.add(packId);
        bytesFreed += packs.get(packId) ?? 0;
      } catch (err) {
        if (!(err instanceof ObjectLockedError)) throw err;
        locked.push(err.key ?? packKey(packId));
      }
      options.onProgress?.({ phase: 'delete', done: ++done, total: deletable.length });
    });
    for (const indexId of aliveLeases.size === 0 ? danglingIndexes : []) {
      try {
        await repo.target.delete(indexKey(indexId));
      } catch (err) {
        if (!(err instanceof ObjectLockedError)) throw err;
        locked.push(indexKey(indexId));
      }
    }

    // 7. What still waits, and for whom. Locked packs leave the record: the next gc tries them again.
    const lockedPacks = new Set(locked.map((k) => k.slice(k.lastIndexOf('/') + 1)));
    const waiting = [...unreferenced].filter((id) => !deleted.has(id) && !lockedPacks.has(id));
    await writeRecord(repo, waiting, waiting.length ? aliveLeases : [], true);

    return {
      points: pointsAfter.length,
      packs: packs.size,
      packsReferenced: packs.size - unreferenced.size,
      packsUnreferenced: unreferenced.size,
      packsDeleted: deleted.size,
      bytesFreed,
      packsWaiting: waiting.length,
      waitingForLeases: waiting.length ? [...aliveLeases] : [],
      locked,
      staleLeasesRemoved,
      dryRun,
    };
  } finally {
    await lease.release().catch(() => undefined);
  }
}

async function writeRecord(repo: Repository, packs: Iterable<string>, waitForLeases: Iterable<string>, complete: boolean): Promise<void> {
  const rec: CondemnedRecord = {
    format: CONDEMNED_FORMAT,
    version: 1,
    updatedAt: new Date().toISOString(),
    complete,
    packs: [...packs].sort(),
    waitForLeases: [...waitForLeases].sort(),
  };
  await repo.target.put(CONDEMNED_KEY, Buffer.from(JSON.stringify(rec)));
}
