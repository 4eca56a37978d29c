// Builds bzImage files byte by byte for tests that need headers no real kernel has (an old protocol,
// no 64-bit entry, a given kernel_version string). Offsets follow Documentation/arch/x86/boot.rst,
// written out here independently of vmm/boot/boot-params.ts so a wrong offset there cannot hide.

export interface SyntheticOptions {
  setupSects?: number;
  version?: number;
  xloadflags?: number;
  loadflags?: number;
  initrdAddrMax?: number;
  kernelAlignment?: number;
  relocatable?: boolean;
  prefAddress?: bigint;
  initSize?: number;
  cmdlineSize?: number;
  kernelVersion?: string;
  payload?: Uint8Array;
}

export function syntheticBzImage(o: SyntheticOptions = {}): Uint8Array {
  const setupSects = o.setupSects ?? 4;
  const setupBytes = ((setupSects || 4) + 1) * 512;
  const payload = o.payload ?? Uint8Array.from({ length: 0x1000 }, (_, i) => (i * 7) & 0xff);
  const file = new Uint8Array(setupBytes + payload.length);
  const v = new DataView(file.buffer);
  file[0x1f1] = setupSects;
  v.setUint32(0x1f4, Math.ceil(payload.length / 16), true); // syssize
  v.setUint16(0x1fe, 0xaa55, true);
  file[0x200] = 0xeb; // jmp
  file[0x201] = 0x6a; // to 0x26C, the end of the 2.15 header
  file.set([0x48, 0x64, 0x72, 0x53], 0x202); // "HdrS"
  v.setUint16(0x206, o.version ?? 0x020f, true);
  if (o.kernelVersion !== undefined) {
    const at = 0x400; // inside the setup sectors
    file.set(new TextEncoder().encode(o.kernelVersion + '\0'), at);
    v.setUint16(0x20e, at - 0x200, true);
  }
  file[0x211] = o.loadflags ?? 0x01;
  v.setUint32(0x22c, o.initrdAddrMax ?? 0x7fffffff, true);
  v.setUint32(0x230, o.kernelAlignment ?? 0x200000, true);
  file[0x234] = o.relocatable === false ? 0 : 1;
  v.setUint16(0x236, o.xloadflags ?? 0x0003, true);
  v.setUint32(0x238, o.cmdlineSize ?? 2047, true);
  v.setBigUint64(0x258, o.prefAddress ?? 0x1000000n, true);
  v.setUint32(0x260, o.initSize ?? 0x200000, true);
  file.set(payload, setupBytes);
  return file;
}
