import { VCPU_STATE_AREA_BYTES } from './vcpu-state.js';

// The words through which the main thread steers vCPU workers without messages: per vCPU a requested
// run state, the state the worker reports, and a wake counter the parked worker waits on. One
// SharedArrayBuffer for all vCPUs, plus the machine-event words a device sets from any worker.

export const VCPU_CONTROL_WORDS = 4;
export const REQUEST = 0;
export const STATE = 1;
export const WAKE = 2;

/** Requested by the main thread (or, for STOP, by a device raising a machine event). */
export const RUN = 0;
export const PAUSE = 1;
export const STOP = 2;

/** Reported by the worker. */
export const STARTING = 0;
export const RUNNING = 1;
export const PARKED = 2;
export const STOPPED = 3;

/**
 * Requested by the main thread for a snapshot: park like PAUSE, and once every vCPU is parked and the
 * disks are quiet (the SAVE_GATE countdown reached 0), save this vCPU's state into its state area
 * (vcpu-state.ts), then count down SAVE_PENDING. The vCPUs save in parallel, each on its own thread,
 * with no message in between; a vCPU saves only when no other vCPU can still send it an IPI and no disk
 * can still raise an interrupt, so the saved states form one instant.
 */
export const PAUSE_SAVE = 3;

// Words shared by all vCPUs, after the per-vCPU words.
/** Counts down: vCPUs not yet parked, + 1 while the disks are not yet quiet. -1: cancelled, save nothing. */
export const SAVE_GATE = 0;
/** Counts down: vCPUs whose state is not saved yet (each counts down once, saved or failed). */
export const SAVE_PENDING = 1;
/** Incremented for every snapshot pause: a worker saves once per epoch. */
export const SAVE_EPOCH = 2;
const SHARED_WORDS = 4;

/**
 * Layout of the control SharedArrayBuffer: per vCPU VCPU_CONTROL_WORDS words (from byte 0, so vCPU i's
 * words start at i * VCPU_CONTROL_WORDS), the shared words, each vCPU's state area
 * (VCPU_STATE_AREA_BYTES, 8-byte aligned), and the vCPU count in the last word.
 */
export function allocateVcpuControl(vcpus: number): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(areasStart(vcpus) + vcpus * VCPU_STATE_AREA_BYTES + 8);
  const words = new Int32Array(sab);
  for (let i = 0; i < vcpus; i++) words[i * VCPU_CONTROL_WORDS + REQUEST] = PAUSE;
  words[words.length - 1] = vcpus;
  return sab;
}

const areasStart = (vcpus: number) => Math.ceil(((vcpus * VCPU_CONTROL_WORDS + SHARED_WORDS) * 4) / 8) * 8;

/** Byte offset of vCPU `index`'s state area in the control buffer. */
export function stateAreaOffset(control: Int32Array, index: number): number {
  return areasStart(vcpuCount(control)) + index * VCPU_STATE_AREA_BYTES;
}

/** Number of vCPUs a control buffer was allocated for. */
export function vcpuCount(control: Int32Array): number {
  return control[control.length - 1]!;
}

/** Wakes vCPU `index` if it is parked: it reads its request and its commands again. */
export function wakeVcpu(control: Int32Array, index: number): void {
  const wake = index * VCPU_CONTROL_WORDS + WAKE;
  Atomics.add(control, wake, 1);
  Atomics.notify(control, wake);
}

/** Sets vCPU `index`'s request and wakes it if it is parked. */
export function requestVcpu(control: Int32Array, index: number, value: number): void {
  Atomics.store(control, index * VCPU_CONTROL_WORDS + REQUEST, value);
  wakeVcpu(control, index);
}

/** Slice of a vCPU's wait at the save gate, after which it checks whether it was asked to stop. */
const GATE_WAIT_SLICE_MS = 50;

/**
 * On the vCPU's thread, once parked for PAUSE_SAVE: counts itself in and waits for the gate to open.
 * True: save now. False: the pause was cancelled or the vCPU is being stopped (save nothing).
 */
export function arriveAtSaveGate(control: Int32Array, me: number): boolean {
  const gate = controlShared(control) + SAVE_GATE;
  // Every arrival wakes the waiters: the main thread waits for the count to reach the disks' 1, the
  // vCPUs for 0.
  Atomics.sub(control, gate, 1);
  Atomics.notify(control, gate);
  for (;;) {
    const v = Atomics.load(control, gate);
    if (v === 0) return true;
    if (v < 0 || Atomics.load(control, me + REQUEST) !== PAUSE_SAVE) return false;
    Atomics.wait(control, gate, v, GATE_WAIT_SLICE_MS);
  }
}

/** On the vCPU's thread: its state is saved (or failed: its area says which). */
export function savedState(control: Int32Array): void {
  const pending = controlShared(control) + SAVE_PENDING;
  if (Atomics.sub(control, pending, 1) === 1) Atomics.notify(control, pending);
}

/** Index of the shared words. */
export function controlShared(control: Int32Array): number {
  return vcpuCount(control) * VCPU_CONTROL_WORDS;
}

/** Machine events: first one wins (poweroff with a status, reset, a fatal vCPU exit). */
export const EVENT = 0;
export const EVENT_STATUS = 1;
export const EVENT_NONE = 0;
export const EVENT_POWEROFF = 1;
export const EVENT_RESET = 2;
export const EVENT_CRASH = 3;

export function allocateMachineEvents(): SharedArrayBuffer {
  return new SharedArrayBuffer(8);
}

/** Asks every vCPU to stop at its next exit (any thread; the main thread then kicks them). */
export function requestStopAll(control: Int32Array): void {
  for (let i = 0; i < vcpuCount(control); i++) requestVcpu(control, i, STOP);
}
