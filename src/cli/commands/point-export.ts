// `lifeboat point export`: writes a disk as of a point (and optionally its change bitmap) to files.
import { resolve } from 'node:path';
import { UsageError, type Command } from '../command.js';
import { parseOptions, printJson, requireSocket, vmmOp, wholeNumber } from './point-common.js';

export const pointExport: Command = {
  path: ['point', 'export'],
  summary: 'write a disk as it was at a point to an image file, and/or its change bitmap',
  help: `Usage: lifeboat point export --api-sock PATH --point GENERATION [--disk N]
                             [--out IMAGE [--changed-only]] [--bitmap FILE] [--json]

--out IMAGE      the disk as of the point, as a sparse raw image (zero blocks left as holes)
--changed-only   write only the point's changed blocks into IMAGE, in whole granules of at least 64 KiB
                 (the repository's default chunk size); the rest are holes, not the disk. It
                 needs --bitmap, which is then marked so that 'lifeboat backup' uses IMAGE only as an
                 incremental on top of the point the bitmap starts from, never as a whole disk.
                 Refused for an untrusted point (no change history: export it whole).
--bitmap FILE    the point's changed blocks in the change-bitmap format that
                 'lifeboat backup --bitmap FILE' reads (docs/repository-format.md)
The guest keeps running meanwhile. Files are written under a temporary name, fsynced, then renamed;
the image first, then the bitmap. --disk defaults to 0. See docs/change-tracking.md.`,
  async run(argv) {
    const v = parseOptions(argv, {
      'api-sock': { type: 'string' }, point: { type: 'string' }, disk: { type: 'string' }, out: { type: 'string' },
      'changed-only': { type: 'boolean' }, bitmap: { type: 'string' }, json: { type: 'boolean' },
    });
    const point = wholeNumber('point', v.point);
    if (point === undefined) throw new UsageError('--point GENERATION is required (see lifeboat point list)');
    if (!v.out && !v.bitmap) throw new UsageError('give --out IMAGE, --bitmap FILE, or both');
    if (v['changed-only'] && !v.out) throw new UsageError('--changed-only applies to --out');
    if (v['changed-only'] && !v.bitmap) {
      throw new UsageError('--changed-only needs --bitmap FILE: an image of only the changed blocks is usable only together with its bitmap');
    }
    const disk = wholeNumber('disk', v.disk) ?? 0;
    const socket = requireSocket(v);
    const result: Record<string, unknown> = { disk, point };
    // The image first: exporting it changed-only marks the point, so the bitmap written next says so.
    if (v.out) {
      const r = await vmmOp(socket, { op: 'point.export', disk, point, out: resolve(v.out), changedOnly: v['changed-only'] === true });
      result.image = { file: resolve(v.out), bytes: r.bytes, changedOnly: v['changed-only'] === true };
    }
    if (v.bitmap) {
      const r = await vmmOp(socket, { op: 'bitmap.export', disk, generation: point, out: resolve(v.bitmap) });
      result.bitmap = { file: resolve(v.bitmap), trusted: r.trusted, baseEpoch: r.baseEpoch, epoch: r.epoch };
    }
    if (v.json) printJson(result);
    else {
      const b = result.bitmap as { file: string; trusted: boolean; baseEpoch: string; epoch: string } | undefined;
      const i = result.image as { file: string; bytes: number; changedOnly: boolean } | undefined;
      if (i) process.stdout.write(`image ${i.file} (${i.bytes} bytes of data${i.changedOnly ? ', changed blocks only' : ''})\n`);
      if (b) {
        process.stdout.write(`bitmap ${b.file} ${b.trusted ? `changes from epoch ${b.baseEpoch} to ${b.epoch}` : `untrusted (the consumer must compare contents), epoch ${b.epoch}`}\n`);
      }
    }
    return 0;
  },
};
