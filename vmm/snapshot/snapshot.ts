// Taking a VM snapshot with a short pause, and opening a snapshot chain to restore from.
//
// Taking one (full or diff):
//   1. collect the dirty pages (KVM log + VMM writes) and, with the VM still running, write them (a diff)
//      or every non-zero page (a full snapshot) into DIR.partial/memory.lbm, positionally;
//   2. while many pages were dirtied meanwhile, collect and write those again (at most PRECOPY_ROUNDS);
//   3. pause: collect and copy the last dirtied pages, save vCPU / VM / device state (each vCPU saves
//      its own, on its thread, in parallel; disk points too, for a resumable recovery point), resume,
//      then write the copied pages;
//   4. checksum, write state.lbs, fsync, rename DIR.partial -> DIR, fsync the parent;
//   5. only now commit the dirty pages as clean. Any failure aborts: the pages stay dirty, DIR.partial
//      is removed, and the error says why.
// The snapshot's instant is the pause in step 3: every page changed after its copy in steps 1-2 was
// dirtied again and rewritten in step 3.
import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import type { DirtyMemoryTracker } from '../tracking/dirty-memory.js';
import type { VcpuState } from '../vcpu-state.js';
import { fsyncPath, writeFileDurably } from '../tracking/durable-write.js';
import { decodeStateFile, encodeStateFile, MEMORY_FILE, RecordSet, SnapshotFormatError, STATE_FILE, type SnapshotKind } from './format.js';
import { ChainVerifier, mapMemoryChain, MemoryFileWriter, openMemoryFile, type MappedMemory, type MemoryFile, type MemorySource } from './memory-file.js';
import { beginPauseTimeline, endPauseTimeline, pauseStep, type PauseStep } from './pause-timing.js';
import { recordsToMeta, recordsToState, SNAPSHOT_FORMAT_NAME, stateToRecords, type SnapshotMeta, type VmSnapshotState } from './state-records.js';

/** Copy rounds while the VM runs, before the final paused one. */
export const PRECOPY_ROUNDS = 3;
/** Stop pre-copying once a round dirtied fewer pages than this (16 MiB): the pause copies the rest. */
export const PRECOPY_STOP_PAGES = 4096;

/** What the VMM gives the snapshot code. */
export interface SnapshotSource {
  memory: MemorySource;
  dirty: DirtyMemoryTracker;
  /**
   * False when KVM does not log this VM's dirty pages: then a full snapshot copies memory only while
   * paused (no pre-copy), and diffs are refused.
   */
  dirtyLogging?: boolean;
  pause(): Promise<void>;
  resume(): void;
  /**
   * Called while paused: every vCPU's state, the VM's, the devices', the machine config and the
   * disks (taking disk points here makes the snapshot a resumable recovery point).
   */
  captureState(): Promise<Omit<VmSnapshotState, 'meta' | 'vcpus'> & {
    /** The vCPU states, or a function that decodes them (called after the resume: decoding needs no pause). */
    vcpus: VcpuState[] | (() => VcpuState[]);
    meta: Pick<SnapshotMeta, 'memory' | 'devices' | 'disks' | 'machine' | 'refused'>;
  }>;
  /**
   * After the resume, before the snapshot is committed: write extra files into the (partial) snapshot
   * directory, e.g. the disks as of points taken while paused. May update `meta` (still unwritten).
   * `failed` is set when the snapshot is being abandoned (release what captureState took).
   */
  afterResume?(partialDir: string, meta: SnapshotMeta, failed?: Error): Promise<void>;
}

export interface SnapshotRequest {
  kind: SnapshotKind;
  out: string;
  /** Required for a diff: the snapshot it applies over (the last one this VM committed or resumed from). */
  parentId?: string;
}

export interface SnapshotResult {
  snapshotId: string;
  parentId: string;
  kind: SnapshotKind;
  dir: string;
  /** Time the vCPUs were paused. */
  pauseMs: number;
  /** Where the pause went, step by step (see pause-timing.ts). */
  pauseSteps: PauseStep[];
  totalMs: number;
  /** Pages in the snapshot's memory file, and the bytes its files occupy on disk. */
  memoryPages: number;
  diskBytes: number;
  precopyRounds: number;
  /** Pages copied while paused. */
  pausedPages: number;
  meta: SnapshotMeta;
}

export class SnapshotError extends Error {
  override name = 'SnapshotError';
}

function describeWriteError(err: unknown, dir: string): string {
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'ENOSPC') return `no space left on the device holding ${dir}`;
  if (e.code === 'EDQUOT') return `disk quota exceeded on ${dir}`;
  if (e.code === 'EACCES' || e.code === 'EPERM') return `permission denied writing ${dir}`;
  if (e.code === 'EROFS') return `${dir} is on a read-only filesystem`;
  return e.message ?? String(err);
}

function allocatedBytes(dir: string): number {
  let n = 0;
  for (const f of [STATE_FILE, MEMORY_FILE]) n += statSync(join(dir, f)).blocks * 512;
  return n;
}

export async function createSnapshot(source: SnapshotSource, req: SnapshotRequest): Promise<SnapshotResult> {
  const started = performance.now();
  const dir = resolve(req.out);
  if (existsSync(dir)) throw new SnapshotError(`${dir} already exists: choose a new directory for the snapshot`);
  if (!existsSync(dirname(dir))) throw new SnapshotError(`${dirname(dir)} does not exist`);
  if (req.kind === 'diff' && !req.parentId) throw new SnapshotError('a diff snapshot needs a base: take a full snapshot of this VM first');
  const precopy = source.dirtyLogging !== false;
  if (req.kind === 'diff' && !precopy) throw new SnapshotError('this VM runs without dirty-page logging: only full snapshots are possible');
  const partial = join(dirname(dir), `.${basename(dir)}.partial-${process.pid}`);
  rmSync(partial, { recursive: true, force: true });
  const snapshotId = randomUUID();
  const parentId = req.kind === 'diff' ? req.parentId! : '';

  let writer: MemoryFileWriter | undefined;
  const collected = source.dirty.collect();
  let paused = false;
  let pauseMs = 0;
  let pauseSteps: PauseStep[] = [];
  let rounds = 0;
  let pausedPages = 0;
  let afterResume: SnapshotSource['afterResume'];
  try {
    mkdirSync(partial);
    writer = new MemoryFileWriter(join(partial, MEMORY_FILE), source.memory, req.kind, snapshotId);
    if (precopy) {
      if (req.kind === 'full') writer.writeAllNonZero();
      else writer.writePages(collected);
      for (rounds = 1; rounds < PRECOPY_ROUNDS; rounds++) {
        const more = source.dirty.collectMore();
        writer.writePages(more);
        if (more.count() < PRECOPY_STOP_PAGES) break;
      }
    }
    // The guest is stopped from the pause request on (each vCPU stops as its kick lands), so that is
    // where its pause is counted from.
    const pauseStart = performance.now();
    beginPauseTimeline();
    await source.pause();
    paused = true;
    pauseStep('paused');
    // The last pages are copied out of guest memory now and written to the file after the resume.
    let writeLast = () => {};
    if (precopy) {
      const last = source.dirty.collectPaused();
      pausedPages = last.count();
      pauseStep('dirty log collected');
      writeLast = writer.capturePages(last);
      pauseStep(`last pages copied (${pausedPages})`);
    } else {
      source.dirty.collectMore();
      writer.writeAllNonZero();
      pausedPages = writer.bytesWritten / 4096;
    }
    const captured = await source.captureState();
    pauseStep('state captured');
    source.resume();
    paused = false;
    pauseMs = performance.now() - pauseStart;
    pauseStep('resume requested');
    pauseSteps = endPauseTimeline();
    writeLast();
    const vcpus = typeof captured.vcpus === 'function' ? captured.vcpus() : captured.vcpus;

    const meta: SnapshotMeta = {
      format: SNAPSHOT_FORMAT_NAME, kind: req.kind, snapshotId, parentId, createdAt: new Date().toISOString(),
      vcpuCount: vcpus.length, ...captured.meta,
    };
    if (source.afterResume) {
      afterResume = source.afterResume;
      await source.afterResume(partial, meta);
    }
    const header = writer.finish();
    const state: VmSnapshotState = { meta, vcpus, vm: captured.vm, devices: captured.devices };
    writeFileDurably(join(partial, STATE_FILE), [encodeStateFile({ kind: req.kind, snapshotId, parentId }, stateToRecords(state))]);
    fsyncPath(partial);
    renameSync(partial, dir);
    fsyncPath(dirname(dir));
    source.dirty.commit(collected);
    return {
      snapshotId, parentId, kind: req.kind, dir, pauseMs, pauseSteps, totalMs: performance.now() - started, memoryPages: header.presentPages,
      diskBytes: allocatedBytes(dir), precopyRounds: rounds, pausedPages, meta,
    };
  } catch (err) {
    endPauseTimeline();
    if (paused) source.resume();
    if (afterResume) await afterResume(partial, {} as SnapshotMeta, err as Error).catch(() => {});
    writer?.abort();
    source.dirty.abort(collected);
    rmSync(partial, { recursive: true, force: true });
    const why = err instanceof SnapshotError ? err.message : describeWriteError(err, dirname(dir));
    throw new SnapshotError(`snapshot not written: ${why}; no dirty page was lost, the next snapshot will include them`);
  }
}

/** One snapshot directory, checked (every state record's CRC, memory header and index) but memory not read. */
export interface OpenedSnapshot {
  dir: string;
  meta: SnapshotMeta;
  /** The VM state, decoded (only when asked for: a chain resumes its newest snapshot's). */
  state?: VmSnapshotState;
  memory: MemoryFile;
}

export function openSnapshot(dir: string, decodeState = true): OpenedSnapshot {
  const statePath = join(dir, STATE_FILE);
  if (!existsSync(statePath)) throw new SnapshotFormatError(`${dir} is not a snapshot (no ${STATE_FILE}); a snapshot that failed midway leaves nothing behind`);
  const { header, records } = decodeStateFile(readFileSync(statePath), statePath);
  const set = new RecordSet(records, statePath);
  const state = decodeState ? recordsToState(set) : undefined;
  const meta = state?.meta ?? recordsToMeta(set);
  if (meta.snapshotId !== header.snapshotId || meta.kind !== header.kind || meta.parentId !== header.parentId) {
    throw new SnapshotFormatError(`${statePath}: record 'meta' disagrees with the header`);
  }
  const memory = openMemoryFile(join(dir, MEMORY_FILE));
  if (memory.header.snapshotId !== header.snapshotId) {
    closeFd(memory.fd);
    throw new SnapshotFormatError(`${join(dir, MEMORY_FILE)} belongs to snapshot ${memory.header.snapshotId}, not ${header.snapshotId}`);
  }
  return { dir, meta, state, memory };
}

export interface RestoredChain {
  /** The newest snapshot's state (what the VM resumes as). */
  state: VmSnapshotState;
  memory: MappedMemory;
  /** The id a diff taken after resuming applies over. */
  lastSnapshotId: string;
  /**
   * Resolves once every page run of every memory file of the chain passed its CRC; rejects with a
   * SnapshotFormatError naming the file and pages of one that did not. Started by `verify()` or
   * `running()`; until it resolves, the restored VM must not serve a disk request.
   */
  readonly verified: Promise<void>;
  /** Starts the verification (once) and returns `verified`. */
  verify(): Promise<void>;
  /** The VMM calls this once the restored vCPUs run: starts the verification, then calls `onRunning`. */
  running(): void;
  close(): void;
}

export interface OpenChainOptions {
  /** Called by `running()`: the restored VM's vCPUs run (the warm-standby restore answers then). */
  onRunning?: () => void;
  /** Where to map guest memory of a given size (a prepared VM's reserved range), or undefined: anywhere. */
  memoryAt?: (size: number) => bigint | undefined;
}

/**
 * Opens `dirs` (a full snapshot, then diffs each over the one before) and maps guest memory as of the
 * last: the full memory file privately, each diff's pages mapped over it, everything loaded on touch.
 * The state files are checked completely here, the memory files' headers and indexes too; their pages
 * are checked by `verify()`, in the background, while the VM already runs.
 */
export function openSnapshotChain(dirs: readonly string[], options: OpenChainOptions = {}): RestoredChain {
  if (dirs.length === 0) throw new SnapshotFormatError('no snapshot given');
  const opened: OpenedSnapshot[] = [];
  try {
    // Every state file is checked; only the newest one's VM state is decoded (it is what resumes).
    dirs.forEach((d, i) => opened.push(openSnapshot(d, i === dirs.length - 1)));
    const [full, ...diffs] = opened;
    if (full!.meta.kind !== 'full') throw new SnapshotFormatError(`${full!.dir} is a diff snapshot: the chain must start with a full one (its base is ${full!.meta.parentId})`);
    for (let i = 0; i < diffs.length; i++) {
      const d = diffs[i]!;
      const prev = opened[i]!;
      if (d.meta.kind !== 'diff') throw new SnapshotFormatError(`${d.dir} is a full snapshot: only the first of a chain may be`);
      if (d.meta.parentId !== prev.meta.snapshotId) {
        throw new SnapshotFormatError(`${d.dir} applies over snapshot ${d.meta.parentId}, not over ${prev.dir} (${prev.meta.snapshotId}): give the chain in order`);
      }
    }
    const memory = mapMemoryChain(full!.memory, diffs.map((d) => d.memory), options.memoryAt);
    const last = opened[opened.length - 1]!;
    const state = last.state!;
    const verifier = new ChainVerifier(opened.map((o) => o.memory));
    // The diffs' files stay open for the verifier (their mappings hold their own references).
    let diffFdsOpen = true;
    const closeDiffFds = () => {
      if (!diffFdsOpen) return;
      diffFdsOpen = false;
      for (const o of opened) if (o.memory.fd !== memory.fd) closeFd(o.memory.fd);
    };
    let start!: () => void;
    const started = new Promise<void>((resolve) => (start = resolve));
    const verified = started.then(() => verifier.run()).finally(closeDiffFds);
    verified.catch(() => {}); // whoever restores decides what a failure means; an unobserved one is not a crash
    let closed = false;
    const verify = () => {
      start();
      return verified;
    };
    return {
      state, memory, lastSnapshotId: state.meta.snapshotId, verified, verify,
      running: () => {
        void verify();
        options.onRunning?.();
      },
      close: () => {
        if (closed) return;
        closed = true;
        verifier.cancel();
        start();
        memory.unmap();
        closeFd(memory.fd);
      },
    };
  } catch (err) {
    for (const o of opened) closeFd(o.memory.fd);
    throw err;
  }
}

function closeFd(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}

/**
 * Refuses a restore this host cannot do faithfully. PVM (and KVM without KVM_CAP_TSC_CONTROL) cannot
 * set a vCPU's TSC frequency: a guest timed by the saved frequency would run fast or slow elsewhere.
 */
export function checkRestorable(state: VmSnapshotState, host: { tscKhz: number; maxVcpus: number }): void {
  const saved = state.vcpus[0]?.tscKhz;
  if (saved !== undefined && saved !== host.tscKhz) {
    throw new SnapshotFormatError(`the snapshot was taken with a TSC of ${saved} kHz, this host's is ${host.tscKhz} kHz: restore it on a host with the same TSC frequency (this KVM cannot set it)`);
  }
  if (state.vcpus.length > host.maxVcpus) throw new SnapshotFormatError(`the snapshot has ${state.vcpus.length} vCPUs; this host allows ${host.maxVcpus}`);
}
