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

export function allocateVcpuControl(vcpus: number): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(vcpus * VCPU_CONTROL_WORDS * 4);
  const words = new Int32Array(sab);
  for (let i = 0; i < vcpus; i++) words[i * VCPU_CONTROL_WORDS + REQUEST] = PAUSE;
  return sab;
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
  for (let i = 0; i < control.length; i += VCPU_CONTROL_WORDS) {
    Atomics.store(control, i + REQUEST, STOP);
    Atomics.add(control, i + WAKE, 1);
    Atomics.notify(control, i + WAKE);
  }
}
