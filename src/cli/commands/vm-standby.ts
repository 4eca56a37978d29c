// `lifeboat vm standby`: a VMM process started ahead of need, with no VM: Node, the VMM code and N vCPU
// worker threads loaded and waiting. A `restore` request on its control socket makes it restore a
// snapshot chain and run it; from then on it is exactly the VMM `lifeboat vm restore` would have been
// (console, control socket, exit status). What a DR site keeps ready for a failover in seconds.
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import type { ControlHandlers, ControlSocket } from '../../../vmm/index.js';
import { MAX_MEMORY_MIB } from '../../../vmm/layout.js';
import { MAX_PREWARM, prewarmedLoaded, prewarmVcpuWorkers } from '../../../vmm/vcpu-prewarm.js';
import { UsageError, type Command } from '../command.js';
import type { PreparedVm } from '../../../vmm/snapshot/prepared-vm.js';
import type { RestoreSpec } from './restore-vm.js';

// The VMM code loads in run(), after V8 is told to compile every function as it loads rather than at
// its first call: the standby's wait pays for that compilation instead of the failover.
type Vmm = typeof import('../../../vmm/index.js');
type RestoreVm = typeof import('./restore-vm.js');
type VmRun = typeof import('./vm-run.js');
type Prepared = typeof import('../../../vmm/snapshot/prepared-vm.js');
let vmm: Vmm;
let restoreVm: RestoreVm;
let vmRun: VmRun;
let prepared: Prepared;

async function loadVmmCode(): Promise<void> {
  setFlagsFromString('--no-lazy');
  [vmm, restoreVm, vmRun, prepared] = await Promise.all([
    import('../../../vmm/index.js'), import('./restore-vm.js'), import('./vm-run.js'), import('../../../vmm/snapshot/prepared-vm.js'),
  ]);
}


const help = `Usage: lifeboat vm standby --api-sock PATH [--vcpus N] [--mem MiB]

Starts a VMM with no VM yet: Node, the VMM code and N vCPU worker threads are loaded and wait. Then

  lifeboat vm restore --standby PATH --from DIR [--from DIR ...] [--disk PATH[,ro]]...

(or the control-socket request {"op":"restore","from":[...]}, docs/vmm.md) has it restore that
snapshot chain and run it, without the start-up of a new process. From then on this process is the
VM's VMM, as 'lifeboat vm restore' would be: its console is this terminal, PATH its control socket
(status, pause, resume, stop, point.*, snapshot.*), its exit status the guest's. One standby restores
one VM; a restore that fails before the VM runs leaves it waiting for another request.

Options:
  --api-sock PATH       control socket to listen on (required)
  --vcpus N             vCPU worker threads to start ahead (default 1, at most ${MAX_PREWARM}); a
                        snapshot with more vCPUs starts the others when it is restored
  --mem MiB             the memory size of the VM it will restore: its KVM VM (memory slots over a
                        reserved address range, irqchip, PIT) is made ahead too. A snapshot of
                        another size is restored without it
  --debug               stack traces for unexpected errors

While waiting: {"op":"status"} answers {"ok":true,"state":"standby",...}; {"op":"stop"} ends the
process (SIGTERM, SIGINT too). See docs/vmm.md.`;

type Phase = 'waiting' | 'restoring' | 'running' | 'ended';

/** A `restore` request's fields (docs/vmm.md) as a RestoreSpec; relative paths are this process's. */
function parseRestoreRequest(req: Record<string, unknown>): RestoreSpec {
  const strings = (field: string): string[] | undefined => {
    const v = req[field];
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || v.length === 0 || !v.every((s) => typeof s === 'string' && s !== '')) {
      throw new UsageError(`restore: "${field}" must be a non-empty array of paths`);
    }
    return v as string[];
  };
  const from = strings('from');
  if (!from) throw new UsageError('restore: "from" is required: the snapshot directories, the full one first, then the diffs in order');
  const disks = strings('disks');
  for (const field of ['noReboot', 'trackChanges'] as const) {
    if (req[field] !== undefined && typeof req[field] !== 'boolean') throw new UsageError(`restore: "${field}" must be true or false`);
  }
  if (req.consoleLog !== undefined && (typeof req.consoleLog !== 'string' || req.consoleLog === '')) throw new UsageError('restore: "consoleLog" must be a path');
  const granularity = req.trackGranularity;
  if (granularity !== undefined && typeof granularity !== 'number') throw new UsageError('restore: "trackGranularity" must be a number of bytes');
  return {
    from: from.map((d) => resolve(d)),
    disks,
    consoleLog: req.consoleLog as string | undefined,
    noReboot: req.noReboot === true,
    trackChanges: req.trackChanges === false ? false : { granularity: vmRun.parseGranularity(granularity === undefined ? undefined : String(granularity)) },
  };
}

export const vmStandby: Command = {
  path: ['vm', 'standby'],
  summary: 'start a VMM with no VM, waiting to restore a snapshot at once (warm standby for failover)',
  help,
  async run(argv) {
    let values;
    try {
      values = parseArgs({ args: argv, strict: true, allowPositionals: false, options: { 'api-sock': { type: 'string' }, vcpus: { type: 'string' }, mem: { type: 'string' } } }).values;
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    const path = values['api-sock'];
    if (!path) throw new UsageError('--api-sock PATH is required: the standby waits for its restore request there');
    const vcpusText = values.vcpus ?? '1';
    const vcpus = /^\d+$/.test(vcpusText.trim()) ? Number(vcpusText) : NaN;
    if (!(vcpus >= 1 && vcpus <= MAX_PREWARM)) throw new UsageError(`--vcpus must be a whole number from 1 to ${MAX_PREWARM}, got '${vcpusText}'`);
    let memoryBytes: number | undefined;
    if (values.mem !== undefined) {
      const mib = /^\d+$/.test(values.mem.trim()) ? Number(values.mem) : NaN;
      if (!(mib >= 1 && mib <= MAX_MEMORY_MIB)) throw new UsageError(`--mem must be a whole number of MiB from 1 to ${MAX_MEMORY_MIB}, got '${values.mem}'`);
      memoryBytes = mib * 2 ** 20;
    }
    await loadVmmCode();
    prewarmVcpuWorkers(vcpus);
    let hostLimits;
    try {
      const { hostRestoreLimits } = await import('../../../vmm/snapshot/host-limits.js');
      hostLimits = hostRestoreLimits(); // also: no KVM here fails now, not at the failover
    } catch (err) {
      throw vmRun.asUserError(err);
    }
    return await new Standby(path, vcpus, hostLimits, memoryBytes).serve();
  },
};

class Standby {
  private phase: Phase = 'waiting';
  private ready = false;
  private socket: ControlSocket | undefined;
  private restoredFrom = '';
  private finish!: (status: number) => void;
  private fail!: (err: unknown) => void;
  private readonly onTerm = () => void this.end(143);
  private readonly onInt = () => void this.end(130);
  /** The VM made ahead (with --mem), until a restore takes it or the standby ends. */
  private prepared: PreparedVm | undefined;

  constructor(
    private readonly path: string,
    private readonly vcpus: number,
    private readonly hostLimits: { tscKhz: number; maxVcpus: number },
    private readonly memoryBytes: number | undefined,
  ) {}

  private readonly handlers: ControlHandlers = {
    status: () => ({
      state: this.phase === 'waiting' ? 'standby' : 'booting', vcpus: this.vcpus, ready: this.ready, pid: process.pid,
      ...(this.memoryBytes !== undefined ? { memoryBytes: this.memoryBytes, vmPrepared: this.prepared?.usable === true } : {}),
    }),
    pause: () => Promise.reject(new Error('no VM yet: this is a standby VMM; send {"op":"restore","from":[...]} first')),
    resume: () => {
      throw new Error('no VM yet: this is a standby VMM; send {"op":"restore","from":[...]} first');
    },
    stop: (status) => void setImmediate(() => void this.end(status)), // once the answer is written
    other: async (request) => (request.op === 'restore' ? await this.restore(request) : undefined),
  };

  async serve(): Promise<number> {
    const done = new Promise<number>((resolve, reject) => {
      this.finish = resolve;
      this.fail = reject;
    });
    try {
      this.socket = await vmm.ControlSocket.listen(this.path, this.handlers);
    } catch (err) {
      throw vmRun.asUserError(err);
    }
    this.attachSignals();
    try {
      this.prepare();
    } catch (err) {
      await this.end(1);
      throw vmRun.asUserError(err);
    }
    void prewarmedLoaded().then(() => {
      this.ready = true;
      process.stderr.write(`lifeboat vm standby: ready on ${this.path} (${this.vcpus} vCPU worker${this.vcpus === 1 ? '' : 's'} loaded); waiting for a restore request\n`);
    });
    return await done;
  }

  /** A fresh VM made ahead (with --mem): at start, and after a restore that failed before running. */
  private prepare(): void {
    this.prepared?.close();
    this.prepared = undefined;
    if (this.memoryBytes !== undefined) this.prepared = prepared.PreparedVm.create(this.memoryBytes);
  }

  private attachSignals(): void {
    process.on('SIGTERM', this.onTerm);
    process.on('SIGINT', this.onInt);
  }

  private detachSignals(): void {
    process.off('SIGTERM', this.onTerm);
    process.off('SIGINT', this.onInt);
  }

  /** Ends the process with `status` or `error` (the standby's own stop, or the end of its VM). */
  private async end(status: number, error?: unknown): Promise<void> {
    if (this.phase === 'ended') return;
    this.phase = 'ended';
    this.detachSignals();
    this.prepared?.close(); // a standby stopped while waiting: its VM was never used
    this.prepared = undefined;
    await this.socket?.close();
    if (error !== undefined) this.fail(error);
    else this.finish(status);
  }

  private async restore(request: Record<string, unknown>): Promise<Record<string, unknown>> {
    if (this.phase === 'restoring') throw new Error('restore: a restore is already in progress in this standby VMM');
    if (this.phase !== 'waiting') throw new Error(this.alreadyRestored());
    const spec = parseRestoreRequest(request);
    const started = performance.now();
    this.phase = 'restoring';
    this.detachSignals(); // the VM's own handling of SIGTERM/SIGINT takes over (a clean stop, 143/130)
    let ran = false;
    let snapshot: { snapshotId: string; vcpus: number; memoryBytes: number } | undefined;
    let running!: () => void;
    const isRunning = new Promise<void>((r) => (running = r));
    const ended = restoreVm.restoreInForeground(spec, {
      control: this.socket,
      controlOps: async (req) => {
        if (req.op === 'restore') throw new Error(this.alreadyRestored());
        return undefined;
      },
      hostLimits: this.hostLimits,
      prepared: this.prepared,
      onOpened: (s) => (snapshot = s),
      onRunning: () => {
        ran = true;
        running();
      },
    });
    await Promise.race([isRunning, ended.catch(() => {})]);
    if (!ran) {
      // Nothing ran: back to waiting, with the workers the attempt used replaced.
      this.phase = 'waiting';
      this.socket!.setHandlers(this.handlers);
      this.attachSignals();
      prewarmVcpuWorkers(this.vcpus);
      try {
        this.prepare(); // the attempt may have used part of it
      } catch (err) {
        process.stderr.write(`lifeboat vm standby: ${(err as Error).message}; the next restore builds its VM then\n`);
      }
      await ended; // its error is this request's answer
      throw new Error('restore: the VM ended before it ran');
    }
    const restoreMs = Math.round((performance.now() - started) * 100) / 100;
    this.prepared = undefined; // the VM's now (runVm closed whatever it did not use)
    this.phase = 'running';
    this.restoredFrom = spec.from[spec.from.length - 1]!;
    ended.then((status) => this.end(status), (err) => this.end(1, err));
    return { state: 'running', snapshotId: snapshot?.snapshotId, vcpus: snapshot?.vcpus, memoryBytes: snapshot?.memoryBytes, restoreMs };
  }

  private alreadyRestored(): string {
    return `restore: this standby VMM already runs the VM restored from ${this.restoredFrom}; a standby restores one VM (start another 'lifeboat vm standby' for the next)`;
  }
}

