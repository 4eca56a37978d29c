// The few libc calls the VMM needs, bound once with koffi. Every caller goes through `check` so a failed
// system call becomes one SysError naming the call and errno.
import koffi from 'koffi';

const libc = koffi.load('libc.so.6');

/** Pointers are BigInt in koffi 3; 0n is NULL. */
export type Pointer = bigint;
/** Anything koffi passes as a `void *` to a byte range for the duration of a call. */
export type BytesArg = Uint8Array | Buffer;

export const O_RDONLY = 0o0;
export const O_RDWR = 0o2;
export const O_CLOEXEC = 0o2000000;
export const O_NONBLOCK = 0o4000;
export const PROT_NONE = 0x0;
export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_FIXED = 0x10;
export const MFD_CLOEXEC = 0x1;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const POLLIN = 0x1;
export const MADV_DONTNEED = 4;

const openFn = libc.func('int open(const char *path, int flags, uint32_t mode)');
const closeFn = libc.func('int close(int fd)');
const ioctlIntFn = libc.func('int ioctl(int fd, unsigned long request, unsigned long arg)');
const ioctlPtrFn = libc.func('int ioctl(int fd, unsigned long request, void *arg)');
const mmapFn = libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)');
const munmapFn = libc.func('int munmap(void *addr, size_t length)');
const madviseFn = libc.func('int madvise(void *addr, size_t length, int advice)');
const memfdCreateFn = libc.func('int memfd_create(const char *name, unsigned int flags)');
const ftruncateFn = libc.func('int ftruncate(int fd, int64_t length)');
const eventfdFn = libc.func('int eventfd(unsigned int initval, int flags)');
const pollFn = libc.func('int poll(void *fds, unsigned long nfds, int timeout)');
const readFn = libc.func('long read(int fd, void *buf, size_t count)');
const writeFn = libc.func('long write(int fd, const void *buf, size_t count)');
const pipe2Fn = libc.func('int pipe2(int *fds, int flags)');
const pthreadSelfFn = libc.func('unsigned long pthread_self()');
const pthreadKillFn = libc.func('int pthread_kill(unsigned long thread, int sig)');
const strerrorFn = libc.func('const char *strerror(int errnum)');

export class SysError extends Error {
  constructor(readonly call: string, readonly errno: number) {
    super(`${call} failed: ${strerrorFn(errno) as string} (errno ${errno})`);
    this.name = 'SysError';
  }
}

export const EINTR = 4;
export const EAGAIN = 11;
export const ENOMEM = 12;
export const EACCES = 13;
export const EEXIST = 17;
export const EINVAL = 22;
export const ENOENT = 2;

function check(ret: number, call: string): number {
  if (ret < 0) throw new SysError(call, koffi.errno());
  return ret;
}

export function errno(): number {
  return koffi.errno();
}

export function open(path: string, flags: number, mode = 0): number {
  return check(openFn(path, flags | O_CLOEXEC, mode) as number, `open(${path})`);
}

export function close(fd: number): void {
  check(closeFn(fd) as number, 'close');
}

/** ioctl with an integer argument. Retries EINTR. */
export function ioctlInt(fd: number, request: number, arg: number, name = `ioctl 0x${request.toString(16)}`): number {
  for (;;) {
    const ret = ioctlIntFn(fd, request, arg) as number;
    if (ret < 0 && koffi.errno() === EINTR) continue;
    return check(ret, name);
  }
}

/** ioctl whose argument points at `buf` (a struct the caller laid out). Retries EINTR. */
export function ioctlBuf(fd: number, request: number, buf: BytesArg | null, name = `ioctl 0x${request.toString(16)}`): number {
  for (;;) {
    const ret = ioctlPtrFn(fd, request, buf) as number;
    if (ret < 0 && koffi.errno() === EINTR) continue;
    return check(ret, name);
  }
}

/** ioctl returning the raw result; the caller decides about errno (e.g. KVM_RUN and EINTR). */
export function ioctlRaw(fd: number, request: number, arg: number): number {
  return ioctlIntFn(fd, request, arg) as number;
}

export function mmap(length: number, prot: number, flags: number, fd: number, offset = 0, address: Pointer = 0n): Pointer {
  const p = mmapFn(address === 0n ? null : address, length, prot, flags, fd, offset) as Pointer | null;
  if (p === null || p === BigInt.asUintN(64, -1n) || p === -1n) throw new SysError('mmap', koffi.errno());
  return BigInt(p);
}

export function munmap(address: Pointer, length: number): void {
  check(munmapFn(address, length) as number, 'munmap');
}

export function madvise(address: Pointer, length: number, advice: number): void {
  check(madviseFn(address, length, advice) as number, 'madvise');
}

/** A zero-copy view of native memory. The caller keeps the mapping alive while the view is used. */
export function view(address: Pointer, length: number): Uint8Array {
  return new Uint8Array(koffi.view(address, length));
}

export function memfdCreate(name: string): number {
  return check(memfdCreateFn(name, MFD_CLOEXEC) as number, 'memfd_create');
}

export function ftruncate(fd: number, length: number): void {
  check(ftruncateFn(fd, length) as number, 'ftruncate');
}

export function eventfd(flags = EFD_CLOEXEC): number {
  return check(eventfdFn(0, flags) as number, 'eventfd');
}

const eventfdValue = Buffer.alloc(8);

/** Adds 1 to an eventfd (wakes a poller; with an irqfd, injects the interrupt). */
export function eventfdSignal(fd: number): void {
  eventfdValue.writeBigUInt64LE(1n);
  check(writeFn(fd, eventfdValue, 8) as number, 'write(eventfd)');
}

/** Reads and resets an eventfd counter; 0n when it was not signalled (non-blocking fd). */
export function eventfdDrain(fd: number): bigint {
  const buf = Buffer.alloc(8);
  const n = readFn(fd, buf, 8) as number;
  if (n < 0) {
    if (koffi.errno() === EAGAIN) return 0n;
    throw new SysError('read(eventfd)', koffi.errno());
  }
  return buf.readBigUInt64LE(0);
}

/** struct pollfd { int fd; short events; short revents; } = 8 bytes. */
export const POLLFD_SIZE = 8;

/** poll() over `fds`; returns, per fd, whether it is readable. Blocks the calling thread. */
export function pollReadable(fds: readonly number[], timeoutMs: number): boolean[] {
  const buf = Buffer.alloc(fds.length * POLLFD_SIZE);
  fds.forEach((fd, i) => {
    buf.writeInt32LE(fd, i * POLLFD_SIZE);
    buf.writeInt16LE(POLLIN, i * POLLFD_SIZE + 4);
  });
  for (;;) {
    const ret = pollFn(buf, fds.length, timeoutMs) as number;
    if (ret < 0 && koffi.errno() === EINTR) continue;
    check(ret, 'poll');
    return fds.map((_, i) => (buf.readInt16LE(i * POLLFD_SIZE + 6) & POLLIN) !== 0);
  }
}

export function pipe(flags = O_CLOEXEC): [read: number, write: number] {
  const fds = new Int32Array(2);
  check(pipe2Fn(fds, flags) as number, 'pipe2');
  return [fds[0]!, fds[1]!];
}

export function pthreadSelf(): bigint {
  return BigInt(pthreadSelfFn() as number | bigint);
}

export function pthreadKill(thread: bigint, signal: number): void {
  const ret = pthreadKillFn(thread, signal) as number;
  if (ret !== 0) throw new SysError('pthread_kill', ret);
}

export const SIGUSR2 = 12;

/** write() until every byte is written (a pipe may take fewer); retries EINTR. */
export function writeAll(fd: number, data: Uint8Array): void {
  let done = 0;
  while (done < data.length) {
    const n = writeFn(fd, done === 0 ? data : data.subarray(done), data.length - done) as number;
    if (n < 0) {
      if (koffi.errno() === EINTR) continue;
      throw new SysError('write', koffi.errno());
    }
    done += n;
  }
}
