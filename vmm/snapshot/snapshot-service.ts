// VM snapshots of a running machine: the glue between the Machine (pause, state, devices), dirty
// memory tracking, disk points and the snapshot format. One per VMM process run (or restored VM).
import { readlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { VmFd, VmState } from '../kvm/vm.js';
import type { GuestMemory } from '../memory.js';
import * as libc from '../sys/libc.js';
import { DirtyMemoryTracker, type DirtyLogMode } from '../tracking/dirty-memory.js';
import type { DiskPoint, DiskTracking } from '../tracking/disk-tracking.js';
import type { VcpuState } from '../vcpu-state.js';
import { pauseStep } from './pause-timing.js';
import { createSnapshot, SnapshotError, type SnapshotResult } from './snapshot.js';
import type { SnapshotDisk, SnapshotMeta } from './state-records.js';
import type { SnapshotKind } from './format.js';

/** What the snapshot code needs from the running machine (vmm/machine.ts's Machine provides it). */
export interface SnapshotMachine {
  readonly memory: GuestMemory;
  readonly vm: VmFd;
  /** Set when KVM logs dirty pages in every slot (enableDirtyLogging before the slots were made). */
  readonly dirtyLogMode?: DirtyLogMode;
  /** `saveVcpus`: the vCPUs save their own state as they park (collected by saveState). */
  pause(options?: { saveVcpus?: boolean }): Promise<void>;
  resume(): void;
  /** `vcpus` as a function: the states are decoded when it is called (after the resume). */
  saveState(): Promise<{ vm: VmState; vcpus: VcpuState[] | (() => VcpuState[]) }>;
  saveDeviceStates?(): Record<string, Uint8Array>;
  describe?(): Record<string, unknown>;
  status(): { disks: Array<{ path: string; readOnly: boolean; sizeBytes: number }> };
}

export interface SnapshotOptions {
  kind: SnapshotKind;
  out: string;
  /** Take a disk point on every tracked disk at the paused instant and store each disk as of it. */
  withDisks?: boolean;
}

export interface ServiceSnapshotResult extends SnapshotResult {
  disks: SnapshotDisk[];
}

/** File name of disk `i`'s contents inside a snapshot taken with disks. */
export const snapshotDiskFile = (i: number): string => `disk-${i}.img`;

export class SnapshotService {
  private readonly dirty: DirtyMemoryTracker;
  private parentId: string | undefined;
  private busy = false;

  constructor(
    private readonly machine: SnapshotMachine,
    private readonly options: {
      disks?: DiskTracking;
      quiesceAll?: <T>(fn: () => T) => Promise<T>;
      restoredFrom?: string;
      /** A restored VM: its snapshot's verification. No snapshot is taken of memory that has not passed it. */
      verified?: Promise<void>;
    } = {},
  ) {
    this.dirty = new DirtyMemoryTracker(machine.dirtyLogMode ? machine.vm : null, machine.memory, machine.dirtyLogMode);
    // A restored VM's memory equals the snapshot it came from: a diff can apply over it right away.
    this.parentId = options.restoredFrom;
  }

  /** The snapshot the next diff applies over. */
  get lastSnapshotId(): string | undefined {
    return this.parentId;
  }

  async create(opts: SnapshotOptions): Promise<ServiceSnapshotResult> {
    if (this.busy) throw new SnapshotError('another snapshot of this VM is in progress');
    if (opts.withDisks && !this.options.disks?.trackedDisks().length) throw new SnapshotError('--with-disks needs change tracking on at least one writable disk');
    this.busy = true;
    const m = this.machine;
    let points: DiskPoint[] = [];
    const closePoints = () => {
      // The points served this snapshot only: their changes go back to the active generation, so the
      // next backup of the disks still sees them.
      for (const p of points) this.options.disks!.merge(p.disk, p.generation);
      points = [];
    };
    try {
      // A snapshot of a restored VM whose own snapshot turned out damaged would give the damage new, valid checksums.
      await this.options.verified?.catch((err: Error) => {
        throw new SnapshotError(`snapshot not written: this VM was restored from a snapshot that failed verification (${err.message})`);
      });
      // What does not change while the VM runs is gathered before the pause.
      const disksNow = m.status().disks;
      const machineInfo = m.describe?.() ?? {};
      const memoryInfo = { size: m.memory.size, regions: [...m.memory.regions] };
      const result = await createSnapshot({
        memory: { view: libc.view(m.memory.shared.hostAddress, m.memory.size), memfd: isMemfdBacked(m.memory) ? m.memory.shared.fd : undefined },
        dirty: this.dirty,
        dirtyLogging: m.dirtyLogMode !== undefined,
        pause: () => m.pause({ saveVcpus: true }),
        resume: () => m.resume(),
        captureState: async () => {
          const { vm, vcpus } = await m.saveState();
          const devices = m.saveDeviceStates?.() ?? {};
          pauseStep('device states');
          if (opts.withDisks) {
            points = await this.options.disks!.createPoints(undefined, this.options.quiesceAll);
            pauseStep('disk points');
          }
          const disks: SnapshotDisk[] = disksNow.map((d, index) => {
            const p = points.find((x) => x.disk === index);
            return { index, path: d.path, sizeBytes: d.sizeBytes, readOnly: d.readOnly, ...(p ? { point: { generation: p.generation, trackingId: p.trackingId, image: snapshotDiskFile(index) } } : {}) };
          });
          return {
            vm, vcpus, devices,
            meta: {
              memory: memoryInfo,
              devices: Object.keys(devices).sort(),
              disks,
              machine: machineInfo,
              refused: [],
            },
          };
        },
        afterResume: async (partialDir: string, _meta: SnapshotMeta, failed?: Error) => {
          if (!failed) for (const p of points) this.options.disks!.exportPoint(p.disk, p.generation, join(partialDir, snapshotDiskFile(p.disk)));
          closePoints();
        },
      }, { kind: opts.kind, out: opts.out, parentId: this.parentId });
      this.parentId = result.snapshotId;
      return { ...result, disks: result.meta.disks };
    } finally {
      closePoints();
      this.busy = false;
    }
  }
}

/** GuestMemory made by GuestMemory.create maps a memfd (its holes are never-written pages). */
function isMemfdBacked(memory: GuestMemory): boolean {
  try {
    return /^\/memfd:/.test(readlinkSync(`/proc/self/fd/${memory.shared.fd}`));
  } catch {
    return false;
  }
}
