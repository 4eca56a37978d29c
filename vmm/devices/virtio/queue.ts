// The device side of a split virtqueue: take descriptor chains the driver made available, walk and check
// them, and publish completions in the used ring. Everything the guest wrote is untrusted: indices,
// addresses, lengths, flags. A chain whose structure cannot be followed (index out of range, a loop,
// nested or malformed indirect table, a table outside RAM) is a ChainError: the caller marks the device
// NEEDS_RESET. A chain that is well formed but names a buffer outside RAM is returned with `badBuffer`
// set, so the request can still be failed through its status byte.
import { Avail, AvailFlag, Desc, DescFlag, Used, UsedFlag } from './abi.js';
import type { GuestRam } from './ram.js';

/** A queue's configuration as the driver left it in the transport registers. */
export interface QueueConfig {
  size: number;
  descGpa: number;
  availGpa: number;
  usedGpa: number;
}

export class ChainError extends Error {
  override name = 'ChainError';
}

/** One side (device-readable or device-writable) of a chain: buffers in order. */
export class BufferList {
  count = 0;
  total = 0;
  gpa: number[] = [];
  /** Offset in GuestRam.bytes, or -1 when the buffer is not RAM. */
  offset: number[] = [];
  length: number[] = [];

  reset(): void {
    this.count = 0;
    this.total = 0;
  }

  push(gpa: number, offset: number, length: number): void {
    const i = this.count++;
    this.gpa[i] = gpa;
    this.offset[i] = offset;
    this.length[i] = length;
    this.total += length;
  }
}

/** A descriptor chain split into its device-readable part followed by its device-writable part. */
export class Chain {
  head = 0;
  readonly readable = new BufferList();
  readonly writable = new BufferList();
  /** Some buffer lies outside guest RAM. */
  badBuffer = false;
  /** A device-readable buffer came after a device-writable one (the spec forbids it). */
  misordered = false;

  reset(head: number): void {
    this.head = head;
    this.readable.reset();
    this.writable.reset();
    this.badBuffer = false;
    this.misordered = false;
  }
}

export class SplitQueue {
  private readonly descOffset: number;
  private readonly availOffset: number;
  private readonly usedOffset: number;
  private readonly mask: number;

  /**
   * @param nextAvail the next avail ring index to consume (0 after a reset; restored from a snapshot)
   * @param nextUsed the next used ring index to publish
   */
  constructor(
    private readonly ram: GuestRam,
    readonly config: QueueConfig,
    private readonly indirectAllowed: boolean,
    public nextAvail: number,
    public nextUsed: number,
  ) {
    const n = config.size;
    if (n < 1 || n > 32768 || (n & (n - 1)) !== 0) throw new ChainError(`queue size ${n} is not a power of two in 1..32768`);
    this.mask = n - 1;
    this.descOffset = SplitQueue.ringOffset(ram, config.descGpa, Desc.SIZE * n, Desc.ALIGN, 'descriptor table');
    this.availOffset = SplitQueue.ringOffset(ram, config.availGpa, Avail.size(n), Avail.ALIGN, 'avail ring');
    this.usedOffset = SplitQueue.ringOffset(ram, config.usedGpa, Used.size(n), Used.ALIGN, 'used ring');
  }

  private static ringOffset(ram: GuestRam, gpa: number, size: number, align: number, what: string): number {
    if (gpa % align !== 0) throw new ChainError(`${what} at 0x${gpa.toString(16)} is not ${align}-byte aligned`);
    const off = ram.translate(gpa, size);
    if (off < 0) throw new ChainError(`${what} at 0x${gpa.toString(16)} (+${size}) is not in guest RAM`);
    return off;
  }

  /** The avail index the driver published (acquire: ring entries up to it are visible after this load). */
  availIdx(): number {
    return Atomics.load(this.ram.u16, (this.availOffset + Avail.IDX) >>> 1);
  }

  hasAvailable(): boolean {
    return this.availIdx() !== this.nextAvail;
  }

  /** Head descriptor index of the next available chain, or -1 when there is none. */
  popAvailable(): number {
    const idx = this.availIdx();
    if (idx === this.nextAvail) return -1;
    if (((idx - this.nextAvail) & 0xffff) > this.config.size) {
      throw new ChainError(`avail index jumped from ${this.nextAvail} to ${idx} (queue size ${this.config.size})`);
    }
    const slot = this.nextAvail & this.mask;
    const head = this.ram.u16[(this.availOffset + Avail.RING + 2 * slot) >>> 1]!;
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    return head;
  }

  /**
   * Walks the chain starting at `head` into `chain`. Throws ChainError when it cannot be followed. A
   * chain may hold at most queue-size descriptors in all (the spec's limit for drivers), which also
   * bounds the work a looping or huge indirect table can cause.
   */
  readChain(head: number, chain: Chain): void {
    chain.reset(head);
    const ram = this.ram;
    const data = ram.data;
    const limit = this.config.size;
    let table = this.descOffset;
    let tableSize = this.config.size;
    let index = head;
    let count = 0;
    let indirect = false;
    if (index >= tableSize) throw new ChainError(`head index ${index} out of range (queue size ${tableSize})`);
    for (;;) {
      if (++count > limit) throw new ChainError(`descriptor chain longer than the queue size (${limit}): a loop?`);
      const d = table + index * Desc.SIZE;
      const addrLo = data.getUint32(d + Desc.ADDR, true);
      const addrHi = data.getUint32(d + Desc.ADDR + 4, true);
      const gpa = addrLo + addrHi * 0x1_0000_0000;
      const len = data.getUint32(d + Desc.LEN, true);
      const flags = data.getUint16(d + Desc.FLAGS, true);
      const next = data.getUint16(d + Desc.NEXT, true);
      if (flags & DescFlag.INDIRECT) {
        if (!this.indirectAllowed) throw new ChainError('indirect descriptor but VIRTIO_RING_F_INDIRECT_DESC was not negotiated');
        if (indirect) throw new ChainError('indirect descriptor inside an indirect table');
        if (flags & DescFlag.NEXT) throw new ChainError('descriptor has both INDIRECT and NEXT');
        if (len === 0 || len % Desc.SIZE !== 0) throw new ChainError(`indirect table length ${len} is not a positive multiple of 16`);
        const off = ram.translate(gpa, len);
        if (off < 0) throw new ChainError(`indirect table at 0x${gpa.toString(16)} (+${len}) is not in guest RAM`);
        indirect = true;
        table = off;
        tableSize = len / Desc.SIZE;
        index = 0;
        continue;
      }
      const off = ram.translate(gpa, len);
      if (off < 0) chain.badBuffer = true;
      if (flags & DescFlag.WRITE) {
        chain.writable.push(gpa, off, len);
      } else {
        if (chain.writable.count > 0) chain.misordered = true;
        chain.readable.push(gpa, off, len);
      }
      if (!(flags & DescFlag.NEXT)) return;
      index = next;
      if (index >= tableSize) throw new ChainError(`next index ${index} out of range (table size ${tableSize})`);
    }
  }

  /** Publishes a completion: the element first, then the index (a sequentially consistent store). */
  pushUsed(head: number, length: number): void {
    const ram = this.ram;
    const slot = this.nextUsed & this.mask;
    const elem = this.usedOffset + Used.RING + slot * Used.ELEM_SIZE;
    ram.u32[(elem + Used.ELEM_ID) >>> 2] = head;
    ram.u32[(elem + Used.ELEM_LEN) >>> 2] = length;
    this.nextUsed = (this.nextUsed + 1) & 0xffff;
    Atomics.store(ram.u16, (this.usedOffset + Used.IDX) >>> 1, this.nextUsed);
    ram.markDirty(this.config.usedGpa + Used.RING + slot * Used.ELEM_SIZE, Used.ELEM_SIZE);
    ram.markDirty(this.config.usedGpa + Used.IDX, 2);
  }

  /**
   * Tells the driver whether to notify (kick) us. While we are draining the queue we ask it not to; the
   * caller re-checks `hasAvailable()` after turning notifications back on, which closes the race.
   */
  setNotifications(enabled: boolean): void {
    const i = (this.usedOffset + Used.FLAGS) >>> 1;
    Atomics.store(this.ram.u16, i, enabled ? 0 : UsedFlag.NO_NOTIFY);
    this.ram.markDirty(this.config.usedGpa + Used.FLAGS, 2);
  }

  /** Whether the driver wants an interrupt for new used entries (it may suppress them). */
  wantsInterrupt(): boolean {
    return (Atomics.load(this.ram.u16, (this.availOffset + Avail.FLAGS) >>> 1) & AvailFlag.NO_INTERRUPT) === 0;
  }
}
