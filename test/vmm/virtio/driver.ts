// A virtio-blk driver written the way a guest kernel's is, for tests without a guest: it initialises the
// device through the real virtio-mmio register interface (createVirtioBusDevice), builds descriptor
// chains and rings in real guest memory, notifies through the eventfd the VMM registered as the queue's
// ioeventfd (exactly what KVM does on a QueueNotify write), and waits on the irqfd eventfd (exactly what
// KVM would turn into an interrupt).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BusDevice } from '../../../vmm/devices/bus.js';
import {
  Avail,
  BlkConfig,
  BlkDiscardSegment,
  BlkReqHeader,
  BlkReqType,
  Desc,
  DescFlag,
  DeviceId,
  Feature,
  MMIO_MAGIC,
  MmioReg,
  Status,
  Used,
} from '../../../vmm/devices/virtio/abi.js';
import { VirtioBlockSet, createVirtioBusDevice, type DiskSpec, type VirtioVm } from '../../../vmm/devices/virtio/index.js';
import { GuestMemory } from '../../../vmm/memory.js';
import * as libc from '../../../vmm/sys/libc.js';

/** Records the registrations a KVM VM would get; the eventfds are the real ones the devices use. */
export class EventfdVm implements VirtioVm {
  readonly ioeventfds: { addr: number; length: number; datamatch: number; fd: number }[] = [];
  readonly irqfds: { gsi: number; fd: number }[] = [];

  registerIoeventfd(addr: number, length: number, datamatch: number, fd: number): void {
    this.ioeventfds.push({ addr, length, datamatch, fd });
  }

  registerIrqfd(gsi: number, fd: number): void {
    this.irqfds.push({ gsi, fd });
  }

  notifyFd(base: number, queue: number): number {
    const e = this.ioeventfds.find((x) => x.addr === base + MmioReg.QUEUE_NOTIFY && x.datamatch === queue);
    if (!e) throw new Error(`no ioeventfd for 0x${base.toString(16)} queue ${queue}`);
    return e.fd;
  }

  irqFd(gsi: number): number {
    const e = this.irqfds.find((x) => x.gsi === gsi);
    if (!e) throw new Error(`no irqfd for GSI ${gsi}`);
    return e.fd;
  }
}

/** A bump allocator over a range of guest RAM. */
export class GuestHeap {
  constructor(private next: number, private readonly end: number) {}

  /** Continues after everything `other` handed out (same range of guest RAM). */
  continueFrom(other: GuestHeap): void {
    this.next = Math.max(this.next, other.next);
  }

  alloc(size: number, align = 16): number {
    const at = Math.ceil(this.next / align) * align;
    if (at + size > this.end) throw new Error(`test guest heap exhausted (${size} bytes)`);
    this.next = at + size;
    return at;
  }
}

export interface Segment {
  gpa: number;
  length: number;
}

export interface Request {
  type: number;
  sector?: number;
  /** Data buffers (device-writable for IN and GET_ID, device-readable otherwise). */
  data?: Segment[];
  /** Put the whole chain in an indirect table. */
  indirect?: boolean;
  /** Override the status byte's address (to test bad chains). */
  statusGpa?: number;
  /** Raw descriptors instead of a well-formed chain (to test malformed chains). */
  rawChain?: { addr: number; len: number; flags: number; next: number }[];
}

export interface Completion {
  head: number;
  usedLength: number;
  status: number;
}

interface InFlight {
  descriptors: number[];
  statusGpa: number;
}

/** Per head descriptor: header (16 B), status (1 B), padding, then an indirect table of INDIRECT_SLOT_ENTRIES. */
const INDIRECT_SLOT_ENTRIES = 30;
const REQUEST_SLOT = 32 + INDIRECT_SLOT_ENTRIES * Desc.SIZE;

/** Rings of driver k live at RING_AREA + k * 64 KiB (below the 1 MiB where buffers start). */
const RING_AREA = 0x10000;

export class TestBlockDriver {
  readonly heap: GuestHeap;
  queueSize = 0;
  negotiated = 0n;
  private descGpa = 0;
  private availGpa = 0;
  private usedGpa = 0;
  private requestArea = 0;
  private availIdx = 0;
  private lastUsed = 0;
  private free: number[] = [];
  private readonly inFlight = new Map<number, InFlight>();
  private readonly reg = new Uint8Array(4);

  constructor(
    readonly memory: GuestMemory,
    readonly device: BusDevice,
    readonly notifyFd: number,
    readonly irqFd: number,
    heapStart: number,
    heapEnd: number,
    /** Where init() puts the rings unless told otherwise (each driver of a rig has its own). */
    private readonly defaultRingArea = RING_AREA,
  ) {
    this.heap = new GuestHeap(heapStart, heapEnd);
  }

  read32(offset: number): number {
    this.device.read(offset, this.reg);
    return new DataView(this.reg.buffer).getUint32(0, true);
  }

  write32(offset: number, value: number): void {
    new DataView(this.reg.buffer).setUint32(0, value >>> 0, true);
    this.device.write(offset, this.reg);
  }

  readConfig64(offset: number): bigint {
    for (;;) {
      const gen = this.read32(MmioReg.CONFIG_GENERATION);
      const lo = this.read32(MmioReg.CONFIG + offset);
      const hi = this.read32(MmioReg.CONFIG + offset + 4);
      if (this.read32(MmioReg.CONFIG_GENERATION) === gen) return (BigInt(hi) << 32n) | BigInt(lo);
    }
  }

  readConfig32(offset: number): number {
    return this.read32(MmioReg.CONFIG + offset);
  }

  deviceFeatures(): bigint {
    this.write32(MmioReg.DEVICE_FEATURES_SEL, 0);
    const lo = this.read32(MmioReg.DEVICE_FEATURES);
    this.write32(MmioReg.DEVICE_FEATURES_SEL, 1);
    const hi = this.read32(MmioReg.DEVICE_FEATURES);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  status(): number {
    return this.read32(MmioReg.STATUS);
  }

  reset(): void {
    this.write32(MmioReg.STATUS, 0);
    if (this.status() !== 0) throw new Error('device status did not read 0 after reset');
  }

  /**
   * The virtio 1.x initialisation sequence: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK (read back),
   * queue 0 set-up, DRIVER_OK. Returns the negotiated features.
   */
  init(options: { queueSize?: number; features?: (offered: bigint) => bigint; ringArea?: number } = {}): bigint {
    if (this.read32(MmioReg.MAGIC_VALUE) !== MMIO_MAGIC) throw new Error('bad magic');
    if (this.read32(MmioReg.VERSION) !== 2) throw new Error('not virtio-mmio version 2');
    if (this.read32(MmioReg.DEVICE_ID) !== DeviceId.BLOCK) throw new Error('not a block device');
    this.reset();
    this.write32(MmioReg.STATUS, Status.ACKNOWLEDGE);
    this.write32(MmioReg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER);
    const offered = this.deviceFeatures();
    const wanted = options.features ? options.features(offered) : offered;
    this.write32(MmioReg.DRIVER_FEATURES_SEL, 0);
    this.write32(MmioReg.DRIVER_FEATURES, Number(wanted & 0xffffffffn));
    this.write32(MmioReg.DRIVER_FEATURES_SEL, 1);
    this.write32(MmioReg.DRIVER_FEATURES, Number(wanted >> 32n));
    this.write32(MmioReg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
    if (!(this.status() & Status.FEATURES_OK)) throw new Error('device refused the features');
    this.negotiated = wanted;

    this.write32(MmioReg.QUEUE_SEL, 0);
    if (this.read32(MmioReg.QUEUE_READY) !== 0) throw new Error('queue 0 already ready');
    const max = this.read32(MmioReg.QUEUE_NUM_MAX);
    if (max === 0) throw new Error('queue 0 not available');
    const n = Math.min(options.queueSize ?? max, max);
    this.queueSize = n;
    const ring = options.ringArea ?? this.defaultRingArea;
    this.descGpa = ring;
    this.availGpa = ring + Desc.SIZE * n;
    this.usedGpa = Math.ceil((this.availGpa + Avail.size(n)) / 4096) * 4096;
    this.memory.slice(ring, this.usedGpa + Used.size(n) - ring).fill(0);
    this.write32(MmioReg.QUEUE_NUM, n);
    this.write32(MmioReg.QUEUE_DESC_LOW, this.descGpa);
    this.write32(MmioReg.QUEUE_DESC_HIGH, 0);
    this.write32(MmioReg.QUEUE_AVAIL_LOW, this.availGpa);
    this.write32(MmioReg.QUEUE_AVAIL_HIGH, 0);
    this.write32(MmioReg.QUEUE_USED_LOW, this.usedGpa);
    this.write32(MmioReg.QUEUE_USED_HIGH, 0);
    this.write32(MmioReg.QUEUE_READY, 1);
    this.availIdx = 0;
    this.lastUsed = 0;
    this.inFlight.clear();
    this.free = Array.from({ length: n }, (_, i) => i);
    this.requestArea = this.heap.alloc(n * REQUEST_SLOT, 16);
    this.write32(MmioReg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK);
    return wanted;
  }

  /** Continues the queue another driver instance set up (after its device state was restored elsewhere). */
  adopt(other: TestBlockDriver): void {
    this.queueSize = other.queueSize;
    this.negotiated = other.negotiated;
    this.descGpa = other.descGpa;
    this.availGpa = other.availGpa;
    this.usedGpa = other.usedGpa;
    this.availIdx = other.availIdx;
    this.lastUsed = other.lastUsed;
    this.requestArea = other.requestArea;
    this.heap.continueFrom(other.heap);
    this.free = [...other.free];
    this.inFlight.clear();
    for (const [k, v] of other.inFlight) this.inFlight.set(k, v);
  }

  /** Guest memory of the rings, for tests that check the device left them alone. */
  ringRange(): { gpa: number; length: number } {
    return { gpa: this.descGpa, length: this.usedGpa + Used.size(this.queueSize) - this.descGpa };
  }

  usedIdx(): number {
    return new DataView(this.memory.slice(this.usedGpa, 4).slice().buffer).getUint16(Used.IDX, true);
  }

  usedFlags(): number {
    return new DataView(this.memory.slice(this.usedGpa, 4).slice().buffer).getUint16(Used.FLAGS, true);
  }

  capacitySectors(): number {
    return Number(this.readConfig64(BlkConfig.CAPACITY));
  }

  private writeDesc(table: number, i: number, addr: number, len: number, flags: number, next: number): void {
    const s = this.memory.slice(table + i * Desc.SIZE, Desc.SIZE);
    const v = new DataView(s.buffer, s.byteOffset, Desc.SIZE);
    v.setBigUint64(Desc.ADDR, BigInt(addr), true);
    v.setUint32(Desc.LEN, len, true);
    v.setUint16(Desc.FLAGS, flags, true);
    v.setUint16(Desc.NEXT, next, true);
  }

  /** Puts one request in the avail ring (not yet visible: call publish()). Returns its head index. */
  add(req: Request): number {
    const deviceWrites = req.type === BlkReqType.IN || req.type === BlkReqType.GET_ID;
    const dataCount = req.data?.length ?? 0;
    const descs = this.take(req.rawChain ? req.rawChain.length : req.indirect ? 1 : dataCount + 2);
    const head = descs[0]!;
    // Each head descriptor owns a fixed slot for its header, status byte and indirect table, so a
    // long-running benchmark reuses memory instead of exhausting the heap.
    const slot = this.requestArea + head * REQUEST_SLOT;
    const header = slot;
    const hv = new DataView(new ArrayBuffer(BlkReqHeader.SIZE));
    hv.setUint32(BlkReqHeader.TYPE, req.type, true);
    hv.setBigUint64(BlkReqHeader.SECTOR, BigInt(req.sector ?? 0), true);
    this.memory.write(header, new Uint8Array(hv.buffer));
    const statusGpa = req.statusGpa ?? slot + BlkReqHeader.SIZE;
    if (req.statusGpa === undefined) this.memory.write(statusGpa, Uint8Array.of(0xff));

    const parts: { addr: number; len: number; flags: number }[] = [{ addr: header, len: BlkReqHeader.SIZE, flags: 0 }];
    for (const s of req.data ?? []) parts.push({ addr: s.gpa, len: s.length, flags: deviceWrites ? DescFlag.WRITE : 0 });
    parts.push({ addr: statusGpa, len: 1, flags: DescFlag.WRITE });

    if (req.rawChain) {
      req.rawChain.forEach((d, i) => this.writeDesc(this.descGpa, descs[i]!, d.addr, d.len, d.flags, d.next === -1 ? descs[i + 1] ?? 0 : d.next));
    } else if (req.indirect) {
      const table = parts.length <= INDIRECT_SLOT_ENTRIES ? slot + 32 : this.heap.alloc(parts.length * Desc.SIZE, 16);
      parts.forEach((p, i) => this.writeDesc(table, i, p.addr, p.len, p.flags | (i < parts.length - 1 ? DescFlag.NEXT : 0), i + 1));
      this.writeDesc(this.descGpa, head, table, parts.length * Desc.SIZE, DescFlag.INDIRECT, 0);
    } else {
      parts.forEach((p, i) => this.writeDesc(this.descGpa, descs[i]!, p.addr, p.len, p.flags | (i < parts.length - 1 ? DescFlag.NEXT : 0), descs[i + 1] ?? 0));
    }
    this.inFlight.set(head, { descriptors: descs, statusGpa });
    this.pushAvail(head);
    return head;
  }

  private take(n: number): number[] {
    if (this.free.length < n) throw new Error(`test driver: ${n} descriptors wanted, ${this.free.length} free`);
    return this.free.splice(0, n);
  }

  private pushAvail(head: number): void {
    const slot = this.availIdx % this.queueSize;
    const v = this.memory.slice(this.availGpa, Avail.size(this.queueSize));
    new DataView(v.buffer, v.byteOffset, v.byteLength).setUint16(Avail.RING + 2 * slot, head, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }

  /** Makes added requests visible (avail.idx) without notifying. */
  publish(): void {
    const v = this.memory.slice(this.availGpa, 4);
    Atomics.store(new Uint16Array(v.buffer, v.byteOffset, 2), 1, this.availIdx);
  }

  /** QueueNotify as KVM delivers it with an ioeventfd: the eventfd is signalled. */
  kick(): void {
    libc.eventfdSignal(this.notifyFd);
  }

  /** QueueNotify as a plain MMIO write (what happens when no ioeventfd matched). */
  kickThroughRegister(): void {
    this.write32(MmioReg.QUEUE_NOTIFY, 0);
  }

  /** Waits for the interrupt and collects completions until `count` have arrived. */
  waitFor(count: number, timeoutMs = 20_000): Completion[] {
    const out: Completion[] = [];
    const deadline = Date.now() + timeoutMs;
    while (out.length < count) {
      out.push(...this.reap());
      if (out.length >= count) break;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${count} completions (got ${out.length})`);
      if (libc.pollReadable([this.irqFd], left)[0]) {
        libc.eventfdDrain(this.irqFd);
        const isr = this.read32(MmioReg.INTERRUPT_STATUS);
        this.write32(MmioReg.INTERRUPT_ACK, isr);
      }
    }
    return out;
  }

  /** Reads new used entries, frees their descriptors. */
  reap(): Completion[] {
    const out: Completion[] = [];
    const used = this.memory.slice(this.usedGpa, Used.size(this.queueSize));
    const v = new DataView(used.buffer, used.byteOffset, used.byteLength);
    const idx = Atomics.load(new Uint16Array(used.buffer, used.byteOffset, 2), 1);
    while (this.lastUsed !== idx) {
      const slot = this.lastUsed % this.queueSize;
      const head = v.getUint32(Used.RING + slot * Used.ELEM_SIZE + Used.ELEM_ID, true);
      const usedLength = v.getUint32(Used.RING + slot * Used.ELEM_SIZE + Used.ELEM_LEN, true);
      const f = this.inFlight.get(head);
      if (!f) throw new Error(`device completed descriptor ${head}, which is not in flight`);
      this.inFlight.delete(head);
      this.free.push(...f.descriptors);
      out.push({ head, usedLength, status: this.memory.read(f.statusGpa, 1)[0]! });
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }

  /** Submits requests, kicks once, waits for all of them. Completions come back in submission order. */
  run(requests: Request[]): Completion[] {
    const heads = requests.map((r) => this.add(r));
    this.publish();
    this.kick();
    const done = this.waitFor(requests.length);
    const byHead = new Map(done.map((c) => [c.head, c]));
    return heads.map((h) => byHead.get(h)!);
  }

  one(req: Request): Completion {
    return this.run([req])[0]!;
  }

  // ---- request helpers ----

  buffer(length: number, align = 4096): Segment {
    return { gpa: this.heap.alloc(length, align), length };
  }

  /** Splits one guest buffer into `pieces` consecutive segments (a scatter-gather list). */
  static split(seg: Segment, pieces: number): Segment[] {
    const out: Segment[] = [];
    const step = Math.ceil(seg.length / pieces / 512) * 512;
    for (let at = 0; at < seg.length; at += step) out.push({ gpa: seg.gpa + at, length: Math.min(step, seg.length - at) });
    return out;
  }

  readAt(offset: number, length: number, options: { pieces?: number; indirect?: boolean } = {}): { status: number; data: Uint8Array; usedLength: number } {
    const buf = this.buffer(length);
    this.memory.slice(buf.gpa, length).fill(0xee);
    const c = this.one({ type: BlkReqType.IN, sector: offset / 512, data: TestBlockDriver.split(buf, options.pieces ?? 1), indirect: options.indirect });
    return { status: c.status, data: this.memory.read(buf.gpa, length), usedLength: c.usedLength };
  }

  writeAt(offset: number, data: Uint8Array, options: { pieces?: number; indirect?: boolean } = {}): Completion {
    const buf = this.buffer(data.length);
    this.memory.write(buf.gpa, data);
    return this.one({ type: BlkReqType.OUT, sector: offset / 512, data: TestBlockDriver.split(buf, options.pieces ?? 1), indirect: options.indirect });
  }

  flush(): Completion {
    return this.one({ type: BlkReqType.FLUSH });
  }

  getId(): { status: number; id: Uint8Array } {
    const buf = this.buffer(20, 16);
    const c = this.one({ type: BlkReqType.GET_ID, data: [buf] });
    return { status: c.status, id: this.memory.read(buf.gpa, 20) };
  }

  /** DISCARD or WRITE_ZEROES of byte ranges (multiples of 512). */
  rangeRequest(type: number, ranges: { offset: number; length: number; flags?: number }[]): Completion {
    const buf = this.buffer(ranges.length * BlkDiscardSegment.SIZE, 16);
    const bytes = new Uint8Array(buf.length);
    const v = new DataView(bytes.buffer);
    ranges.forEach((r, i) => {
      v.setBigUint64(i * 16 + BlkDiscardSegment.SECTOR, BigInt(r.offset / 512), true);
      v.setUint32(i * 16 + BlkDiscardSegment.NUM_SECTORS, r.length / 512, true);
      v.setUint32(i * 16 + BlkDiscardSegment.FLAGS, r.flags ?? 0, true);
    });
    this.memory.write(buf.gpa, bytes);
    return this.one({ type, data: [buf] });
  }
}

export const VERSION_1 = 1n << BigInt(Feature.VERSION_1);

/** A VM's worth of virtio-blk disks over real sparse images, driven by TestBlockDrivers. */
export class BlockRig {
  readonly drivers: TestBlockDriver[];

  private constructor(
    readonly dir: string,
    readonly memory: GuestMemory,
    readonly vm: EventfdVm,
    readonly set: VirtioBlockSet,
    /** Resolves once the I/O worker serves (or, started on the first notification, the set stopped first). */
    readonly serving: Promise<void>,
  ) {
    const heapSlice = Math.floor((memory.size - 0x100000) / set.disks.length / 4096) * 4096;
    this.drivers = set.descriptors().map((d, k) => {
      const dev = createVirtioBusDevice(d);
      const heapStart = 0x100000 + k * heapSlice;
      return new TestBlockDriver(memory, dev, vm.notifyFd(d.base, 0), vm.irqFd(d.gsi), heapStart, heapStart + heapSlice, RING_AREA + k * 0x10000);
    });
  }

  /**
   * Creates sparse images of the given sizes in a fresh temporary folder (or uses `specs` as given),
   * opens the set, starts its I/O worker (`start: 'on-first-notification'`: arms it, as a booting VMM does).
   */
  static async create(
    disks: { size?: number; readOnly?: boolean; path?: string; spec?: Partial<DiskSpec> }[],
    memorySize = 64 << 20,
    beforeStart?: (set: VirtioBlockSet, memory: GuestMemory) => void,
    start: 'now' | 'on-first-notification' = 'now',
  ): Promise<BlockRig> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lifeboat-virtio-'));
    const specs: DiskSpec[] = disks.map((d, i) => {
      const p = d.path ?? path.join(dir, `disk${i}.img`);
      if (!d.path) {
        fs.writeFileSync(p, '');
        fs.truncateSync(p, d.size ?? 64 << 20);
      }
      return { path: p, readOnly: d.readOnly ?? false, ...d.spec };
    });
    const memory = GuestMemory.create(memorySize);
    const vm = new EventfdVm();
    const set = VirtioBlockSet.open(specs, { memory, vm, firstIndex: 0 });
    let serving: Promise<void>;
    try {
      beforeStart?.(set, memory);
      if (start === 'now') {
        await set.start();
        serving = Promise.resolve();
      } else {
        serving = set.startOnFirstNotification();
        serving.catch(() => {}); // awaited by the test that cares
      }
    } catch (err) {
      await set.stop();
      memory.close();
      fs.rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    return new BlockRig(dir, memory, vm, set, serving);
  }

  async close(): Promise<void> {
    await this.set.stop();
    this.memory.close();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  get driver(): TestBlockDriver {
    return this.drivers[0]!;
  }

  imagePath(k = 0): string {
    return this.set.disks[k]!.path;
  }
}
