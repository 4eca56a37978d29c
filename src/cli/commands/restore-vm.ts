// `lifeboat vm restore`: resumes a VM from a snapshot (a full one, then any chain of diffs) in this
// process, console on the terminal, exactly where it was paused: no reboot. With `--standby PATH` it
// asks a waiting `lifeboat vm standby` process to do that instead (vm-standby.ts).
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import * as vmm from '../../../vmm/index.js';
import type { ControlSocket, DiskSpec, RunOptions } from '../../../vmm/index.js';
import { hostRestoreLimits } from '../../../vmm/snapshot/host-limits.js';
import type { PreparedVm } from '../../../vmm/snapshot/prepared-vm.js';
import { checkRestorable, openSnapshotChain, SnapshotError, type RestoredChain } from '../../../vmm/snapshot/snapshot.js';
import { UsageError, UserError, type Command } from '../command.js';
import { asUserError, parseGranularity, runInForeground, startupTrace } from './vm-run.js';

const help = `Usage: lifeboat vm restore --from DIR [--from DIR ...] [options]

Resumes the VM saved in snapshot DIR (made by 'lifeboat snapshot create'). Give the full snapshot
first, then each diff in the order they were taken. Memory is mapped from the snapshot files and loads
on demand, so the guest runs again at once; the snapshot files are never modified. Every page is
checked against its checksum while the guest already runs; its disks serve no request until all
passed, and a damaged snapshot stops the VM (exit 1, the file and pages named, no disk written).

Options:
  --from DIR            a snapshot directory (repeat: full first, then diffs)
  --disk PATH[,ro]      the VM's disks, in order (default: the disks recorded in the snapshot). A
                        snapshot taken --with-disks holds each disk as of its instant in DIR/disk-N.img;
                        copy those and give the copies here (the VM writes to its disks)
  --console-log FILE    also write the console output to FILE
  --api-sock PATH       control socket (status, pause, resume, stop, point.*, snapshot.*)
  --no-reboot           a guest reboot ends the VMM instead of booting the kernel again
  --track-granularity SIZE, --no-track-changes   as for 'lifeboat vm run'
  --standby PATH        do not run the VM here: have the standby VMM listening on PATH ('lifeboat vm
                        standby') restore it, and return once its vCPUs run. Its console and exit
                        status are the standby process's; PATH is then the VM's control socket

Resuming memory over a disk that changed after the snapshot gives the guest an inconsistent disk:
use the snapshot's own disk copies, or the live disks only when nothing wrote them since.
See docs/snapshot-format.md and docs/vmm.md.`;

/** What to restore and how to run it: the command line's options, or a standby's `restore` request. */
export interface RestoreSpec {
  /** Snapshot directories: the full one, then the diffs in order. */
  from: string[];
  /** `PATH[,ro]` for each of the VM's disks; default: those recorded in the snapshot. */
  disks?: string[];
  consoleLog?: string;
  apiSock?: string;
  noReboot?: boolean;
  trackChanges: { granularity: number } | false;
}

/** What a standby VMM adds to a restore (see vm-standby.ts). */
export interface RestoreHooks {
  /** Serve the VM's control protocol on this (already listening) socket. */
  control?: ControlSocket;
  controlOps?: RunOptions['controlOps'];
  /** Called once the restored vCPUs run. */
  onRunning?: () => void;
  /** This host's TSC frequency and vCPU limit, when already known. */
  hostLimits?: { tscKhz: number; maxVcpus: number };
  /** Called with the opened chain's newest snapshot, before the VM is built. */
  onOpened?: (snapshot: { snapshotId: string; vcpus: number; memoryBytes: number }) => void;
  /**
   * A VM made ahead: used when the snapshot's memory is the size it was made for. Whether used or not, it
   * is closed once the VM runs; if the restore fails before that it may be half used: close it.
   */
  prepared?: PreparedVm;
}

/**
 * Opens and checks the chain, checks it against this host and the disks, and runs the VM in this
 * process until it ends (console on the terminal). Returns its exit status; bad input throws a
 * UsageError or UserError before anything runs.
 */
export async function restoreInForeground(spec: RestoreSpec, hooks: RestoreHooks = {}): Promise<number> {
  const trace = startupTrace();
  trace('restore started');
  const dirs = spec.from;
  if (dirs.length === 0) throw new UsageError('--from DIR is required (the full snapshot, then any diffs in order)');
  let chain: RestoredChain | undefined;
  try {
    const prepared = hooks.prepared;
    chain = openSnapshotChain(dirs, { onRunning: hooks.onRunning, memoryAt: prepared && ((size) => prepared.claimMemory(size)) });
  } catch (err) {
    throw new UserError((err as Error).message);
  }
  // Normally started already, as many as the snapshot has (main.ts, or a standby's): any missing start now.
  vmm.prewarmVcpuWorkers(chain.state.vcpus.length);
  trace(`snapshot opened (memory mapped: ${chain.memory.mappedRanges} diff ranges mapped, ${chain.memory.copiedRanges} copied)`);
  try {
    const meta = chain.state.meta;
    const machine = meta.machine as { kernelPath?: string; cmdline?: string; vcpus?: number; memoryBytes?: number };
    if (typeof machine.kernelPath !== 'string' || typeof machine.cmdline !== 'string' || typeof machine.memoryBytes !== 'number') {
      throw new UserError(`${dirs[dirs.length - 1]}: the snapshot does not describe its machine (meta.machine); it cannot be restored by this Lifeboat`);
    }
    let disks: DiskSpec[];
    if (spec.disks) {
      disks = spec.disks.map(vmm.parseDiskSpec);
      if (disks.length !== meta.disks.length) throw new UsageError(`the snapshot's VM has ${meta.disks.length} disk(s); give --disk for each, in order`);
    } else {
      const withCopy = meta.disks.find((d) => d.point?.image);
      if (withCopy) {
        throw new UsageError(`this snapshot holds its disks as of its instant (${withCopy.point!.image}, ...): copy them and give --disk PATH for each (the VM writes to its disks)`);
      }
      disks = meta.disks.map((d) => ({ path: d.path, readOnly: d.readOnly }));
    }
    const config = vmm.validateConfig({
      kernelPath: machine.kernelPath, cmdline: machine.cmdline, vcpus: chain.state.vcpus.length, memoryMib: machine.memoryBytes / 2 ** 20, disks,
    });
    if (config.memoryBytes !== chain.memory.size) throw new UserError(`the snapshot holds ${chain.memory.size} bytes of memory, its machine says ${config.memoryBytes}`);
    for (const [i, d] of config.disks.entries()) {
      if (d.sizeBytes !== meta.disks[i]!.sizeBytes) throw new UserError(`disk ${i} (${d.path}) is ${d.sizeBytes} bytes; the snapshot's was ${meta.disks[i]!.sizeBytes}`);
    }
    checkRestorable(chain.state, hooks.hostLimits ?? hostRestoreLimits());
    trace('snapshot checked against this host');
    hooks.onOpened?.({ snapshotId: chain.lastSnapshotId, vcpus: config.vcpus, memoryBytes: config.memoryBytes });
    const restoreFrom = chain;
    chain = undefined; // runVm owns it now (the VM's memory is mapped from it)
    return await runInForeground(
      { 'console-log': spec.consoleLog, 'api-sock': spec.apiSock, 'no-reboot': spec.noReboot },
      { config, restoreFrom, trackChanges: spec.trackChanges, logDirtyPages: true, bootTimeoutMs: 0, control: hooks.control, controlOps: hooks.controlOps, prepared: hooks.prepared },
    );
  } catch (err) {
    if (err instanceof SnapshotError || (err as Error).name === 'SnapshotFormatError') throw new UserError((err as Error).message);
    throw asUserError(err);
  } finally {
    chain?.close();
  }
}

/** How long `--standby` waits for the standby VMM's answer (it answers once the vCPUs run). */
const STANDBY_ANSWER_TIMEOUT_MS = 120_000;

/** `--standby PATH`: the `restore` request (docs/vmm.md), with every path made absolute for the other process. */
async function restoreOnStandby(socket: string, spec: RestoreSpec): Promise<number> {
  const request: Record<string, unknown> = {
    op: 'restore',
    from: spec.from.map((d) => resolve(d)),
    ...(spec.disks ? { disks: spec.disks.map(absoluteDiskSpec) } : {}),
    ...(spec.consoleLog !== undefined ? { consoleLog: resolve(spec.consoleLog) } : {}),
    ...(spec.noReboot ? { noReboot: true } : {}),
    ...(spec.trackChanges ? { trackGranularity: spec.trackChanges.granularity } : { trackChanges: false }),
  };
  let response;
  try {
    response = await vmm.controlRequest(socket, request as { op: string }, STANDBY_ANSWER_TIMEOUT_MS);
  } catch (err) {
    throw new UserError(`${(err as Error).message} (start one with 'lifeboat vm standby --api-sock ${socket}')`);
  }
  if (!response.ok) throw new UserError(response.error);
  process.stdout.write(`restored snapshot ${String(response.snapshotId)} in the standby VMM on ${socket}: running (${String(response.vcpus)} vCPUs, ${String(response.restoreMs)} ms); its control socket is ${socket}\n`);
  return 0;
}

function absoluteDiskSpec(spec: string): string {
  const ro = /,ro$/.test(spec);
  return resolve(ro ? spec.slice(0, -3) : spec) + (ro ? ',ro' : '');
}

export const vmRestore: Command = {
  path: ['vm', 'restore'],
  summary: 'resume a VM from a snapshot (full, plus any chain of diffs) without rebooting it',
  help,
  async run(argv) {
    let values;
    try {
      values = parseArgs({
        args: argv,
        strict: true,
        allowPositionals: false,
        options: {
          from: { type: 'string', multiple: true },
          disk: { type: 'string', multiple: true },
          'console-log': { type: 'string' },
          'api-sock': { type: 'string' },
          'no-reboot': { type: 'boolean' },
          'track-granularity': { type: 'string' },
          'no-track-changes': { type: 'boolean' },
          standby: { type: 'string' },
        },
      }).values;
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    startupTrace()('command started');
    const spec: RestoreSpec = {
      from: values.from ?? [],
      disks: values.disk,
      consoleLog: values['console-log'],
      apiSock: values['api-sock'],
      noReboot: values['no-reboot'] === true,
      trackChanges: values['no-track-changes'] ? false : { granularity: parseGranularity(values['track-granularity']) },
    };
    if (spec.from.length === 0) throw new UsageError('--from DIR is required (the full snapshot, then any diffs in order)');
    if (values.standby !== undefined) {
      if (spec.apiSock !== undefined) throw new UsageError('--api-sock cannot be given with --standby: the standby\'s socket becomes the VM\'s control socket');
      return await restoreOnStandby(values.standby, spec);
    }
    return await restoreInForeground(spec);
  },
};
