// One VM, booted by a recipe that reads top to bottom (Firecracker's build_microvm_for_boot):
// check the host -> open KVM -> create the VM (TSS, irqchip, PIT) -> guest memory and slots -> vCPUs ->
// kernel, initrd, command line, zero page -> ACPI -> devices -> vCPU threads -> run.
// Each step is a named function of the module that owns it. `runVm` adds what a VMM process needs
// around one boot: reboots, the boot timeout and the control socket.
import { ACPI_POWER_OFF_VALUE, buildAcpiTables, type AcpiTestFaultInjection } from './acpi/tables.js';
import type { GuestWrite } from './boot/guest-write.js';
import { buildZeroPage } from './boot/zero-page.js';
import { pageTableWrites } from './cpu/page-tables.js';
import { descriptorTableWrites } from './cpu/gdt.js';
import type { GuestConsole } from './console.js';
import { ControlSocket, type ControlHandlers } from './control-socket.js';
import { platformDescriptors, type DeviceDescriptor } from './devices/descriptor.js';
import { allocateSerialState, Serial } from './devices/serial.js';
import { DiskImageError, VirtioBlockSet } from './devices/virtio/index.js';
import { classifyKernel, probeHost, refuseLinuxOnPvm } from './host-probe.js';
import { VmmError } from './kvm/errors.js';
import { Kvm } from './kvm/system.js';
import type { VmFd, VmState } from './kvm/vm.js';
import { COM1_GSI, HIGH_MEMORY_START } from './layout.js';
import { GuestMemory } from './memory.js';
import * as libc from './sys/libc.js';
import * as ctl from './vcpu-control.js';
import type { VcpuState } from './vcpu-state.js';
import { VcpuSet, type MachineEvent } from './vcpus.js';
import type { DirtyLogMode } from './tracking/dirty-memory.js';
import { DiskTracking } from './tracking/disk-tracking.js';
import { recoveryControlOps } from './snapshot/control-ops.js';
import type { PreparedKvm, PreparedVm } from './snapshot/prepared-vm.js';
import type { RestoredChain } from './snapshot/snapshot.js';
import { SnapshotService } from './snapshot/snapshot-service.js';
import { pauseDetail, pauseDetailsLater, pauseStep, VM_STATE_STEP } from './snapshot/pause-timing.js';
import { VcpuSave } from './snapshot/vcpu-save.js';
import { checkVcpuLimit, type ValidatedConfig } from './vm-config.js';
import { createVmPlatform } from './vm-platform.js';

/** How a boot of the machine ended. */
export type MachineExit =
  | { kind: 'poweroff'; status: number }
  | { kind: 'reset' }
  | { kind: 'crash'; message: string };

export interface MachineStatus {
  state: 'running' | 'paused' | 'stopping';
  vcpus: number;
  memoryBytes: number;
  disks: Array<{ path: string; readOnly: boolean; sizeBytes: number }>;
  uptimeSeconds: number;
}

export interface BootOptions {
  console: GuestConsole;
  /** Ask KVM to log dirty pages in every memory slot (for change tracking and snapshots). */
  logDirtyPages?: boolean;
  /** Device warnings (guest or I/O errors on a disk); default: one line on stderr each. */
  onWarning?: (message: string) => void;
  /** Change tracking of the disks: its write observers are installed before the first request. */
  tracking?: DiskTracking;
  /** Resume this snapshot (memory, VM, vCPU and device state) instead of booting the kernel. */
  restore?: RestoredChain;
  /** /dev/kvm opened and checked for this config already (bootMachine closes it from then on). */
  kvm?: Kvm;
  /** A VM made ahead with `restore`'s memory slots, irqchip and PIT (from PreparedVm.take; bootMachine closes it). */
  prepared?: Omit<PreparedKvm, 'kvm'>;
  /** Test-only: deliberately broken ACPI tables, for the guest's negative tests. Never set by the CLI. */
  acpiTestFaults?: AcpiTestFaultInjection;
}

/** LIFEBOAT_VMM_TRACE=1 prints how long each boot step took (to stderr). */
const TRACE = process.env.LIFEBOAT_VMM_TRACE === '1';

function tracer(): (step: string) => void {
  if (!TRACE) return () => {};
  let last = performance.now();
  return (step) => {
    const now = performance.now();
    process.stderr.write(`lifeboat vm trace: ${step} ${(now - last).toFixed(1)} ms (t=${now.toFixed(1)} ms)\n`);
    last = now;
  };
}

/** Boots `config` and returns the running machine. Nothing is left open if a step fails. */
export async function bootMachine(config: ValidatedConfig, options: BootOptions): Promise<Machine> {
  const cleanup: Array<() => void | Promise<void>> = [];
  const trace = tracer();
  try {
    const given = options.kvm;
    const kvm = given ?? openCheckedKvm(config);
    cleanup.push(() => kvm.close());
    if (!given) trace('check host, open KVM');

    const prepared = options.prepared;
    const vm = prepared?.vm ?? kvm.createVm();
    cleanup.push(() => vm.close());
    const restore = options.restore;
    const memory = restore ? GuestMemory.adopt(restore.memory, () => restore.close()) : createGuestMemory(config.memoryBytes);
    cleanup.push(() => memory.close());
    let dirtyLogMode: DirtyLogMode | undefined;
    if (prepared) {
      // Slots (over the range `restore`'s memory is mapped in), irqchip, PIT and TSS exist already.
      dirtyLogMode = prepared.dirtyLogMode;
      trace('prepared VM');
    } else {
      dirtyLogMode = createVmPlatform(vm, memory.regions, memory.shared.hostAddress, options.logDirtyPages === true);
      trace('guest memory, create VM');
    }

    // A restored vCPU gets its CPUID from the snapshot: KVM_GET_SUPPORTED_CPUID (0.5-4 ms here) only for a boot.
    const supportedCpuid = restore ? undefined : kvm.supportedCpuid();
    const vcpus = VcpuSet.create(kvm, vm, config.vcpus, (i) => (restore ? { kind: 'restore', state: restore.state.vcpus[i]! } : { kind: 'linux64', supportedCpuid: supportedCpuid!, vcpuCount: config.vcpus }));
    cleanup.push(() => vcpus.stop());
    trace('create vCPUs');

    const virtio = openVirtioDisks(config, memory, vm, options.tracking);
    if (virtio) cleanup.push(() => virtio.stop());
    if (virtio && restore) virtio.loadStates(config.disks.map((_, i) => savedDevice(restore.state.devices, virtioStateName(i))));
    trace('open disks');

    const platform = createPlatformDevices(vm, options.console, restore?.state.devices[SERIAL_STATE_NAME]);
    cleanup.push(() => platform.close());
    const devices = [...platform.descriptors, ...(virtio?.descriptors() ?? [])];

    // The vCPU threads get the devices now and build their buses while this thread fills guest memory;
    // each enters KVM_RUN as soon as it is ready once the run is requested below (no round trip through
    // this thread: the boot vCPU need not wait for the others, an AP waits for the guest's SIPI anyway).
    const machine = new Machine(config, kvm, vm, memory, vcpus, platform, virtio, options.onWarning ?? ((m) => process.stderr.write(`lifeboat vm: ${m}\n`)), dirtyLogMode);
    const started = vcpus.start({ memory, devices, onEvent: (e) => machine.onVcpuEvent(e) });
    started.catch(() => {}); // awaited below
    trace('devices');

    if (!restore) {
      const cmdline = guestCmdline(config, vcpus.tscKhz());
      loadKernel(memory, config, cmdline);
      trace('load kernel');
      writeGuest(memory, buildAcpiTables({ vcpus: config.vcpus, virtioDevices: virtio?.acpiDevices() ?? [], testFaultInjection: options.acpiTestFaults }).writes);
      trace('ACPI');
    } else {
      // Memory already holds the running system; PIT, PIC/IOAPIC and kvmclock come back first.
      vm.loadState(restore.state.vm);
      trace('VM state');
    }

    vcpus.resume();
    trace('vCPUs released');
    await started;
    trace('vCPUs running');
    options.console.attachSerial(platform.serial);
    // The guest need not wait for the disks' I/O worker: its queue notifications wait in the ioeventfds
    // until the worker polls them. A booting guest gets it at its first notification (its start-up would
    // otherwise share the CPU with the guest's boot); a restored one at once, since requests the guest
    // made available before the snapshot was taken are served without a new notification.
    const serving = restore ? virtio?.start() : virtio?.startOnFirstNotification();
    serving?.then(() => trace(virtio?.ioWorkerStarted ? 'virtio I/O worker serving' : 'virtio I/O worker never needed'), (err: Error) => machine.fail(err.message));
    if (restore) holdUntilVerified(machine, restore, trace);
    return machine;
  } catch (err) {
    for (const undo of cleanup.reverse()) {
      try {
        await undo();
      } catch {
        // Already failing: the first error is the one to report.
      }
    }
    throw err;
  }
}

/**
 * A restored VM runs while its snapshot's pages are checked against their CRCs (in the background:
 * restore does not wait for it), but its disks serve no request until every page passed: the I/O
 * worker starts quiesced. A damaged snapshot stops the VM with the file and pages named, before
 * anything it computed could reach a disk.
 */
function holdUntilVerified(machine: Machine, restore: RestoredChain, trace: (step: string) => void): void {
  restore.running();
  const hold = restore.verified.then(() => trace('snapshot verified'), (err: Error) => {
    const waiting = machine.virtio?.waitingRequests() ?? 0;
    const disks = machine.virtio ? `; the VM was stopped before its disks served a request (${waiting} held, none written)` : '; the VM was stopped';
    machine.fail(`${err.message}${disks}`);
    return new Promise<never>(() => {}); // the disks stay held until the VM is torn down
  });
  void machine.virtio?.quiesce('all', () => hold).catch(() => {
    // The I/O worker did not start (its own error ends the VM): nothing is served either way.
  });
}

/**
 * Refuses what this host cannot run (stock Linux on PVM, no KVM, too many vCPUs) before anything is
 * opened for writing, and returns the open KVM device.
 */
function openCheckedKvm(config: ValidatedConfig): Kvm {
  const refusal = refuseLinuxOnPvm(config.kernel, probeHost());
  if (refusal) throw new VmmError(refusal);
  return checkedKvm(Kvm.open(), config);
}

/** `kvm`, once this config's vCPU count is within its limit (closed, and the error thrown, if not). */
function checkedKvm(kvm: Kvm, config: ValidatedConfig): Kvm {
  try {
    checkVcpuLimit(config.vcpus, kvm.maxVcpus());
    return kvm;
  } catch (err) {
    kvm.close();
    throw err;
  }
}

function createGuestMemory(bytes: number): GuestMemory {
  try {
    return GuestMemory.create(bytes);
  } catch (err) {
    throw new VmmError(`cannot allocate ${bytes / 2 ** 20} MiB of guest memory: ${(err as Error).message}`);
  }
}

/** The configured command line, plus the TSC frequency for the Lifeboat guest (it cannot calibrate). */
function guestCmdline(config: ValidatedConfig, tscKhz: number): string {
  if (classifyKernel(config.kernel) === 'linux' || /\blifeboat\.tsc_khz=/.test(config.cmdline)) return config.cmdline;
  return `${config.cmdline} lifeboat.tsc_khz=${tscKhz}`.trim();
}

/** Kernel payload at 1 MiB, initrd, zero page, command line, GDT/IDT and identity page tables. */
function loadKernel(memory: GuestMemory, config: ValidatedConfig, cmdline: string): void {
  const plan = buildZeroPage({ kernel: config.kernel, memorySize: config.memoryBytes, cmdline, initrdSize: config.initrd?.length });
  const writes: GuestWrite[] = [{ gpa: HIGH_MEMORY_START, bytes: config.kernel.payload }, ...plan.writes, ...descriptorTableWrites(), ...pageTableWrites()];
  if (config.initrd && plan.initrdAddress !== undefined) writes.push({ gpa: plan.initrdAddress, bytes: config.initrd });
  writeGuest(memory, writes);
}

function writeGuest(memory: GuestMemory, writes: readonly GuestWrite[]): void {
  for (const w of writes) memory.write(w.gpa, w.bytes);
}

/** COM1 (its interrupt through an irqfd), the i8042 reset, the exit-status port, ACPI poweroff. */
interface PlatformDevices {
  descriptors: DeviceDescriptor[];
  serial: Serial;
  serialState: SharedArrayBuffer;
  close(): void;
}

/** Name of the serial port's state in a snapshot (the i8042, exit port and ACPI sleep port hold none). */
const SERIAL_STATE_NAME = 'serial0';

function createPlatformDevices(vm: VmFd, console: GuestConsole, restoredSerial?: Uint8Array): PlatformDevices {
  const serialIrq = libc.eventfd();
  vm.registerIrqfd(COM1_GSI, serialIrq);
  const serialState = allocateSerialState();
  if (restoredSerial) {
    new Uint8Array(serialState).set(restoredSerial);
    Atomics.store(new Int32Array(serialState), 0, 0); // the lock word belongs to this process
  }
  return {
    serialState,
    descriptors: platformDescriptors(serialState, console.writeFd, serialIrq, ACPI_POWER_OFF_VALUE),
    serial: new Serial(serialState, { outputFd: console.writeFd, irqFd: serialIrq }),
    close: () => libc.close(serialIrq),
  };
}

// ---- virtio-blk disks (vmm/devices/virtio) ---------------------------------------------------------

/** Opens the disk images for the VM (the first time anything opens them for writing). */
function openVirtioDisks(config: ValidatedConfig, memory: GuestMemory, vm: VmFd, tracking?: DiskTracking): VirtioBlockSet | undefined {
  if (config.disks.length === 0) return undefined;
  try {
    return VirtioBlockSet.open(config.disks.map((d, i) => ({ path: d.path, readOnly: d.readOnly, observer: tracking?.observer(i) })), { memory, vm, firstIndex: 0 });
  } catch (err) {
    if (err instanceof DiskImageError) throw new VmmError(err.message);
    throw err;
  }
}

const virtioStateName = (disk: number) => `virtio-blk/${disk}`;

function savedDevice(devices: Record<string, Uint8Array>, name: string): Uint8Array {
  const state = devices[name];
  if (!state) throw new VmmError(`the snapshot has no state for device '${name}': it was taken of a VM with other devices`);
  return state;
}

// ---- the running machine ----------------------------------------------------------------------------

export class Machine {
  // process.uptime(), not performance.now(): the first use of `performance` loads code (~1 ms of boot).
  private readonly startedAt = process.uptime();
  private paused = false;
  private stopping = false;
  private resolveExit!: (exit: MachineExit) => void;
  /** Resolves once, when the guest powers off, resets, crashes or is stopped. */
  readonly exit: Promise<MachineExit>;

  constructor(
    readonly config: ValidatedConfig,
    private readonly kvm: Kvm,
    readonly vm: VmFd,
    readonly memory: GuestMemory,
    readonly vcpus: VcpuSet,
    private readonly platform: PlatformDevices,
    /** The VM's disks (for snapshots: quiesce, write observers). */
    readonly virtio: VirtioBlockSet | undefined,
    onWarning: (message: string) => void,
    /** Set when KVM logs dirty pages (snapshots need it for diffs). */
    readonly dirtyLogMode?: DirtyLogMode,
  ) {
    this.exit = new Promise((resolve) => (this.resolveExit = resolve));
    virtio?.on('error', (err: Error) => this.fail(err.message));
    virtio?.on('warning', (w: { disk: number; message: string }) => onWarning(`disk ${w.disk}: ${w.message}`));
  }

  /** Ends this boot with an error (the disks' I/O worker failed or died). */
  fail(message: string): void {
    if (this.vcpus.raiseEvent(ctl.EVENT_CRASH, 1)) {
      this.stopping = true;
      this.resolveExit({ kind: 'crash', message });
    }
  }

  /** @internal from VcpuSet: the first machine event of this boot. */
  onVcpuEvent(e: MachineEvent): void {
    this.stopping = true;
    if (e.kind === ctl.EVENT_POWEROFF) this.resolveExit({ kind: 'poweroff', status: e.status >>> 0 });
    else if (e.kind === ctl.EVENT_RESET) this.resolveExit({ kind: 'reset' });
    else this.resolveExit({ kind: 'crash', message: e.message ?? 'a vCPU stopped' });
  }

  status(): MachineStatus {
    return {
      state: this.stopping ? 'stopping' : this.paused ? 'paused' : 'running',
      vcpus: this.config.vcpus,
      memoryBytes: this.config.memoryBytes,
      disks: this.config.disks.map((d) => ({ path: d.path, readOnly: d.readOnly, sizeBytes: d.sizeBytes })),
      uptimeSeconds: Math.round((process.uptime() - this.startedAt) * 100) / 100,
    };
  }

  private releaseDisks: (() => void) | undefined;
  /** A snapshot pause in which the vCPUs save their own state (see vmm/snapshot/vcpu-save.ts). */
  private vcpuSave: VcpuSave | undefined;

  /**
   * Every vCPU out of KVM_RUN and parked, no disk request half done: memory, vCPU and device state hold
   * still. `saveVcpus` (a snapshot): each vCPU saves its own state as soon as all are parked and the
   * disks are quiet, in parallel with whatever the caller does next; saveState() collects them.
   */
  async pause(options: { saveVcpus?: boolean } = {}): Promise<void> {
    if (this.stopping) throw new VmmError('the VM is stopping');
    const quiesceDisks = this.virtio !== undefined && !this.releaseDisks;
    const save = options.saveVcpus && !this.paused ? VcpuSave.begin(this.vcpus.control, (i) => this.vcpus.thread(i).kick(), quiesceDisks) : undefined;
    // The disks quiesce while the vCPUs stop: a request the guest makes meanwhile waits in its
    // ioeventfd (served after the resume, or by a restored VM), and the vCPUs save their state only once
    // both are done (no disk can raise an interrupt after that).
    const quiesced = quiesceDisks ? new Promise<void>((done, failed) => {
      this.virtio!.quiesce('all', () => {
        done();
        return new Promise<void>((release) => (this.releaseDisks = release));
      }).catch(failed);
    }) : undefined;
    try {
      await (save ? save.parked() : this.vcpus.pause());
      pauseStep('vCPUs parked');
      if (quiesced) {
        await quiesced;
        pauseStep('disks quiesced');
      }
    } catch (err) {
      save?.cancel();
      if (quiesced) {
        await quiesced.catch(() => {});
        this.releaseDisks?.();
        this.releaseDisks = undefined;
      }
      throw err;
    }
    save?.openGate();
    this.vcpuSave = save;
    this.paused = true;
  }

  resume(): void {
    if (this.stopping) throw new VmmError('the VM is stopping');
    this.vcpuSave = undefined;
    this.paused = false;
    this.releaseDisks?.();
    this.releaseDisks = undefined;
    this.vcpus.resume();
  }

  /** Device state for a snapshot (the machine must be paused): a copy of every stateful device's SAB. */
  saveDeviceStates(): Record<string, Uint8Array> {
    if (!this.paused) throw new VmmError('pause the VM before saving its devices');
    const out: Record<string, Uint8Array> = { [SERIAL_STATE_NAME]: new Uint8Array(this.platform.serialState).slice() };
    this.virtio?.saveStates().forEach((state, i) => (out[virtioStateName(i)] = state));
    return out;
  }

  /** What a restore needs to rebuild this machine around saved state. */
  describe(): Record<string, unknown> {
    return {
      kernelPath: this.config.kernelPath, cmdline: this.config.cmdline, vcpus: this.config.vcpus, memoryBytes: this.config.memoryBytes,
      disks: this.config.disks.map((d) => ({ path: d.path, readOnly: d.readOnly, sizeBytes: d.sizeBytes })),
    };
  }

  /** Ends this boot as if the guest had powered off with `status`. */
  requestStop(status: number): void {
    if (this.vcpus.raiseEvent(ctl.EVENT_POWEROFF, status)) {
      this.stopping = true;
      this.resolveExit({ kind: 'poweroff', status: status >>> 0 });
    }
  }

  /**
   * For snapshots: VM-wide KVM state and every vCPU's state (the machine must be paused). After a
   * pause with `saveVcpus`, `vcpus` decodes the states the vCPUs saved: call it after the resume.
   */
  async saveState(): Promise<{ vm: VmState; vcpus: VcpuState[] | (() => VcpuState[]) }> {
    if (!this.paused) throw new VmmError('pause the VM before saving its state');
    const vm = this.vm.saveState();
    pauseStep(VM_STATE_STEP);
    const save = this.vcpuSave;
    if (save) {
      await save.saved();
      pauseStep('vCPU states saved (by their threads)');
      pauseDetailsLater(() => save.timings().flatMap((t, i) => Object.entries(t).map(([ioctl, us]): [string, number] => [`  vCPU ${i} ${ioctl}`, us])));
      return { vm, vcpus: () => save.states() };
    }
    const vcpus = await this.vcpus.saveStates();
    pauseStep('vCPU states');
    vcpus.forEach((v, i) => {
      for (const [ioctl, us] of Object.entries(v.saveTiming ?? {})) pauseDetail(`  vCPU ${i} ${ioctl}`, us);
      delete v.saveTiming;
    });
    return { vm, vcpus };
  }

  async loadState(state: { vm: VmState; vcpus: VcpuState[] }): Promise<void> {
    if (!this.paused) throw new VmmError('pause the VM before loading a state');
    this.vm.loadState(state.vm);
    await this.vcpus.loadStates(state.vcpus);
  }

  /** Stops the vCPUs, then the disks (drained and fsynced), then releases KVM and memory. */
  async shutdown(): Promise<void> {
    this.stopping = true;
    await this.vcpus.stop();
    let diskError: unknown;
    try {
      await this.virtio?.stop();
    } catch (err) {
      diskError = err;
    }
    this.platform.close();
    this.memory.close();
    this.vm.close();
    this.kvm.close();
    if (diskError) throw diskError;
  }
}

// ---- a VMM process: one VM across reboots -----------------------------------------------------------

/** The Lifeboat guest's shell prompt (Contract A). */
export const SHELL_PROMPT = 'lifeboat> ';
/** The line the Lifeboat guest prints when its shell starts (before `lifeboat.exec` commands run). */
export const GUEST_READY_PREFIX = 'lifeboat: ready';

export interface RunOptions {
  config: ValidatedConfig;
  console: GuestConsole;
  /** A guest reset ends the run (status 0) instead of booting again. */
  noReboot?: boolean;
  /**
   * The guest must reach its shell within this many ms of each boot, or the run ends with a
   * boot-timeout error; 0 disables. The Lifeboat guest has reached it when it prints its prompt or its
   * `lifeboat: ready` line; any other kernel when it prints its first complete line.
   */
  bootTimeoutMs?: number;
  apiSocket?: string;
  logDirtyPages?: boolean;
  /** Track changed blocks of the writable disks (saved beside each image at a clean stop). */
  trackChanges?: { granularity: number } | false;
  /** Resume this snapshot chain for the first boot (a later guest reset boots the kernel). */
  restoreFrom?: RestoredChain;
  /**
   * A VM made ahead (a warm standby's): the first boot uses it when `restoreFrom`'s memory was mapped
   * over its reservation (see PreparedVm.claimMemory); runVm closes what it does not use.
   */
  prepared?: PreparedVm;
  /** Serve the control protocol on this already listening socket (a standby VMM's) instead of `apiSocket`. */
  control?: ControlSocket;
  /** Test-only (see BootOptions.acpiTestFaults): every boot gets these broken ACPI tables. */
  acpiTestFaults?: AcpiTestFaultInjection;
  onWarning?: (message: string) => void;
  /** Called after each boot (tests, benchmarks, the control of a caller). */
  onBoot?: (machine: Machine) => void;
  /** Control-socket ops beyond status/pause/resume/stop (see ControlHandlers.other). */
  controlOps?: (request: { op: string } & Record<string, unknown>, machine: Machine | undefined) => Promise<Record<string, unknown> | undefined>;
}

export interface RunResult {
  /** The process exit status: the guest's poweroff status, or 1 after an error. */
  status: number;
  /** Why the run failed (one line), when it did. */
  error?: string;
  reboots: number;
}

/** Boots the VM and runs it until the guest powers off or fails; reboots on reset. */
export async function runVm(options: RunOptions): Promise<RunResult> {
  let machine: Machine | undefined;
  let snapshots: SnapshotService | undefined;
  let stopRequested: number | undefined;
  let restore = options.restoreFrom;
  const trace = tracer();
  // Host checks first: a VM this host refuses must not mark its disks' change tracking as in use. The
  // checked /dev/kvm (a prepared VM's, if it fits the snapshot) serves the first boot.
  const prepared = restore && options.logDirtyPages ? options.prepared?.take(restore.memory.hostAddress, restore.memory.size) : undefined;
  options.prepared?.close();
  let firstBoot: { kvm?: Kvm; prepared?: Omit<PreparedKvm, 'kvm'> } | undefined;
  if (prepared) {
    let refusal: string | undefined;
    try {
      refusal = refuseLinuxOnPvm(options.config.kernel, probeHost());
      if (refusal) throw new VmmError(refusal);
    } catch (err) {
      prepared.vm.close();
      prepared.kvm.close();
      throw err;
    }
    try {
      firstBoot = { kvm: checkedKvm(prepared.kvm, options.config), prepared: { vm: prepared.vm, dirtyLogMode: prepared.dirtyLogMode } };
    } catch (err) {
      prepared.vm.close(); // checkedKvm closed /dev/kvm
      throw err;
    }
  } else {
    firstBoot = { kvm: openCheckedKvm(options.config) };
  }
  trace('host checks');
  // One tracker per disk for the whole process (across guest reboots); saved only at a clean end.
  let tracking: DiskTracking | undefined;
  try {
    tracking = options.trackChanges ? DiskTracking.open(options.config.disks, options.trackChanges) : undefined;
  } catch (err) {
    closeFirstBoot(firstBoot);
    throw err;
  }
  if (tracking) trace('change tracking');
  const recovery = recoveryControlOps({
    disks: tracking,
    snapshots: () => snapshots,
    quiesceAll: async (fn) => (machine?.virtio ? await machine.virtio.quiesce('all', fn) : fn()),
  });
  const handlers: ControlHandlers = {
    status: () => ({ ...(machine?.status() ?? { state: 'booting' }) }),
    pause: async () => {
      if (!machine) throw new VmmError('the VM is not running');
      await machine.pause();
    },
    resume: () => {
      if (!machine) throw new VmmError('the VM is not running');
      machine.resume();
    },
    stop: (status) => {
      stopRequested = status;
      machine?.requestStop(status);
    },
    other: async (request) => (await recovery(request)) ?? (options.controlOps ? await options.controlOps(request, machine) : undefined),
  };
  options.control?.setHandlers(handlers);
  let control: ControlSocket | undefined;
  try {
    control = options.control ?? (options.apiSocket ? await ControlSocket.listen(options.apiSocket, handlers) : undefined);
  } catch (err) {
    closeFirstBoot(firstBoot);
    throw err;
  }
  try {
    for (let reboots = 0; ; reboots++) {
      if (stopRequested !== undefined) return { status: stopRequested, reboots };
      const given = firstBoot;
      firstBoot = undefined; // bootMachine owns it now, whether it boots or fails
      machine = await bootMachine(options.config, { console: options.console, logDirtyPages: options.logDirtyPages, onWarning: options.onWarning, tracking, restore, acpiTestFaults: options.acpiTestFaults, ...given });
      snapshots = new SnapshotService(machine, { disks: tracking, restoredFrom: restore?.lastSnapshotId, verified: restore?.verified });
      restore = undefined;
      if (stopRequested !== undefined) machine.requestStop(stopRequested);
      options.onBoot?.(machine);
      const watch = watchBoot(options.console, options.bootTimeoutMs ?? 0, classifyKernel(options.config.kernel) === 'lifeboat-guest');
      const exit = await Promise.race([machine.exit, watch.timedOut]);
      watch.cancel();
      if (exit === 'timeout') machine.requestStop(1);
      snapshots = undefined;
      await machine.shutdown();
      machine = undefined;
      if (exit === 'timeout') {
        tracking?.close();
        const last = options.console.lastLine();
        const seconds = (options.bootTimeoutMs ?? 0) / 1000;
        return { status: 1, reboots, error: `the guest did not reach its shell within ${seconds} s (last console line: ${last ? JSON.stringify(last) : 'none, the console stayed silent'})` };
      }
      if (exit.kind === 'poweroff') {
        tracking?.close();
        return { status: exit.status, reboots };
      }
      if (exit.kind === 'crash') return { status: 1, reboots, error: exit.message };
      if (options.noReboot) return { status: 0, reboots };
    }
  } finally {
    closeFirstBoot(firstBoot);
    if (machine) await machine.shutdown().catch(() => {});
    restore?.close();
    if (!options.control) await control?.close(); // a socket handed in stays its owner's
  }
}

function closeFirstBoot(first: { kvm?: Kvm; prepared?: Omit<PreparedKvm, 'kvm'> } | undefined): void {
  first?.prepared?.vm.close();
  first?.kvm?.close();
}

/** Resolves 'timeout' unless the guest reaches its shell (see RunOptions.bootTimeoutMs) within `ms`. */
function watchBoot(console: GuestConsole, ms: number, lifeboatGuest: boolean): { timedOut: Promise<'timeout'>; cancel(): void } {
  if (ms <= 0) return { timedOut: new Promise(() => {}), cancel: () => {} };
  let timer: NodeJS.Timeout | undefined;
  const unlisten: Array<() => void> = [];
  const cancel = () => {
    if (timer) clearTimeout(timer);
    for (const u of unlisten) u();
  };
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => {
      cancel();
      resolve('timeout');
    }, ms);
    unlisten.push(console.onLine((line) => {
      if (!lifeboatGuest || line.startsWith(GUEST_READY_PREFIX)) cancel();
    }));
    unlisten.push(console.listen(() => {
      if (console.currentLine.endsWith(SHELL_PROMPT)) cancel();
    }));
  });
  return { timedOut, cancel };
}
