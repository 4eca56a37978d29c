// `lifeboat catalog points`: the recovery points the local catalog knows, without reading any target.

import { UserError, type Command } from '../command.js';
import { CATALOG_HELP, CATALOG_OPTIONS, catalogLocation, openCatalogAt } from '../catalog-location.js';
import { targetLocation } from './catalog-record.js';
import { formatBytes, parse, printJson } from './repository-cli.js';

export const catalogPoints: Command = {
  path: ['catalog', 'points'],
  summary: 'list recovery points from the local catalog (no target access, works offline)',
  help: `Usage: lifeboat catalog points [--target T] [--vm NAME] [--catalog FILE] [--json]

One line per recovery point the catalog knows, oldest first: id, time, VM, disks, consistency, bytes
added, target. Only the local catalog is read: fast, and it works while the targets are unreachable.
The catalog is an index of the repositories; 'lifeboat points list --target T' reads the repository
itself, and 'lifeboat catalog rebuild --target T' brings the catalog back in line with it.

Options:
  --target T            only points on this target (as given to backup: a directory, s3://..., ...)
  --vm NAME             only this VM's points (its name or id)
${CATALOG_HELP}
  --json                print the points as a JSON array`,
  async run(argv) {
    const { values } = parse(argv, { ...CATALOG_OPTIONS, target: { type: 'string' }, vm: { type: 'string' }, json: { type: 'boolean', default: false } });
    const location = catalogLocation(values);
    const catalog = openCatalogAt(location, { mustExist: true });
    try {
      const targets = new Map(catalog.listTargets().map((t) => [t.id, t]));
      let targetIds: Set<string> | null = null;
      if (values.target) {
        const wanted = targetLocation(values.target);
        targetIds = new Set([...targets.values()].filter((t) => t.location === wanted || t.id === values.target).map((t) => t.id));
        if (targetIds.size === 0) {
          throw new UserError(
            `target ${wanted} is not in catalog ${location.path}; back up to it, or run 'lifeboat catalog rebuild --target ${values.target}' to index the points it holds`,
          );
        }
      }
      const vms = new Map(catalog.listVms().map((v) => [v.id, v]));
      const points = catalog
        .listPoints()
        .filter((p) => !targetIds || targetIds.has(p.targetId))
        .filter((p) => !values.vm || p.vmId === values.vm || vms.get(p.vmId)?.name === values.vm)
        .map((p) => ({
          ...p,
          vm: { id: p.vmId, name: vms.get(p.vmId)?.name ?? p.vmId },
          target: { id: p.targetId, location: targets.get(p.targetId)?.location ?? p.targetId },
          disks: catalog.pointDisks(p.id),
        }));
      if (values.json) {
        printJson(
          points.map((p) => ({
            id: p.id,
            createdAt: p.createdAt,
            vm: p.vm,
            target: p.target,
            parent: p.parentId,
            consistency: p.consistency,
            state: p.state,
            hasMemory: p.hasMemory,
            logicalBytes: p.logicalBytes,
            storedBytes: p.storedBytes,
            disks: p.disks,
          })),
        );
        return 0;
      }
      for (const p of points) {
        const disks = p.disks.map((d) => `${d.name}:${formatBytes(d.sizeBytes)}`).join(',') + (p.hasMemory ? ',memory' : '');
        process.stdout.write(
          `${p.id.slice(0, 8)}  ${p.createdAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z')}  ${p.vm.name}  ${disks}  ${p.consistency}  +${formatBytes(p.storedBytes)}` +
            `${p.state === 'complete' ? '' : `  ${p.state}`}${p.parentId ? `  parent ${p.parentId.slice(0, 8)}` : ''}  ${p.target.location}\n`,
        );
      }
      return 0;
    } finally {
      catalog.close();
    }
  },
};
