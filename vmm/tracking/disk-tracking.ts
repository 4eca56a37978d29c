// Change tracking for every writable disk of one VMM process: one BlockChangeTracker per disk, opened
// before the disks serve any request and closed (bitmaps saved) only at a clean shutdown. Disk points
// of several disks are taken at one instant when a quiesce of all disks is given.
import { closeSync, ftruncateSync, openSync, renameSync, rmSync, fsyncSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { ObserverDescriptor } from '../devices/virtio/observer.js';
import { exportGenerationBitmap, type ExportedBitmap } from './bitmap-export.js';
import { DEFAULT_GRANULARITY } from './block-bitmap.js';
import { BlockChangeTracker, type FrozenGeneration, type PointInfo } from './block-tracker.js';
import { observerDescriptor } from './copy-before-write.js';
import { fsyncPath, writeFully } from './durable-write.js';

export interface TrackedDiskSpec {
  path: string;
  readOnly: boolean;
}

export interface DiskTrackingStatus {
  disk: number;
  path: string;
  trusted: boolean;
  reason: string;
  trackingId: string;
  granularity: number;
  generations: ReturnType<BlockChangeTracker['generations']>;
}

export interface DiskPoint extends PointInfo {
  disk: number;
  path: string;
}

/** Runs `fn` with every disk quiesced (no request half done), e.g. VirtioBlockSet.quiesce('all', fn). */
export type QuiesceAll = <T>(fn: () => T) => Promise<T>;

const EXPORT_CHUNK = 1024 * 1024;
const ZERO_CHUNK = Buffer.alloc(EXPORT_CHUNK);

export class DiskTracking {
  private closed = false;

  private constructor(private readonly trackers: ReadonlyArray<BlockChangeTracker | undefined>, private readonly paths: readonly string[]) {}

  /**
   * Opens tracking for each writable disk (read-only disks cannot change and are not tracked). Each
   * tracking file is marked in use by the disk's write observer (`observer(i)`), in the virtio I/O worker
   * before it serves its first request: the VM never waits for those fsyncs. A VMM that ends before its
   * I/O worker started never wrote the images, so their saved tracking stays valid.
   */
  static open(disks: readonly TrackedDiskSpec[], options: { granularity?: number } = {}): DiskTracking {
    // If one fails, the others keep their saved state: nothing was written to any image.
    const granularity = options.granularity ?? DEFAULT_GRANULARITY;
    const opened = disks.map((d) => (d.readOnly ? undefined : BlockChangeTracker.open(d.path, { granularity, markInUse: 'by-writer' })));
    return new DiskTracking(opened, disks.map((d) => d.path));
  }

  get diskCount(): number {
    return this.trackers.length;
  }

  /** The write observer for disk `i` (undefined for an untracked disk). */
  observer(i: number): ObserverDescriptor | undefined {
    const t = this.trackers[i];
    return t ? observerDescriptor(t.observerConfig()) : undefined;
  }

  tracker(disk: number): BlockChangeTracker {
    if (disk < 0 || disk >= this.trackers.length || !Number.isInteger(disk)) throw new Error(`no disk ${disk} (this VM has ${this.trackers.length})`);
    const t = this.trackers[disk];
    if (!t) throw new Error(`disk ${disk} (${this.paths[disk]}) is read-only: it has no change tracking`);
    return t;
  }

  trackedDisks(): number[] {
    return this.trackers.flatMap((t, i) => (t ? [i] : []));
  }

  status(): DiskTrackingStatus[] {
    return this.trackedDisks().map((disk) => {
      const t = this.trackers[disk]!;
      return { disk, path: t.imagePath, trusted: t.trusted, reason: t.reason, trackingId: t.trackingId, granularity: t.granularity, generations: t.generations() };
    });
  }

  freeze(disk: number): FrozenGeneration {
    return this.tracker(disk).freeze();
  }

  /**
   * Takes a point on `disks` (default: every tracked disk) at one instant: with `quiesceAll`, inside a
   * quiesce of all disks; each tracker also drains its own in-flight writes.
   */
  async createPoints(disks: readonly number[] = this.trackedDisks(), quiesceAll?: QuiesceAll): Promise<DiskPoint[]> {
    const trackers = disks.map((d) => this.tracker(d));
    const take = () => {
      const made: DiskPoint[] = [];
      try {
        trackers.forEach((t, i) => made.push({ ...t.createPoint(), disk: disks[i]!, path: t.imagePath }));
      } catch (err) {
        for (const p of made) this.tracker(p.disk).mergePoint(p.generation);
        throw err;
      }
      return made;
    };
    return quiesceAll ? await quiesceAll(take) : take();
  }

  listPoints(): DiskPoint[] {
    return this.trackedDisks().flatMap((disk) => this.trackers[disk]!.listPoints().map((p) => ({ ...p, disk, path: this.paths[disk]! })));
  }

  /** The consumer of a point (or a plain frozen generation) is done: its bits are dropped. */
  release(disk: number, generation: number): void {
    this.tracker(disk).release(generation);
  }

  /** The consumer failed: the bits return to the active generation. */
  merge(disk: number, generation: number): void {
    this.tracker(disk).mergeBack(generation);
  }

  exportBitmap(disk: number, generation: number, file: string): ExportedBitmap {
    return exportGenerationBitmap(this.tracker(disk), generation, file);
  }

  /**
   * Writes the disk as it was at point `generation` into `file` (durably, via a temporary name):
   * the whole disk, or with `changedOnly` just the point's changed ranges (the rest left as holes).
   * All-zero chunks are left as holes either way. Returns the bytes written.
   *
   * A changed-only export refuses an untrusted generation (it has no delta to export) and writes whole
   * granules of at least MIN_CHANGED_ONLY_GRANULARITY around every change. The bitmap exported next
   * describes the image exported last: after a changed-only image it carries the CHANGED_ONLY flag at
   * that granularity, so a backup never reads such an image as a whole disk (export the image, then
   * its bitmap, as `lifeboat point export` does).
   */
  exportPoint(disk: number, generation: number, file: string, changedOnly = false): number {
    const t = this.tracker(disk);
    const reader = t.pointReader(generation);
    const tmp = join(dirname(file), `.${basename(file)}.tmp-${process.pid}`);
    let fd = -1;
    let written = 0;
    try {
      const granularity = changedOnly ? t.changedOnlyGranularityFor(generation) : undefined;
      const ranges = granularity ? t.changedRangesAt(generation, granularity) : [{ offset: 0, length: t.imageSize }];
      fd = openSync(tmp, 'w', 0o600);
      ftruncateSync(fd, t.imageSize);
      for (const r of ranges) {
        for (let pos = r.offset; pos < r.offset + r.length; pos += EXPORT_CHUNK) {
          const n = Math.min(EXPORT_CHUNK, r.offset + r.length - pos);
          const data = reader.read(pos, n);
          if (data.equals(ZERO_CHUNK.subarray(0, n))) continue;
          writeFully(fd, data, pos);
          written += n;
        }
      }
      fsyncSync(fd);
      closeSync(fd);
      fd = -1;
      renameSync(tmp, file);
      fsyncPath(dirname(file));
      t.noteImageExport(generation, granularity);
    } catch (err) {
      if (fd >= 0) {
        try {
          closeSync(fd);
        } catch {
          // the export's own error is the one to report
        }
      }
      rmSync(tmp, { force: true });
      throw err;
    } finally {
      reader.close();
    }
    return written;
  }

  /** Clean shutdown, after the disks were stopped and flushed: saves every disk's bitmap. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const errors: string[] = [];
    for (const t of this.trackers) {
      if (!t) continue;
      try {
        t.close();
      } catch (err) {
        errors.push(`${t.imagePath}: ${(err as Error).message}`);
      }
    }
    if (errors.length) throw new Error(`could not save change tracking (the next start will report it untrusted): ${errors.join('; ')}`);
  }
}
