// `lifeboat forget`: removes points by id or by retention rules.

import type { Command } from '../command.js';
import { UsageError } from '../command.js';
import { forget, policyIsEmpty, type RetentionPolicy } from '../../../replication/repository/forget.js';
import { CATALOG_HELP, CATALOG_OPTIONS } from '../catalog-location.js';
import { CatalogRecorder, catalogTarget } from './catalog-record.js';
import { KEY_HELP, TARGET_HELP, TARGET_OPTIONS, parse, printJson, targetSpec, wholeNumber, withRepository } from './repository-cli.js';

export const forgetCommand: Command = {
  path: ['forget'],
  summary: 'remove recovery points by id or by keep-last/hourly/daily/weekly/monthly rules',
  help: `Usage: lifeboat forget --target T [POINT...] [--keep-last N] [--keep-hourly N] [--keep-daily N]
                       [--keep-weekly N] [--keep-monthly N] [--keep-yearly N] [--vm NAME] [--dry-run] [--json]

Removes the manifests of the given points, and/or of every point the rules do not keep. Rules apply
per VM, newest first: --keep-last N keeps the N newest; --keep-daily N keeps the newest point of each
of the N most recent days (UTC) that have one; likewise hourly, weekly (ISO weeks), monthly, yearly. A
point kept by any rule stays. Every point is complete on its own, so forgetting one never breaks
another. Space is reclaimed by 'lifeboat gc'. Points that are retention-locked on the target stay and
are reported. Removed points are also removed from the local catalog.

Options:
${TARGET_HELP}
${KEY_HELP}
  --vm NAME             apply the rules to this VM's points only
  --dry-run             show what would be removed; remove nothing
${CATALOG_HELP}
  --json                print the decisions as JSON`,
  async run(argv) {
    const { values, positionals } = parse(
      argv,
      {
        ...TARGET_OPTIONS,
        ...CATALOG_OPTIONS,
        'keep-last': { type: 'string' },
        'keep-hourly': { type: 'string' },
        'keep-daily': { type: 'string' },
        'keep-weekly': { type: 'string' },
        'keep-monthly': { type: 'string' },
        'keep-yearly': { type: 'string' },
        vm: { type: 'string' },
        'dry-run': { type: 'boolean', default: false },
      },
      true,
    );
    const policy: RetentionPolicy = {
      keepLast: wholeNumber('keep-last', values['keep-last']),
      keepHourly: wholeNumber('keep-hourly', values['keep-hourly']),
      keepDaily: wholeNumber('keep-daily', values['keep-daily']),
      keepWeekly: wholeNumber('keep-weekly', values['keep-weekly']),
      keepMonthly: wholeNumber('keep-monthly', values['keep-monthly']),
      keepYearly: wholeNumber('keep-yearly', values['keep-yearly']),
    };
    if (policyIsEmpty(policy) && positionals.length === 0) throw new UsageError('give point ids to forget or at least one --keep-* rule');
    const spec = targetSpec(values);
    const dryRun = values['dry-run'];
    // A dry run changes nothing, so it leaves the catalog alone too.
    const catalog = dryRun ? null : CatalogRecorder.open(values, 'forget');
    let result;
    try {
      result = await withRepository(values, async (repo) => {
        const ids: string[] = [];
        for (const p of positionals) ids.push(await repo.resolvePoint(p));
        const target = catalogTarget(spec, repo.id);
        catalog?.startJob({ kind: 'forget', target, vmId: values.vm ?? null });
        const run = () => forget(repo, { points: ids, policy, ...(values.vm ? { vm: values.vm } : {}), dryRun });
        const r = catalog ? await catalog.track(run) : await run();
        if (catalog) {
          await catalog.update(
            async () => r.removed,
            (c, removed) => {
              for (const id of removed) c.forgetPoint(id);
            },
          );
          catalog.succeeded({
            message: `removed ${r.removed.length} points from ${target.location}${r.locked.length ? `; ${r.locked.length} retention-locked points stay` : ''}`,
            details: { removed: r.removed, locked: r.locked },
          });
        }
        return r;
      });
    } catch (err) {
      catalog?.close();
      throw err;
    }
    if (values.json) {
      printJson({ ...result, dryRun: values['dry-run'] });
    } else {
      for (const d of result.decisions) {
        const action = d.keep ? 'keep  ' : values['dry-run'] ? 'would remove' : result.locked.includes(d.id) ? 'locked' : 'remove';
        process.stdout.write(`${action}  ${d.id.slice(0, 8)}  ${d.createdAt}  ${d.vm}${d.reasons.length ? `  (${d.reasons.join(', ')})` : ''}\n`);
      }
      const kept = result.decisions.filter((d) => d.keep).length;
      process.stdout.write(
        values['dry-run']
          ? `dry run: would remove ${result.decisions.length - kept} points, keep ${kept}\n`
          : `removed ${result.removed.length} points, kept ${kept}${result.locked.length ? `, ${result.locked.length} retention-locked` : ''}; run 'lifeboat gc' to reclaim space\n`,
      );
    }
    catalog?.finish(`${result.removed.length} points are removed from the repository`);
    return 0;
  },
};
