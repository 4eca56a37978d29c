// The guest console as the VMM process sees it. vCPU workers write transmitted serial bytes into a
// pipe; the main thread drains it here and fans the bytes out to sinks (the terminal, --console-log)
// and listeners (boot detection, tests). Input goes the other way, into the serial FIFO.
import { Socket, type OnReadOpts, type SocketConstructorOpts } from 'node:net';
import type { Serial } from './devices/serial.js';
import * as libc from './sys/libc.js';

export type ConsoleListener = (chunk: Buffer) => void;

const LAST_LINE_MAX = 200;
const INPUT_RETRY_MS = 2;
/**
 * After each read, the pipe is left alone this long: a guest prints one byte per exit, and reading each
 * as it comes costs the main thread a wake-up, a read and a write to the terminal per byte, CPU the
 * vCPU threads need while the guest boots. Output reaches the sinks at most this much later.
 */
const READ_BATCH_MS = 1;
const READ_BUFFER_BYTES = 64 * 1024;

export class GuestConsole {
  /** The pipe end the serial device writes to. */
  readonly writeFd: number;
  private readonly readFd: number;
  private readonly socket: Socket;
  private readonly listeners = new Set<ConsoleListener>();
  private readonly lineListeners = new Set<(line: string) => void>();
  private partial = '';
  private lastComplete = '';
  private linesSeen = 0;
  private readonly ended: Promise<void>;
  private pendingInput: Buffer[] = [];
  private inputTimer: NodeJS.Timeout | undefined;
  private serial: Serial | undefined;
  private batchTimer: NodeJS.Timeout | undefined;
  private closing = false;

  constructor(private readonly sinks: Array<(chunk: Buffer) => void>) {
    [this.readFd, this.writeFd] = libc.pipe();
    // `onread`: pause() then stops reading the pipe (readStop) instead of buffering each byte as it comes.
    const readBuffer = Buffer.alloc(READ_BUFFER_BYTES);
    // Node 20 takes `onread` in the constructor too; @types/node declares it for connect() only.
    const options: SocketConstructorOpts & { onread: OnReadOpts } = {
      fd: this.readFd, readable: true, writable: false,
      onread: { buffer: readBuffer, callback: (n: number, buf: Uint8Array) => this.onRead(Buffer.from(buf.subarray(0, n))) },
    };
    this.socket = new Socket(options);
    this.ended = new Promise((resolve) => {
      this.socket.once('end', resolve);
      this.socket.once('close', resolve);
      this.socket.once('error', resolve);
    });
  }

  /** Returns true: the socket goes on (pause() below stops reading until the timer resumes it). */
  private onRead(chunk: Buffer): boolean {
    this.onData(chunk);
    if (this.closing || this.batchTimer) return true;
    this.socket.pause();
    this.batchTimer = setTimeout(() => {
      this.batchTimer = undefined;
      this.socket.resume();
    }, READ_BATCH_MS);
    return true;
  }

  private onData(chunk: Buffer): void {
    for (const sink of this.sinks) sink(chunk);
    const text = this.partial + chunk.toString('latin1');
    const lines = text.split('\n');
    this.partial = lines.pop()!.slice(-4096);
    for (const line of lines) {
      const clean = line.replace(/\r$/, '');
      if (clean.trim()) this.lastComplete = clean;
      this.linesSeen++;
      for (const l of this.lineListeners) l(clean);
    }
    for (const l of this.listeners) l(chunk);
  }

  listen(listener: ConsoleListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Calls `listener` with every complete line (without its newline) from now on. */
  onLine(listener: (line: string) => void): () => void {
    this.lineListeners.add(listener);
    return () => this.lineListeners.delete(listener);
  }

  /** Number of complete lines printed so far. */
  get lines(): number {
    return this.linesSeen;
  }

  /** The last non-empty line, or the unfinished one if it is newer (for error messages). */
  lastLine(): string {
    const line = this.partial.trim() ? this.partial : this.lastComplete;
    return line.length > LAST_LINE_MAX ? '...' + line.slice(-LAST_LINE_MAX) : line;
  }

  /** The text after the last newline (a prompt is printed without one). */
  get currentLine(): string {
    return this.partial;
  }

  /** Where terminal input goes (set for each boot: a reboot makes a new serial device). */
  attachSerial(serial: Serial | undefined): void {
    this.serial = serial;
    this.flushInput();
  }

  /** Queues bytes for the guest; what does not fit in the UART's FIFO is retried shortly. */
  input(bytes: Uint8Array): void {
    this.pendingInput.push(Buffer.from(bytes));
    this.flushInput();
  }

  private flushInput(): void {
    if (!this.serial) return;
    while (this.pendingInput.length) {
      const head = this.pendingInput[0]!;
      const n = this.serial.pushInput(head);
      if (n === head.length) this.pendingInput.shift();
      else {
        this.pendingInput[0] = head.subarray(n);
        break;
      }
    }
    if (this.pendingInput.length && !this.inputTimer) {
      this.inputTimer = setTimeout(() => {
        this.inputTimer = undefined;
        this.flushInput();
      }, INPUT_RETRY_MS);
    }
  }

  /**
   * Call when no vCPU can write any more: closes the write end and resolves once every byte written
   * has been delivered to the sinks.
   */
  async close(): Promise<void> {
    if (this.inputTimer) clearTimeout(this.inputTimer);
    this.closing = true;
    if (this.batchTimer) clearTimeout(this.batchTimer);
    this.batchTimer = undefined;
    this.socket.resume();
    this.serial = undefined;
    libc.close(this.writeFd);
    await this.ended;
    this.socket.destroy();
  }
}
