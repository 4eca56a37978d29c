// Timing of the I/O worker's batches, for finding where a request's round trip goes (enabled by
// LIFEBOAT_VIRTIO_TRACE=1; a summary goes to stderr when the worker stops, and with
// LIFEBOAT_VIRTIO_TRACE_RAW=N also 200 raw wake-ups from the N-th). Preallocated: no allocation per
// event. Phases of one wake-up: asleep in poll() -> woken -> first request taken -> requests served ->
// irqfd written -> back to poll(). See docs/virtio.md "Where a 1 MiB chunk of disk bench goes".
import { performance } from 'node:perf_hooks';

const MAX_WAKES = 200_000;

export class IoTrace {
  private wakes = 0;
  private readonly asleep = new Float64Array(MAX_WAKES); // poll() entered -> returned
  private readonly toFirst = new Float64Array(MAX_WAKES); // returned -> first request begins
  private readonly serving = new Float64Array(MAX_WAKES); // sum of request handling
  private readonly toIrq = new Float64Array(MAX_WAKES); // last request ends -> irqfd written
  private readonly toSleep = new Float64Array(MAX_WAKES); // irqfd written (or last event) -> poll() again
  private readonly requests = new Uint16Array(MAX_WAKES);
  private readonly at = new Float64Array(MAX_WAKES); // when poll() returned
  private tSleep = 0;
  private tWake = 0;
  private tStart = 0;
  private tLast = 0;
  private sawFirst = false;
  private first = true;

  /** Slot of the next wake-up (the last slot is reused once full). */
  private get i(): number {
    return Math.min(this.wakes, MAX_WAKES - 1);
  }

  /** Slot of the current wake-up. */
  private get last(): number {
    return Math.min(this.wakes - 1, MAX_WAKES - 1);
  }

  /** Logs a start-up milestone (epoch ms, comparable with the main thread's "spawn at"). */
  mark(what: string): void {
    process.stderr.write(`virtio trace: ${what} at ${(performance.timeOrigin + performance.now()).toFixed(1)} (epoch ms)\n`);
  }

  sleep(): void {
    const t = performance.now();
    if (this.wakes > 0) this.toSleep[this.last] = t - this.tLast;
    this.tSleep = t;
  }

  wake(): void {
    const t = performance.now();
    const i = this.i;
    this.asleep[i] = t - this.tSleep;
    this.at[i] = t;
    this.toFirst[i] = 0;
    this.serving[i] = 0;
    this.toIrq[i] = 0;
    this.requests[i] = 0;
    this.tWake = t;
    this.tLast = t;
    this.sawFirst = false;
    this.wakes++;
  }

  requestStart(): void {
    const t = performance.now();
    if (this.first) {
      this.first = false;
      this.mark('first request');
    }
    const i = this.last;
    if (!this.sawFirst) {
      this.toFirst[i] = t - this.tWake;
      this.sawFirst = true;
    }
    this.tStart = t;
  }

  requestEnd(): void {
    const t = performance.now();
    const i = this.last;
    this.serving[i]! += t - this.tStart;
    this.requests[i]!++;
    this.tLast = t;
  }

  interrupt(): void {
    const t = performance.now();
    const i = this.last;
    this.toIrq[i] = t - this.tLast;
    this.tLast = t;
  }

  report(): void {
    const n = Math.min(this.wakes, MAX_WAKES);
    const rawFrom = Number(process.env['LIFEBOAT_VIRTIO_TRACE_RAW'] ?? -1);
    if (rawFrom >= 0) {
      const us = (x: number) => (x * 1000).toFixed(0).padStart(6);
      for (let i = rawFrom; i < Math.min(n, rawFrom + 200); i++) {
        process.stderr.write(`  #${i} +${us(i ? this.at[i]! - this.at[i - 1]! : 0)} reqs=${this.requests[i]} asleep=${us(this.asleep[i]!)} toFirst=${us(this.toFirst[i]!)} serving=${us(this.serving[i]!)} toIrq=${us(this.toIrq[i]!)} toSleep=${us(this.toSleep[i]!)}\n`);
      }
    }
    const byCount = new Map<number, number[]>();
    for (let i = 0; i < n; i++) {
      const c = this.requests[i]!;
      const list = byCount.get(c) ?? [];
      list.push(i);
      byCount.set(c, list);
    }
    const med = (xs: number[]) => {
      const s = [...xs].sort((a, b) => a - b);
      return s.length ? s[s.length >> 1]! : 0;
    };
    const us = (x: number) => (x * 1000).toFixed(0).padStart(6);
    process.stderr.write(`virtio trace: ${n} wake-ups (median µs per phase, by requests served in the wake-up)\n`);
    process.stderr.write(`  reqs  wakes   asleep  toFirst  serving perReq   toIrq  toSleep\n`);
    for (const [c, idx] of [...byCount].sort((a, b) => a[0] - b[0])) {
      const pick = (a: Float64Array) => idx.map((i) => a[i]!);
      const serving = med(pick(this.serving));
      process.stderr.write(
        `  ${String(c).padStart(4)} ${String(idx.length).padStart(6)} ${us(med(pick(this.asleep)))} ${us(med(pick(this.toFirst)))} ${us(serving)} ${us(c ? serving / c : 0)} ${us(med(pick(this.toIrq)))} ${us(med(pick(this.toSleep)))}\n`,
      );
    }
  }
}
