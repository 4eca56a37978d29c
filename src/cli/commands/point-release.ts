// `lifeboat point release`: the consumer of a point is done (or, with --merge, failed).
import { UsageError, type Command } from '../command.js';
import { parseOptions, printJson, requireSocket, vmmOp, wholeNumber } from './point-common.js';

export const pointRelease: Command = {
  path: ['point', 'release'],
  summary: 'release a disk point (its consumer is done), or merge it back with --merge (it failed)',
  help: `Usage: lifeboat point release --api-sock PATH --point GENERATION [--disk N] [--merge] [--json]

Without --merge: the point's consumer has safely stored it; its changed-block bits are dropped and its
copy-before-write side file deleted.
With --merge: the consumer failed; the point's bits go back into the disk's active change bitmap, so the
next point still contains those blocks. Nothing is lost either way. --disk defaults to 0.
See docs/change-tracking.md.`,
  async run(argv) {
    const v = parseOptions(argv, {
      'api-sock': { type: 'string' }, point: { type: 'string' }, disk: { type: 'string' }, merge: { type: 'boolean' }, json: { type: 'boolean' },
    });
    const point = wholeNumber('point', v.point);
    if (point === undefined) throw new UsageError('--point GENERATION is required (see lifeboat point list)');
    const disk = wholeNumber('disk', v.disk) ?? 0;
    await vmmOp(requireSocket(v), { op: v.merge ? 'point.merge' : 'point.release', disk, point });
    if (v.json) printJson({ disk, point, action: v.merge ? 'merged' : 'released' });
    else process.stdout.write(`point ${point} disk ${disk} ${v.merge ? 'merged back' : 'released'}\n`);
    return 0;
  },
};
