// Where a snapshot's pause goes: named steps, each timed from the previous one, recorded by whatever
// code runs inside the pause (snapshot.ts, the snapshot service, the machine). One timeline at a time:
// a VMM takes one snapshot at a time. Cheap enough to be always on (a performance.now() per step).

export interface PauseStep {
  step: string;
  /** Microseconds since the previous step (the first: since the pause request). */
  us: number;
}

/** The step that reads the VM-wide KVM state. */
export const VM_STATE_STEP = 'VM state (KVM_GET_CLOCK, KVM_GET_PIT2, KVM_GET_IRQCHIP x3)';

let current: { last: number; steps: PauseStep[]; later: Array<() => Array<[string, number]>> } | undefined;

/** Starts the timeline at the pause request. */
export function beginPauseTimeline(): void {
  current = { last: performance.now(), steps: [], later: [] };
}

/** Records that `step` has just finished. No-op outside a timeline. */
export function pauseStep(step: string): void {
  if (!current) return;
  const now = performance.now();
  current.steps.push({ step, us: Math.round((now - current.last) * 1000) });
  current.last = now;
}

/** Adds a step measured elsewhere (e.g. on a vCPU thread), without moving the clock. */
export function pauseDetail(step: string, us: number): void {
  current?.steps.push({ step, us: Math.round(us) });
}

/** Adds details once the pause is over (so that gathering them costs the pause nothing). */
export function pauseDetailsLater(details: () => Array<[step: string, us: number]>): void {
  current?.later.push(details);
}

/** Ends the timeline and returns its steps. */
export function endPauseTimeline(): PauseStep[] {
  const steps = current?.steps ?? [];
  for (const details of current?.later ?? []) for (const [step, us] of details()) steps.push({ step, us: Math.round(us) });
  current = undefined;
  return steps;
}
