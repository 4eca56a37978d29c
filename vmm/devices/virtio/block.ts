// virtio-blk over a raw image file (or block device): feature set, config space, and the request
// handler the I/O worker runs for each descriptor chain. Data moves straight between the image and guest
// RAM (pread/pwrite on views of guest memory, no copy). Durability rules: a write is completed only
// after pwrite returned; a FLUSH is completed only after fdatasync returned.
import fs from 'node:fs';
import {
  BLK_ID_BYTES,
  BlkConfig,
  BlkDiscardFlag,
  BlkDiscardSegment,
  BlkFeature,
  BlkReqHeader,
  BlkReqType,
  BlkStatus,
  Feature,
  SECTOR_SIZE,
  featureBits,
} from './abi.js';
import type { BlockWriteObserver } from './observer.js';
import { ChainError, type BufferList, type Chain } from './queue.js';
import type { GuestRam } from './ram.js';
import { EOPNOTSUPP, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, fallocate } from './sys.js';

/** Descriptors per queue the device offers (QueueNumMax). */
export const BLOCK_QUEUE_SIZE = 256;
/** Data segments per request: the queue minus the header and status descriptors. */
export const BLOCK_SEG_MAX = BLOCK_QUEUE_SIZE - 2;
export const BLOCK_SIZE = 512;
/** Largest discard / write-zeroes segment: 2 GiB. */
export const MAX_DISCARD_SECTORS = 1 << 22;
export const MAX_DISCARD_SEGMENTS = 32;
/** Discard granularity hint: 4 KiB, the page size of the filesystems images live on. */
export const DISCARD_SECTOR_ALIGNMENT = 8;
export const MAX_WRITE_ZEROES_SECTORS = 1 << 22;
export const MAX_WRITE_ZEROES_SEGMENTS = 32;

export function blockFeatures(readOnly: boolean): bigint {
  const bits: number[] = [
    Feature.VERSION_1,
    Feature.RING_INDIRECT_DESC,
    BlkFeature.SEG_MAX,
    BlkFeature.BLK_SIZE,
    BlkFeature.FLUSH,
    BlkFeature.DISCARD,
    BlkFeature.WRITE_ZEROES,
  ];
  if (readOnly) bits.push(BlkFeature.RO);
  return featureBits(...bits);
}

export function blockConfigSpace(sizeBytes: number): Uint8Array {
  const config = new Uint8Array(BlkConfig.SIZE);
  const v = new DataView(config.buffer);
  v.setBigUint64(BlkConfig.CAPACITY, BigInt(Math.floor(sizeBytes / SECTOR_SIZE)), true);
  v.setUint32(BlkConfig.SEG_MAX, BLOCK_SEG_MAX, true);
  v.setUint32(BlkConfig.BLK_SIZE, BLOCK_SIZE, true);
  v.setUint16(BlkConfig.NUM_QUEUES, 1, true);
  v.setUint32(BlkConfig.MAX_DISCARD_SECTORS, MAX_DISCARD_SECTORS, true);
  v.setUint32(BlkConfig.MAX_DISCARD_SEG, MAX_DISCARD_SEGMENTS, true);
  v.setUint32(BlkConfig.DISCARD_SECTOR_ALIGNMENT, DISCARD_SECTOR_ALIGNMENT, true);
  v.setUint32(BlkConfig.MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SECTORS, true);
  v.setUint32(BlkConfig.MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SEGMENTS, true);
  v.setUint8(BlkConfig.WRITE_ZEROES_MAY_UNMAP, 1);
  return config;
}

/** The image as the I/O worker sees it. */
export interface BlockImage {
  fd: number;
  readOnly: boolean;
  sizeBytes: number;
  /** GET_ID answer, exactly BLK_ID_BYTES bytes. */
  serial: Uint8Array;
}

/** Why a request failed, for the VMM's log (the guest only sees the status byte). */
export type BlockErrorReporter = (message: string) => void;

const ZERO_CHUNK = 1 << 20;
let zeroes: Uint8Array | undefined;

export class BlockRequestHandler {
  observer: BlockWriteObserver | null = null;
  private readonly header = new Uint8Array(BlkReqHeader.SIZE);
  private readonly headerView = new DataView(this.header.buffer);
  private readonly segments = new Uint8Array(Math.max(MAX_DISCARD_SEGMENTS, MAX_WRITE_ZEROES_SEGMENTS) * BlkDiscardSegment.SIZE);
  private readonly segmentView = new DataView(this.segments.buffer);

  constructor(
    private readonly ram: GuestRam,
    readonly image: BlockImage,
    private readonly report: BlockErrorReporter,
  ) {}

  /**
   * Serves one request and writes its status byte. Returns the used length (bytes written to the guest,
   * status included). Throws ChainError when the chain has no status byte in RAM (the device then needs
   * a reset: there is no way to tell the driver).
   */
  handle(chain: Chain): number {
    const w = chain.writable;
    let last = w.count - 1;
    while (last >= 0 && w.length[last] === 0) last--;
    if (last < 0) throw new ChainError('request has no device-writable status byte');
    if (w.offset[last]! < 0) throw new ChainError(`status byte at 0x${(w.gpa[last]! + w.length[last]! - 1).toString(16)} is not in guest RAM`);
    const statusGpa = w.gpa[last]! + w.length[last]! - 1;
    const statusOffset = w.offset[last]! + w.length[last]! - 1;

    let status: number;
    let written = 0; // data bytes written to the guest before the status byte
    if (chain.badBuffer || chain.misordered || chain.readable.total < BlkReqHeader.SIZE) {
      status = BlkStatus.IOERR;
      this.report(chain.badBuffer ? 'request names a buffer outside guest RAM' : chain.misordered ? 'request has a device-readable buffer after a writable one' : 'request header shorter than 16 bytes');
    } else {
      try {
        [status, written] = this.serve(chain);
      } catch (err) {
        status = BlkStatus.IOERR;
        written = 0;
        this.report(`I/O error: ${(err as Error).message}`);
      }
    }
    this.ram.bytes[statusOffset] = status;
    this.ram.markDirty(statusGpa, 1);
    return status === BlkStatus.OK ? written + 1 : 1;
  }

  private serve(chain: Chain): [status: number, written: number] {
    copyFromStream(this.ram, chain.readable, 0, this.header);
    const type = this.headerView.getUint32(BlkReqHeader.TYPE, true);
    const sectorLo = this.headerView.getUint32(BlkReqHeader.SECTOR, true);
    const sectorHi = this.headerView.getUint32(BlkReqHeader.SECTOR + 4, true);
    // Offsets are exact below 2^53; a sector number with more bits is beyond any image anyway.
    const offset = sectorHi >= 0x200000 ? Number.MAX_SAFE_INTEGER : (sectorLo + sectorHi * 0x1_0000_0000) * SECTOR_SIZE;
    const inLength = chain.writable.total - 1; // device-writable bytes before the status byte
    const outLength = chain.readable.total - BlkReqHeader.SIZE; // device-readable bytes after the header

    switch (type) {
      case BlkReqType.IN:
        if (outLength !== 0 || !this.validRange(offset, inLength)) return [BlkStatus.IOERR, 0];
        readInto(this.image.fd, this.ram, chain.writable, 0, inLength, offset);
        markStreamDirty(this.ram, chain.writable, 0, inLength);
        return [BlkStatus.OK, inLength];
      case BlkReqType.OUT:
        if (this.image.readOnly || inLength !== 0 || !this.validRange(offset, outLength)) return [BlkStatus.IOERR, 0];
        this.observed(offset, outLength, () => writeFrom(this.image.fd, this.ram, chain.readable, BlkReqHeader.SIZE, outLength, offset));
        return [BlkStatus.OK, 0];
      case BlkReqType.FLUSH:
        if (!this.image.readOnly) fs.fdatasyncSync(this.image.fd);
        return [BlkStatus.OK, 0];
      case BlkReqType.GET_ID: {
        const n = Math.min(BLK_ID_BYTES, inLength);
        copyToStream(this.ram, chain.writable, 0, this.image.serial.subarray(0, n));
        return [BlkStatus.OK, n];
      }
      case BlkReqType.DISCARD:
      case BlkReqType.WRITE_ZEROES:
        return [this.discardOrZero(type, chain, outLength), 0];
      default:
        return [BlkStatus.UNSUPP, 0];
    }
  }

  /** [offset, offset+length) lies inside the image and is made of whole sectors. */
  private validRange(offset: number, length: number): boolean {
    return length % SECTOR_SIZE === 0 && offset + length <= this.image.sizeBytes;
  }

  private observed(offset: number, length: number, write: () => void): void {
    const observer = this.observer;
    if (!observer) {
      write();
      return;
    }
    observer.beforeWrite(offset, length);
    try {
      write();
    } finally {
      observer.afterWrite(offset, length);
    }
  }

  private discardOrZero(type: number, chain: Chain, length: number): number {
    const isDiscard = type === BlkReqType.DISCARD;
    const maxSegments = isDiscard ? MAX_DISCARD_SEGMENTS : MAX_WRITE_ZEROES_SEGMENTS;
    const maxSectors = isDiscard ? MAX_DISCARD_SECTORS : MAX_WRITE_ZEROES_SECTORS;
    if (length === 0 || length % BlkDiscardSegment.SIZE !== 0 || chain.writable.total !== 1) return BlkStatus.IOERR;
    const count = length / BlkDiscardSegment.SIZE;
    if (count > maxSegments) return BlkStatus.IOERR;
    if (this.image.readOnly) return BlkStatus.IOERR;
    copyFromStream(this.ram, chain.readable, BlkReqHeader.SIZE, this.segments.subarray(0, length));
    const v = this.segmentView;
    // Check every segment before changing anything.
    for (let i = 0; i < count; i++) {
      const s = i * BlkDiscardSegment.SIZE;
      const flags = v.getUint32(s + BlkDiscardSegment.FLAGS, true);
      const allowed = isDiscard ? 0 : BlkDiscardFlag.UNMAP;
      if (flags & ~allowed) return BlkStatus.UNSUPP;
      const sectors = v.getUint32(s + BlkDiscardSegment.NUM_SECTORS, true);
      if (sectors > maxSectors) return BlkStatus.IOERR;
      if (!this.validRange(segmentOffset(v, s), sectors * SECTOR_SIZE)) return BlkStatus.IOERR;
    }
    for (let i = 0; i < count; i++) {
      const s = i * BlkDiscardSegment.SIZE;
      const offset = segmentOffset(v, s);
      const bytes = v.getUint32(s + BlkDiscardSegment.NUM_SECTORS, true) * SECTOR_SIZE;
      if (bytes === 0) continue;
      this.observed(offset, bytes, () => (isDiscard ? this.discard(offset, bytes) : this.writeZeroes(offset, bytes)));
    }
    return BlkStatus.OK;
  }

  /** Deallocates the range (the image stays sparse). Discard is a hint: without hole punching it is a no-op. */
  private discard(offset: number, length: number): void {
    const e = fallocate(this.image.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    if (e !== 0 && e !== EOPNOTSUPP) throw new Error(`fallocate(PUNCH_HOLE) failed: errno ${e}`);
  }

  /** Makes the range read as zeroes: punch a hole, else zero the range in place, else write zeroes. */
  private writeZeroes(offset: number, length: number): void {
    const fd = this.image.fd;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) === 0) return;
    if (fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length) === 0) return;
    zeroes ??= new Uint8Array(ZERO_CHUNK);
    for (let done = 0; done < length; ) {
      const n = Math.min(ZERO_CHUNK, length - done);
      writeAll(fd, zeroes.subarray(0, n), offset + done);
      done += n;
    }
  }
}

function segmentOffset(v: DataView, s: number): number {
  const lo = v.getUint32(s + BlkDiscardSegment.SECTOR, true);
  const hi = v.getUint32(s + BlkDiscardSegment.SECTOR + 4, true);
  return hi >= 0x200000 ? Number.MAX_SAFE_INTEGER : (lo + hi * 0x1_0000_0000) * SECTOR_SIZE;
}

// ---- moving bytes between the image and a chain's buffers ----

/** Calls `fn` for each buffer of a list with the part of it covering bytes [start, start+length). */
function forEachSegment(list: BufferList, start: number, length: number, fn: (i: number, skip: number, n: number) => void): void {
  let skip = start;
  let left = length;
  for (let i = 0; i < list.count && left > 0; i++) {
    const len = list.length[i]!;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    const n = Math.min(len - skip, left);
    fn(i, skip, n);
    left -= n;
    skip = 0;
  }
}

/** Views of guest RAM covering bytes [start, start+length) of a buffer list. */
function streamViews(ram: GuestRam, list: BufferList, start: number, length: number): Uint8Array[] {
  const views: Uint8Array[] = [];
  forEachSegment(list, start, length, (i, skip, n) => {
    const off = list.offset[i]! + skip;
    views.push(ram.bytes.subarray(off, off + n));
  });
  return views;
}

function copyFromStream(ram: GuestRam, list: BufferList, start: number, out: Uint8Array): void {
  let at = 0;
  for (const v of streamViews(ram, list, start, out.length)) {
    out.set(v, at);
    at += v.length;
  }
}

function copyToStream(ram: GuestRam, list: BufferList, start: number, data: Uint8Array): void {
  let at = 0;
  for (const v of streamViews(ram, list, start, data.length)) {
    v.set(data.subarray(at, at + v.length));
    at += v.length;
  }
  markStreamDirty(ram, list, start, data.length);
}

function markStreamDirty(ram: GuestRam, list: BufferList, start: number, length: number): void {
  forEachSegment(list, start, length, (i, skip, n) => ram.markDirty(list.gpa[i]! + skip, n));
}

/** pread(v) of `length` bytes at `position` into the buffers; a short read (the image shrank) is an error. */
function readInto(fd: number, ram: GuestRam, list: BufferList, start: number, length: number, position: number): void {
  if (length === 0) return;
  const views = streamViews(ram, list, start, length);
  let done = views.length === 1 ? fs.readSync(fd, views[0]!, 0, length, position) : fs.readvSync(fd, views, position);
  if (done === length) return;
  // Rare: finish piece by piece.
  let pos = position;
  for (const v of views) {
    let at = 0;
    if (done >= v.length) {
      done -= v.length;
      pos += v.length;
      continue;
    }
    at = done;
    done = 0;
    while (at < v.length) {
      const n = fs.readSync(fd, v, at, v.length - at, pos + at);
      if (n === 0) throw new Error(`image ended at byte ${pos + at}`);
      at += n;
    }
    pos += v.length;
  }
}

/** pwrite(v) of `length` bytes from the buffers to `position`, retrying short writes. */
function writeFrom(fd: number, ram: GuestRam, list: BufferList, start: number, length: number, position: number): void {
  if (length === 0) return;
  const views = streamViews(ram, list, start, length);
  let done = views.length === 1 ? fs.writeSync(fd, views[0]!, 0, length, position) : fs.writevSync(fd, views, position);
  if (done === length) return;
  let pos = position;
  for (const v of views) {
    if (done >= v.length) {
      done -= v.length;
      pos += v.length;
      continue;
    }
    writeAll(fd, v.subarray(done), pos + done);
    done = 0;
    pos += v.length;
  }
}

function writeAll(fd: number, data: Uint8Array, position: number): void {
  for (let at = 0; at < data.length; ) at += fs.writeSync(fd, data, at, data.length - at, position + at);
}
