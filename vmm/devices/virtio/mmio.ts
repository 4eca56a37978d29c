// The virtio-mmio v2 transport: the register file a guest driver reads and writes, run on whichever vCPU
// worker took the MMIO exit. All state is in the device's SharedArrayBuffer (state.ts); queue processing
// happens in the virtio I/O worker, which this transport wakes through eventfds:
//   - QueueNotify normally never gets here (KVM's ioeventfd signals the queue's eventfd directly); when it
//     does, the transport signals the same eventfd.
//   - DRIVER_OK and reset signal the I/O worker's control eventfd. A reset waits until the I/O worker has
//     let go of the queues (ioServing = 0), so the guest may reuse the ring memory once the write returns.
import type { BusDevice } from '../bus.js';
import { Feature, MMIO_MAGIC, MMIO_VENDOR_ID, MMIO_VERSION, MmioReg, Status } from './abi.js';
import { MAX_CONFIG_SIZE, QueueWord, TRANSPORT_WORDS, VirtioMmioState } from './state.js';
import { eventfdNotify } from './sys.js';

/** What every worker needs to build the same transport (structured-cloneable). */
export interface VirtioMmioDescriptor {
  kind: 'virtio-mmio';
  /** Guest-physical base of the 4 KiB register window. */
  base: number;
  length: number;
  gsi: number;
  state: SharedArrayBuffer;
  /** One eventfd per queue: the ioeventfd KVM signals for a write of the queue index at base + 0x50. */
  queueNotifyFds: number[];
  /** The I/O worker's control eventfd (DRIVER_OK and reset notices). */
  controlFd: number;
}

/** How long a reset waits between checks that the I/O worker is still alive. */
const RESET_WAIT_SLICE_MS = 100;

const QUEUE_REGISTER_FIELDS: ReadonlyMap<number, number> = new Map([
  [MmioReg.QUEUE_DESC_LOW, QueueWord.DESC_LO],
  [MmioReg.QUEUE_DESC_HIGH, QueueWord.DESC_HI],
  [MmioReg.QUEUE_AVAIL_LOW, QueueWord.AVAIL_LO],
  [MmioReg.QUEUE_AVAIL_HIGH, QueueWord.AVAIL_HI],
  [MmioReg.QUEUE_USED_LOW, QueueWord.USED_LO],
  [MmioReg.QUEUE_USED_HIGH, QueueWord.USED_HI],
]);

export class VirtioMmioTransport implements BusDevice {
  readonly state: VirtioMmioState;

  constructor(readonly descriptor: VirtioMmioDescriptor) {
    this.state = new VirtioMmioState(descriptor.state);
  }

  read(offset: number, data: Uint8Array): void {
    if (offset >= MmioReg.CONFIG) {
      this.readConfig(offset - MmioReg.CONFIG, data);
      return;
    }
    // The spec requires 32-bit accesses to the registers; anything else reads as zero.
    if (data.length !== 4 || offset % 4 !== 0) {
      data.fill(0);
      return;
    }
    const v = this.readRegister(offset) >>> 0;
    data[0] = v & 0xff;
    data[1] = (v >>> 8) & 0xff;
    data[2] = (v >>> 16) & 0xff;
    data[3] = v >>> 24;
  }

  write(offset: number, data: Uint8Array): void {
    if (offset >= MmioReg.CONFIG) return; // virtio-blk has no writable config field we offer
    if (data.length !== 4 || offset % 4 !== 0) return;
    const v = (data[0]! | (data[1]! << 8) | (data[2]! << 16) | (data[3]! << 24)) >>> 0;
    this.writeRegister(offset, v);
  }

  private readConfig(offset: number, data: Uint8Array): void {
    const size = Math.min(this.state.get('configSize'), MAX_CONFIG_SIZE);
    for (let i = 0; i < data.length; i++) data[i] = offset + i < size ? this.state.config[offset + i]! : 0;
  }

  private selectedQueue(): number {
    const q = this.state.get('queueSel');
    return q < this.state.get('numQueues') ? q : -1;
  }

  private readRegister(offset: number): number {
    const s = this.state;
    switch (offset) {
      case MmioReg.MAGIC_VALUE:
        return MMIO_MAGIC;
      case MmioReg.VERSION:
        return MMIO_VERSION;
      case MmioReg.DEVICE_ID:
        return s.get('deviceId');
      case MmioReg.VENDOR_ID:
        return MMIO_VENDOR_ID;
      case MmioReg.DEVICE_FEATURES: {
        const sel = s.get('deviceFeaturesSel');
        return sel === 0 ? s.get('deviceFeaturesLo') : sel === 1 ? s.get('deviceFeaturesHi') : 0;
      }
      case MmioReg.QUEUE_NUM_MAX:
        return this.selectedQueue() >= 0 ? s.get('queueNumMax') : 0;
      case MmioReg.QUEUE_NUM: {
        const q = this.selectedQueue();
        return q >= 0 ? s.queueGet(q, QueueWord.NUM) : 0;
      }
      case MmioReg.QUEUE_READY: {
        const q = this.selectedQueue();
        return q >= 0 ? s.queueGet(q, QueueWord.READY) : 0;
      }
      case MmioReg.INTERRUPT_STATUS:
        return s.get('interruptStatus');
      case MmioReg.STATUS:
        return s.get('status');
      case MmioReg.CONFIG_GENERATION:
        return s.get('configGeneration');
      default: {
        const field = QUEUE_REGISTER_FIELDS.get(offset);
        const q = this.selectedQueue();
        return field !== undefined && q >= 0 ? s.queueGet(q, field) : 0;
      }
    }
  }

  private writeRegister(offset: number, v: number): void {
    const s = this.state;
    switch (offset) {
      case MmioReg.DEVICE_FEATURES_SEL:
        s.set('deviceFeaturesSel', v);
        return;
      case MmioReg.DRIVER_FEATURES_SEL:
        s.set('driverFeaturesSel', v);
        return;
      case MmioReg.DRIVER_FEATURES:
        s.words.locked(() => {
          if (s.get('status') & Status.FEATURES_OK) return; // features are frozen once accepted
          const sel = s.get('driverFeaturesSel');
          if (sel === 0) s.set('driverFeaturesLo', v);
          else if (sel === 1) s.set('driverFeaturesHi', v);
        });
        return;
      case MmioReg.QUEUE_SEL:
        s.set('queueSel', v);
        return;
      case MmioReg.QUEUE_NUM:
        this.writeQueueField(QueueWord.NUM, v);
        return;
      case MmioReg.QUEUE_READY:
        this.writeQueueField(QueueWord.READY, v & 1, true);
        return;
      case MmioReg.QUEUE_NOTIFY:
        this.notifyQueue(v);
        return;
      case MmioReg.INTERRUPT_ACK:
        s.words.and('interruptStatus', ~v);
        return;
      case MmioReg.STATUS:
        if (v === 0) this.reset();
        else this.writeStatus(v);
        return;
      default: {
        const field = QUEUE_REGISTER_FIELDS.get(offset);
        if (field !== undefined) this.writeQueueField(field, v);
      }
    }
  }

  /** Queue configuration may change only while the queue is not ready and the driver is not running. */
  private writeQueueField(field: number, v: number, isReady = false): void {
    const s = this.state;
    s.words.locked(() => {
      const q = this.selectedQueue();
      if (q < 0 || s.get('status') & Status.DRIVER_OK) return;
      if (!isReady && s.queueGet(q, QueueWord.READY)) return;
      s.queueSet(q, field, v);
    });
  }

  private writeStatus(v: number): void {
    const s = this.state;
    let driverNowOk = false;
    s.words.locked(() => {
      const old = s.get('status');
      let next = (v & ~Status.NEEDS_RESET) | (old & Status.NEEDS_RESET); // NEEDS_RESET is the device's bit
      if (next & Status.FEATURES_OK && !(old & Status.FEATURES_OK)) {
        const driver = s.driverFeatures;
        const acceptable = (driver & ~s.deviceFeatures) === 0n && (driver & (1n << BigInt(Feature.VERSION_1))) !== 0n;
        if (!acceptable) next &= ~Status.FEATURES_OK; // the driver reads FEATURES_OK back and gives up
      }
      s.set('status', next);
      driverNowOk = (next & Status.DRIVER_OK) !== 0 && (old & Status.DRIVER_OK) === 0;
      if (driverNowOk) this.signalLocked(this.descriptor.controlFd);
    });
  }

  private notifyQueue(queue: number): void {
    const fd = this.descriptor.queueNotifyFds[queue];
    if (fd === undefined) return;
    Atomics.add(this.state.words.words, TRANSPORT_WORDS.notifyRegisterWrites, 1);
    this.state.words.locked(() => this.signalLocked(fd));
  }

  /** Signals an eventfd owned by the device set, unless the set already closed it (fd numbers get reused). */
  private signalLocked(fd: number): void {
    if (this.state.get('closed') === 0) eventfdNotify(fd);
  }

  /**
   * Device reset: bump the epoch so the I/O worker drops this device's queues, wait until it has (it
   * finishes the request in hand, then lets go), then clear the transport state.
   */
  private reset(): void {
    const s = this.state;
    const words = s.words.words;
    const servingIndex = TRANSPORT_WORDS.ioServing;
    let serving = false;
    s.words.locked(() => {
      s.set('epoch', (s.get('epoch') + 1) >>> 0);
      s.set('status', 0);
      serving = s.get('ioServing') !== 0;
      if (serving) this.signalLocked(this.descriptor.controlFd);
    });
    while (serving && Atomics.load(words, servingIndex) !== 0 && s.get('ioWorkerRunning') === 1) {
      Atomics.wait(words, servingIndex, 1, RESET_WAIT_SLICE_MS);
    }
    s.words.locked(() => s.clearForReset());
  }
}

/** Builds the transport's register interface over the shared state, in any worker. */
export function createVirtioBusDevice(descriptor: VirtioMmioDescriptor): BusDevice {
  if (descriptor.kind !== 'virtio-mmio') throw new Error(`not a virtio-mmio descriptor: ${String(descriptor.kind)}`);
  return new VirtioMmioTransport(descriptor);
}
