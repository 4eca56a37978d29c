// `lifeboat catalog rebuild --target T`: recomputes one target's recovery points and chunks in the
// catalog from the repository alone (after the catalog was lost, damaged, or missed a change).

import { UserError, type Command } from '../command.js';
import { CatalogError, rebuildCatalog, type Catalog } from '../../../catalog/index.js';
import { repositoryRebuildSource } from '../../../replication/repository/catalog-source.js';
import { CATALOG_HELP, CATALOG_OPTIONS, catalogLocation, openCatalogAt } from '../catalog-location.js';
import { catalogTarget } from './catalog-record.js';
import { KEY_HELP, TARGET_HELP, TARGET_OPTIONS, parse, printJson, targetSpec, withRepository } from './repository-cli.js';

const noPoints = {
  async *listPoints() {
    // A source without points: rebuilding from it clears a target's derived rows.
  },
};

export const catalogRebuild: Command = {
  path: ['catalog', 'rebuild'],
  summary: 'rebuild the catalog\'s points and chunks of one target from its repository',
  help: `Usage: lifeboat catalog rebuild --target T [--catalog FILE] [--json]

Reads every recovery point and pack index of the repository at T and replaces what the catalog knows
about that repository's points and chunks (reference counts included) with it, in one transaction: the
catalog then equals one kept up to date by every backup, forget and gc. Use it after the catalog was
lost or damaged, or when a command warned that the catalog was not updated. The repository is only
read. Jobs and events are local history and stay as they are. Points the catalog recorded for another
repository formerly at T are dropped. A damaged manifest stops the rebuild and changes nothing.

Options:
${TARGET_HELP}
${KEY_HELP}
${CATALOG_HELP}
  --json                print the counts as JSON`,
  async run(argv) {
    const { values } = parse(argv, { ...TARGET_OPTIONS, ...CATALOG_OPTIONS });
    const spec = targetSpec(values);
    const location = catalogLocation(values);
    // The catalog is opened first: a catalog that cannot be used is reported before the target is read.
    const catalog = openCatalogAt(location);
    try {
      const { target, summary, dropped } = await withRepository(values, async (repo) => {
        const target = catalogTarget(spec, repo.id);
        const job = catalog.startJob({ kind: 'catalog-rebuild', targetId: target.id });
        try {
          const summary = await rebuildCatalog(catalog, repositoryRebuildSource(repo, target));
          let dropped = 0;
          for (const other of catalog.listTargets()) {
            if (other.id === target.id || other.location !== target.location) continue;
            dropped += catalog.listPoints({ targetId: other.id }).length;
            await rebuildCatalog(catalog, { target: other, ...noPoints });
          }
          refreshVmDisks(catalog, target.id);
          catalog.finishJob(job, { state: 'succeeded' });
          catalog.addEvent({
            level: 'info',
            kind: 'catalog-rebuild.succeeded',
            message: `rebuilt the catalog of ${target.location}: ${summary.points} points, ${summary.chunks} chunks`,
            details: { ...summary, dropped },
            jobId: job,
          });
          return { target, summary, dropped };
        } catch (err) {
          const error = err instanceof Error ? err.message : String(err);
          try {
            catalog.finishJob(job, { state: 'failed', error });
            catalog.addEvent({ level: 'error', kind: 'catalog-rebuild.failed', message: error, jobId: job });
          } catch {
            // The rebuild's own error is the one to report.
          }
          if (err instanceof CatalogError) throw new UserError(err.message);
          throw err;
        }
      });
      if (values.json) {
        printJson({ catalog: location.path, target, points: summary.points, chunks: summary.chunks, droppedPoints: dropped });
      } else {
        process.stdout.write(
          `rebuilt catalog ${location.path} for ${target.location} (repository ${target.id}): ${summary.points} points, ${summary.chunks} chunks` +
            (dropped ? `; dropped ${dropped} points of another repository formerly there` : '') +
            '\n',
        );
      }
      return 0;
    } finally {
      catalog.close();
    }
  },
};

/** Each VM's current disks are those of its newest point on this target (as a backup records them). */
function refreshVmDisks(catalog: Catalog, targetId: string): void {
  const newest = new Map<string, string>();
  for (const p of catalog.listPoints({ targetId })) newest.set(p.vmId, p.id); // oldest first: the last wins
  catalog.transaction(() => {
    for (const [vmId, pointId] of newest) {
      for (const d of catalog.pointDisks(pointId)) catalog.upsertDisk({ vmId, name: d.name, sizeBytes: d.sizeBytes });
    }
  });
}
