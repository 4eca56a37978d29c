// What the main thread (VirtioBlockSet) and the virtio I/O worker say to each other. Messages travel on a
// MessagePort; because the worker spends its life blocked in poll(), every message to it is followed by a
// write to its control eventfd, and the worker reads the port synchronously (receiveMessageOnPort).
import type { MessagePort } from 'node:worker_threads';
import type { SharedGuestMemory } from '../../memory.js';
import type { ObserverDescriptor } from './observer.js';

export interface IoWorkerDisk {
  /** Position in the VirtioBlockSet (0 = first spec). */
  disk: number;
  path: string;
  state: SharedArrayBuffer;
  queueFds: number[];
  irqFd: number;
  imageFd: number;
  readOnly: boolean;
  sizeBytes: number;
  serial: Uint8Array;
  observer?: ObserverDescriptor;
}

export const IO_WORKER_KIND = 'lifeboat-virtio-io';

export interface IoWorkerData {
  kind: typeof IO_WORKER_KIND;
  memory: SharedGuestMemory;
  controlFd: number;
  port: MessagePort;
  disks: IoWorkerDisk[];
}

/** Main thread -> I/O worker. */
export type ToIoWorker =
  | { type: 'stop' }
  | { type: 'quiesce'; id: number; disks: number[]; sync: boolean }
  | { type: 'resume'; id: number }
  | { type: 'set-observer'; id: number; disk: number; observer: ObserverDescriptor | null };

/** I/O worker -> main thread. */
export type FromIoWorker =
  | { type: 'ready' }
  | { type: 'quiesced'; id: number; error?: string }
  | { type: 'observer-set'; id: number; error?: string }
  | { type: 'warning'; disk: number; message: string }
  | { type: 'stopped' };
