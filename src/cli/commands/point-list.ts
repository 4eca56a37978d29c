// `lifeboat point list`: the open points of a running VM, and each disk's tracking state.
import type { Command } from '../command.js';
import { parseOptions, pointLine, printJson, requireSocket, vmmOp, type PointLine } from './point-common.js';

interface DiskStatus {
  disk: number;
  path: string;
  trusted: boolean;
  reason: string;
  granularity: number;
  trackingId: string;
}

export const pointList: Command = {
  path: ['point', 'list'],
  summary: 'list a running VM\'s open disk points and change-tracking state',
  help: `Usage: lifeboat point list --api-sock PATH [--json]

Prints, per tracked disk, its change-tracking state:
  disk N tracking trusted|untrusted granularity=BYTES id=TRACKING-ID PATH [reason: ...]
then one line per open point (see lifeboat point create). See docs/change-tracking.md.`,
  async run(argv) {
    const v = parseOptions(argv, { 'api-sock': { type: 'string' }, json: { type: 'boolean' } });
    const socket = requireSocket(v);
    const status = (await vmmOp(socket, { op: 'tracking.status' })).disks as DiskStatus[];
    const points = (await vmmOp(socket, { op: 'point.list' })).points as PointLine[];
    if (v.json) {
      printJson({ disks: status, points });
      return 0;
    }
    for (const d of status) {
      process.stdout.write(`disk ${d.disk} tracking ${d.trusted ? 'trusted' : 'untrusted'} granularity=${d.granularity} id=${d.trackingId} ${d.path}${d.trusted ? '' : ` (reason: ${d.reason})`}\n`);
    }
    for (const p of points) process.stdout.write(pointLine(p) + '\n');
    return 0;
  },
};
