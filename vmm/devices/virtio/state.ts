// The state of one virtio-mmio device, in a SharedArrayBuffer that the vCPU workers (register accesses),
// the virtio I/O worker (queues, interrupt status) and the main thread (set-up, snapshots) all see.
// Layout: word 0 is the SharedWords lock, then the named transport words, then one block of words per
// queue, then the device-specific config space bytes. Copying the SAB copies the whole device state.
import { SharedWords, wordLayout } from '../shared-state.js';

export const TRANSPORT_WORDS = wordLayout([
  'status',
  'deviceFeaturesSel',
  'driverFeaturesSel',
  'driverFeaturesLo',
  'driverFeaturesHi',
  'deviceFeaturesLo',
  'deviceFeaturesHi',
  'deviceId',
  'numQueues',
  'queueNumMax',
  'queueSel',
  'interruptStatus',
  'configGeneration',
  'configSize',
  /** Incremented by every reset; the I/O worker serves one epoch and lets go when it changes. */
  'epoch',
  /** 1 while the I/O worker uses this device's queues (guest memory named by them). */
  'ioServing',
  /** 1 while an I/O worker is running for this device; a reset only waits for a running worker. */
  'ioWorkerRunning',
  /** 1 once the owner closed the eventfds: the transport must not signal them any more. */
  'closed',
  // Counters (wrapping u32) for status and diagnostics:
  /** QueueNotify writes that reached the register instead of the ioeventfd (normally 0). */
  'notifyRegisterWrites',
  /** Requests the I/O worker completed. */
  'requestsCompleted',
  /** Used-buffer interrupts the I/O worker injected. */
  'interruptsSent',
] as const);

export type TransportField = keyof typeof TRANSPORT_WORDS;

/** Per-queue words, at QUEUE_BASE_WORD + queue * QUEUE_STRIDE_WORDS + field. */
export const QueueWord = {
  NUM: 0,
  READY: 1,
  DESC_LO: 2,
  DESC_HI: 3,
  AVAIL_LO: 4,
  AVAIL_HI: 5,
  USED_LO: 6,
  USED_HI: 7,
  /** The device's next avail index to consume (u16), kept here so a snapshot carries it. */
  NEXT_AVAIL: 8,
  /** The device's next used index to publish (u16). */
  NEXT_USED: 9,
} as const;

export const MAX_QUEUES = 8;
export const QUEUE_BASE_WORD = 32;
export const QUEUE_STRIDE_WORDS = 16;
export const CONFIG_BYTE_OFFSET = (QUEUE_BASE_WORD + MAX_QUEUES * QUEUE_STRIDE_WORDS) * 4;
export const MAX_CONFIG_SIZE = 256;
export const STATE_SIZE = CONFIG_BYTE_OFFSET + MAX_CONFIG_SIZE;

/** Static facts a device model hands the transport when its state is allocated. */
export interface DeviceIdentity {
  deviceId: number;
  features: bigint;
  numQueues: number;
  queueNumMax: number;
  config: Uint8Array;
}

export class VirtioMmioState {
  readonly words: SharedWords<typeof TRANSPORT_WORDS>;
  readonly config: Uint8Array;

  constructor(readonly sab: SharedArrayBuffer) {
    if (sab.byteLength !== STATE_SIZE) throw new Error(`virtio-mmio state must be ${STATE_SIZE} bytes, got ${sab.byteLength}`);
    this.words = new SharedWords(sab, TRANSPORT_WORDS);
    this.config = new Uint8Array(sab, CONFIG_BYTE_OFFSET, MAX_CONFIG_SIZE);
  }

  static allocate(id: DeviceIdentity): VirtioMmioState {
    if (id.numQueues < 1 || id.numQueues > MAX_QUEUES) throw new Error(`virtio-mmio: ${id.numQueues} queues (1..${MAX_QUEUES})`);
    if (id.config.length > MAX_CONFIG_SIZE) throw new Error(`virtio-mmio: config space of ${id.config.length} bytes`);
    const s = new VirtioMmioState(new SharedArrayBuffer(STATE_SIZE));
    const w = s.words;
    w.set('deviceId', id.deviceId);
    w.set('deviceFeaturesLo', Number(id.features & 0xffffffffn));
    w.set('deviceFeaturesHi', Number(id.features >> 32n));
    w.set('numQueues', id.numQueues);
    w.set('queueNumMax', id.queueNumMax);
    w.set('configSize', id.config.length);
    s.config.set(id.config);
    return s;
  }

  get(field: TransportField): number {
    return this.words.get(field);
  }

  set(field: TransportField, value: number): void {
    this.words.set(field, value);
  }

  get deviceFeatures(): bigint {
    return (BigInt(this.get('deviceFeaturesHi')) << 32n) | BigInt(this.get('deviceFeaturesLo'));
  }

  get driverFeatures(): bigint {
    return (BigInt(this.get('driverFeaturesHi')) << 32n) | BigInt(this.get('driverFeaturesLo'));
  }

  queueWordIndex(queue: number, field: number): number {
    return QUEUE_BASE_WORD + queue * QUEUE_STRIDE_WORDS + field;
  }

  queueGet(queue: number, field: number): number {
    return Atomics.load(this.words.words, this.queueWordIndex(queue, field)) >>> 0;
  }

  queueSet(queue: number, field: number, value: number): void {
    Atomics.store(this.words.words, this.queueWordIndex(queue, field), value | 0);
  }

  /** A 64-bit guest address from its two words (exact below 2^53; larger values are never RAM). */
  queueAddress(queue: number, loField: number): number {
    return this.queueGet(queue, loField) + this.queueGet(queue, loField + 1) * 0x1_0000_0000;
  }

  /** Clears everything a reset clears: status, negotiated features, queues, interrupt status. */
  clearForReset(): void {
    const w = this.words;
    w.set('status', 0);
    w.set('deviceFeaturesSel', 0);
    w.set('driverFeaturesSel', 0);
    w.set('driverFeaturesLo', 0);
    w.set('driverFeaturesHi', 0);
    w.set('queueSel', 0);
    w.set('interruptStatus', 0);
    for (let q = 0; q < MAX_QUEUES; q++) {
      for (let f = 0; f < QUEUE_STRIDE_WORDS; f++) this.queueSet(q, f, 0);
    }
  }
}
