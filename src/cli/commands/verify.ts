// `lifeboat verify`: checks that every point in a repository can be restored.

import type { Command } from '../command.js';
import { verify } from '../../../replication/repository/verify.js';
import { CATALOG_HELP, CATALOG_OPTIONS } from '../catalog-location.js';
import { CatalogRecorder, catalogTarget } from './catalog-record.js';
import { KEY_HELP, TARGET_HELP, TARGET_OPTIONS, ProgressLine, formatBytes, parse, printJson, targetSpec, withRepository } from './repository-cli.js';

export const verifyCommand: Command = {
  path: ['verify'],
  summary: 'check a repository: structure, and with --read-data every stored byte',
  help: `Usage: lifeboat verify --target T [--read-data] [--json]

Checks that every index object opens, every indexed pack exists with the size its index states, every
manifest opens and every chunk of every point is in a pack. With --read-data, also reads every pack:
each blob must authenticate, decompress and hash to its id, and each pack's tail must match its index.
Each problem is printed on one line naming the object and, for data, the point, disk and offset that
need it. Exit status 1 when there is any error (warnings alone leave it 0). The run and its verdict
are recorded in the local catalog's history.

Options:
${TARGET_HELP}
${KEY_HELP}
  --read-data           read and check every byte of every pack
${CATALOG_HELP}
  --json                print the result as JSON`,
  async run(argv) {
    const { values } = parse(argv, { ...TARGET_OPTIONS, ...CATALOG_OPTIONS, 'read-data': { type: 'boolean', default: false } });
    const spec = targetSpec(values);
    const progress = new ProgressLine('verify');
    const catalog = CatalogRecorder.open(values, 'verify');
    let result;
    try {
      result = await withRepository(values, async (repo) => {
        const target = catalogTarget(spec, repo.id);
        catalog.startJob({ kind: 'verify', target });
        const r = await catalog.track(() =>
          verify(repo, {
            readData: values['read-data'],
            onProblem: (p) => {
              if (values.json) return;
              progress.done();
              process.stderr.write(`lifeboat verify: ${p.severity}: ${p.message}\n`);
            },
            onProgress: (p) => progress.update(p.done, p.total, p.phase),
          }),
        );
        const summary = `${r.points} points, ${r.packs} packs, ${r.blobs} blobs on ${target.location}${values['read-data'] ? `, ${r.chunksChecked} blobs read` : ''}`;
        catalog.succeeded({
          message: r.errors ? `verify found ${r.errors} errors in ${summary}` : `verified ${summary}: no errors${r.warnings ? `, ${r.warnings} warnings` : ''}`,
          details: { readData: values['read-data'], points: r.points, packs: r.packs, blobs: r.blobs, errors: r.errors, warnings: r.warnings, problems: r.problems.slice(0, 20) },
          ...(r.errors ? { error: `${r.errors} errors` } : {}),
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
      const data = values['read-data'] ? `, ${result.chunksChecked} blobs (${formatBytes(result.bytesRead)}) read and checked` : '';
      const verdict = result.errors ? `${result.errors} errors` : 'no errors';
      process.stdout.write(
        `verified ${result.points} points, ${result.packs} packs, ${result.blobs} blobs${data}: ${verdict}${result.warnings ? `, ${result.warnings} warnings` : ''}\n`,
      );
    }
    catalog.finish();
    return result.errors ? 1 : 0;
  },
};
