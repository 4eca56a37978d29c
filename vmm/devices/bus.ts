// A range-to-device bus. The vCPU loop hands every PIO and MMIO exit to one of these; adding a device
// never touches the loop. Devices run on whichever vCPU worker took the exit, so a device keeps its
// state in a SharedArrayBuffer (see docs/vmm.md, "Devices and threads") and serialises itself.

export interface BusDevice {
  /** Fill `data` (1, 2, 4 or 8 bytes) with the value read at `offset` from the device's base. */
  read(offset: number, data: Uint8Array): void;
  /** The guest wrote `data` at `offset` from the device's base. */
  write(offset: number, data: Uint8Array): void;
}

interface BusRange {
  base: number;
  length: number;
  device: BusDevice;
}

export class Bus {
  private readonly ranges: BusRange[] = [];

  constructor(readonly name: string) {}

  register(base: number, length: number, device: BusDevice): void {
    if (length <= 0) throw new Error(`${this.name} bus: empty range at 0x${base.toString(16)}`);
    for (const r of this.ranges) {
      if (base < r.base + r.length && r.base < base + length) {
        throw new Error(`${this.name} bus: 0x${base.toString(16)}+0x${length.toString(16)} overlaps 0x${r.base.toString(16)}+0x${r.length.toString(16)}`);
      }
    }
    this.ranges.push({ base, length, device });
    this.ranges.sort((a, b) => a.base - b.base);
  }

  private find(address: number): BusRange | undefined {
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.ranges[mid]!;
      if (address < r.base) hi = mid - 1;
      else if (address >= r.base + r.length) lo = mid + 1;
      else return r;
    }
    return undefined;
  }

  /** Returns false when no device claims the address; the read then yields all ones, like an empty bus. */
  read(address: number, data: Uint8Array): boolean {
    const r = this.find(address);
    if (!r) {
      data.fill(0xff);
      return false;
    }
    r.device.read(address - r.base, data);
    return true;
  }

  /** Returns false when no device claims the address; the write is dropped. */
  write(address: number, data: Uint8Array): boolean {
    const r = this.find(address);
    if (!r) return false;
    r.device.write(address - r.base, data);
    return true;
  }
}
