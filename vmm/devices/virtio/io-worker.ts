// The virtio I/O worker: one thread that serves every virtio-blk queue of a VM. It blocks in poll() on
// the queues' eventfds (signalled by KVM ioeventfds when the guest writes QueueNotify) and on a control
// eventfd, takes the available descriptor chains, does the disk I/O straight between the image and
// guest RAM, publishes completions and injects one interrupt per batch through the device's irqfd.
// Queue notifications and interrupts never pass through the vCPU threads or the main thread.
//
// Ownership of a device's queues follows the transport's epoch (state.ts): the worker claims a device
// when the driver set DRIVER_OK, serves that epoch, and lets go (ioServing = 0) as soon as a reset bumps
// the epoch; it checks between requests, so a reset never sees a request half done.
import { receiveMessageOnPort, workerData } from 'node:worker_threads';
import fs from 'node:fs';
import { GuestMemory } from '../../memory.js';
import { Feature, Interrupt, Status } from './abi.js';
import { BlockRequestHandler } from './block.js';
import { IO_WORKER_KIND, type FromIoWorker, type IoWorkerData, type IoWorkerDisk, type ToIoWorker } from './io-protocol.js';
import { loadObserver, type ObservedDisk } from './observer.js';
import { Chain, ChainError, SplitQueue } from './queue.js';
import { GuestRam } from './ram.js';
import { QueueWord, TRANSPORT_WORDS, VirtioMmioState } from './state.js';
import { PollSet, eventfdConsume, eventfdNotify, schedYield } from './sys.js';
import { IoTrace } from './io-trace.js';

/** Warnings per disk per second passed to the main thread (a misbehaving guest must not flood the log). */
const WARNINGS_PER_SECOND = 10;

class ServedDevice {
  readonly state: VirtioMmioState;
  readonly handler: BlockRequestHandler;
  readonly chain = new Chain();
  /** The queues of the epoch being served, or null when the worker does not own the device. */
  queues: (SplitQueue | null)[] | null = null;
  servingEpoch = -1;
  /** An epoch in which the device failed (NEEDS_RESET): not claimed again until the driver resets it. */
  failedEpoch = -1;
  /** Outstanding quiesce requests; the device's queues are not served while > 0. */
  pauses = 0;
  private warningWindow = 0;
  private warningsInWindow = 0;

  constructor(readonly spec: IoWorkerDisk, ram: GuestRam, private readonly post: (m: FromIoWorker) => void) {
    this.state = new VirtioMmioState(spec.state);
    const image = { fd: spec.imageFd, readOnly: spec.readOnly, sizeBytes: spec.sizeBytes, serial: spec.serial };
    this.handler = new BlockRequestHandler(ram, image, (message) => this.warn(message));
  }

  get observedDisk(): ObservedDisk {
    return { disk: this.spec.disk, path: this.spec.path, sizeBytes: this.spec.sizeBytes, readOnly: this.spec.readOnly, imageFd: this.spec.imageFd };
  }

  warn(message: string): void {
    const second = Math.floor(Date.now() / 1000);
    if (second !== this.warningWindow) {
      this.warningWindow = second;
      this.warningsInWindow = 0;
    }
    if (++this.warningsInWindow <= WARNINGS_PER_SECOND) this.post({ type: 'warning', disk: this.spec.disk, message });
  }
}

function closeObserver(d: ServedDevice): void {
  const observer = d.handler.observer;
  d.handler.observer = null;
  try {
    observer?.close?.();
  } catch (err) {
    d.warn(`closing the write observer failed: ${(err as Error).message}`);
  }
}

interface PollEntry {
  device: ServedDevice;
  queue: number;
  fd: number;
}

/** LIFEBOAT_VIRTIO_TRACE=1: time the worker's batches and print a summary to stderr when it stops. */
const trace = process.env['LIFEBOAT_VIRTIO_TRACE'] ? new IoTrace() : null;

/**
 * Yields before serving a wake-up, at most this many times while the guest keeps adding requests. The
 * scheduler tends to run this thread on the vCPU's core (it wakes it), preempting a guest that is still
 * making a transfer's requests available one by one: served at once, each would be a batch of one with
 * its own interrupt, and the interrupts slow the guest's submissions further (1 MiB writes as 8
 * requests: ~4 wake-ups and interrupts per MiB, ~1.2 ms, against 1 and ~0.45 ms with the yield). A
 * yield on an idle core returns at once.
 */
const GATHER_YIELDS = 4;

/** Lets the vCPU finish making its requests available (see GATHER_YIELDS). */
function gather(q: SplitQueue): void {
  let seen = q.availIdx();
  for (let k = 0; k < GATHER_YIELDS; k++) {
    schedYield();
    const now = q.availIdx();
    if (now === seen) return;
    seen = now;
  }
}

class IoWorker {
  private readonly ram: GuestRam;
  private readonly devices: ServedDevice[];
  private readonly quiesces = new Map<number, ServedDevice[]>();
  private pollSet: PollSet | null = null;
  private pollEntries: PollEntry[] = [];

  constructor(private readonly data: IoWorkerData) {
    this.ram = new GuestRam(GuestMemory.attach(data.memory));
    const post = (m: FromIoWorker) => data.port.postMessage(m);
    this.devices = data.disks.map((d) => new ServedDevice(d, this.ram, post));
  }

  private post(m: FromIoWorker): void {
    this.data.port.postMessage(m);
  }

  async run(): Promise<void> {
    for (const d of this.devices) {
      if (d.spec.observer) d.handler.observer = await loadObserver(d.spec.observer, d.observedDisk);
    }
    this.post({ type: 'ready' });
    trace?.mark('ready');
    // Messages sent before this thread started come first: a quiesce sent right after start() (a
    // restored VM's disks held until its snapshot is verified) holds every request, the first included.
    if (await this.handleMessages()) return;
    this.scan();
    for (;;) {
      const set = this.currentPollSet();
      const entries = this.pollEntries; // index i + 1 of the poll set
      trace?.sleep();
      set.wait(-1);
      trace?.wake();
      if (set.readable(0)) {
        eventfdConsume(this.data.controlFd);
        this.scan();
        if (await this.handleMessages()) return;
      }
      for (let i = 0; i < entries.length; i++) {
        if (!set.readable(i + 1)) continue;
        const e = entries[i]!;
        eventfdConsume(e.fd);
        this.processQueue(e.device, e.queue);
      }
    }
  }

  private currentPollSet(): PollSet {
    if (this.pollSet) return this.pollSet;
    this.pollEntries = [];
    for (const device of this.devices) {
      if (!device.queues || device.pauses > 0) continue;
      device.queues.forEach((q, queue) => {
        if (q) this.pollEntries.push({ device, queue, fd: device.spec.queueFds[queue]! });
      });
    }
    this.pollSet = new PollSet([this.data.controlFd, ...this.pollEntries.map((e) => e.fd)]);
    return this.pollSet;
  }

  private invalidatePollSet(): void {
    this.pollSet = null;
  }

  /** Lets go of devices whose epoch moved on (reset) and claims those the driver has started. */
  private scan(): void {
    for (const d of this.devices) {
      if (d.queues && d.state.get('epoch') !== d.servingEpoch) this.release(d);
      if (!d.queues) this.tryClaim(d);
    }
  }

  private tryClaim(d: ServedDevice): void {
    const s = d.state;
    let failure: string | null = null;
    s.words.locked(() => {
      const status = s.get('status');
      const epoch = s.get('epoch');
      const running = Status.DRIVER_OK | Status.FEATURES_OK;
      if (epoch === d.failedEpoch || (status & running) !== running || status & (Status.NEEDS_RESET | Status.FAILED)) return;
      const indirect = (s.driverFeatures & (1n << BigInt(Feature.RING_INDIRECT_DESC))) !== 0n;
      const queues: (SplitQueue | null)[] = [];
      try {
        for (let q = 0; q < s.get('numQueues'); q++) {
          if (!s.queueGet(q, QueueWord.READY)) {
            queues.push(null);
            continue;
          }
          const config = {
            size: s.queueGet(q, QueueWord.NUM),
            descGpa: s.queueAddress(q, QueueWord.DESC_LO),
            availGpa: s.queueAddress(q, QueueWord.AVAIL_LO),
            usedGpa: s.queueAddress(q, QueueWord.USED_LO),
          };
          if (config.size > s.get('queueNumMax')) throw new ChainError(`queue ${q} size ${config.size} exceeds the maximum ${s.get('queueNumMax')}`);
          queues.push(new SplitQueue(this.ram, config, indirect, s.queueGet(q, QueueWord.NEXT_AVAIL) & 0xffff, s.queueGet(q, QueueWord.NEXT_USED) & 0xffff));
        }
      } catch (err) {
        failure = `queue set-up: ${(err as Error).message}`;
        d.failedEpoch = epoch;
        s.set('status', status | Status.NEEDS_RESET);
        s.words.or('interruptStatus', Interrupt.CONFIG_CHANGE);
        return;
      }
      d.queues = queues;
      d.servingEpoch = epoch;
      s.set('ioServing', 1);
    });
    if (failure) {
      d.warn(`device needs reset: ${failure}`);
      eventfdNotify(d.spec.irqFd);
      return;
    }
    if (!d.queues) return;
    this.invalidatePollSet();
    this.serveAll(d);
  }

  private serveAll(d: ServedDevice): void {
    d.queues?.forEach((q, queue) => {
      if (!q) return;
      eventfdConsume(d.spec.queueFds[queue]!);
      this.processQueue(d, queue);
    });
  }

  private release(d: ServedDevice): void {
    d.queues = null;
    const words = d.state.words.words;
    Atomics.store(words, TRANSPORT_WORDS.ioServing, 0);
    Atomics.notify(words, TRANSPORT_WORDS.ioServing);
    this.invalidatePollSet();
  }

  /** A guest error the device cannot report per request: set NEEDS_RESET, tell the driver, stop serving. */
  private needsReset(d: ServedDevice, reason: string): void {
    const s = d.state;
    s.words.locked(() => {
      if (s.get('epoch') !== d.servingEpoch) return;
      s.set('status', s.get('status') | Status.NEEDS_RESET);
      s.words.or('interruptStatus', Interrupt.CONFIG_CHANGE);
    });
    d.failedEpoch = d.servingEpoch;
    this.release(d);
    d.warn(`device needs reset: ${reason}`);
    eventfdNotify(d.spec.irqFd);
  }

  /**
   * Serves every available request of a queue, then interrupts once for the batch. At most a ring's
   * worth per call, so one busy disk cannot starve the others: if more remain, the queue re-arms its own
   * eventfd and is served again after the others had their turn.
   */
  private processQueue(d: ServedDevice, queueIndex: number): void {
    const q = d.queues?.[queueIndex];
    if (!q || d.pauses > 0) return;
    const budget = q.config.size;
    gather(q);
    const served = this.drainQueue(d, q, d.spec.queueFds[queueIndex]!, budget);
    if (served < 0) return;
    this.publishBatch(d, queueIndex, q, served);
    if (served >= budget) eventfdNotify(d.spec.queueFds[queueIndex]!);
  }

  /** Serves available requests (up to `budget`); -1 when the device was released or failed. */
  private drainQueue(d: ServedDevice, q: SplitQueue, notifyFd: number, budget: number): number {
    const words = d.state.words.words;
    let served = 0;
    try {
      q.setNotifications(false);
      for (;;) {
        while (served < budget) {
          if (Atomics.load(words, TRANSPORT_WORDS.epoch) >>> 0 !== d.servingEpoch) {
            this.release(d);
            return -1;
          }
          const head = q.popAvailable();
          if (head < 0) break;
          trace?.requestStart();
          q.readChain(head, d.chain);
          q.pushUsed(head, d.handler.handle(d.chain));
          trace?.requestEnd();
          served++;
        }
        if (served >= budget) return served;
        // Kicks that came while notifications were off are for requests just served: drop them, or the
        // worker would wake again for nothing. Safe before re-enabling: the re-check below sees the rest.
        eventfdConsume(notifyFd);
        q.setNotifications(true);
        if (!q.hasAvailable()) return served;
        q.setNotifications(false);
      }
    } catch (err) {
      this.needsReset(d, err instanceof ChainError ? err.message : `internal error: ${(err as Error).stack ?? String(err)}`);
      return -1;
    }
  }

  /** Saves the ring positions (for snapshots) and interrupts once for the batch, unless the driver opted out. */
  private publishBatch(d: ServedDevice, queueIndex: number, q: SplitQueue, served: number): void {
    const s = d.state;
    const words = s.words.words;
    s.queueSet(queueIndex, QueueWord.NEXT_AVAIL, q.nextAvail);
    s.queueSet(queueIndex, QueueWord.NEXT_USED, q.nextUsed);
    if (served === 0) return;
    Atomics.add(words, TRANSPORT_WORDS.requestsCompleted, served);
    if (q.wantsInterrupt()) {
      s.words.or('interruptStatus', Interrupt.USED_BUFFER);
      Atomics.add(words, TRANSPORT_WORDS.interruptsSent, 1);
      eventfdNotify(d.spec.irqFd);
      trace?.interrupt();
    }
  }

  /** Handles every pending message; true when told to stop. */
  private async handleMessages(): Promise<boolean> {
    for (;;) {
      const received = receiveMessageOnPort(this.data.port);
      if (!received) return false;
      const m = received.message as ToIoWorker;
      switch (m.type) {
        case 'stop':
          trace?.report();
          this.syncAll(this.devices);
          for (const d of this.devices) closeObserver(d);
          this.post({ type: 'stopped' });
          return true;
        case 'quiesce':
          this.quiesce(m.id, m.disks, m.sync);
          break;
        case 'resume':
          this.resume(m.id);
          break;
        case 'set-observer':
          await this.setObserver(m.id, m.disk, m.observer);
          break;
      }
    }
  }

  /** Single-threaded, so at this instant no request of any disk is half done; pausing keeps it so. */
  private quiesce(id: number, disks: number[], sync: boolean): void {
    const devices = disks.map((i) => this.devices[i]).filter((d): d is ServedDevice => d !== undefined);
    for (const d of devices) d.pauses++;
    this.quiesces.set(id, devices);
    this.invalidatePollSet();
    try {
      if (sync) this.syncAll(devices);
      this.post({ type: 'quiesced', id });
    } catch (err) {
      this.post({ type: 'quiesced', id, error: (err as Error).message });
    }
  }

  private resume(id: number): void {
    const devices = this.quiesces.get(id) ?? [];
    this.quiesces.delete(id);
    for (const d of devices) d.pauses--;
    this.invalidatePollSet();
    for (const d of devices) {
      if (d.pauses === 0) {
        if (!d.queues) this.tryClaim(d);
        else this.serveAll(d);
      }
    }
  }

  private async setObserver(id: number, disk: number, descriptor: IoWorkerDisk['observer'] | null): Promise<void> {
    const d = this.devices[disk];
    try {
      if (!d) throw new Error(`no disk ${disk}`);
      const next = descriptor ? await loadObserver(descriptor, d.observedDisk) : null;
      closeObserver(d);
      d.handler.observer = next;
      this.post({ type: 'observer-set', id });
    } catch (err) {
      this.post({ type: 'observer-set', id, error: (err as Error).message });
    }
  }

  private syncAll(devices: ServedDevice[]): void {
    for (const d of devices) if (!d.spec.readOnly) fs.fdatasyncSync(d.spec.imageFd);
  }
}

if ((workerData as Partial<IoWorkerData> | null)?.kind === IO_WORKER_KIND) {
  const data = workerData as IoWorkerData;
  await new IoWorker(data).run();
  data.port.close();
}
