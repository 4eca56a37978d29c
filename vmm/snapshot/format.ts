// The VM snapshot format (docs/snapshot-format.md): a directory holding
//   state.lbs   - a header and a sequence of named, length-prefixed, CRC-32-checked records (metadata as
//                 JSON, vCPU / VM / device state as the raw bytes of the KVM structs and device SABs);
//   memory.lbm  - a 4 KiB header, then guest memory positionally (memfd page p at 4096 + p*4096; pages
//                 not present in this file are holes), then an index of present-page runs with CRCs.
// Every layout is declared here once.
import { readFileSync } from 'node:fs';
import { crc32 } from 'node:zlib';

export const STATE_FILE = 'state.lbs';
export const MEMORY_FILE = 'memory.lbm';
export const SNAPSHOT_VERSION = 1;

export const STATE_MAGIC = 'LBSNAPST';
export const MEMORY_MAGIC = 'LBSNAPMM';

export const KIND_FULL = 1;
export const KIND_DIFF = 2;
export type SnapshotKind = 'full' | 'diff';
export const kindCode = (k: SnapshotKind): number => (k === 'full' ? KIND_FULL : KIND_DIFF);
export const kindName = (c: number): SnapshotKind | undefined => (c === KIND_FULL ? 'full' : c === KIND_DIFF ? 'diff' : undefined);

/** state.lbs header (64 bytes). */
export const STATE_HEADER = {
  size: 64,
  magic: 0, // 8 ASCII
  version: 8, // u32
  kind: 12, // u32
  snapshotId: 16, // 16 bytes
  parentId: 32, // 16 bytes, zero for a full snapshot
  recordCount: 48, // u32, records after the header including the final 'end'
  headerCrc: 60, // u32, CRC-32 of bytes [0, 60)
} as const;

/** A record: u16 name length, u16 flags (0), u32 payload length, u32 CRC-32 of name + payload, name, payload, zero padding to 8. */
export const RECORD_HEADER = { size: 12, nameLength: 0, flags: 2, payloadLength: 4, crc: 8 } as const;
export const RECORD_ALIGN = 8;
/** The last record: u32 number of records before it, u32 CRC-32 of every byte of the file before it. */
export const END_RECORD = 'end';

/** memory.lbm header (the first 4096 bytes; only the first 128 are used). */
export const MEMORY_HEADER = {
  size: 4096,
  magic: 0, // 8 ASCII
  version: 8, // u32
  kind: 12, // u32
  snapshotId: 16, // 16 bytes, equal to state.lbs's
  memorySize: 32, // u64, bytes of guest memory (the memfd)
  pageSize: 40, // u32 (4096)
  runCount: 44, // u32, entries in the index
  indexOffset: 48, // u64, where the index starts (= 4096 + memorySize)
  indexCrc: 56, // u32, CRC-32 of the index
  presentPages: 60, // u32, pages present in this file
  headerCrc: 124, // u32, CRC-32 of bytes [0, 124)
} as const;
/** Data of memfd page p is at DATA_OFFSET + p * pageSize. */
export const DATA_OFFSET = 4096;
/** Index entry: u64 first page, u32 page count, u32 CRC-32 of those pages' bytes. */
export const RUN_ENTRY_SIZE = 16;
/** Runs are cut at this many pages, so a damaged page is located to within 1 MiB. */
export const MAX_RUN_PAGES = 256;

export class SnapshotFormatError extends Error {
  override name = 'SnapshotFormatError';
}

export interface StateRecord {
  name: string;
  payload: Uint8Array;
}

export interface StateHeader {
  kind: SnapshotKind;
  snapshotId: string;
  /** '' for a full snapshot. */
  parentId: string;
}

export function uuidBytes(uuid: string): Buffer {
  if (uuid === '') return Buffer.alloc(16);
  const hex = uuid.replace(/-/g, '');
  if (!/^[0-9a-f]{32}$/i.test(hex)) throw new Error(`not a UUID: ${uuid}`);
  return Buffer.from(hex, 'hex');
}

export function uuidString(b: Uint8Array): string {
  if (b.every((x) => x === 0)) return '';
  const h = Buffer.from(b).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const pad = (n: number) => (RECORD_ALIGN - (n % RECORD_ALIGN)) % RECORD_ALIGN;

function encodeRecord(r: StateRecord): Buffer {
  const name = Buffer.from(r.name, 'utf8');
  if (name.length === 0 || name.length > 0xffff) throw new Error(`bad record name '${r.name}'`);
  const bodyLength = RECORD_HEADER.size + name.length + r.payload.length;
  const out = Buffer.alloc(bodyLength + pad(bodyLength));
  out.writeUInt16LE(name.length, RECORD_HEADER.nameLength);
  out.writeUInt32LE(r.payload.length, RECORD_HEADER.payloadLength);
  name.copy(out, RECORD_HEADER.size);
  out.set(r.payload, RECORD_HEADER.size + name.length);
  out.writeUInt32LE(crc32(out.subarray(RECORD_HEADER.size, bodyLength)), RECORD_HEADER.crc);
  return out;
}

/** The whole state file: header, records, and the closing 'end' record. */
export function encodeStateFile(header: StateHeader, records: readonly StateRecord[]): Buffer {
  const h = Buffer.alloc(STATE_HEADER.size);
  h.write(STATE_MAGIC, STATE_HEADER.magic, 'ascii');
  h.writeUInt32LE(SNAPSHOT_VERSION, STATE_HEADER.version);
  h.writeUInt32LE(kindCode(header.kind), STATE_HEADER.kind);
  uuidBytes(header.snapshotId).copy(h, STATE_HEADER.snapshotId);
  uuidBytes(header.parentId).copy(h, STATE_HEADER.parentId);
  h.writeUInt32LE(records.length + 1, STATE_HEADER.recordCount);
  h.writeUInt32LE(crc32(h.subarray(0, STATE_HEADER.headerCrc)), STATE_HEADER.headerCrc);
  const body = Buffer.concat([h, ...records.map(encodeRecord)]);
  const end = Buffer.alloc(8);
  end.writeUInt32LE(records.length, 0);
  end.writeUInt32LE(crc32(body), 4);
  return Buffer.concat([body, encodeRecord({ name: END_RECORD, payload: end })]);
}

export function decodeStateFile(data: Buffer, path: string): { header: StateHeader; records: StateRecord[] } {
  if (data.length < STATE_HEADER.size || data.toString('ascii', 0, 8) !== STATE_MAGIC) {
    throw new SnapshotFormatError(`${path} is not a Lifeboat snapshot state file`);
  }
  const version = data.readUInt32LE(STATE_HEADER.version);
  if (version !== SNAPSHOT_VERSION) throw new SnapshotFormatError(`${path} is snapshot format version ${version}; this Lifeboat reads version ${SNAPSHOT_VERSION}`);
  if (crc32(data.subarray(0, STATE_HEADER.headerCrc)) !== data.readUInt32LE(STATE_HEADER.headerCrc)) {
    throw new SnapshotFormatError(`${path}: header fails its checksum`);
  }
  const kind = kindName(data.readUInt32LE(STATE_HEADER.kind));
  if (!kind) throw new SnapshotFormatError(`${path}: unknown snapshot kind ${data.readUInt32LE(STATE_HEADER.kind)}`);
  const header: StateHeader = {
    kind,
    snapshotId: uuidString(data.subarray(STATE_HEADER.snapshotId, STATE_HEADER.snapshotId + 16)),
    parentId: uuidString(data.subarray(STATE_HEADER.parentId, STATE_HEADER.parentId + 16)),
  };
  const count = data.readUInt32LE(STATE_HEADER.recordCount);
  const records: StateRecord[] = [];
  let pos = STATE_HEADER.size;
  for (let i = 0; i < count; i++) {
    const at = pos;
    if (pos + RECORD_HEADER.size > data.length) throw new SnapshotFormatError(`${path}: truncated at record ${i + 1} of ${count} (byte ${at})`);
    const nameLength = data.readUInt16LE(pos + RECORD_HEADER.nameLength);
    const payloadLength = data.readUInt32LE(pos + RECORD_HEADER.payloadLength);
    const bodyEnd = pos + RECORD_HEADER.size + nameLength + payloadLength;
    if (bodyEnd > data.length) throw new SnapshotFormatError(`${path}: truncated at record ${i + 1} of ${count} (byte ${at})`);
    const name = data.toString('utf8', pos + RECORD_HEADER.size, pos + RECORD_HEADER.size + nameLength);
    if (crc32(data.subarray(pos + RECORD_HEADER.size, bodyEnd)) !== data.readUInt32LE(pos + RECORD_HEADER.crc)) {
      throw new SnapshotFormatError(`${path}: record '${printable(name)}' (at byte ${at}) fails its checksum: the snapshot is damaged`);
    }
    const payload = data.subarray(pos + RECORD_HEADER.size + nameLength, bodyEnd);
    pos = bodyEnd + pad(bodyEnd - at);
    if (i === count - 1) {
      if (name !== END_RECORD || payload.length !== 8) throw new SnapshotFormatError(`${path}: the last record is '${printable(name)}', not '${END_RECORD}': the file is incomplete`);
      if (payload.readUInt32LE(0) !== count - 1 || payload.readUInt32LE(4) !== crc32(data.subarray(0, at))) {
        throw new SnapshotFormatError(`${path}: the '${END_RECORD}' record does not match the records before it`);
      }
    } else {
      records.push({ name, payload });
    }
  }
  if (pos !== data.length) throw new SnapshotFormatError(`${path}: ${data.length - pos} unexpected bytes after the '${END_RECORD}' record`);
  return { header, records };
}

function printable(name: string): string {
  return name.replace(/[^\x20-\x7e]/g, '?').slice(0, 64);
}

/** Records by name, with a clear error for a missing one. */
export class RecordSet {
  private readonly byName = new Map<string, Uint8Array>();

  constructor(records: readonly StateRecord[], readonly path: string) {
    for (const r of records) {
      if (this.byName.has(r.name)) throw new SnapshotFormatError(`${path}: record '${r.name}' appears twice`);
      this.byName.set(r.name, r.payload);
    }
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  get(name: string, size?: number): Uint8Array {
    const p = this.byName.get(name);
    if (!p) throw new SnapshotFormatError(`${this.path}: record '${name}' is missing`);
    if (size !== undefined && p.length !== size) throw new SnapshotFormatError(`${this.path}: record '${name}' is ${p.length} bytes, expected ${size}`);
    return p;
  }

  names(prefix = ''): string[] {
    return [...this.byName.keys()].filter((n) => n.startsWith(prefix));
  }
}

export interface MemoryHeader {
  kind: SnapshotKind;
  snapshotId: string;
  memorySize: number;
  pageSize: number;
  runCount: number;
  indexOffset: number;
  indexCrc: number;
  presentPages: number;
}

export function encodeMemoryHeader(m: MemoryHeader): Buffer {
  const h = Buffer.alloc(MEMORY_HEADER.size);
  h.write(MEMORY_MAGIC, MEMORY_HEADER.magic, 'ascii');
  h.writeUInt32LE(SNAPSHOT_VERSION, MEMORY_HEADER.version);
  h.writeUInt32LE(kindCode(m.kind), MEMORY_HEADER.kind);
  uuidBytes(m.snapshotId).copy(h, MEMORY_HEADER.snapshotId);
  h.writeBigUInt64LE(BigInt(m.memorySize), MEMORY_HEADER.memorySize);
  h.writeUInt32LE(m.pageSize, MEMORY_HEADER.pageSize);
  h.writeUInt32LE(m.runCount, MEMORY_HEADER.runCount);
  h.writeBigUInt64LE(BigInt(m.indexOffset), MEMORY_HEADER.indexOffset);
  h.writeUInt32LE(m.indexCrc, MEMORY_HEADER.indexCrc);
  h.writeUInt32LE(m.presentPages, MEMORY_HEADER.presentPages);
  h.writeUInt32LE(crc32(h.subarray(0, MEMORY_HEADER.headerCrc)), MEMORY_HEADER.headerCrc);
  return h;
}

export function decodeMemoryHeader(h: Buffer, path: string): MemoryHeader {
  if (h.length < 128 || h.toString('ascii', 0, 8) !== MEMORY_MAGIC) throw new SnapshotFormatError(`${path} is not a Lifeboat snapshot memory file`);
  const version = h.readUInt32LE(MEMORY_HEADER.version);
  if (version !== SNAPSHOT_VERSION) throw new SnapshotFormatError(`${path} is snapshot format version ${version}; this Lifeboat reads version ${SNAPSHOT_VERSION}`);
  if (crc32(h.subarray(0, MEMORY_HEADER.headerCrc)) !== h.readUInt32LE(MEMORY_HEADER.headerCrc)) throw new SnapshotFormatError(`${path}: header fails its checksum`);
  const kind = kindName(h.readUInt32LE(MEMORY_HEADER.kind));
  if (!kind) throw new SnapshotFormatError(`${path}: unknown kind`);
  return {
    kind,
    snapshotId: uuidString(h.subarray(MEMORY_HEADER.snapshotId, MEMORY_HEADER.snapshotId + 16)),
    memorySize: Number(h.readBigUInt64LE(MEMORY_HEADER.memorySize)),
    pageSize: h.readUInt32LE(MEMORY_HEADER.pageSize),
    runCount: h.readUInt32LE(MEMORY_HEADER.runCount),
    indexOffset: Number(h.readBigUInt64LE(MEMORY_HEADER.indexOffset)),
    indexCrc: h.readUInt32LE(MEMORY_HEADER.indexCrc),
    presentPages: h.readUInt32LE(MEMORY_HEADER.presentPages),
  };
}

export interface PageRun {
  firstPage: number;
  count: number;
  crc: number;
}

export function encodeRuns(runs: readonly PageRun[]): Buffer {
  const b = Buffer.alloc(runs.length * RUN_ENTRY_SIZE);
  runs.forEach((r, i) => {
    b.writeBigUInt64LE(BigInt(r.firstPage), i * RUN_ENTRY_SIZE);
    b.writeUInt32LE(r.count, i * RUN_ENTRY_SIZE + 8);
    b.writeUInt32LE(r.crc, i * RUN_ENTRY_SIZE + 12);
  });
  return b;
}

export function decodeRuns(b: Buffer, count: number): PageRun[] {
  return Array.from({ length: count }, (_, i) => ({
    firstPage: Number(b.readBigUInt64LE(i * RUN_ENTRY_SIZE)),
    count: b.readUInt32LE(i * RUN_ENTRY_SIZE + 8),
    crc: b.readUInt32LE(i * RUN_ENTRY_SIZE + 12),
  }));
}

/** The 'meta' record of DIR/state.lbs as parsed JSON (all records checked); for a quick look before a restore. */
export function readStateMeta(dir: string): Record<string, unknown> {
  const path = `${dir}/${STATE_FILE}`;
  const { records } = decodeStateFile(readFileSync(path), path);
  const meta = records.find((r) => r.name === 'meta');
  if (!meta) throw new SnapshotFormatError(`${path}: record 'meta' is missing`);
  return JSON.parse(Buffer.from(meta.payload).toString('utf8')) as Record<string, unknown>;
}
