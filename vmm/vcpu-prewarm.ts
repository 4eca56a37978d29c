// vCPU worker threads can be spawned before anything else happens: a worker spends most of its start-up
// loading code (koffi, the devices), which then overlaps with the main thread's own loading and VM
// set-up. This module imports nothing heavy, so a command can call it first thing.
import { Worker } from 'node:worker_threads';

const VCPU_WORKER_URL = new URL('./vcpu-worker.js', import.meta.url);
const pool: Worker[] = [];

/** Starts `count` vCPU workers now; they wait for their vCPU (and do not keep the process alive). */
export function prewarmVcpuWorkers(count: number): void {
  while (pool.length < count) {
    const worker = new Worker(VCPU_WORKER_URL);
    worker.unref();
    // An unused prewarmed worker that fails to load must not crash the process; a used one reports
    // its errors through its VcpuThread.
    worker.on('error', () => {});
    pool.push(worker);
  }
}

/** A prewarmed worker if there is one, else a fresh one. */
export function vcpuWorker(): Worker {
  const worker = pool.shift() ?? new Worker(VCPU_WORKER_URL);
  worker.ref();
  return worker;
}
