// System calls the virtio block path needs beyond vmm/sys/libc.ts: fallocate (discard and write-zeroes
// keep sparse images sparse), flock (one writer per image), BLKGETSIZE64, and a poll/eventfd pair with
// preallocated buffers for the I/O worker's hot loop (no allocation per wake-up).
import koffi from 'koffi';
import { EAGAIN, EINTR, POLLFD_SIZE, POLLIN, SysError, ioctlBuf } from '../../sys/libc.js';

const libc = koffi.load('libc.so.6');
const fallocateFn = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)');
const flockFn = libc.func('int flock(int fd, int operation)');
const pollFn = libc.func('int poll(void *fds, unsigned long nfds, int timeout)');
const readFn = libc.func('long read(int fd, void *buf, size_t count)');
const writeFn = libc.func('long write(int fd, const void *buf, size_t count)');
const schedYieldFn = libc.func('int sched_yield(void)');

/** sched_yield(2): lets another runnable thread of this CPU (e.g. a vCPU we just preempted) run first. */
export function schedYield(): void {
  schedYieldFn();
}

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;
export const EOPNOTSUPP = 95;
export const ENOSYS = 38;
export const EWOULDBLOCK = EAGAIN;
export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
/** _IOR(0x12, 114, size_t): size of a block device in bytes. */
export const BLKGETSIZE64 = 0x80081272;

/** fallocate(2). Returns 0, or the errno (EOPNOTSUPP etc. are for the caller to handle). */
export function fallocate(fd: number, mode: number, offset: number, length: number): number {
  for (;;) {
    const ret = fallocateFn(fd, mode, offset, length) as number;
    if (ret === 0) return 0;
    const e = koffi.errno();
    if (e !== EINTR) return e;
  }
}

/** flock(2). Returns 0 or the errno (EWOULDBLOCK when LOCK_NB and another open file holds a lock). */
export function flock(fd: number, operation: number): number {
  for (;;) {
    const ret = flockFn(fd, operation) as number;
    if (ret === 0) return 0;
    const e = koffi.errno();
    if (e !== EINTR) return e;
  }
}

export function blockDeviceSize(fd: number): number {
  const buf = Buffer.alloc(8);
  ioctlBuf(fd, BLKGETSIZE64, buf, 'ioctl(BLKGETSIZE64)');
  return Number(buf.readBigUInt64LE(0));
}

/** A fixed set of fds polled for readability again and again, reusing one pollfd array. */
export class PollSet {
  private readonly buf: Buffer;

  constructor(readonly fds: readonly number[]) {
    this.buf = Buffer.alloc(Math.max(1, fds.length) * POLLFD_SIZE);
    fds.forEach((fd, i) => {
      this.buf.writeInt32LE(fd, i * POLLFD_SIZE);
      this.buf.writeInt16LE(POLLIN, i * POLLFD_SIZE + 4);
    });
  }

  /** Blocks until at least one fd is readable (or the timeout, -1 = none); returns how many are. */
  wait(timeoutMs: number): number {
    for (;;) {
      const ret = pollFn(this.buf, this.fds.length, timeoutMs) as number;
      if (ret >= 0) return ret;
      const e = koffi.errno();
      if (e !== EINTR) throw new SysError('poll', e);
    }
  }

  readable(i: number): boolean {
    return (this.buf.readInt16LE(i * POLLFD_SIZE + 6) & POLLIN) !== 0;
  }
}

/**
 * Resolves once one of `fds` is readable (or poll fails: the caller then acts as if one were), waiting in
 * poll() on a thread of libuv's pool, so the calling thread's event loop stays free. One pool thread is
 * taken until then: give one of `fds` a wake-up eventfd to end the wait early.
 */
export function pollReadableAsync(fds: readonly number[]): Promise<void> {
  const buf = Buffer.alloc(Math.max(1, fds.length) * POLLFD_SIZE);
  fds.forEach((fd, i) => {
    buf.writeInt32LE(fd, i * POLLFD_SIZE);
    buf.writeInt16LE(POLLIN, i * POLLFD_SIZE + 4);
  });
  return new Promise<void>((resolve) => pollFn.async(buf, fds.length, -1, () => resolve()));
}

const counter = Buffer.alloc(8);
const one = Buffer.alloc(8);
one.writeBigUInt64LE(1n);

/** Reads and resets a non-blocking eventfd; false when it was not signalled. */
export function eventfdConsume(fd: number): boolean {
  for (;;) {
    const n = readFn(fd, counter, 8) as number;
    if (n === 8) return true;
    const e = koffi.errno();
    if (e === EAGAIN) return false;
    if (e !== EINTR) throw new SysError('read(eventfd)', e);
  }
}

/** Adds 1 to an eventfd. */
export function eventfdNotify(fd: number): void {
  for (;;) {
    const n = writeFn(fd, one, 8) as number;
    if (n === 8) return;
    const e = koffi.errno();
    if (e !== EINTR) throw new SysError('write(eventfd)', e);
  }
}
