// The VM state held in a snapshot, as plain data, and its mapping to state.lbs records. KVM state
// travels as the bytes of the kernel's own structs (x86-64 <linux/kvm.h>), so a second implementation
// only needs those headers and docs/snapshot-format.md.
import { decodeArray, decodeSregs, encodeSregs, kvmCpuid2Header, kvmCpuidEntry2, kvmMsrEntry, kvmMsrsHeader, kvmRegs, buildArray, decode, build } from '../kvm/structs.js';
import {
  KVM_CLOCK_DATA_SIZE, KVM_DEBUGREGS_SIZE, KVM_IRQCHIP_SIZE, KVM_LAPIC_STATE_SIZE, KVM_PIT_STATE2_SIZE, KVM_VCPU_EVENTS_SIZE, KVM_XCRS_SIZE, kvmSregs,
} from '../kvm/structs.js';
import type { VmState } from '../kvm/vm.js';
import type { MemoryRegion } from '../memory.js';
import type { VcpuState } from '../vcpu-state.js';
import { RecordSet, SnapshotFormatError, type SnapshotKind, type StateRecord } from './format.js';

export const SNAPSHOT_FORMAT_NAME = 'lifeboat-vm-snapshot';

/** A disk of the VM at the snapshot's instant. */
export interface SnapshotDisk {
  index: number;
  path: string;
  sizeBytes: number;
  readOnly: boolean;
  /** The disk point taken at the same paused instant (a resumable recovery point), if any. */
  point?: { generation: number; trackingId: string; image?: string };
}

/** The 'meta' record (JSON). */
export interface SnapshotMeta {
  format: typeof SNAPSHOT_FORMAT_NAME;
  kind: SnapshotKind;
  snapshotId: string;
  /** The snapshot this diff applies over ('' for a full one). */
  parentId: string;
  createdAt: string;
  memory: { size: number; regions: MemoryRegion[] };
  vcpuCount: number;
  /** Names of the 'device/NAME' records. */
  devices: string[];
  disks: SnapshotDisk[];
  /** How to rebuild the machine around the state (the VMM's own config: kernel, command line...). */
  machine: Record<string, unknown>;
  /** Pieces of state this host's KVM refused to save, with the ioctl and errno. */
  refused: string[];
}

/** Everything but memory. */
export interface VmSnapshotState {
  meta: SnapshotMeta;
  vcpus: VcpuState[];
  vm: VmState;
  /** Device state (the bytes of each device's SharedArrayBuffer), by device name. */
  devices: Record<string, Uint8Array>;
}

const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
};
const readU32 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).readUInt32LE(0);

export function stateToRecords(s: VmSnapshotState): StateRecord[] {
  const records: StateRecord[] = [{ name: 'meta', payload: Buffer.from(JSON.stringify(s.meta), 'utf8') }];
  records.push({ name: 'vm/clock', payload: s.vm.clock });
  records.push({ name: 'vm/pit2', payload: s.vm.pit2 });
  s.vm.irqchips.forEach((chip, i) => records.push({ name: `vm/irqchip/${i}`, payload: chip }));
  s.vcpus.forEach((v, i) => {
    const p = `vcpu/${i}/`;
    records.push(
      { name: `${p}mp_state`, payload: u32(v.mpState) },
      { name: `${p}regs`, payload: build(kvmRegs, v.regs) },
      { name: `${p}sregs`, payload: encodeSregs(v.sregs) },
      { name: `${p}xsave`, payload: v.xsave },
      { name: `${p}xcrs`, payload: v.xcrs },
      { name: `${p}debugregs`, payload: v.debugregs },
      { name: `${p}lapic`, payload: v.lapic },
      { name: `${p}tsc_khz`, payload: u32(v.tscKhz) },
      { name: `${p}cpuid`, payload: buildArray(kvmCpuid2Header, { nent: v.cpuid.length }, kvmCpuidEntry2, v.cpuid) },
      { name: `${p}msrs`, payload: buildArray(kvmMsrsHeader, { nmsrs: v.msrs.length }, kvmMsrEntry, v.msrs) },
      { name: `${p}events`, payload: v.events },
    );
  });
  for (const name of s.meta.devices) {
    const bytes = s.devices[name];
    if (!bytes) throw new Error(`device '${name}' is listed but has no state`);
    records.push({ name: `device/${name}`, payload: bytes });
  }
  return records;
}

function copy(b: Uint8Array): Uint8Array {
  return Uint8Array.from(b);
}

/** The 'meta' record alone (what a chain's older snapshots are checked by). */
export function recordsToMeta(set: RecordSet): SnapshotMeta {
  let meta: SnapshotMeta;
  try {
    meta = JSON.parse(Buffer.from(set.get('meta')).toString('utf8')) as SnapshotMeta;
  } catch (err) {
    throw new SnapshotFormatError(`${set.path}: record 'meta' is not valid JSON: ${(err as Error).message}`);
  }
  if (meta.format !== SNAPSHOT_FORMAT_NAME) throw new SnapshotFormatError(`${set.path}: record 'meta' is not a ${SNAPSHOT_FORMAT_NAME}`);
  return meta;
}

export function recordsToState(set: RecordSet): VmSnapshotState {
  const meta = recordsToMeta(set);
  const irqchips = set.names('vm/irqchip/').sort().map((n) => copy(set.get(n, KVM_IRQCHIP_SIZE)));
  const vm: VmState = { clock: copy(set.get('vm/clock', KVM_CLOCK_DATA_SIZE)), pit2: copy(set.get('vm/pit2', KVM_PIT_STATE2_SIZE)), irqchips };
  const vcpus: VcpuState[] = [];
  for (let i = 0; i < meta.vcpuCount; i++) {
    const p = `vcpu/${i}/`;
    const cpuid = Buffer.from(set.get(`${p}cpuid`));
    const msrs = Buffer.from(set.get(`${p}msrs`));
    const nent = cpuid.readUInt32LE(0);
    const nmsrs = msrs.readUInt32LE(0);
    if (cpuid.length !== kvmCpuid2Header.size + nent * kvmCpuidEntry2.size) throw new SnapshotFormatError(`${set.path}: record '${p}cpuid' has the wrong length for ${nent} entries`);
    if (msrs.length !== kvmMsrsHeader.size + nmsrs * kvmMsrEntry.size) throw new SnapshotFormatError(`${set.path}: record '${p}msrs' has the wrong length for ${nmsrs} entries`);
    vcpus.push({
      mpState: readU32(set.get(`${p}mp_state`, 4)),
      regs: decode(kvmRegs, set.get(`${p}regs`, kvmRegs.size)),
      sregs: decodeSregs(set.get(`${p}sregs`, kvmSregs.size)),
      xsave: copy(set.get(`${p}xsave`)),
      xcrs: copy(set.get(`${p}xcrs`, KVM_XCRS_SIZE)),
      debugregs: copy(set.get(`${p}debugregs`, KVM_DEBUGREGS_SIZE)),
      lapic: copy(set.get(`${p}lapic`, KVM_LAPIC_STATE_SIZE)),
      tscKhz: readU32(set.get(`${p}tsc_khz`, 4)),
      cpuid: decodeArray(kvmCpuid2Header.size, kvmCpuidEntry2, cpuid, nent),
      msrs: decodeArray(kvmMsrsHeader.size, kvmMsrEntry, msrs, nmsrs).map((m) => ({ index: m.index, data: m.data })),
      events: copy(set.get(`${p}events`, KVM_VCPU_EVENTS_SIZE)),
    });
  }
  const devices: Record<string, Uint8Array> = {};
  for (const name of meta.devices) devices[name] = copy(set.get(`device/${name}`));
  return { meta, vcpus, vm, devices };
}
