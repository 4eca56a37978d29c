// The hook change tracking hangs on the block write path. An observer runs inside the virtio I/O worker,
// on the same thread that performs the writes, so it sees every change to the image in order:
// beforeWrite(offset, length) -> the image range changes -> afterWrite(offset, length). Discard and
// write-zeroes are writes too. The main thread installs an observer by naming a module (built in the
// worker by that module's factory), see docs/virtio.md "Write observers".
import { isAbsolute } from 'node:path';
import { pathToFileURL } from 'node:url';

export interface BlockWriteObserver {
  /**
   * Called before any byte of [offset, offset+length) of the image may change. Throwing fails the request
   * with IOERR and nothing is written (a change that cannot be tracked must not happen).
   */
  beforeWrite(offset: number, length: number): void;
  /** Called after the write ended (successfully or not: on failure the range may have changed partly). */
  afterWrite(offset: number, length: number): void;
  /** Called once when the observer is replaced or removed, or the I/O worker stops. */
  close?(): void;
}

/** How the main thread names an observer: an ES module exporting `createBlockWriteObserver`. */
export interface ObserverDescriptor {
  /** Absolute path or file: URL of the module (resolved in the I/O worker). */
  module: string;
  /** Structured-cloneable options handed to the factory (SharedArrayBuffers stay shared). */
  options?: unknown;
}

/** The disk an observer is built for, as the I/O worker knows it. */
export interface ObservedDisk {
  /** Position of the disk in the VirtioBlockSet (0 = first spec). */
  disk: number;
  path: string;
  sizeBytes: number;
  readOnly: boolean;
  /** The image's open fd (read it with fs.readSync to copy old contents before they are overwritten). */
  imageFd: number;
}

export type BlockWriteObserverFactory = (options: unknown, disk: ObservedDisk) => BlockWriteObserver | Promise<BlockWriteObserver>;

export const OBSERVER_FACTORY_EXPORT = 'createBlockWriteObserver';

export function observerModuleUrl(module: string): string {
  if (module.startsWith('file:')) return module;
  if (!isAbsolute(module)) throw new Error(`observer module must be an absolute path or a file: URL, got '${module}'`);
  return pathToFileURL(module).href;
}

export async function loadObserver(descriptor: ObserverDescriptor, disk: ObservedDisk): Promise<BlockWriteObserver> {
  const mod = (await import(observerModuleUrl(descriptor.module))) as Record<string, unknown>;
  const factory = mod[OBSERVER_FACTORY_EXPORT];
  if (typeof factory !== 'function') throw new Error(`${descriptor.module} does not export a function ${OBSERVER_FACTORY_EXPORT}`);
  const observer = (await (factory as BlockWriteObserverFactory)(descriptor.options, disk)) as Partial<BlockWriteObserver> | null;
  if (!observer || typeof observer.beforeWrite !== 'function' || typeof observer.afterWrite !== 'function') {
    throw new Error(`${descriptor.module}: ${OBSERVER_FACTORY_EXPORT} did not return an object with beforeWrite and afterWrite`);
  }
  return observer as BlockWriteObserver;
}
