// `lifeboat vm restore`: resumes a VM from a snapshot (a full one, then any chain of diffs) in this
// process, console on the terminal, exactly where it was paused: no reboot.
import { parseArgs } from 'node:util';
import * as vmm from '../../../vmm/index.js';
import type { DiskSpec } from '../../../vmm/index.js';
import { readStateMeta } from '../../../vmm/snapshot/format.js';
import { hostRestoreLimits } from '../../../vmm/snapshot/host-limits.js';
import { checkRestorable, openSnapshotChain, SnapshotError } from '../../../vmm/snapshot/snapshot.js';
import { UsageError, UserError, type Command } from '../command.js';
import { asUserError, parseGranularity, runInForeground, startupTrace } from './vm-run.js';

const help = `Usage: lifeboat vm restore --from DIR [--from DIR ...] [options]

Resumes the VM saved in snapshot DIR (made by 'lifeboat snapshot create'). Give the full snapshot
first, then each diff in the order they were taken. Memory is mapped from the snapshot files and loads
on demand, so the guest runs again at once; the snapshot files are never modified.

Options:
  --from DIR            a snapshot directory (repeat: full first, then diffs)
  --disk PATH[,ro]      the VM's disks, in order (default: the disks recorded in the snapshot). A
                        snapshot taken --with-disks holds each disk as of its instant in DIR/disk-N.img;
                        copy those and give the copies here (the VM writes to its disks)
  --console-log FILE    also write the console output to FILE
  --api-sock PATH       control socket (status, pause, resume, stop, point.*, snapshot.*)
  --no-reboot           a guest reboot ends the VMM instead of booting the kernel again
  --track-granularity SIZE, --no-track-changes   as for 'lifeboat vm run'

Resuming memory over a disk that changed after the snapshot gives the guest an inconsistent disk:
use the snapshot's own disk copies, or the live disks only when nothing wrote them since.
See docs/snapshot-format.md.`;

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
        },
      }).values;
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    const trace = startupTrace();
    trace('command started');
    const dirs = values.from ?? [];
    if (dirs.length === 0) throw new UsageError('--from DIR is required (the full snapshot, then any diffs in order)');
    const trackChanges = values['no-track-changes'] ? false as const : { granularity: parseGranularity(values['track-granularity']) };
    // vCPU threads take longest to start: one started with the process (main.ts); start the others
    // before the snapshot is read (best effort: errors come later).
    try {
      const count = readStateMeta(dirs[0]!).vcpuCount;
      if (typeof count === 'number' && count >= 1) vmm.prewarmVcpuWorkers(count);
    } catch {
      // openSnapshotChain below reports what is wrong with the snapshot.
    }

    let chain;
    try {
      chain = openSnapshotChain(dirs);
    } catch (err) {
      throw new UserError((err as Error).message);
    }
    trace('snapshot opened (memory mapped, diffs applied)');
    try {
      const meta = chain.state.meta;
      const machine = meta.machine as { kernelPath?: string; cmdline?: string; vcpus?: number; memoryBytes?: number };
      if (typeof machine.kernelPath !== 'string' || typeof machine.cmdline !== 'string' || typeof machine.memoryBytes !== 'number') {
        throw new UserError(`${dirs[dirs.length - 1]}: the snapshot does not describe its machine (meta.machine); it cannot be restored by this Lifeboat`);
      }
      let disks: DiskSpec[];
      if (values.disk) {
        disks = values.disk.map(vmm.parseDiskSpec);
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
      checkRestorable(chain.state, hostRestoreLimits());
      trace('snapshot checked against this host');
      const restoreFrom = chain;
      chain = undefined; // runVm owns it now (the VM's memory is mapped from it)
      return await runInForeground(values, { config, restoreFrom, trackChanges, logDirtyPages: true, bootTimeoutMs: 0 });
    } catch (err) {
      if (err instanceof SnapshotError || (err as Error).name === 'SnapshotFormatError') throw new UserError((err as Error).message);
      throw asUserError(err);
    } finally {
      chain?.close();
    }
  },
};
