// `lifeboat backup IMAGE... --target T`: a recovery point from disk image files.

import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import type { Command } from '../command.js';
import { UsageError, UserError } from '../command.js';
import { backup, earlyWorkerCount, type BackupDiskInput, type BackupResult } from '../../../replication/repository/backup.js';
import { decodeChangeBitmap, type ChangeBitmap } from '../../../replication/repository/change-bitmap.js';
import { ChunkWorkers, defaultWorkerCount } from '../../../replication/repository/worker-pool.js';
import { committedPointRecord } from '../../../replication/repository/catalog-source.js';
import { CONSISTENCY_KINDS, type Consistency } from '../../../replication/repository/manifest.js';
import { CATALOG_HELP, CATALOG_OPTIONS } from '../catalog-location.js';
import { CatalogRecorder, catalogTarget } from './catalog-record.js';
import {
  KEY_HELP,
  TARGET_HELP,
  TARGET_OPTIONS,
  ProgressLine,
  formatBytes,
  formatDuration,
  parse,
  printJson,
  targetSpec,
  wholeNumber,
  withRepository,
} from './repository-cli.js';

const help = `Usage: lifeboat backup IMAGE [IMAGE...] --target T [--vm NAME] [--disk NAME]... [--bitmap FILE]...
                       [--parent POINT | --full] [--consistency KIND] [--memory FILE] [--json]

Store a recovery point of a VM's disk images. Only chunks the repository does not hold yet are
uploaded. Without a parent point the backup is full. With one (by default the VM's latest point):
  --bitmap FILE  a change bitmap (docs/repository-format.md, "Change bitmap input") whose base epoch is
                 the parent's: only the chunks it names are read;
  otherwise      every chunk is read and hashed, and only unknown ones are uploaded.
An image exported with 'lifeboat point export --changed-only' holds only the changed blocks: it is
accepted only with its own bitmap when that bitmap is trusted against the parent; otherwise the backup
is refused (nothing stored) and the message says to export the whole point instead.
The point's manifest is written last: an interrupted backup leaves no point, and running it again
re-sends only what is missing. Once the point is stored it is recorded in the local catalog (see
'lifeboat catalog points'); if the catalog cannot be written the backup still succeeds, with a warning
naming the fix ('lifeboat catalog rebuild --target T').

Options:
${TARGET_HELP}
${KEY_HELP}
  --vm NAME             the VM the disks belong to (default: the first image's name)
  --disk NAME           name of each IMAGE in order (default: the image file names)
  --bitmap FILE         change bitmap for each IMAGE in order
  --parent POINT        incremental against this point (id, prefix or 'latest')
  --full                no parent: read every chunk (still stores each chunk only once)
  --consistency KIND    crash (default), paused, application or offline
  --memory FILE         also store this memory image (from a paused VM)
  --memory-bitmap FILE  change bitmap of the memory image
  --device-state FILE   the VMM's device state to keep with the memory image
  --label KEY=VALUE     a label stored in the point (repeatable)
  --workers N           threads hashing, compressing and sealing chunks (default: one per core)
${CATALOG_HELP}
  --json                print the result as JSON`;

/** LIFEBOAT_TRACE=1: milestones on stderr, in ms since the process started. */
function trace(milestone: string): void {
  if (process.env.LIFEBOAT_TRACE) process.stderr.write(`lifeboat backup: ${performance.now().toFixed(0).padStart(6)} ms since start: ${milestone}\n`);
}

function defaultName(path: string): string {
  const name = basename(path).replace(/\.(raw|img|qcow2|disk)$/i, '').replace(/[^A-Za-z0-9._-]/g, '_');
  return /^[A-Za-z0-9]/.test(name) ? name : `disk${name}`;
}

function readBitmap(path: string): ChangeBitmap {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (err) {
    throw new UserError(`cannot read change bitmap ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    return decodeChangeBitmap(buf, `change bitmap ${path}`);
  } catch (err) {
    throw new UserError((err as Error).message);
  }
}

export const backupCommand: Command = {
  path: ['backup'],
  summary: 'store a recovery point of disk images (full, or incremental by bitmap or hash)',
  help,
  async run(argv) {
    const { values, positionals } = parse(
      argv,
      {
        ...TARGET_OPTIONS,
        ...CATALOG_OPTIONS,
        workers: { type: 'string' },
        vm: { type: 'string' },
        disk: { type: 'string', multiple: true },
        bitmap: { type: 'string', multiple: true },
        parent: { type: 'string' },
        full: { type: 'boolean', default: false },
        consistency: { type: 'string' },
        memory: { type: 'string' },
        'memory-bitmap': { type: 'string' },
        'device-state': { type: 'string' },
        label: { type: 'string', multiple: true },
      },
      true,
    );
    if (positionals.length === 0) throw new UsageError('give at least one disk image file to back up');
    const names = values.disk ?? [];
    const bitmaps = values.bitmap ?? [];
    if (names.length > positionals.length) throw new UsageError(`${names.length} --disk names for ${positionals.length} images`);
    if (bitmaps.length > positionals.length) throw new UsageError(`${bitmaps.length} --bitmap files for ${positionals.length} images`);
    if (values.full && values.parent) throw new UsageError('--full and --parent exclude each other');
    const consistency = (values.consistency ?? 'crash') as Consistency;
    if (!CONSISTENCY_KINDS.includes(consistency)) throw new UsageError(`--consistency must be one of ${CONSISTENCY_KINDS.join(', ')}`);
    if ((values['memory-bitmap'] || values['device-state']) && !values.memory) throw new UsageError('--memory-bitmap and --device-state need --memory FILE');
    const labels: Record<string, string> = {};
    for (const l of values.label ?? []) {
      const eq = l.indexOf('=');
      if (eq <= 0) throw new UsageError(`--label '${l}' is not KEY=VALUE`);
      labels[l.slice(0, eq)] = l.slice(eq + 1);
    }
    const disks: BackupDiskInput[] = positionals.map((path, i) => ({
      path,
      name: names[i] ?? defaultName(path),
      bitmap: bitmaps[i] ? readBitmap(bitmaps[i]) : null,
    }));
    let deviceState: Buffer | undefined;
    if (values['device-state']) {
      try {
        deviceState = readFileSync(values['device-state']);
      } catch (err) {
        throw new UserError(`cannot read device state ${values['device-state']}: ${(err as NodeJS.ErrnoException).code}`);
      }
    }
    const vmName = values.vm ?? disks[0].name;
    const workers = wholeNumber('workers', values.workers);
    if (workers === 0) throw new UsageError('--workers must be at least 1');
    const memory = values.memory
      ? { memory: { path: values.memory, bitmap: values['memory-bitmap'] ? readBitmap(values['memory-bitmap']) : null, ...(deviceState ? { deviceState } : {}) } }
      : {};
    const spec = targetSpec(values);
    const progress = new ProgressLine('backup');
    const catalog = CatalogRecorder.open(values, 'backup');
    // The chunk workers load their code while the repository opens (scrypt of a passphrase, ~0.1 s).
    const workerPool = new ChunkWorkers(undefined, null, earlyWorkerCount(workers ?? defaultWorkerCount()));
    let result: BackupResult;
    try {
      // The index objects are read while the passphrase's key is derived: the backup loads the index right after.
      result = await withRepository(values, async (repo) => {
        trace('repository open');
        const target = catalogTarget(spec, repo.id);
        catalog.startJob({ kind: 'backup', target, vmId: vmName });
        trace('catalog job started');
        const point = await catalog.track(() =>
          backup(repo, {
            vm: { name: vmName },
            disks,
            ...memory,
            parent: values.full ? null : values.parent ?? 'auto',
            consistency,
            labels,
            onProgress: (p) => {
              catalog.setProgress(p.bytesDone, p.bytesTotal);
              progress.update(p.bytesDone, p.bytesTotal, `added ${formatBytes(p.bytesAdded)}`);
            },
            workerPool,
            ...(workers ? { workers } : {}),
          }),
        );
        // The manifest is durable: the point exists whatever happens to the catalog from here on.
        trace('point stored');
        catalog.setProgress(point.bytesRead, point.bytesRead);
        // The point's record and the job's end go into the catalog in one transaction.
        await catalog.update(
          async () => {
            const record = await committedPointRecord(repo, point.pointId, point.manifest, target.id, {
              maps: point.maps,
              index: point.index,
              parentMaps: point.parentMaps,
              parentManifest: point.parentManifest,
              changedCells: point.changedCells,
            });
            trace(`catalog record built${record.delta ? ` (delta of ${record.delta.changed.length} chunks)` : ''}`);
            return record;
          },
          (c, record) => {
            c.upsertTarget(target);
            c.upsertVm({ id: point.manifest.vm.id, name: point.manifest.vm.name, siteId: null });
            for (const d of point.manifest.disks) c.upsertDisk({ vmId: point.manifest.vm.id, name: d.name, sizeBytes: d.size });
            c.recordPoint(record);
          },
          {
            message: `point ${point.pointId} of VM ${vmName} stored on ${target.location}: read ${formatBytes(point.bytesRead)}, added ${formatBytes(point.bytesAdded)}`,
            details: {
              point: point.pointId,
              parent: point.parent,
              bytesRead: point.bytesRead,
              bytesAdded: point.bytesAdded,
              chunksNew: point.chunksNew,
              chunksReused: point.chunksReused,
              zeroChunks: point.zeroChunks,
              durationMs: point.durationMs,
            },
            vmId: point.manifest.vm.id,
          },
        );
        trace('point recorded in the catalog');
        return point;
      }, { prefetchIndex: true }).finally(() => progress.done());
    } catch (err) {
      catalog.close();
      throw err;
    } finally {
      await workerPool.close();
    }
    const stored = `point ${result.pointId} is stored`;

    if (values.json) {
      printJson({
        point: result.pointId,
        vm: vmName,
        parent: result.parent,
        bytesRead: result.bytesRead,
        bytesAdded: result.bytesAdded,
        chunksNew: result.chunksNew,
        chunksReused: result.chunksReused,
        zeroChunks: result.zeroChunks,
        packsWritten: result.packsWritten,
        durationMs: result.durationMs,
        images: result.images,
        catalog: { path: catalog.location.path, upToDate: catalog.upToDate, warning: catalog.warning(stored) },
      });
    } else {
      for (const i of result.images) if (i.note) process.stderr.write(`lifeboat backup: ${i.note}\n`);
      const modes = result.images.map((i) => `${i.label} ${i.mode}`).join(', ');
      process.stdout.write(
        `point ${result.pointId} of VM ${vmName}${result.parent ? ` (parent ${result.parent.slice(0, 8)})` : ''}: ${modes}; ` +
          `read ${formatBytes(result.bytesRead)}, added ${formatBytes(result.bytesAdded)}; chunks ${result.chunksNew} new, ` +
          `${result.chunksReused} reused, ${result.zeroChunks} zero; ${formatDuration(result.durationMs)}\n`,
      );
    }
    catalog.finish(stored);
    trace('done');
    return 0;
  },
};
