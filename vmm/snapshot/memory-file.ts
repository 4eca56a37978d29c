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

  /**
   * Copies the given pages' current contents out of guest memory (fast: the VM is paused) and returns
   * the function that writes the copies (after the resume).
   */
  capturePages(pages: DirtyPages): () => void {
    const runs = [...pages.runs()];
    let total = 0;
    for (const [, count] of runs) total += count * PAGE_SIZE;
    const copy = Buffer.allocUnsafe(total);
    let at = 0;
    for (const [first, count] of runs) {
      this.view.copy(copy, at, first * PAGE_SIZE, (first + count) * PAGE_SIZE);
      at += count * PAGE_SIZE;
    }
    return () => {
      let from = 0;
      for (const [first, count] of runs) {
        this.writeRun(first, count, copy, from);
        from += count * PAGE_SIZE;
      }
      this.present.orWith(pages);
    };
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

  /** Writes pages [first, first + count) from `source` at byte `at` (by default guest memory itself). */
  private writeRun(first: number, count: number, source: Buffer = this.view, at = first * PAGE_SIZE): void {
    const len = count * PAGE_SIZE;
    writeFully(this.fd, source.subarray(at, at + len), DATA_OFFSET + first * PAGE_SIZE);
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
  for (const r of m.runs) checkRun(m, r, buf);
}

/** Reads run `r` of `m` from the file into `buf` and checks its CRC; returns the bytes read. */
function checkRun(m: MemoryFile, r: PageRun, buf: Buffer): number {
  const chunk = buf.subarray(0, r.count * PAGE_SIZE);
  readFullyAt(m.fd, chunk, DATA_OFFSET + r.firstPage * PAGE_SIZE, m.path);
  if (crc32(chunk) !== r.crc) throw new SnapshotFormatError(`${m.path}: pages ${r.firstPage}..${r.firstPage + r.count - 1} fail their checksum: the snapshot is damaged`);
  return chunk.length;
}

/** Guest memory mapped from a snapshot chain: private (copy-on-write) over the full snapshot's file. */
export interface MappedMemory {
  /** The full snapshot's memory file (kept open while mapped). */
  fd: number;
  size: number;
  hostAddress: bigint;
  /** Pages that come from diffs (mapped or copied). */
  diffPages: number;
  /** Diff page ranges mapped from their files (one mapping each), and those copied in instead. */
  mappedRanges: number;
  copiedRanges: number;
  unmap(): void;
}

/**
 * Most diff ranges mapped over the full snapshot's mapping. Each splits a mapping in up to three (at
 * most two more VMAs each); the kernel allows 65530 per process (vm.max_map_count) and Node, koffi and
 * the vCPU threads need their own: 8192 ranges stay far below it. Beyond, the shortest are copied.
 */
export const MAX_MAPPED_RANGES = 8192;

/** A diff's page range: index runs that follow one another, coalesced (one mapping or one copy). */
interface DiffRange {
  diff: number;
  firstPage: number;
  count: number;
}

function coalescedRanges(diff: number, runs: readonly PageRun[]): DiffRange[] {
  const out: DiffRange[] = [];
  for (const r of runs) {
    const last = out[out.length - 1];
    if (last && last.firstPage + last.count === r.firstPage) last.count += r.count;
    else out.push({ diff, firstPage: r.firstPage, count: r.count });
  }
  return out;
}

/**
 * Maps `full` privately as guest memory, then each diff's page ranges over it, in chain order, as
 * private mappings of the diff file (`MAP_FIXED`): diffs are positional, so page k of guest memory is at
 * the same offset in every file. Pages load from whichever file holds them on first touch, and guest
 * writes stay private: no file is modified. When the chain has more than MAX_MAPPED_RANGES ranges, the
 * shortest are copied in instead. Nothing is checksummed here: see ChainVerifier.
 */
export function mapMemoryChain(full: MemoryFile, diffs: readonly MemoryFile[], at?: (size: number) => bigint | undefined): MappedMemory {
  const size = full.header.memorySize;
  for (const d of diffs) {
    if (d.header.memorySize !== size) throw new SnapshotFormatError(`${d.path}: memory size ${d.header.memorySize} differs from the full snapshot's ${size}`);
  }
  const ranges = diffs.flatMap((d, i) => coalescedRanges(i, d.runs));
  let copy: Set<DiffRange> = new Set();
  if (ranges.length > MAX_MAPPED_RANGES) {
    const byLength = [...ranges].sort((a, b) => b.count - a.count);
    copy = new Set(byLength.slice(MAX_MAPPED_RANGES));
  }
  const prot = libc.PROT_READ | libc.PROT_WRITE;
  // `at`: a range reserved for it (a prepared VM's, whose memory slots point there already).
  const fixed = at?.(size);
  const hostAddress = libc.mmap(size, prot, libc.MAP_PRIVATE | libc.MAP_NORESERVE | (fixed === undefined ? 0 : libc.MAP_FIXED), full.fd, DATA_OFFSET, fixed ?? 0n);
  const unmap = () => libc.munmap(hostAddress, size);
  let diffPages = 0;
  try {
    let view: Buffer | undefined;
    for (const r of ranges) {
      const at = r.firstPage * PAGE_SIZE;
      const length = r.count * PAGE_SIZE;
      const d = diffs[r.diff]!;
      if (copy.has(r)) {
        view ??= Buffer.from(libc.view(hostAddress, size).buffer);
        readFullyAt(d.fd, view.subarray(at, at + length), DATA_OFFSET + at, d.path);
      } else {
        libc.mmap(length, prot, libc.MAP_PRIVATE | libc.MAP_NORESERVE | libc.MAP_FIXED, d.fd, DATA_OFFSET + at, hostAddress + BigInt(at));
      }
      diffPages += r.count;
    }
  } catch (err) {
    unmap();
    throw err;
  }
  return { fd: full.fd, size, hostAddress, diffPages, mappedRanges: ranges.length - copy.size, copiedRanges: copy.size, unmap };
}

/** Bytes checked between two turns of the event loop (the VMM's main thread keeps serving meanwhile). */
const VERIFY_SLICE_BYTES = 4 * 1024 * 1024;

/**
 * Checks every page run of a chain's memory files against its CRC, reading the files (never the
 * mapping: the guest may have changed its pages by then), in slices on the main thread so that the
 * restored VM runs meanwhile. `run()` resolves when every run passed and rejects with a
 * SnapshotFormatError naming the file and pages of the first that did not; `cancel()` stops it (it
 * then rejects too).
 */
export class ChainVerifier {
  private cancelled = false;
  private result: Promise<void> | undefined;
  bytesChecked = 0;

  constructor(private readonly files: readonly MemoryFile[]) {}

  run(): Promise<void> {
    this.result ??= this.verify();
    return this.result;
  }

  cancel(): void {
    this.cancelled = true;
  }

  private async verify(): Promise<void> {
    const buf = Buffer.alloc(MAX_RUN_PAGES * PAGE_SIZE);
    let slice = 0;
    for (const m of this.files) {
      for (const r of m.runs) {
        if (slice >= VERIFY_SLICE_BYTES) {
          slice = 0;
          await new Promise((resolve) => setImmediate(resolve));
        }
        if (this.cancelled) throw new SnapshotFormatError('the restored VM ended before its snapshot was verified');
        const bytes = checkRun(m, r, buf);
        slice += bytes;
        this.bytesChecked += bytes;
      }
    }
  }
}
