// A vCPU's thread: configures its vCPU, then loops on KVM_RUN and dispatches PIO/MMIO exits to its own
// Bus (built from the machine's device descriptors). Steered by the control words (vcpu-control.ts):
// parks on PAUSE, leaves on STOP; while parked it runs state commands sent on its MessagePort, so a
// snapshot reads and writes vCPU state on the vCPU's own thread.
import koffi from 'koffi';
import { parentPort, receiveMessageOnPort } from 'node:worker_threads';
import { buildBuses, type MachineEvents } from './devices/descriptor.js';
import { VcpuFd } from './kvm/vcpu.js';
import * as ioc from './kvm/ioctls.js';
import { KVM_RUN_MMIO_DATA_OFFSET } from './kvm/structs.js';
import { GuestMemory } from './memory.js';
import * as libc from './sys/libc.js';
import * as ctl from './vcpu-control.js';
import { exitReasonName, instructionBytes, internalErrorName } from './vcpu-fault.js';
import { configureVcpu } from './vcpu-setup.js';
import { AREA_GATE_OPEN_AT, AREA_PARKED_AT, loadVcpuState, saveVcpuState, saveVcpuStateInto, VcpuStateArea } from './vcpu-state.js';
import type { VcpuAttach, VcpuCommand, VcpuCommandResult, VcpuConfigure, VcpuToMain } from './vcpu-thread.js';

// Start-up timing for LIFEBOAT_VMM_TRACE only: the first use of `performance` loads code in a new thread.
const now = process.env.LIFEBOAT_VMM_TRACE === '1' ? () => performance.timeOrigin + performance.now() : () => 0;
const loadedAt = now();
const port = parentPort!;
// Our code, koffi's native module included, has loaded: from now on this thread may be terminated.
port.postMessage({ type: 'loaded' } satisfies VcpuToMain);
// Possibly spawned before the VM existed (vcpu-prewarm.ts): first the vCPU and its boot state, then
// (once they exist) the VM's memory and devices.
const messages: Array<VcpuConfigure | VcpuAttach> = [];
let wakeReader: (() => void) | undefined;
port.on('message', (m: VcpuConfigure | VcpuAttach) => {
  messages.push(m);
  wakeReader?.();
});
async function next<T extends VcpuConfigure | VcpuAttach>(type: T['type']): Promise<T> {
  while (!messages.length) await new Promise<void>((resolve) => (wakeReader = resolve));
  const m = messages.shift()!;
  if (m.type !== type) throw new Error(`vCPU worker expected '${type}', got '${m.type}'`);
  return m as T;
}
const data = await next<VcpuConfigure>('configure');
const control = new Int32Array(data.control);
const events = new Int32Array(data.events);
const me = data.index * ctl.VCPU_CONTROL_WORDS;
const vcpu = new VcpuFd(data.vcpuFd, data.index);
let configureError: Error | undefined;
try {
  configureVcpu(vcpu, data.boot);
} catch (err) {
  configureError = err as Error;
}
const configuredAt = now();
const attach = await next<VcpuAttach>('attach');
const attachedAt = now();
port.removeAllListeners('message');
// Guest memory is read here only to report a crash. Mapping a view of it costs a garbage collection
// (V8 counts the view as external memory), so that waits until a crash needs it.
let memory: GuestMemory | undefined;

const runBuffer = koffi.view(data.runAddress, data.runSize);
const run = new DataView(runBuffer);
const runBytes = new Uint8Array(runBuffer);

function post(message: VcpuToMain): void {
  port.postMessage(message);
}

/** First event wins; every vCPU is asked to stop and the main thread is told (it kicks them out). */
function raiseEvent(kind: number, status: number, message?: string): void {
  if (Atomics.compareExchange(events, ctl.EVENT, ctl.EVENT_NONE, kind) === ctl.EVENT_NONE) {
    Atomics.store(events, ctl.EVENT_STATUS, status | 0);
    post({ type: 'event', vcpu: data.index, kind, status, message });
  }
  ctl.requestStopAll(control);
}

const machineEvents: MachineEvents = {
  poweroff: (status) => raiseEvent(ctl.EVENT_POWEROFF, status),
  reset: () => raiseEvent(ctl.EVENT_RESET, 0),
};

/** `what` names the failure; the vCPU, RIP and instruction bytes are appended. */
function crash(what: string): void {
  let where = '';
  try {
    const regs = vcpu.getRegs();
    const sregs = vcpu.getSregs();
    where = ` at RIP 0x${regs.rip.toString(16)}, instruction bytes ${instructionBytes((memory ??= GuestMemory.attach(attach.memory)), sregs, regs.rip)}`;
  } catch (err) {
    where = ` (registers unavailable: ${(err as Error).message})`;
  }
  raiseEvent(ctl.EVENT_CRASH, 1, `${what} on vCPU ${data.index}${where}`);
}

function runCommand(command: VcpuCommand): VcpuCommandResult {
  try {
    switch (command.op) {
      case 'save-state': return { ok: true, state: saveVcpuState(vcpu, data.msrIndices, data.xsaveSize) };
      case 'load-state': loadVcpuState(vcpu, command.state); return { ok: true };
      case 'regs': return { ok: true, regs: vcpu.getRegs() };
    }
  } catch (err) {
    return { ok: false, error: (err as Error).message };
  }
}

let stateArea: VcpuStateArea | undefined;
let savedEpoch = 0;

/** PAUSE_SAVE (a snapshot): once every vCPU is parked and the disks are quiet, save this vCPU's state. */
function saveForSnapshot(): void {
  const epoch = Atomics.load(control, ctl.controlShared(control) + ctl.SAVE_EPOCH);
  if (epoch === savedEpoch) return;
  savedEpoch = epoch;
  stateArea ??= new VcpuStateArea(data.control, ctl.stateAreaOffset(control, data.index));
  stateArea.timing[AREA_PARKED_AT] = performance.timeOrigin + performance.now();
  if (!ctl.arriveAtSaveGate(control, me)) return;
  stateArea.timing[AREA_GATE_OPEN_AT] = performance.timeOrigin + performance.now();
  saveVcpuStateInto(vcpu, stateArea, data.msrIndices, data.xsaveSize);
  ctl.savedState(control);
}

/**
 * An IO or MMIO exit is complete (an IN's value in its register, RIP past the instruction) only once
 * KVM_RUN is entered again. Before the vCPU's state can be read, enter it with immediate_exit set:
 * KVM completes the instruction and returns at once, running no further guest instruction.
 */
function completePendingIo(): void {
  for (let i = 0; i < 64; i++) {
    const reason = run.getUint32(8, true);
    if (reason !== ioc.KVM_EXIT_IO && reason !== ioc.KVM_EXIT_MMIO) return;
    run.setUint8(1, 1);
    const ret = libc.ioctlRaw(data.vcpuFd, ioc.KVM_RUN, 0);
    run.setUint8(1, 0);
    if (ret < 0) {
      run.setUint32(8, ioc.KVM_EXIT_INTR, true);
      return;
    }
    // A string IO instruction may need another round with its device.
    const next = run.getUint32(8, true);
    if (next === ioc.KVM_EXIT_IO) handleIo();
    else if (next === ioc.KVM_EXIT_MMIO) handleMmio();
    else return;
  }
}

/** Parked until RUN (true) or STOP (false); runs commands meanwhile. */
function park(): boolean {
  run.setUint8(1, 0); // immediate_exit: consumed
  if (Atomics.load(control, me + ctl.REQUEST) !== ctl.STOP) completePendingIo();
  Atomics.store(control, me + ctl.STATE, ctl.PARKED);
  Atomics.notify(control, me + ctl.STATE);
  for (;;) {
    const wake = Atomics.load(control, me + ctl.WAKE);
    const request = Atomics.load(control, me + ctl.REQUEST);
    if (request === ctl.PAUSE_SAVE) saveForSnapshot();
    for (let m = receiveMessageOnPort(attach.commands); m; m = receiveMessageOnPort(attach.commands)) {
      attach.commands.postMessage(runCommand(m.message as VcpuCommand));
    }
    if (request === ctl.STOP) return false;
    if (request === ctl.RUN) {
      Atomics.store(control, me + ctl.STATE, ctl.RUNNING);
      Atomics.notify(control, me + ctl.STATE);
      return true;
    }
    Atomics.wait(control, me + ctl.WAKE, wake);
  }
}

const buses = buildBuses(attach.devices, machineEvents);
const pio = buses.pio;
const mmio = buses.mmio;

// Preallocated windows on kvm_run for the exit data, so the exit loop allocates nothing.
const mmioData = [0, 1, 2, 3, 4, 5, 6, 7, 8].map((len) => runBytes.subarray(KVM_RUN_MMIO_DATA_OFFSET, KVM_RUN_MMIO_DATA_OFFSET + len));
let ioDataOffset = -1;
let ioData: Uint8Array[] = [];
function ioWindow(offset: number, size: number): Uint8Array {
  if (offset !== ioDataOffset) {
    ioDataOffset = offset;
    ioData = [0, 1, 2, 3, 4].map((len) => runBytes.subarray(offset, offset + len));
  }
  return ioData[size] ?? runBytes.subarray(offset, offset + size);
}

function handleIo(): void {
  const out = runBytes[32] === ioc.KVM_EXIT_IO_OUT;
  const size = runBytes[33]!;
  const portNumber = run.getUint16(34, true);
  const count = run.getUint32(36, true);
  const offset = run.getUint32(40, true);
  if (count === 1) {
    const d = ioWindow(offset, size);
    if (out) pio.write(portNumber, d);
    else pio.read(portNumber, d);
    return;
  }
  for (let i = 0; i < count; i++) {
    const d = runBytes.subarray(offset + i * size, offset + (i + 1) * size);
    if (out) pio.write(portNumber, d);
    else pio.read(portNumber, d);
  }
}

function handleMmio(): void {
  const address = Number(run.getBigUint64(32, true));
  const len = run.getUint32(48, true);
  const d = mmioData[len] ?? runBytes.subarray(KVM_RUN_MMIO_DATA_OFFSET, KVM_RUN_MMIO_DATA_OFFSET + len);
  if (runBytes[52]) mmio.write(address, d);
  else mmio.read(address, d);
}

/** Returns false when the vCPU must stop. */
function handleRareExit(reason: number): boolean {
  switch (reason) {
    case ioc.KVM_EXIT_INTR:
    case ioc.KVM_EXIT_HLT:
      return true;
    case ioc.KVM_EXIT_SYSTEM_EVENT: {
      const type = run.getUint32(32, true);
      if (type === ioc.KVM_SYSTEM_EVENT_SHUTDOWN) raiseEvent(ctl.EVENT_POWEROFF, 0);
      else if (type === ioc.KVM_SYSTEM_EVENT_RESET) raiseEvent(ctl.EVENT_RESET, 0);
      else crash(`the guest crashed (KVM system event ${type})`);
      return false;
    }
    case ioc.KVM_EXIT_SHUTDOWN:
      crash(`the guest triple-faulted (exit ${exitReasonName(reason)})`);
      return false;
    case ioc.KVM_EXIT_INTERNAL_ERROR: {
      const suberror = run.getUint32(32, true);
      crash(`KVM internal error (exit ${exitReasonName(reason)}, ${internalErrorName(suberror)})`);
      return false;
    }
    case ioc.KVM_EXIT_FAIL_ENTRY:
      crash(`KVM could not enter the guest: exit ${exitReasonName(reason)}, hardware reason 0x${run.getBigUint64(32, true).toString(16)}`);
      return false;
    default:
      crash(`unexpected KVM exit ${exitReasonName(reason)}`);
      return false;
  }
}

function loop(): void {
  const fd = data.vcpuFd;
  const request = me + ctl.REQUEST;
  for (;;) {
    if (Atomics.load(control, request) !== ctl.RUN) {
      if (!park()) return;
      continue;
    }
    const ret = libc.ioctlRaw(fd, ioc.KVM_RUN, 0);
    if (ret < 0) {
      const e = libc.errno();
      if (e === libc.EINTR || e === libc.EAGAIN) {
        // A kick: consumed. A kick that lands after park() cleared the flag would otherwise leave it set
        // and make every later KVM_RUN return EINTR at once (a VM that never runs again after a resume).
        run.setUint8(1, 0);
        run.setUint32(8, ioc.KVM_EXIT_INTR, true); // no IO exit awaits completion (see completePendingIo)
        continue;
      }
      crash(`KVM_RUN failed: ${new libc.SysError('KVM_RUN', e).message}`);
      return;
    }
    const reason = run.getUint32(8, true);
    if (reason === ioc.KVM_EXIT_IO) handleIo();
    else if (reason === ioc.KVM_EXIT_MMIO) handleMmio();
    else if (!handleRareExit(reason)) return;
  }
}

if (configureError) {
  post({ type: 'failed', vcpu: data.index, message: `setting up vCPU ${data.index} failed: ${configureError.message}` });
} else {
  try {
    const running = Atomics.load(control, me + ctl.REQUEST) === ctl.RUN;
    post({ type: 'ready', vcpu: data.index, tid: libc.pthreadSelf(), timing: { loadedAt, configuredAt, attachedAt, readyAt: now(), running } });
    loop();
  } catch (err) {
    raiseEvent(ctl.EVENT_CRASH, 1, `vCPU ${data.index} failed: ${(err as Error).message}`);
  }
}
Atomics.store(control, me + ctl.STATE, ctl.STOPPED);
Atomics.notify(control, me + ctl.STATE);
// Ends this thread (not the process) even though its message ports are still open.
process.exit(0);
