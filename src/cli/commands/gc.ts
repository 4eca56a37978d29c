// `lifeboat gc`: deletes packs no point needs, safely alongside running backups.

import type { Command } from '../command.js';
import { catalogIndex } from '../../../replication/repository/catalog-source.js';
import { gc } from '../../../replication/repository/gc.js';
import { CATALOG_HELP, CATALOG_OPTIONS } from '../catalog-location.js';
import { CatalogRecorder, catalogTarget } from './catalog-record.js';
import { KEY_HELP, TARGET_HELP, TARGET_OPTIONS, formatBytes, parse, printJson, targetSpec, withRepository } from './repository-cli.js';

export const gcCommand: Command = {
  path: ['gc'],
  summary: 'delete packs that no recovery point needs (safe during backups)',
  help: `Usage: lifeboat gc --target T [--dry-run] [--json]

Marks every chunk that a committed point needs and deletes packs holding none of them. Safe while
backups, restores and verifies run: packs such an operation might still use are condemned but kept
until its lease ends, and deleted by a later gc. Only one gc runs at a time. Retention-locked objects
(S3 Object Lock, immutable files) are left alone and reported. The run is recorded in the local
catalog, which also forgets the chunks of the deleted packs.

Options:
${TARGET_HELP}
${KEY_HELP}
  --dry-run             report what would be deleted; change nothing
${CATALOG_HELP}
  --json                print the result as JSON`,
  async run(argv) {
    const { values } = parse(argv, { ...TARGET_OPTIONS, ...CATALOG_OPTIONS, 'dry-run': { type: 'boolean', default: false } });
    const spec = targetSpec(values);
    const dryRun = values['dry-run'];
    const catalog = dryRun ? null : CatalogRecorder.open(values, 'gc');
    let result;
    try {
      result = await withRepository(values, async (repo) => {
        if (!catalog) return gc(repo, { dryRun });
        const target = catalogTarget(spec, repo.id);
        catalog.startJob({ kind: 'gc', target });
        const r = await catalog.track(() => gc(repo, { dryRun }));
        // Chunks no point references that the index no longer holds (their packs are deleted): what a
        // rebuild would no longer find. A referenced chunk is never dropped (deleteUnreferencedChunks refuses).
        await catalog.update(
          () => catalogIndex(repo),
          (c, index) => {
            const gone = c.unreferencedChunks(target.id).filter((chunk) => !index.has(Buffer.from(chunk.id, 'hex')));
            c.deleteUnreferencedChunks(target.id, gone.map((chunk) => chunk.id));
          },
        );
        catalog.succeeded({
          message: `deleted ${r.packsDeleted} packs (${formatBytes(r.bytesFreed)}) from ${target.location}${r.packsWaiting ? `; ${r.packsWaiting} wait for running operations` : ''}`,
          details: { packsDeleted: r.packsDeleted, bytesFreed: r.bytesFreed, packsWaiting: r.packsWaiting, locked: r.locked.length },
        });
        return r;
      });
    } catch (err) {
      catalog?.close();
      throw err;
    }
    if (values.json) {
      printJson(result);
      catalog?.finish('gc is done');
      return 0;
    }
    const verb = result.dryRun ? 'would delete' : 'deleted';
    process.stdout.write(
      `${result.points} points use ${result.packsReferenced} of ${result.packs} packs; ${verb} ${result.dryRun ? result.packsUnreferenced - result.packsWaiting : result.packsDeleted} packs (${formatBytes(result.bytesFreed)})` +
        (result.packsWaiting ? `; ${result.packsWaiting} unused packs wait for ${result.waitingForLeases.length} running operations and go in a later gc` : '') +
        '\n',
    );
    if (result.locked.length) {
      process.stdout.write(`${result.locked.length} objects are retention-locked and were left alone: ${result.locked.slice(0, 5).join(', ')}${result.locked.length > 5 ? ', ...' : ''}\n`);
    }
    catalog?.finish('gc is done');
    return 0;
  },
};
