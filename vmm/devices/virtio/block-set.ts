// The main thread's handle on a VM's virtio-blk disks: opens the images, lays out one virtio-mmio device
// per disk (shared state, eventfds, KVM ioeventfd/irqfd registrations), hands descriptors to the vCPU
// workers and the ACPI builder, and runs the I/O worker that serves all the queues.
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { VIRTIO_MMIO_SIZE, virtioGsi, virtioMmioBase } from '../../layout.js';
import type { GuestMemory } from '../../memory.js';
import * as libc from '../../sys/libc.js';
import { DeviceId, MmioReg } from './abi.js';
import { BLOCK_QUEUE_SIZE, blockConfigSpace, blockFeatures } from './block.js';
import { openDiskImages, type DiskImageSpec, type OpenedImage } from './image.js';
import { IO_WORKER_KIND, type FromIoWorker, type IoWorkerData, type ToIoWorker } from './io-protocol.js';
import type { VirtioMmioDescriptor } from './mmio.js';
import type { ObserverDescriptor } from './observer.js';
import { QueueWord, TRANSPORT_WORDS, VirtioMmioState } from './state.js';
import { eventfdNotify, pollReadableAsync } from './sys.js';

export interface DiskSpec extends DiskImageSpec {
  /** A write observer installed before the first request is served (see docs/virtio.md). */
  observer?: ObserverDescriptor;
}

/** The two KVM registrations the devices need from the VM (any eventfd works without a VM, e.g. in tests). */
export interface VirtioVm {
  registerIoeventfd(addr: number, length: number, datamatch: number, fd: number): void;
  registerIrqfd(gsi: number, fd: number): void;
}

export interface VirtioContext {
  memory: GuestMemory;
  vm: VirtioVm;
  /** virtio-mmio slot of the first disk: disk k uses virtioMmioBase(firstIndex + k), virtioGsi(firstIndex + k). */
  firstIndex: number;
}

export interface AcpiVirtioDevice {
  base: number;
  size: number;
  gsi: number;
}

export interface BlockDiskInfo {
  /** Position in the set (the order of the specs). */
  disk: number;
  /** virtio-mmio slot (firstIndex + disk). */
  deviceIndex: number;
  path: string;
  readOnly: boolean;
  sizeBytes: number;
  serial: string;
  base: number;
  gsi: number;
}

/** Counters of one disk (wrapping u32), for status output and diagnostics. */
export interface BlockDiskStats {
  disk: number;
  /** The driver's device status byte (virtio Status bits). */
  deviceStatus: number;
  requestsCompleted: number;
  interruptsSent: number;
  /** QueueNotify writes that reached the register rather than the ioeventfd: 0 when KVM delivers them. */
  notifyRegisterWrites: number;
}

export interface QuiesceOptions {
  /** fdatasync the quiesced images before running the callback (a consistency point on stable storage). */
  sync?: boolean;
}

interface Device {
  info: BlockDiskInfo;
  image: OpenedImage;
  state: VirtioMmioState;
  queueFds: number[];
  irqFd: number;
  observer?: ObserverDescriptor;
}

const STOP_TIMEOUT_MS = 60_000;

/**
 * Events: 'warning' ({ disk, message }) for guest or I/O errors the I/O worker reported (rate-limited);
 * 'error' (Error) if the I/O worker died while running: the VM's disks are then dead and the VMM should stop.
 */
export class VirtioBlockSet extends EventEmitter {
  private worker: Worker | null = null;
  /** Our end of the channel to the I/O worker: set from start (or arming) until the worker is gone. */
  private port: MessagePort | null = null;
  /** The worker's end, until it is handed to the worker (messages sent before that wait in it). */
  private workerPort: MessagePort | null = null;
  /** Set while startOnFirstNotification() waits for the guest's first queue notification. */
  private armed: { wakeFd: number; polled: Promise<void> } | null = null;
  private onReady: { resolve: () => void; reject: (err: Error) => void } | null = null;
  private workerExited: Promise<void> = Promise.resolve();
  private readonly pending = new Map<number, { resolve: (error?: string) => void }>();
  private nextRequestId = 1;
  private closed = false;

  private constructor(
    private readonly memory: GuestMemory,
    private readonly devices: Device[],
    private readonly controlFd: number,
  ) {
    super();
  }

  /** Validates and opens the images, allocates device state and eventfds, registers them with the VM. */
  static open(specs: readonly DiskSpec[], ctx: VirtioContext): VirtioBlockSet {
    const images = openDiskImages(specs);
    const fds: number[] = [];
    const eventfd = () => {
      const fd = libc.eventfd(libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
      fds.push(fd);
      return fd;
    };
    try {
      const controlFd = eventfd();
      const devices = images.map((image, disk): Device => {
        const deviceIndex = ctx.firstIndex + disk;
        const base = virtioMmioBase(deviceIndex);
        const gsi = virtioGsi(deviceIndex);
        const state = VirtioMmioState.allocate({
          deviceId: DeviceId.BLOCK,
          features: blockFeatures(image.readOnly),
          numQueues: 1,
          queueNumMax: BLOCK_QUEUE_SIZE,
          config: blockConfigSpace(image.sizeBytes),
        });
        const queueFds = [eventfd()];
        const irqFd = eventfd();
        queueFds.forEach((fd, queue) => ctx.vm.registerIoeventfd(base + MmioReg.QUEUE_NOTIFY, 4, queue, fd));
        ctx.vm.registerIrqfd(gsi, irqFd);
        const info: BlockDiskInfo = { disk, deviceIndex, path: image.path, readOnly: image.readOnly, sizeBytes: image.sizeBytes, serial: image.serial, base, gsi };
        return { info, image, state, queueFds, irqFd, observer: specs[disk]!.observer };
      });
      return new VirtioBlockSet(ctx.memory, devices, controlFd);
    } catch (err) {
      for (const fd of fds) libc.close(fd);
      for (const image of images) fs.closeSync(image.fd);
      throw err;
    }
  }

  get disks(): readonly BlockDiskInfo[] {
    return this.devices.map((d) => d.info);
  }

  stats(): BlockDiskStats[] {
    return this.devices.map((d) => ({
      disk: d.info.disk,
      deviceStatus: d.state.get('status'),
      requestsCompleted: d.state.get('requestsCompleted'),
      interruptsSent: d.state.get('interruptsSent'),
      notifyRegisterWrites: d.state.get('notifyRegisterWrites'),
    }));
  }

  /**
   * Requests the guest has made available and the device has not taken yet, over every ready queue
   * (the avail ring's idx in guest memory minus the saved next-avail position). For reports: a restored
   * VM stopped while its disks were held says how many requests never reached an image.
   */
  waitingRequests(): number {
    let waiting = 0;
    for (const d of this.devices) {
      for (let q = 0; q < d.state.get('numQueues'); q++) {
        if (!d.state.queueGet(q, QueueWord.READY)) continue;
        try {
          const idx = Buffer.from(this.memory.slice(d.state.queueAddress(q, QueueWord.AVAIL_LO) + 2, 2)).readUInt16LE(0);
          waiting += (idx - d.state.queueGet(q, QueueWord.NEXT_AVAIL)) & 0xffff;
        } catch {
          // A ring address outside RAM: the driver never set this queue up properly; nothing waits there.
        }
      }
    }
    return waiting;
  }

  /**
   * Copies of each disk's device state (transport registers, negotiated features, queue addresses and
   * ring positions, interrupt status), for a snapshot. Take them with the vCPUs paused and inside
   * quiesce('all', ...), so ring positions and guest memory agree.
   */
  saveStates(): Uint8Array[] {
    return this.devices.map((d) => d.state.words.locked(() => new Uint8Array(d.state.sab).slice()));
  }

  /**
   * Restores states from saveStates() into this set before start(): the guest's driver finds its devices
   * as they were, and the I/O worker resumes each queue at its saved position. The disks must be the
   * same kind and size (features and config space must match).
   */
  loadStates(states: readonly Uint8Array[]): void {
    if (this.port || this.worker || this.closed) throw new Error('load device states before start()');
    if (states.length !== this.devices.length) throw new Error(`the saved state has ${states.length} virtio-blk disks, this VM has ${this.devices.length}`);
    this.devices.forEach((d, k) => {
      const saved = states[k]!;
      if (saved.byteLength !== d.state.sab.byteLength) throw new Error(`saved state of disk ${k} is ${saved.byteLength} bytes, expected ${d.state.sab.byteLength}`);
      const incoming = new VirtioMmioState(new SharedArrayBuffer(saved.byteLength));
      new Uint8Array(incoming.sab).set(saved);
      const same =
        incoming.get('deviceId') === d.state.get('deviceId') &&
        incoming.deviceFeatures === d.state.deviceFeatures &&
        incoming.get('configSize') === d.state.get('configSize') &&
        Buffer.from(incoming.config).equals(Buffer.from(d.state.config));
      if (!same) throw new Error(`saved state of disk ${k} is for a different device (features or size differ from ${d.info.path})`);
      // Runtime words belong to this process, not to the snapshot.
      for (const f of ['ioServing', 'ioWorkerRunning', 'closed'] as const) incoming.set(f, 0);
      incoming.words.words[0] = 0; // the lock
      new Uint8Array(d.state.sab).set(new Uint8Array(incoming.sab));
    });
  }

  /** One descriptor per disk for the vCPU workers' buses (createVirtioBusDevice). */
  descriptors(): VirtioMmioDescriptor[] {
    return this.devices.map((d) => ({
      kind: 'virtio-mmio',
      base: d.info.base,
      length: VIRTIO_MMIO_SIZE,
      gsi: d.info.gsi,
      state: d.state.sab,
      queueNotifyFds: d.queueFds,
      controlFd: this.controlFd,
    }));
  }

  /** What the DSDT declares for each disk (LNRO0005 devices). */
  acpiDevices(): AcpiVirtioDevice[] {
    return this.devices.map((d) => ({ base: d.info.base, size: VIRTIO_MMIO_SIZE, gsi: d.info.gsi }));
  }

  /** Starts the I/O worker; resolves once it serves the queues (write observers loaded). */
  start(): Promise<void> {
    const ready = this.openChannel();
    if (this.workerPort) this.spawn();
    return ready;
  }

  /**
   * Like start(), but the I/O worker (a Node thread: ~35 ms of CPU to start) is spawned only when the
   * guest first notifies a queue, so that a booting guest that does not touch its disks yet does not
   * share the CPU with it. Until then no request can be in flight: the notifications wait in their
   * eventfds (polled here from a libuv pool thread), quiesce() holds at once, and the worker handles
   * every message sent before it started before it serves. Resolves once the worker serves, or when the
   * set is stopped before any notification (`ioWorkerStarted` tells which).
   */
  startOnFirstNotification(): Promise<void> {
    const ready = this.openChannel();
    if (!this.workerPort) return ready;
    const wakeFd = libc.eventfd(libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
    const polled = pollReadableAsync([wakeFd, ...this.devices.flatMap((d) => d.queueFds)]).then(() => {
      libc.close(wakeFd);
      this.armed = null;
      if (this.closed) this.onReady?.resolve();
      else {
        try {
          this.spawn();
        } catch (err) {
          this.onReady?.reject(new Error(`virtio-blk I/O worker failed to start: ${(err as Error).message}`));
        }
      }
    });
    this.armed = { wakeFd, polled };
    return ready;
  }

  /** Whether the I/O worker thread has been spawned (it may still be starting). */
  get ioWorkerStarted(): boolean {
    return this.worker !== null;
  }

  /** The channel to the worker, before the worker exists; resolves once the worker serves. */
  private openChannel(): Promise<void> {
    if (this.closed) return Promise.reject(new Error('virtio-blk set is stopped'));
    if (this.port) return Promise.reject(new Error('virtio-blk I/O worker already started'));
    const channel = new MessageChannel();
    this.port = channel.port1;
    this.workerPort = channel.port2;
    for (const d of this.devices) d.state.set('ioWorkerRunning', 1);
    return new Promise<void>((resolve, reject) => {
      this.onReady = { resolve, reject };
      this.port!.on('message', (m: FromIoWorker) => {
        if (m.type === 'ready') {
          this.onReady = null;
          resolve();
        } else if (m.type === 'warning') {
          this.emit('warning', { disk: m.disk, message: m.message });
        } else if (m.type === 'quiesced' || m.type === 'observer-set') {
          this.pending.get(m.id)?.resolve(m.error);
          this.pending.delete(m.id);
        }
      });
    });
  }

  private spawn(): void {
    const port = this.workerPort!;
    this.workerPort = null;
    const data: IoWorkerData = {
      kind: IO_WORKER_KIND,
      memory: this.memory.shared,
      controlFd: this.controlFd,
      port,
      disks: this.devices.map((d) => ({
        disk: d.info.disk,
        path: d.image.path,
        state: d.state.sab,
        queueFds: d.queueFds,
        irqFd: d.irqFd,
        imageFd: d.image.fd,
        readOnly: d.image.readOnly,
        sizeBytes: d.image.sizeBytes,
        serial: d.image.serialBytes,
        ...(d.observer ? { observer: d.observer } : {}),
      })),
    };
    // LIFEBOAT_VIRTIO_TRACE (io-trace.ts): when the worker was spawned, to compare with when it served.
    if (process.env['LIFEBOAT_VIRTIO_TRACE']) process.stderr.write(`virtio trace: spawn at ${(performance.timeOrigin + performance.now()).toFixed(1)} (epoch ms)\n`);
    const worker = new Worker(new URL('./io-worker.js', import.meta.url), { workerData: data, transferList: [port] });
    this.worker = worker;
    worker.on('error', (err) => {
      if (this.onReady) this.onReady.reject(new Error(`virtio-blk I/O worker failed to start: ${err.message}`));
      else if (!this.closed) this.emit('error', new Error(`virtio-blk I/O worker died: ${err.message}`));
    });
    this.workerExited = new Promise((done) => {
      worker.on('exit', (code) => {
        const starting = this.onReady;
        this.onReady = null;
        this.workerGone();
        if (starting) starting.reject(new Error(`virtio-blk I/O worker exited with code ${code} before it was ready`));
        else if (!this.closed) this.emit('error', new Error(`virtio-blk I/O worker exited unexpectedly (code ${code})`));
        done();
      });
    });
  }

  /** The worker is gone: vCPUs waiting in a reset must not wait for it, and pending requests fail. */
  private workerGone(): void {
    for (const d of this.devices) {
      d.state.set('ioWorkerRunning', 0);
      const words = d.state.words.words;
      Atomics.store(words, TRANSPORT_WORDS.ioServing, 0);
      Atomics.notify(words, TRANSPORT_WORDS.ioServing);
    }
    for (const p of this.pending.values()) p.resolve('the virtio-blk I/O worker is not running');
    this.pending.clear();
    this.port?.close();
    this.port = null;
    this.workerPort?.close();
    this.workerPort = null;
    this.worker = null;
  }

  private send(message: ToIoWorker): void {
    this.port!.postMessage(message);
    eventfdNotify(this.controlFd);
  }

  private request(make: (id: number) => ToIoWorker): Promise<void> {
    const id = this.nextRequestId++;
    return new Promise<void>((resolve, reject) => {
      this.pending.set(id, { resolve: (error) => (error ? reject(new Error(error)) : resolve()) });
      this.send(make(id));
    });
  }

  /**
   * Runs `fn` at an instant when no request of the given disks is half done, and keeps them so until `fn`
   * settles: requests already taken are completed first, new ones wait. Other disks keep running.
   */
  async quiesce<T>(disks: readonly number[] | 'all', fn: () => T | Promise<T>, options: QuiesceOptions = {}): Promise<T> {
    const list = disks === 'all' ? this.devices.map((d) => d.info.disk) : [...disks];
    for (const k of list) if (!this.devices[k]) throw new Error(`no disk ${k} (this VM has ${this.devices.length})`);
    if (this.closed) throw new Error('virtio-blk set is stopped');
    const syncHere = () => {
      if (options.sync) for (const k of list) if (!this.devices[k]!.image.readOnly) fs.fdatasyncSync(this.devices[k]!.image.fd);
    };
    if (!this.port) {
      syncHere();
      return await fn();
    }
    if (!this.worker) {
      // Not spawned yet (startOnFirstNotification): nothing is in flight now, and the worker, should the
      // guest notify meanwhile, handles this hold before it serves anything.
      const id = this.nextRequestId++;
      this.send({ type: 'quiesce', id, disks: list, sync: false });
      try {
        syncHere();
        return await fn();
      } finally {
        if (this.port) this.send({ type: 'resume', id });
      }
    }
    let id = 0;
    await this.request((i) => {
      id = i;
      return { type: 'quiesce', id: i, disks: list, sync: options.sync ?? false };
    }).catch((err: Error) => {
      if (this.port) this.send({ type: 'resume', id });
      throw err;
    });
    try {
      return await fn();
    } finally {
      if (this.port) this.send({ type: 'resume', id });
    }
  }

  /** Installs (or with null removes) the write observer of one disk, between two requests. */
  async setObserver(disk: number, observer: ObserverDescriptor | null): Promise<void> {
    const d = this.devices[disk];
    if (!d) throw new Error(`no disk ${disk} (this VM has ${this.devices.length})`);
    if (this.closed) throw new Error('virtio-blk set is stopped');
    if (observer) d.observer = observer;
    else delete d.observer;
    if (this.worker) await this.request((id) => ({ type: 'set-observer', id, disk, observer }));
  }

  /**
   * Completes the requests in hand, stops the I/O worker, fdatasyncs the writable images and closes
   * everything. Stop the vCPUs first: afterwards the devices no longer answer queue notifications.
   */
  async stop(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.armed) {
      eventfdNotify(this.armed.wakeFd);
      await this.armed.polled; // the queue fds are closed below: the pool thread's poll must be over
    }
    const worker = this.worker;
    if (worker && this.port) {
      this.send({ type: 'stop' });
      const timeout = setTimeout(() => void worker.terminate(), STOP_TIMEOUT_MS);
      await this.workerExited;
      clearTimeout(timeout);
    }
    this.workerGone();
    const errors: string[] = [];
    for (const d of this.devices) {
      if (!d.image.readOnly) {
        try {
          fs.fdatasyncSync(d.image.fd);
        } catch (err) {
          errors.push(`${d.image.path}: ${(err as Error).message}`);
        }
      }
    }
    for (const d of this.devices) {
      d.state.words.locked(() => d.state.set('closed', 1));
      for (const fd of [...d.queueFds, d.irqFd]) libc.close(fd);
      fs.closeSync(d.image.fd);
    }
    libc.close(this.controlFd);
    if (errors.length) throw new Error(`flushing disk images failed: ${errors.join('; ')}`);
  }
}
