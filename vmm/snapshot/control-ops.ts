// Control-socket operations for change tracking, disk points and VM snapshots (docs/change-tracking.md
// and docs/snapshot-format.md list them). The control socket hands every op it does not know to
// `handle`; `undefined` means "not one of ours".
import type { DiskTracking } from '../tracking/disk-tracking.js';
import type { SnapshotService } from './snapshot-service.js';

export type ControlOp = { op: string } & Record<string, unknown>;

/** Largest `point.read` answer (the data travels base64 in one JSON line). */
export const MAX_POINT_READ = 4 * 1024 * 1024;

export const RECOVERY_OPS = [
  'tracking.status', 'bitmap.freeze', 'bitmap.release', 'bitmap.merge', 'bitmap.export',
  'point.create', 'point.list', 'point.ranges', 'point.read', 'point.export', 'point.release', 'point.merge',
  'snapshot.create',
] as const;

export class ControlOpError extends Error {}

function int(req: ControlOp, field: string, fallback?: number): number {
  const v = req[field] ?? fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new ControlOpError(`${req.op}: '${field}' must be a non-negative integer`);
  return v;
}

function str(req: ControlOp, field: string): string {
  const v = req[field];
  if (typeof v !== 'string' || v === '') throw new ControlOpError(`${req.op}: '${field}' must be a non-empty string`);
  return v;
}

export interface RecoveryContext {
  disks?: DiskTracking;
  snapshots?: () => SnapshotService | undefined;
  /** Runs fn with every disk quiesced, so points on several disks share one instant. */
  quiesceAll?: <T>(fn: () => T) => Promise<T>;
}

export function recoveryControlOps(ctx: RecoveryContext): (req: ControlOp) => Promise<Record<string, unknown> | undefined> {
  const disks = (op: string): DiskTracking => {
    if (!ctx.disks) throw new ControlOpError(`${op}: this VM runs without change tracking (start it with --track-changes)`);
    return ctx.disks;
  };
  return async (req) => {
    switch (req.op) {
      case 'tracking.status':
        return { disks: disks(req.op).status() };
      case 'bitmap.freeze':
        return { ...disks(req.op).freeze(int(req, 'disk', 0)) };
      case 'bitmap.release':
        disks(req.op).release(int(req, 'disk', 0), int(req, 'generation'));
        return {};
      case 'bitmap.merge':
        disks(req.op).merge(int(req, 'disk', 0), int(req, 'generation'));
        return {};
      case 'bitmap.export': {
        const e = disks(req.op).exportBitmap(int(req, 'disk', 0), int(req, 'generation'), str(req, 'out'));
        return { generation: e.generation, trusted: e.trusted, baseEpoch: e.baseEpoch, epoch: e.epoch, bytes: e.bytes.length };
      }
      case 'point.create': {
        const d = disks(req.op);
        const list = req.disk === undefined ? undefined : [int(req, 'disk')];
        return { points: await d.createPoints(list, ctx.quiesceAll) };
      }
      case 'point.list':
        return { points: disks(req.op).listPoints() };
      case 'point.ranges': {
        const reader = disks(req.op).tracker(int(req, 'disk', 0)).pointReader(int(req, 'point'));
        try {
          return { ranges: reader.changedRanges() };
        } finally {
          reader.close();
        }
      }
      case 'point.read': {
        const length = int(req, 'length');
        if (length > MAX_POINT_READ) throw new ControlOpError(`point.read: at most ${MAX_POINT_READ} bytes per request (use point.export for more)`);
        const reader = disks(req.op).tracker(int(req, 'disk', 0)).pointReader(int(req, 'point'));
        try {
          return { data: reader.read(int(req, 'offset'), length).toString('base64') };
        } finally {
          reader.close();
        }
      }
      case 'point.export':
        return { bytes: disks(req.op).exportPoint(int(req, 'disk', 0), int(req, 'point'), str(req, 'out'), req.changedOnly === true) };
      case 'point.release':
        disks(req.op).release(int(req, 'disk', 0), int(req, 'point'));
        return {};
      case 'point.merge':
        disks(req.op).merge(int(req, 'disk', 0), int(req, 'point'));
        return {};
      case 'snapshot.create': {
        const service = ctx.snapshots?.();
        if (!service) throw new ControlOpError('snapshot.create: the VM is not running');
        const kind = req.kind;
        if (kind !== 'full' && kind !== 'diff') throw new ControlOpError(`snapshot.create: 'kind' must be "full" or "diff"`);
        const r = await service.create({ kind, out: str(req, 'out'), withDisks: req.withDisks === true });
        return {
          snapshotId: r.snapshotId, parentId: r.parentId, kind: r.kind, dir: r.dir, pauseMs: round(r.pauseMs), totalMs: round(r.totalMs),
          memoryPages: r.memoryPages, pausedPages: r.pausedPages, diskBytes: r.diskBytes, precopyRounds: r.precopyRounds, disks: r.disks,
          pauseSteps: r.pauseSteps,
        };
      }
      default:
        return undefined;
    }
  };
}

const round = (ms: number) => Math.round(ms * 100) / 100;
