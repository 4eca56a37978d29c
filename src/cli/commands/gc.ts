// `lifeboat gc`: deletes packs no point needs, safely alongside running backups.

import type { Command } from '../command.js';
import { gc } from '../../../replication/repository/gc.js';
import { KEY_HELP, TARGET_HELP, TARGET_OPTIONS, formatBytes, parse, printJson, withRepository } from './repository-cli.js';

export const gcCommand: Command = {
  path: ['gc'],
  summary: 'delete packs that no recovery point needs (safe during backups)',
  help: `Usage: lifeboat gc --target T [--dry-run] [--json]

Marks every chunk that a committed point needs and deletes packs holding none of them. Safe while
backups, restores and verifies run: packs such an operation might still use are condemned but kept
until its lease ends, and deleted by a later gc. Only one gc runs at a time. Retention-locked objects
(S3 Object Lock, immutable files) are left alone and reported.

Options:
${TARGET_HELP}
${KEY_HELP}
  --dry-run             report what would be deleted; change nothing
  --json                print the result as JSON`,
  async run(argv) {
    const { values } = parse(argv, { ...TARGET_OPTIONS, 'dry-run': { type: 'boolean', default: false } });
    const result = await withRepository(values, (repo) => gc(repo, { dryRun: values['dry-run'] }));
    if (values.json) {
      printJson(result);
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
    return 0;
  },
};
