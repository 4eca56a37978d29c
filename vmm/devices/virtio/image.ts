// Opening the raw disk images behind virtio-blk devices, on the main thread before the VM starts. Every
// problem is found before anything is written, and reported as one DiskImageError line that says how to
// fix it. Writable images are locked exclusively (flock) so two VMMs never write the same image.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { BLK_ID_BYTES, SECTOR_SIZE } from './abi.js';
import { LOCK_EX, LOCK_NB, LOCK_SH, blockDeviceSize, flock } from './sys.js';

export class DiskImageError extends Error {
  override name = 'DiskImageError';
}

export interface DiskImageSpec {
  path: string;
  readOnly: boolean;
  /** GET_ID answer (up to 20 printable ASCII characters); by default derived from the image's real path. */
  serial?: string;
}

export interface OpenedImage {
  path: string;
  realPath: string;
  fd: number;
  readOnly: boolean;
  sizeBytes: number;
  serial: string;
  /** `serial` as the 20 bytes GET_ID returns (NUL-padded). */
  serialBytes: Uint8Array;
}

/**
 * The default serial: "LB" + the first 18 hex digits (upper case) of SHA-256 of the image's real path.
 * Stable across VMM restarts and image rewrites in place; a restore under another path should pass
 * `serial` explicitly to keep the guest's view (/dev/disk/by-id) unchanged.
 */
export function defaultSerial(realPath: string): string {
  return 'LB' + createHash('sha256').update(realPath).digest('hex').slice(0, BLK_ID_BYTES - 2).toUpperCase();
}

export function serialBytes(serial: string): Uint8Array {
  const out = new Uint8Array(BLK_ID_BYTES);
  out.set(Buffer.from(serial, 'ascii').subarray(0, BLK_ID_BYTES));
  return out;
}

function checkSerial(spec: DiskImageSpec): void {
  if (spec.serial === undefined) return;
  if (spec.serial.length === 0 || spec.serial.length > BLK_ID_BYTES || !/^[\x20-\x7e]+$/.test(spec.serial)) {
    throw new DiskImageError(`disk ${spec.path}: serial '${spec.serial}' must be 1 to ${BLK_ID_BYTES} printable ASCII characters`);
  }
}

function statImage(path: string): fs.Stats {
  try {
    return fs.statSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new DiskImageError(`disk image ${path} does not exist (create it, e.g. truncate -s 1G ${path})`);
    if (code === 'EACCES') throw new DiskImageError(`disk image ${path} cannot be reached: permission denied on a parent folder`);
    throw new DiskImageError(`disk image ${path}: ${(err as Error).message}`);
  }
}

function checkSize(path: string, size: number): void {
  if (size === 0) throw new DiskImageError(`disk image ${path} is empty (give it a size, e.g. truncate -s 1G ${path})`);
  if (size % SECTOR_SIZE !== 0) {
    const up = Math.ceil(size / SECTOR_SIZE) * SECTOR_SIZE;
    throw new DiskImageError(`disk image ${path} is ${size} bytes, not a multiple of 512 (resize it, e.g. truncate -s ${up} ${path})`);
  }
}

/** Checks every spec, then opens every image; on any error nothing stays open. */
export function openDiskImages(specs: readonly DiskImageSpec[]): OpenedImage[] {
  const stats = specs.map((spec) => {
    checkSerial(spec);
    const st = statImage(spec.path);
    if (!st.isFile() && !st.isBlockDevice()) throw new DiskImageError(`disk image ${spec.path} is not a regular file or block device`);
    if (st.isFile()) checkSize(spec.path, st.size);
    return st;
  });
  stats.forEach((st, i) => {
    for (let j = 0; j < i; j++) {
      const same = stats[j]!.dev === st.dev && stats[j]!.ino === st.ino;
      if (same && !(specs[i]!.readOnly && specs[j]!.readOnly)) {
        throw new DiskImageError(`disk image ${specs[i]!.path} is attached twice (as disk ${j} and disk ${i}); attach it once, or read-only both times`);
      }
    }
  });

  const opened: OpenedImage[] = [];
  try {
    for (const spec of specs) opened.push(openOne(spec));
    return opened;
  } catch (err) {
    for (const o of opened) fs.closeSync(o.fd);
    throw err;
  }
}

function openOne(spec: DiskImageSpec): OpenedImage {
  let fd: number;
  try {
    fd = fs.openSync(spec.path, spec.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
      throw new DiskImageError(`cannot open disk image ${spec.path} for ${spec.readOnly ? 'reading' : 'writing'}: ${code} (fix its permissions${spec.readOnly ? '' : ', or attach it read-only with ,ro'})`);
    }
    throw new DiskImageError(`cannot open disk image ${spec.path}: ${(err as Error).message}`);
  }
  try {
    if (flock(fd, (spec.readOnly ? LOCK_SH : LOCK_EX) | LOCK_NB) !== 0) {
      throw new DiskImageError(`disk image ${spec.path} is in use by another VM (a process holds a lock on the image); stop that VM first`);
    }
    const st = fs.fstatSync(fd);
    const sizeBytes = st.isBlockDevice() ? blockDeviceSize(fd) : st.size;
    checkSize(spec.path, sizeBytes);
    const realPath = fs.realpathSync(spec.path);
    const serial = spec.serial ?? defaultSerial(realPath);
    return { path: spec.path, realPath, fd, readOnly: spec.readOnly, sizeBytes, serial, serialBytes: serialBytes(serial) };
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}
