// `lifeboat point create`: a consistent point of a running VM's disks (copy-before-write keeps it exact).
import type { Command } from '../command.js';
import { parseOptions, pointLine, printJson, requireSocket, vmmOp, wholeNumber, type PointLine } from './point-common.js';

export const pointCreate: Command = {
  path: ['point', 'create'],
  summary: 'take a consistent point of a running VM\'s disks while the guest keeps running',
  help: `Usage: lifeboat point create --api-sock PATH [--disk N] [--json]

Freezes the change bitmap of every tracked disk (or only disk N) at one instant, with no disk request
half done, and from then on preserves the old contents of blocks the guest overwrites, so the point
reads back exactly as the disks were at that instant. Prints one line per disk:
  point GENERATION disk N open changed=BYTES preserved=BYTES trusted=yes|no created=TIME PATH
trusted=no means the change history was lost (VMM crash, image changed while stopped, first start):
compare contents instead of relying on the changed ranges.
Release the point when its consumer is done (lifeboat point release), or merge it back if it failed.
See docs/change-tracking.md.`,
  async run(argv) {
    const v = parseOptions(argv, { 'api-sock': { type: 'string' }, disk: { type: 'string' }, json: { type: 'boolean' } });
    const disk = wholeNumber('disk', v.disk);
    const r = await vmmOp(requireSocket(v), { op: 'point.create', ...(disk === undefined ? {} : { disk }) });
    const points = r.points as PointLine[];
    if (v.json) printJson({ points });
    else for (const p of points) process.stdout.write(pointLine(p) + '\n');
    return 0;
  },
};
