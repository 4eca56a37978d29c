// Guest RAM as the I/O worker touches it: one zero-copy view of the whole memfd mapping, typed views for
// ring fields, and an address check that answers -1 instead of throwing (a bad guest address is a guest
// error to report, not an exception on the hot path).
//
// The views are made at their first use, not when the worker starts: a view of all of guest memory is
// external memory V8 accounts for, and making one costs the thread a full garbage collection. Left to
// the first request, that happens once the guest uses its disks, not while the worker starts up next to
// a guest that is booting or being restored.
import type { GuestMemory, MemoryRegion } from '../../memory.js';
import * as libc from '../../sys/libc.js';

interface Views {
  bytes: Uint8Array;
  data: DataView;
  u16: Uint16Array;
  u32: Uint32Array;
}

export class GuestRam {
  private views: Views | undefined;
  private readonly regions: readonly MemoryRegion[];

  constructor(readonly memory: GuestMemory) {
    this.regions = memory.regions;
  }

  private makeViews(): Views {
    const bytes = libc.view(this.memory.shared.hostAddress, this.memory.shared.size);
    this.views = {
      bytes,
      data: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength),
      u16: new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 1),
      u32: new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2),
    };
    return this.views;
  }

  get bytes(): Uint8Array {
    return (this.views ?? this.makeViews()).bytes;
  }

  get data(): DataView {
    return (this.views ?? this.makeViews()).data;
  }

  get u16(): Uint16Array {
    return (this.views ?? this.makeViews()).u16;
  }

  get u32(): Uint32Array {
    return (this.views ?? this.makeViews()).u32;
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
