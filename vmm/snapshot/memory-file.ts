// memory.lbm: writing guest memory into a snapshot (positionally, so a page re-dirtied during the
// snapshot is simply written again in place), and mapping a snapshot chain back as guest memory.
import { closeSync, fsyncSync, ftruncateSync, openSync, readSync } from 'node:fs';
import koffi from 'koffi';
import { crc32 } from 'node:zlib';
import { PAGE_SIZE } from '../layout.js';
import * as libc from '../sys/libc.js';
import { DirtyPages } from '../tracking/dirty-memory.js';
import { writeFully } from '../tracking/durable-write.js';
import {
  DATA_OFFSET, MAX_RUN_PAGES, MEMORY_HEADER, RUN_ENTRY_SIZE, SnapshotFormatError, decodeMemoryHeader, decodeRuns, encodeMemoryHeader,
  encodeRuns, type MemoryHeader, type PageRun, type SnapshotKind,
} from './format.js';

const lseekFn = koffi.load('libc.so.6').func('int64_t lseek(int fd, int64_t offset, int whence)');
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;

/** Guest memory as the snapshot writer reads it: the whole memfd, offset by offset. */
export interface MemorySource {
  /** A view of the whole guest memory (memfd offsets). */
  view: Uint8Array;
  /** The memfd, when the view is a shared mapping of it: its holes (never-written pages) are skipped. */
  memfd?: number;
}

/** [start, end) byte ranges of `fd` holding data (SEEK_DATA/SEEK_HOLE); the whole range when unsupported. */
export function dataRanges(fd: number | undefined, size: number): Array<[number, number]> {
  if (fd === undefined) return [[0, size]];
  const out: Array<[number, number]> = [];
  let pos = 0;
  while (pos < size) {
    const start = Number(lseekFn(fd, pos, SEEK_DATA));
    if (start < 0) {
      if (koffi.errno() === ENXIO) break;
      return [[0, size]];
    }
    const end = Math.min(size, Number(lseekFn(fd, start, SEEK_HOLE)));
    if (end <= start) return [[0, size]];
    out.push([start, end]);
    pos = end;
  }
  return out;
}

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

export class MemoryFileWriter {
  private readonly fd: number;
  private readonly present: DirtyPages;
  private readonly pages: number;
  private readonly view: Buffer;
  bytesWritten = 0;

  constructor(readonly path: string, readonly source: MemorySource, readonly kind: SnapshotKind, readonly snapshotId: string) {
    this.view = Buffer.from(source.view.buffer, source.view.byteOffset, source.view.byteLength);
    this.pages = this.view.length / PAGE_SIZE;
    this.present = DirtyPages.empty(this.pages);
    this.fd = openSync(path, 'wx+', 0o600);
    try {
      ftruncateSync(this.fd, DATA_OFFSET + this.view.length);
    } catch (err) {
      closeSync(this.fd);
      throw err;
    }
  }

  /** Writes (or rewrites) the given pages with their current contents. */
  writePages(pages: DirtyPages): void {
    for (const [first, count] of pages.runs()) this.writeRun(first, count);
    this.present.orWith(pages);
  }

  /** Full snapshot: writes every page that holds a non-zero byte (zero pages stay holes and read as zero). */
  writeAllNonZero(): void {
    const nonZero = DirtyPages.empty(this.pages);
    for (const [start, end] of dataRanges(this.source.memfd, this.view.length)) {
      for (let page = Math.floor(start / PAGE_SIZE); page * PAGE_SIZE < end; page++) {
        const off = page * PAGE_SIZE;
        if (this.view.compare(ZERO_PAGE, 0, PAGE_SIZE, off, off + PAGE_SIZE) !== 0) nonZero.words[page >>> 5]! |= 1 << (page & 31);
      }
    }
    this.writePages(nonZero);
  }

  private writeRun(first: number, count: number): void {
    const off = first * PAGE_SIZE;
    const len = count * PAGE_SIZE;
    writeFully(this.fd, this.view.subarray(off, off + len), DATA_OFFSET + off);
    this.bytesWritten += len;
  }

  /** Checksums what was written (read back from the file), writes index and header, fsyncs. */
  finish(): MemoryHeader {
    const runs: PageRun[] = [];
    const buf = Buffer.alloc(MAX_RUN_PAGES * PAGE_SIZE);
    let presentPages = 0;
    for (const [first, count] of this.present.runs()) {
      for (let p = first; p < first + count; p += MAX_RUN_PAGES) {
        const n = Math.min(MAX_RUN_PAGES, first + count - p);
        const chunk = buf.subarray(0, n * PAGE_SIZE);
        readFullyAt(this.fd, chunk, DATA_OFFSET + p * PAGE_SIZE, this.path);
        runs.push({ firstPage: p, count: n, crc: crc32(chunk) });
        presentPages += n;
      }
    }
    const index = encodeRuns(runs);
    const indexOffset = DATA_OFFSET + this.view.length;
    writeFully(this.fd, index, indexOffset);
    const header: MemoryHeader = {
      kind: this.kind, snapshotId: this.snapshotId, memorySize: this.view.length, pageSize: PAGE_SIZE,
      runCount: runs.length, indexOffset, indexCrc: crc32(index), presentPages,
    };
    writeFully(this.fd, encodeMemoryHeader(header), 0);
    fsyncSync(this.fd);
    closeSync(this.fd);
    return header;
  }

  abort(): void {
    try {
      closeSync(this.fd);
    } catch {
      // already closed
    }
  }
}

function readFullyAt(fd: number, into: Buffer, position: number, path: string): void {
  let done = 0;
  while (done < into.length) {
    const n = readSync(fd, into, done, into.length - done, position + done);
    if (n <= 0) throw new SnapshotFormatError(`${path} is truncated at byte ${position + done}`);
    done += n;
  }
}

/** An opened memory file: header and index checked, data not read. */
export interface MemoryFile {
  path: string;
  fd: number;
  header: MemoryHeader;
  runs: PageRun[];
}

export function openMemoryFile(path: string): MemoryFile {
  const fd = openSync(path, 'r');
  try {
    const h = Buffer.alloc(MEMORY_HEADER.size);
    readFullyAt(fd, h, 0, path);
    const header = decodeMemoryHeader(h, path);
    if (header.pageSize !== PAGE_SIZE) throw new SnapshotFormatError(`${path}: page size ${header.pageSize}, expected ${PAGE_SIZE}`);
    const index = Buffer.alloc(header.runCount * RUN_ENTRY_SIZE);
    readFullyAt(fd, index, header.indexOffset, path);
    if (crc32(index) !== header.indexCrc) throw new SnapshotFormatError(`${path}: page index fails its checksum: the snapshot is damaged`);
    const runs = decodeRuns(index, header.runCount);
    for (const r of runs) {
      if (r.count === 0 || (r.firstPage + r.count) * PAGE_SIZE > header.memorySize) throw new SnapshotFormatError(`${path}: page run ${r.firstPage}+${r.count} lies outside memory`);
    }
    return { path, fd, header, runs };
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/** Checks every run's CRC against the file's bytes (a full read; restore does this for diffs only). */
export function verifyMemoryFile(m: MemoryFile): void {
  const buf = Buffer.alloc(MAX_RUN_PAGES * PAGE_SIZE);
  for (const r of m.runs) {
    const chunk = buf.subarray(0, r.count * PAGE_SIZE);
    readFullyAt(m.fd, chunk, DATA_OFFSET + r.firstPage * PAGE_SIZE, m.path);
    if (crc32(chunk) !== r.crc) throw new SnapshotFormatError(`${m.path}: pages ${r.firstPage}..${r.firstPage + r.count - 1} fail their checksum: the snapshot is damaged`);
  }
}

/** Guest memory mapped from a snapshot chain: private (copy-on-write) over the full snapshot's file. */
export interface MappedMemory {
  /** The full snapshot's memory file (kept open while mapped). */
  fd: number;
  size: number;
  hostAddress: bigint;
  /** Pages copied in from diffs. */
  diffPages: number;
  unmap(): void;
}

/**
 * Maps `full` privately as guest memory (pages load from the file on first touch: resume does not wait
 * for the image), then copies each diff's pages over it, checking their CRCs as they are read.
 */
export function mapMemoryChain(full: MemoryFile, diffs: readonly MemoryFile[]): MappedMemory {
  const size = full.header.memorySize;
  const hostAddress = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_NORESERVE, full.fd, DATA_OFFSET);
  const unmap = () => libc.munmap(hostAddress, size);
  let diffPages = 0;
  try {
    const view = Buffer.from(libc.view(hostAddress, size).buffer);
    for (const d of diffs) {
      if (d.header.memorySize !== size) throw new SnapshotFormatError(`${d.path}: memory size ${d.header.memorySize} differs from the full snapshot's ${size}`);
      for (const r of d.runs) {
        const at = r.firstPage * PAGE_SIZE;
        const chunk = view.subarray(at, at + r.count * PAGE_SIZE);
        readFullyAt(d.fd, chunk, DATA_OFFSET + at, d.path);
        if (crc32(chunk) !== r.crc) throw new SnapshotFormatError(`${d.path}: pages ${r.firstPage}..${r.firstPage + r.count - 1} fail their checksum: the snapshot is damaged`);
        diffPages += r.count;
      }
    }
  } catch (err) {
    unmap();
    throw err;
  }
  return { fd: full.fd, size, hostAddress, diffPages, unmap };
}
