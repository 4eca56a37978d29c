// The main thread's side of a snapshot pause in which every vCPU saves its own state (vcpu-control.ts
// PAUSE_SAVE): request and kick, wait until every vCPU is parked, open the gate once the disks are
// quiet, wait until every state is saved, decode the states after the resume.
//
// The waits are Atomics.wait on the main thread, not promises: a vCPU parks within microseconds of its
// kick, and an event-loop wake-up per hand-off would cost more than the work itself. A vCPU that does not
// park at once (it may be writing to the console pipe the main thread drains) gets the event loop back
// after SYNC_WAIT_MS.
import { VmmError } from '../kvm/errors.js';
import * as ctl from '../vcpu-control.js';
import { AREA_GATE_OPEN_AT, AREA_PARKED_AT, AREA_TIMED, readVcpuStateArea, VcpuStateArea, type VcpuState } from '../vcpu-state.js';

/** Re-kick the vCPUs not parked yet this often. */
const KICK_AGAIN_MS = 20;
/** Longest the main thread blocks in one wait before it lets its event loop run. */
const SYNC_WAIT_MS = 50;

/** Atomics.waitAsync exists in Node 20; the ES2023 lib this project compiles against does not declare it. */
const waitAsync = (Atomics as unknown as {
  waitAsync(a: Int32Array, index: number, value: number, timeoutMs: number): { async: boolean; value: Promise<string> | string };
}).waitAsync;

export class VcpuSave {
  private readonly shared: number;
  /** Wall-clock ms (timeOrigin + now) of the request and of the last kick. */
  private requestedAt = 0;
  private readonly kickedAt: number[] = [];
  private readonly areas: VcpuStateArea[] = [];

  private constructor(
    private readonly sab: SharedArrayBuffer,
    private readonly words: Int32Array,
    private readonly count: number,
    private readonly kick: (index: number) => void,
    /** 1 while the disks are not yet quiet (the gate waits for openGate), else 0. */
    private readonly hold: number,
  ) {
    this.shared = ctl.controlShared(words);
  }

  /**
   * Asks every vCPU to park and save its state, and kicks it out of KVM_RUN. Undefined (nothing asked)
   * unless every vCPU is asked to run and none is still parked (a vCPU thread that has not yet left an
   * earlier pause may still be busy with it): a paused, stopping or just resumed VM takes the ordinary path.
   */
  static begin(control: SharedArrayBuffer, kick: (index: number) => void, waitForDisks: boolean): VcpuSave | undefined {
    const words = new Int32Array(control);
    const count = ctl.vcpuCount(words);
    for (let i = 0; i < count; i++) {
      const base = i * ctl.VCPU_CONTROL_WORDS;
      const state = Atomics.load(words, base + ctl.STATE);
      if (Atomics.load(words, base + ctl.REQUEST) !== ctl.RUN || state === ctl.PARKED || state === ctl.STOPPED) return undefined;
    }
    const save = new VcpuSave(control, words, count, kick, waitForDisks ? 1 : 0);
    Atomics.store(words, save.shared + ctl.SAVE_GATE, count + save.hold);
    Atomics.store(words, save.shared + ctl.SAVE_PENDING, count);
    Atomics.add(words, save.shared + ctl.SAVE_EPOCH, 1);
    save.requestedAt = performance.timeOrigin + performance.now();
    for (let i = 0; i < count; i++) {
      ctl.requestVcpu(words, i, ctl.PAUSE_SAVE);
      kick(i);
      save.kickedAt.push(performance.timeOrigin + performance.now());
    }
    return save;
  }

  /** Resolves once every vCPU is out of KVM_RUN and parked (they save as soon as the gate opens). */
  parked(): Promise<void> {
    return this.waitFor(this.shared + ctl.SAVE_GATE, (v) => v <= this.hold);
  }

  /** The disks are quiet: the vCPUs may save now. */
  openGate(): void {
    if (!this.hold) return;
    if (Atomics.sub(this.words, this.shared + ctl.SAVE_GATE, 1) === 1) Atomics.notify(this.words, this.shared + ctl.SAVE_GATE);
  }

  /** Resolves once every vCPU has saved its state (or failed to: `states()` says). */
  saved(): Promise<void> {
    return this.waitFor(this.shared + ctl.SAVE_PENDING, (v) => v <= 0);
  }

  /**
   * Called off the pause (it failed, or the VM is stopping): nobody saves, and every vCPU still asked
   * to pause for it runs again (one asked to stop meanwhile stays asked to stop).
   */
  cancel(): void {
    Atomics.store(this.words, this.shared + ctl.SAVE_GATE, -1);
    Atomics.notify(this.words, this.shared + ctl.SAVE_GATE);
    for (let i = 0; i < this.count; i++) {
      const base = i * ctl.VCPU_CONTROL_WORDS;
      if (Atomics.compareExchange(this.words, base + ctl.REQUEST, ctl.PAUSE_SAVE, ctl.RUN) === ctl.PAUSE_SAVE) ctl.wakeVcpu(this.words, i);
    }
  }

  /** The saved states, decoded (call after `saved()`; valid until the next snapshot pause, so also after the resume). */
  states(): VcpuState[] {
    return this.stateAreas().map((area, i) => {
      try {
        return readVcpuStateArea(area);
      } catch (err) {
        throw new VmmError(`saving vCPU ${i}: ${(err as Error).message}`);
      }
    });
  }

  /** How long each vCPU's ioctls took (µs), by name. */
  timings(): Array<Record<string, number>> {
    return this.stateAreas().map((area, i) => ({
      'request -> kicked': (this.kickedAt[i]! - this.requestedAt) * 1000,
      'kicked -> parked': (area.timing[AREA_PARKED_AT]! - this.kickedAt[i]!) * 1000,
      'parked -> gate open': (area.timing[AREA_GATE_OPEN_AT]! - area.timing[AREA_PARKED_AT]!) * 1000,
      ...Object.fromEntries(AREA_TIMED.map((name, k) => [name, area.timing[k]!])),
    }));
  }

  private stateAreas(): VcpuStateArea[] {
    if (!this.areas.length) for (let i = 0; i < this.count; i++) this.areas.push(new VcpuStateArea(this.sab, ctl.stateAreaOffset(this.words, i)));
    return this.areas;
  }

  /**
   * Why a vCPU will never arrive or save: it stopped (a crash, a poweroff, a stop request) or was asked
   * to run again meanwhile (a resume request on the control socket); undefined while all are on their way.
   */
  private interrupted(): string | undefined {
    for (let i = 0; i < this.count; i++) {
      const base = i * ctl.VCPU_CONTROL_WORDS;
      const request = Atomics.load(this.words, base + ctl.REQUEST);
      if (Atomics.load(this.words, base + ctl.STATE) === ctl.STOPPED || request === ctl.STOP) return 'the VM is stopping';
      if (request !== ctl.PAUSE_SAVE) return 'the VM was resumed during the snapshot';
    }
    return undefined;
  }

  private kickUnparked(): void {
    for (let i = 0; i < this.count; i++) if (Atomics.load(this.words, i * ctl.VCPU_CONTROL_WORDS + ctl.STATE) !== ctl.PARKED) this.kick(i);
  }

  private async waitFor(index: number, done: (value: number) => boolean): Promise<void> {
    const started = performance.now();
    for (;;) {
      const v = Atomics.load(this.words, index);
      if (done(v)) return;
      const why = v < 0 ? 'the snapshot pause was called off' : this.interrupted();
      if (why) throw new VmmError(why);
      if (performance.now() - started < SYNC_WAIT_MS) {
        if (Atomics.wait(this.words, index, v, KICK_AGAIN_MS) === 'timed-out') this.kickUnparked();
      } else {
        const w = waitAsync(this.words, index, v, KICK_AGAIN_MS);
        if ((w.async ? await w.value : w.value) === 'timed-out') this.kickUnparked();
      }
    }
  }
}
