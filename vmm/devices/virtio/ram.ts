// Guest RAM as the I/O worker touches it: one zero-copy view of the whole memfd mapping, typed views for
// ring fields, and an address check that answers -1 instead of throwing (a bad guest address is a guest
// error to report, not an exception on the hot path).
import type { GuestMemory, MemoryRegion } from '../../memory.js';
import * as libc from '../../sys/libc.js';

export class GuestRam {
  readonly bytes: Uint8Array;
  readonly data: DataView;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  private readonly regions: readonly MemoryRegion[];

  constructor(readonly memory: GuestMemory) {
    this.bytes = libc.view(memory.shared.hostAddress, memory.shared.size);
    this.data = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
    this.u16 = new Uint16Array(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength >>> 1);
    this.u32 = new Uint32Array(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength >>> 2);
    this.regions = memory.regions;
  }

  /** Offset in `bytes` of guest-physical [gpa, gpa+length), or -1 unless the whole range is RAM of one region. */
  translate(gpa: number, length: number): number {
    if (!(gpa >= 0) || !(length >= 0)) return -1;
    for (const r of this.regions) {
      if (gpa >= r.gpa && gpa + length <= r.gpa + r.size) return r.fileOffset + (gpa - r.gpa);
    }
    return -1;
  }

  /** Records guest pages the VMM wrote (KVM's dirty log does not see them). */
  markDirty(gpa: number, length: number): void {
    this.memory.markDirty(gpa, length);
  }
}
