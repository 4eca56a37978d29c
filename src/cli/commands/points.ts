// `lifeboat points list|show`: the recovery points a repository holds.

import type { Command } from '../command.js';
import { UsageError } from '../command.js';
import type { PointManifest } from '../../../replication/repository/manifest.js';
import { KEY_HELP, TARGET_HELP, TARGET_OPTIONS, formatBytes, parse, printJson, withRepository } from './repository-cli.js';

function summary(id: string, m: PointManifest) {
  return {
    id,
    createdAt: m.createdAt,
    vm: m.vm,
    parent: m.parent,
    consistency: m.consistency,
    host: m.host,
    disks: m.disks.map((d) => ({ name: d.name, id: d.id, size: d.size, chunkSize: d.chunkSize, extents: d.extents, dataExtents: d.dataExtents, zeroExtents: d.zeroExtents, dataBytes: d.dataBytes })),
    memory: m.memory ? { size: m.memory.size, deviceState: Boolean(m.memory.deviceState) } : null,
    stats: m.stats,
    labels: m.labels,
  };
}

export const pointsList: Command = {
  path: ['points', 'list'],
  summary: 'list the recovery points in a repository',
  help: `Usage: lifeboat points list --target T [--vm NAME] [--json]

One line per committed point, oldest first: id, time, VM, disks, consistency, bytes added.
Damaged manifests are reported on stderr and make the exit status 1.

Options:
${TARGET_HELP}
${KEY_HELP}
  --vm NAME             only this VM's points
  --json                print the points as a JSON array`,
  async run(argv) {
    const { values } = parse(argv, { ...TARGET_OPTIONS, vm: { type: 'string' } });
    const damaged: string[] = [];
    const points = await withRepository(values, (repo) => repo.listPoints((id, err) => damaged.push(`point ${id}: ${err.message}`)));
    const shown = points.filter((p) => !values.vm || p.manifest.vm.name === values.vm);
    if (values.json) {
      printJson(shown.map((p) => summary(p.id, p.manifest)));
    } else {
      for (const p of shown) {
        const m = p.manifest;
        const disks = m.disks.map((d) => `${d.name}:${formatBytes(d.size)}`).join(',') + (m.memory ? `,memory:${formatBytes(m.memory.size)}` : '');
        process.stdout.write(
          `${p.id.slice(0, 8)}  ${m.createdAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z')}  ${m.vm.name}  ${disks}  ${m.consistency}  +${formatBytes(m.stats.bytesAdded)}${m.parent ? `  parent ${m.parent.slice(0, 8)}` : ''}\n`,
        );
      }
    }
    for (const d of damaged) process.stderr.write(`lifeboat points list: ${d}\n`);
    return damaged.length ? 1 : 0;
  },
};

export const pointsShow: Command = {
  path: ['points', 'show'],
  summary: 'show one recovery point\'s manifest',
  help: `Usage: lifeboat points show POINT --target T [--json]

POINT is an id, a unique prefix of 4 or more digits, or 'latest'.

Options:
${TARGET_HELP}
${KEY_HELP}
  --json                print the whole manifest as JSON`,
  async run(argv) {
    const { values, positionals } = parse(argv, TARGET_OPTIONS, true);
    if (positionals.length !== 1) throw new UsageError('give one point id');
    const { id, manifest } = await withRepository(values, async (repo) => {
      const id = await repo.resolvePoint(positionals[0]);
      return { id, manifest: await repo.readManifest(id) };
    });
    if (values.json) {
      printJson({ id, ...manifest });
      return 0;
    }
    const m = manifest;
    const lines = [
      `point       ${id}`,
      `created     ${m.createdAt} on ${m.host}`,
      `vm          ${m.vm.name} (${m.vm.id})`,
      `parent      ${m.parent ?? '-'}`,
      `consistency ${m.consistency}`,
      ...m.disks.map((d) => `disk ${d.name.padEnd(6)} ${formatBytes(d.size)}, ${formatBytes(d.dataBytes)} of data in ${d.dataExtents} extents + ${d.zeroExtents} of zeros (${formatBytes(d.chunkSize)} chunk grid)${d.trackingEpoch ? `, epoch ${d.trackingEpoch}` : ''}`),
      ...(m.memory ? [`memory      ${formatBytes(m.memory.size)}${m.memory.deviceState ? ' + device state' : ''}`] : []),
      `added       ${formatBytes(m.stats.bytesAdded)} (${m.stats.chunksNew} new chunks, ${m.stats.chunksReused} reused)`,
      ...Object.entries(m.labels).map(([k, v]) => `label       ${k}=${v}`),
    ];
    process.stdout.write(lines.join('\n') + '\n');
    return 0;
  },
};
