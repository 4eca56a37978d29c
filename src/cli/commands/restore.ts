// `lifeboat restore POINT --to FILE`: a point's disk (or memory) image back into a file.

import type { Command } from '../command.js';
import { UsageError, UserError } from '../command.js';
import { writeFileSync } from 'node:fs';
import { readDeviceState, restore } from '../../../replication/repository/restore.js';
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

export const restoreCommand: Command = {
  path: ['restore'],
  summary: 'restore a recovery point\'s disk image into a file',
  help: `Usage: lifeboat restore POINT --target T --to FILE [--disk NAME | --memory [--device-state-to F]] [--force] [--json]

POINT is an id, a unique prefix of 4 or more digits, or 'latest' (with --vm, the VM's latest).
Chunks are fetched in parallel and every one is checked (its AES-GCM tag, which binds it to its id,
or in an unencrypted repository its hash) and decompressed (lz4 or brotli); all-zero chunks are left
as holes. The image is written beside FILE under a temporary name, fsynced, then renamed, so FILE is
either the whole image or untouched; the disk writes back while the restore runs. The restore is recorded in the local catalog's history.

Options:
${TARGET_HELP}
${KEY_HELP}
  --to FILE             the file to write
  --disk NAME           which disk, when the point has several
  --memory              restore the point's memory image instead
  --device-state-to F   with --memory: also write the saved VMM device state to F
  --vm NAME             with POINT 'latest': that VM's latest point
  --force               replace FILE if it exists
  --workers N           threads hashing, compressing and sealing chunks (default: one per core)
${CATALOG_HELP}
  --json                print the result as JSON`,
  async run(argv) {
    const { values, positionals } = parse(
      argv,
      {
        ...TARGET_OPTIONS,
        ...CATALOG_OPTIONS,
        workers: { type: 'string' },
        to: { type: 'string' },
        disk: { type: 'string' },
        memory: { type: 'boolean', default: false },
        vm: { type: 'string' },
        force: { type: 'boolean', default: false },
        'device-state-to': { type: 'string' },
      },
      true,
    );
    if (positionals.length !== 1) throw new UsageError('give one point id (see lifeboat points list)');
    if (!values.to) throw new UsageError('missing --to FILE');
    if (values.disk && values.memory) throw new UsageError('--disk and --memory exclude each other');
    if (values['device-state-to'] && !values.memory) throw new UsageError('--device-state-to goes with --memory');
    const workers = wholeNumber('workers', values.workers);
    if (workers === 0) throw new UsageError('--workers must be at least 1');
    const spec = targetSpec(values);
    const progress = new ProgressLine('restore');
    const catalog = CatalogRecorder.open(values, 'restore');
    let result;
    try {
      result = await withRepository(values, async (repo) => {
        const pointId = await repo.resolvePoint(positionals[0], values.vm);
        catalog.startJob({ kind: 'restore', target: catalogTarget(spec, repo.id), vmId: values.vm ?? null });
        const r = await catalog.track(async () => {
          const r = await restore(repo, {
            pointId,
            to: values.to!,
            ...(values.disk ? { disk: values.disk } : {}),
            memory: values.memory,
            force: values.force,
            onProgress: (p) => {
              catalog.setProgress(p.bytesDone, p.bytesTotal);
              progress.update(p.bytesDone, p.bytesTotal);
            },
            ...(workers ? { workers } : {}),
          });
          if (values['device-state-to']) {
            const state = await readDeviceState(repo, pointId);
            if (!state) throw new UserError(`point ${pointId} has no device state`);
            writeFileSync(values['device-state-to'], state);
          }
          return r;
        });
        catalog.setProgress(r.size, r.size);
        catalog.succeeded({
          message: `restored point ${r.pointId} ${r.image} to ${r.to}: ${formatBytes(r.size)}`,
          details: { point: r.pointId, image: r.image, to: r.to, size: r.size, bytesWritten: r.bytesWritten, bytesFetched: r.bytesFetched, durationMs: r.durationMs },
        });
        return r;
      }).finally(() => progress.done());
    } catch (err) {
      catalog.close();
      throw err;
    }
    if (values.json) {
      printJson(result);
    } else {
      process.stdout.write(
        `restored point ${result.pointId.slice(0, 8)} ${result.image} to ${result.to}: ${formatBytes(result.size)} ` +
          `(${formatBytes(result.bytesWritten)} data, zeros left as holes) in ${formatDuration(result.durationMs)}\n`,
      );
    }
    catalog.finish();
    return 0;
  },
};
