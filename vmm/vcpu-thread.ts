// The main thread's handle on one vCPU worker: start, kick, pause, resume, stop, and state commands
// run on the worker while it is parked. Kicking = kvm_run.immediate_exit + pthread_kill(SIGUSR2).
import { MessageChannel, type MessagePort, type Worker } from 'node:worker_threads';
import type { DeviceDescriptor } from './devices/descriptor.js';
import type { KvmRegs } from './kvm/structs.js';
import type { SharedGuestMemory } from './memory.js';
import * as libc from './sys/libc.js';
import { VmmError } from './kvm/errors.js';
import * as ctl from './vcpu-control.js';
import type { VcpuBoot } from './vcpu-setup.js';
import type { VcpuState } from './vcpu-state.js';
import { spawnedAt, vcpuWorker, workerLoaded } from './vcpu-prewarm.js';

/**
 * The first message a vCPU worker waits for (it may have been spawned before the VM existed, see
 * vcpu-prewarm.ts), sent as soon as its vCPU exists: which vCPU, and its boot state. The worker
 * configures the vCPU at once, while the main thread goes on building the VM.
 */
export interface VcpuConfigure {
  type: 'configure';
  index: number;
  vcpuFd: number;
  runAddress: bigint;
  runSize: number;
  control: SharedArrayBuffer;
  events: SharedArrayBuffer;
  msrIndices: number[];
  xsaveSize: number;
  boot: VcpuBoot;
}

/** The second: the VM's memory and devices, and the command port. The worker then reports 'ready' and parks. */
export interface VcpuAttach {
  type: 'attach';
  memory: SharedGuestMemory;
  devices: DeviceDescriptor[];
  commands: MessagePort;
}

export type VcpuToMain =
  /** The worker's code (koffi included) has loaded; until then it must not be terminated (vcpu-prewarm.ts). */
  | { type: 'loaded' }
  /** `timing`: wall-clock ms (timeOrigin-based) when the worker's code had loaded, was configured, was ready. */
  | { type: 'ready'; vcpu: number; tid: bigint; timing: { loadedAt: number; configuredAt: number; attachedAt: number; readyAt: number; running: boolean } }
  /** Setting up the vCPU failed (before 'ready'). */
  | { type: 'failed'; vcpu: number; message: string }
  | { type: 'event'; vcpu: number; kind: number; status: number; message?: string };

export type VcpuCommand = { op: 'save-state' } | { op: 'load-state'; state: VcpuState } | { op: 'regs' };
export type VcpuCommandResult =
  | { ok: true; state?: VcpuState; regs?: KvmRegs }
  | { ok: false; error: string };

let sigusr2Installed = false;
const live = new Set<VcpuThread>();
/**
 * A handler must exist for SIGUSR2, or the kick would kill the process; libuv's is async-signal-safe.
 * And whatever ends the process (an uncaught error included), Node then waits for its worker threads:
 * a vCPU thread blocked in KVM_RUN would never notice, so every live vCPU is asked to stop and kicked.
 */
function installKickHandler(): void {
  if (sigusr2Installed) return;
  process.on('SIGUSR2', () => {});
  process.on('exit', () => {
    for (const t of live) t.forceStop();
  });
  sigusr2Installed = true;
}

const PAUSE_POLL_MS = 20;

/** Atomics.waitAsync exists in Node 20; the ES2023 lib this project compiles against does not declare it. */
const waitAsync = (Atomics as unknown as {
  waitAsync(a: Int32Array, index: number, value: number, timeoutMs: number): { async: boolean; value: Promise<string> | string };
}).waitAsync;

export class VcpuThread {
  private tid = 0n;
  private readonly control: Int32Array;
  private readonly run: Uint8Array;
  private readonly base: number;
  private commandChain: Promise<unknown> = Promise.resolve();
  private setUp = false;
  private readyWaiter: { resolve(): void; reject(err: Error): void } | undefined;
  private onEvent: (e: Extract<VcpuToMain, { type: 'event' }>) => void = () => {};
  private failure: Error | undefined;
  /** The thread has ended (waitFor stops waiting for a state it can no longer report). */
  private ended = false;
  readonly exited: Promise<void>;

  private readonly commands: MessagePort;
  private readonly commandsRemote: MessagePort;

  private constructor(readonly index: number, private readonly worker: Worker, data: VcpuConfigure) {
    const channel = new MessageChannel();
    this.commands = channel.port1;
    this.commandsRemote = channel.port2;
    this.control = new Int32Array(data.control);
    this.base = index * ctl.VCPU_CONTROL_WORDS;
    this.run = libc.view(data.runAddress, data.runSize);
    worker.on('message', (m: VcpuToMain) => {
      if (m.type === 'ready') {
        this.tid = m.tid;
        if (process.env.LIFEBOAT_VMM_TRACE === '1') {
          const t = (at: number) => (at - performance.timeOrigin).toFixed(1);
          const run = m.timing.running ? 'running' : 'parked';
          process.stderr.write(`lifeboat vm trace: vCPU ${index} code loaded t=${t(m.timing.loadedAt)} ms, configured t=${t(m.timing.configuredAt)} ms, ready t=${t(m.timing.readyAt)} ms (thread spawned t=${(spawnedAt(worker) ?? NaN).toFixed(1)} ms, attached t=${t(m.timing.attachedAt)} ms, then ${run})\n`);
        }
        this.readyWaiter?.resolve();
      } else if (m.type === 'failed') {
        this.failure = new VmmError(m.message);
        this.readyWaiter?.reject(this.failure);
      } else if (m.type === 'event') this.onEvent(m);
    });
    worker.on('error', (err) => {
      this.failure = err;
      this.readyWaiter?.reject(err);
      this.onEvent({ type: 'event', vcpu: index, kind: ctl.EVENT_CRASH, status: 1, message: `vCPU ${index} thread failed: ${err.message}` });
    });
    this.exited = new Promise((resolve) => worker.once('exit', () => {
      this.ended = true;
      this.readyWaiter?.reject(this.failure ?? new Error(`vCPU ${index} thread exited during setup`));
      resolve();
    }));
  }

  /**
   * Takes a (prewarmed or new) worker thread for this vCPU and sends it the vCPU and its boot state: it
   * loads and configures the vCPU while the caller builds the rest of the VM.
   */
  static spawn(configure: Omit<VcpuConfigure, 'type'>): VcpuThread {
    installKickHandler();
    const message: VcpuConfigure = { type: 'configure', ...configure };
    const worker = vcpuWorker();
    worker.postMessage(message);
    const thread = new VcpuThread(configure.index, worker, message);
    live.add(thread);
    void thread.exited.then(() => live.delete(thread));
    return thread;
  }

  /** Synchronous last resort (process exit): request STOP and kick, without waiting. */
  forceStop(): void {
    this.request(ctl.STOP);
    this.kick();
  }

  /**
   * Sends the VM's memory and devices; resolves once the vCPU is configured and attached: parked, or
   * already running if `resume` was called meanwhile (the worker then enters KVM_RUN without waiting
   * for this thread; its `tid`, for kicks, arrives with 'ready').
   */
  async attach(vm: Pick<VcpuAttach, 'memory' | 'devices'>, onEvent: (e: Extract<VcpuToMain, { type: 'event' }>) => void): Promise<void> {
    this.onEvent = onEvent;
    const ready = new Promise<void>((resolve, reject) => (this.readyWaiter = { resolve, reject }));
    if (this.failure) throw this.failure;
    const attach: VcpuAttach = { type: 'attach', ...vm, commands: this.commandsRemote };
    this.worker.postMessage(attach, [this.commandsRemote]);
    this.setUp = true;
    await ready;
  }

  get state(): number {
    return Atomics.load(this.control, this.base + ctl.STATE);
  }

  private request(value: number): void {
    ctl.requestVcpu(this.control, this.index, value);
  }

  /** Makes KVM_RUN return now (or at once if the vCPU is about to enter it). */
  kick(): void {
    this.run[1] = 1; // kvm_run.immediate_exit
    if (this.tid !== 0n && this.state !== ctl.STOPPED) {
      try {
        libc.pthreadKill(this.tid, libc.SIGUSR2);
      } catch {
        // The thread has just exited.
      }
    }
  }

  resume(): void {
    this.request(ctl.RUN);
  }

  /** Resolves when the vCPU is out of KVM_RUN and parked (or stopped). */
  async pause(): Promise<void> {
    if (Atomics.load(this.control, this.base + ctl.REQUEST) === ctl.RUN) this.request(ctl.PAUSE);
    await this.waitFor((s) => s === ctl.PARKED || s === ctl.STOPPED);
  }

  async stop(): Promise<void> {
    if (!this.setUp) {
      // Never attached (a boot step failed): nothing runs guest code, just end the thread (once its
      // code has loaded: terminating a thread while koffi's native module initialises aborts the process).
      await workerLoaded(this.worker);
      await this.worker.terminate();
      await this.exited;
      return;
    }
    // Attached: it may be in KVM_RUN already (a run requested before its 'ready' arrived, see attach),
    // so it is stopped, never terminated (waitFor ends too if the thread died on its own).
    this.request(ctl.STOP);
    await this.waitFor((s) => s === ctl.STOPPED);
    await this.exited;
  }

  private async waitFor(done: (state: number) => boolean): Promise<void> {
    const at = this.base + ctl.STATE;
    for (;;) {
      const s = Atomics.load(this.control, at);
      if (done(s) || this.ended) return;
      this.kick();
      const w = waitAsync(this.control, at, s, PAUSE_POLL_MS);
      if (w.async) await w.value;
    }
  }

  /** Runs a state command on the parked vCPU's own thread. */
  command(command: VcpuCommand): Promise<VcpuCommandResult> {
    const next = this.commandChain.then(() => new Promise<VcpuCommandResult>((resolve) => {
      if (this.state !== ctl.PARKED) {
        resolve({ ok: false, error: `vCPU ${this.index} is not paused` });
        return;
      }
      this.commands.once('message', (r: VcpuCommandResult) => resolve(r));
      this.commands.postMessage(command);
      ctl.wakeVcpu(this.control, this.index);
    }));
    this.commandChain = next.catch(() => {});
    return next;
  }

  close(): void {
    this.commands.close();
  }
}
