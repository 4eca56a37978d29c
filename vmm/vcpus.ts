// All the vCPUs of a VM: their KVM fds and kvm_run pages (created on the main thread), one worker
// thread each, and the operations that apply to all of them at once (run, pause at a consistent
// instant, resume, stop, save/load state).
import type { DeviceDescriptor } from './devices/descriptor.js';
import { KVM_GET_TSC_KHZ } from './kvm/ioctls.js';
import type { Kvm } from './kvm/system.js';
import type { VmFd } from './kvm/vm.js';
import type { GuestMemory } from './memory.js';
import * as libc from './sys/libc.js';
import * as ctl from './vcpu-control.js';
import { VmmError } from './kvm/errors.js';
import { VcpuFd } from './kvm/vcpu.js';
import { configureVcpu, type VcpuBoot } from './vcpu-setup.js';
import type { VcpuState } from './vcpu-state.js';
import { VcpuThread, type VcpuToMain } from './vcpu-thread.js';

export type MachineEvent = Extract<VcpuToMain, { type: 'event' }>;

export interface VcpuStartOptions {
  memory: GuestMemory;
  devices: DeviceDescriptor[];
  /** A device or vCPU raised a machine event (poweroff, reset, crash); called once per VM. */
  onEvent: (event: MachineEvent) => void;
}

interface VcpuResources {
  fd: number;
  runAddress: bigint;
}

/**
 * The boot vCPU (0) is put into its boot state here, on the thread creating the VM (as Firecracker does),
 * not by its worker: a boot's workers are still bootstrapping Node at this point (the boot vCPU's is
 * what the first KVM_RUN waits for, vcpu-prewarm.ts), and these ioctls (~1 ms) would otherwise come
 * after that. The other vCPUs configure themselves on their own threads: they have until the guest's
 * INIT/SIPI, and this thread's own work is on the path to the first KVM_RUN too. A restored vCPU loads
 * its saved state on its own thread, like every later state command.
 */
function configureFresh(fd: number, index: number, boot: VcpuBoot): VcpuBoot {
  if (index !== 0 || boot.kind === 'restore' || boot.kind === 'configured') return boot;
  try {
    configureVcpu(new VcpuFd(fd, index), boot);
  } catch (err) {
    throw new VmmError(`setting up vCPU ${index} failed: ${(err as Error).message}`);
  }
  return { kind: 'configured' };
}

export class VcpuSet {
  readonly control: SharedArrayBuffer;
  readonly events: SharedArrayBuffer;
  private readonly threads: VcpuThread[] = [];
  private readonly resources: VcpuResources[] = [];
  private runSize = 0;
  private eventSeen = false;

  private constructor(count: number) {
    this.control = ctl.allocateVcpuControl(count);
    this.events = ctl.allocateMachineEvents();
  }

  /**
   * KVM_CREATE_VCPU for each vCPU, its kvm_run mapping, and its worker thread, spawned now so that it
   * loads while the rest of the VM is built (worker start-up is most of a boot's VMM time).
   */
  static create(kvm: Kvm, vm: VmFd, count: number, boot: (index: number) => VcpuBoot): VcpuSet {
    const set = new VcpuSet(count);
    try {
      set.runSize = kvm.vcpuMmapSize();
      for (let i = 0; i < count; i++) {
        const fd = vm.createVcpu(i);
        const runAddress = libc.mmap(set.runSize, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd);
        set.resources.push({ fd, runAddress });
      }
      const msrIndices = kvm.msrIndexList();
      const xsaveSize = kvm.xsave2Size();
      set.resources.forEach((r, index) => set.threads.push(VcpuThread.spawn({
        index, vcpuFd: r.fd, runAddress: r.runAddress, runSize: set.runSize, control: set.control, events: set.events, msrIndices, xsaveSize,
        boot: configureFresh(r.fd, index, boot(index)),
      })));
    } catch (err) {
      void set.stop();
      throw err;
    }
    return set;
  }

  /** The guest's TSC frequency (KVM_GET_TSC_KHZ on vCPU 0), for the guest's command line. */
  tscKhz(): number {
    return libc.ioctlInt(this.resources[0]!.fd, KVM_GET_TSC_KHZ, 0, 'KVM_GET_TSC_KHZ');
  }

  /**
   * Hands every vCPU thread the VM's memory and devices (at once, before the first await); resolves once
   * every thread is ready: parked, or running if `resume` was called meanwhile (a boot requests the run
   * as soon as guest memory is loaded, and each vCPU enters KVM_RUN the moment its thread is ready).
   */
  async start(o: VcpuStartOptions): Promise<void> {
    const onEvent = (e: MachineEvent) => this.handleEvent(e, o.onEvent);
    const started = await Promise.allSettled(this.threads.map((t) => t.attach({ memory: o.memory.shared, devices: o.devices }, onEvent)));
    const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /** Raises a machine event from the main thread (a stop request over the control socket). */
  raiseEvent(kind: number, status: number): boolean {
    const events = new Int32Array(this.events);
    if (Atomics.compareExchange(events, ctl.EVENT, ctl.EVENT_NONE, kind) !== ctl.EVENT_NONE) return false;
    Atomics.store(events, ctl.EVENT_STATUS, status | 0);
    ctl.requestStopAll(new Int32Array(this.control));
    for (const t of this.threads) t.kick();
    return true;
  }

  get count(): number {
    return this.resources.length;
  }

  private handleEvent(e: MachineEvent, forward: (e: MachineEvent) => void): void {
    // Every vCPU has been asked to stop; kick the ones inside KVM_RUN.
    for (const t of this.threads) t.kick();
    if (this.eventSeen) return;
    this.eventSeen = true;
    forward(e);
  }

  resume(): void {
    for (const t of this.threads) t.resume();
  }

  /** All vCPUs out of KVM_RUN and parked: guest memory and device state are at a consistent instant. */
  async pause(): Promise<void> {
    await Promise.all(this.threads.map((t) => t.pause()));
  }

  /** Saves every vCPU's state (the set must be paused). */
  async saveStates(): Promise<VcpuState[]> {
    const results = await Promise.all(this.threads.map((t) => t.command({ op: 'save-state' })));
    return results.map((r, i) => {
      if (!r.ok) throw new Error(`saving vCPU ${i}: ${r.error}`);
      return r.state!;
    });
  }

  async loadStates(states: readonly VcpuState[]): Promise<void> {
    if (states.length !== this.threads.length) throw new Error(`state has ${states.length} vCPUs, the VM ${this.threads.length}`);
    const results = await Promise.all(this.threads.map((t, i) => t.command({ op: 'load-state', state: states[i]! })));
    results.forEach((r, i) => {
      if (!r.ok) throw new Error(`loading vCPU ${i}: ${r.error}`);
    });
  }

  thread(index: number): VcpuThread {
    return this.threads[index]!;
  }

  /** Stops every vCPU thread and releases the vCPU fds and kvm_run mappings. Idempotent. */
  async stop(): Promise<void> {
    ctl.requestStopAll(new Int32Array(this.control));
    await Promise.all(this.threads.map((t) => t.stop()));
    for (const t of this.threads) t.close();
    this.threads.length = 0;
    this.release();
  }

  private release(): void {
    for (const r of this.resources) {
      libc.munmap(r.runAddress, this.runSize);
      libc.close(r.fd);
    }
    this.resources.length = 0;
  }
}
