// The durable "tracking is running" mark: IMAGE.lifeboat-cbt rewritten with state IN_USE, so that a crash
// from then on is detected at the next start. It must be on disk before any byte of the image can change.
// BlockChangeTracker.open writes it at once, or leaves it to the thread that writes the image (the
// virtio I/O worker builds a ChangeTrackingObserver before it serves its first request, and the observer
// writes the mark first): its two fsyncs (~5 ms) then leave the VMM's main thread, which is on the path
// to the guest's first instruction. The mark is written once per tracker, whichever thread comes first.
import { writeFileDurably } from './durable-write.js';

/** What a writing thread needs to write the mark (structured-cloneable; the state word stays shared). */
export interface InUseMark {
  path: string;
  /** The whole file (an encoded IN_USE record). */
  contents: Uint8Array;
  /** One Int32 word: PENDING, WRITING or DONE. */
  state: SharedArrayBuffer;
}

const PENDING = 0;
const WRITING = 1;
const DONE = 2;

/**
 * How long a thread waits for another thread that is writing the mark (it takes milliseconds). A writer
 * still not done by then was terminated mid-write (a worker ended during a reboot): the waiter writes it.
 */
const WAIT_LIMIT_MS = 10_000;

export function prepareInUseMark(path: string, contents: readonly Uint8Array[]): InUseMark {
  return { path, contents: Buffer.concat(contents), state: new SharedArrayBuffer(4) };
}

/**
 * Returns once the mark is durably on disk: writes it (temp file, fsync, rename, fsync of the directory),
 * or waits for the thread writing it. Throws if it cannot be written (nothing may be written to the image
 * then); a later call tries again. Any thread.
 */
export function ensureInUseMarked(mark: InUseMark): void {
  const state = new Int32Array(mark.state);
  const deadline = Date.now() + WAIT_LIMIT_MS;
  for (;;) {
    const was = Atomics.compareExchange(state, 0, PENDING, WRITING);
    if (was === DONE) return;
    if (was === PENDING || Date.now() > deadline) break;
    Atomics.wait(state, 0, WRITING, 100);
  }
  try {
    writeFileDurably(mark.path, [mark.contents]);
  } catch (err) {
    Atomics.store(state, 0, PENDING);
    Atomics.notify(state, 0);
    throw new Error(`could not mark change tracking of the image in use (${mark.path}): ${(err as Error).message}`);
  }
  Atomics.store(state, 0, DONE);
  Atomics.notify(state, 0);
}

/**
 * For the tracker's clean close, which replaces the file: waits (bounded) for a thread still writing the
 * mark, then retires the mark so that no writer rewrites it over the file close() writes.
 */
export function retireInUseMark(mark: InUseMark): void {
  const state = new Int32Array(mark.state);
  const deadline = Date.now() + WAIT_LIMIT_MS;
  while (Atomics.compareExchange(state, 0, PENDING, DONE) === WRITING && Date.now() < deadline) Atomics.wait(state, 0, WRITING, 100);
  Atomics.store(state, 0, DONE);
}
