// `lifeboat catalog jobs|events`: the local history the catalog keeps of what ran on this host.

import type { Command } from '../command.js';
import type { Catalog } from '../../../catalog/index.js';
import { CATALOG_HELP, CATALOG_OPTIONS, catalogLocation, openCatalogAt } from '../catalog-location.js';
import { formatBytes, formatDuration, parse, printJson, wholeNumber } from './repository-cli.js';

const DEFAULT_LIMIT = 20;

const HISTORY_OPTIONS = { ...CATALOG_OPTIONS, limit: { type: 'string' }, json: { type: 'boolean', default: false } } as const;

function withCatalog(argv: string[], show: (catalog: Catalog, limit: number, json: boolean) => void): number {
  const { values } = parse(argv, HISTORY_OPTIONS);
  const limit = wholeNumber('limit', values.limit) ?? DEFAULT_LIMIT;
  const catalog = openCatalogAt(catalogLocation(values), { mustExist: true });
  try {
    show(catalog, limit, values.json);
    return 0;
  } finally {
    catalog.close();
  }
}

const time = (iso: string) => iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');

export const catalogJobs: Command = {
  path: ['catalog', 'jobs'],
  summary: 'show recent jobs (backup, restore, verify, forget, gc, rebuild) from the local catalog',
  help: `Usage: lifeboat catalog jobs [--limit N] [--catalog FILE] [--json]

The most recent jobs this host ran against its targets, newest first: id, start time, kind, state,
duration, VM, target, bytes processed, and the error of a failed job. A job still shown as running
after its process ended was interrupted (killed, or the host went down). Jobs are local history: a
catalog rebuild does not change them, and they cannot be recovered from a target.

Options:
  --limit N             how many jobs (default ${DEFAULT_LIMIT}; 0 for all)
${CATALOG_HELP}
  --json                print the jobs as a JSON array`,
  async run(argv) {
    return withCatalog(argv, (catalog, limit, json) => {
      const jobs = catalog.listJobs(limit ? { limit } : {});
      const targets = new Map(catalog.listTargets().map((t) => [t.id, t.location]));
      if (json) {
        printJson(jobs.map((j) => ({ ...j, targetLocation: j.targetId ? targets.get(j.targetId) ?? null : null })));
        return;
      }
      for (const j of jobs) {
        const took = j.finishedAt ? formatDuration(Date.parse(j.finishedAt) - Date.parse(j.startedAt)) : '-';
        const bytes = j.progressTotal !== null || j.progressDone ? `  ${formatBytes(j.progressDone)}${j.progressTotal !== null && j.progressTotal !== j.progressDone ? `/${formatBytes(j.progressTotal)}` : ''}` : '';
        const where = j.targetId ? `  ${targets.get(j.targetId) ?? j.targetId}` : '';
        process.stdout.write(
          `#${j.id}  ${time(j.startedAt)}  ${j.kind}  ${j.state}  ${took}${j.vmId ? `  vm ${j.vmId}` : ''}${where}${bytes}${j.error ? `  error: ${j.error}` : ''}\n`,
        );
      }
    });
  },
};

export const catalogEvents: Command = {
  path: ['catalog', 'events'],
  summary: 'show recent events from the local catalog',
  help: `Usage: lifeboat catalog events [--limit N] [--catalog FILE] [--json]

The most recent events, oldest first (like a log): time, level, kind, message. Every job writes one
when it ends; a warning event marks a moment the catalog fell behind a target. Events are local history:
a catalog rebuild does not change them.

Options:
  --limit N             how many events (default ${DEFAULT_LIMIT}; 0 for all)
${CATALOG_HELP}
  --json                print the events as a JSON array`,
  async run(argv) {
    return withCatalog(argv, (catalog, limit, json) => {
      const all = catalog.listEvents();
      const events = limit ? all.slice(-limit) : all;
      if (json) {
        printJson(events);
        return;
      }
      for (const e of events) process.stdout.write(`${time(e.time)}  ${e.level.padEnd(5)}  ${e.kind}  ${e.message}\n`);
    });
  },
};
