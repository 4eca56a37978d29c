// 8250/16550A UART (COM1). The registers live in a SharedArrayBuffer so every vCPU worker (guest
// accesses) and the main thread (terminal input) drive the same device; the state lock serialises them.
// Output bytes go straight to the console pipe from the worker that took the THR write.
import * as libc from '../sys/libc.js';
import type { BusDevice } from './bus.js';
import { SharedWords, wordLayout } from './shared-state.js';

/** Register offsets from the base port. */
const DATA = 0; // RBR (read) / THR (write); DLL when LCR.DLAB
const IER = 1; // DLM when LCR.DLAB
const IIR_FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

const LCR_DLAB = 0x80;
const IER_RDA = 0x01;
const IER_THRE = 0x02;
const IER_MASK = 0x0f;
const IIR_NONE = 0x01;
const IIR_THRE = 0x02;
const IIR_RDA = 0x04;
const IIR_FIFO_BITS = 0xc0;
const LSR_DR = 0x01;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MCR_LOOP = 0x10;
const MCR_OUT2 = 0x08;
const MCR_MASK = 0x1f;
const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;
const MSR_DELTA_MASK = 0x0f;

export const SERIAL_FIFO_SIZE = 64;

const STATE = wordLayout(['dll', 'dlm', 'ier', 'lcr', 'mcr', 'msr', 'scr', 'threPending', 'rxHead', 'rxCount'] as const);
const FIFO_OFFSET_BYTES = (Math.max(...Object.values(STATE)) + 1) * 4;

/** Reset values (vm-superio / the 16550A datasheet). */
const RESET = { dll: 0x0c, dlm: 0, ier: 0, lcr: 0x03, mcr: MCR_OUT2, msr: MSR_DSR | MSR_CTS | MSR_DCD, scr: 0 };

export interface SerialOptions {
  /** Where transmitted bytes go (the console pipe's write end); -1 drops them. */
  outputFd: number;
  /** eventfd registered with KVM_IRQFD for the UART's GSI; one write = one edge. */
  irqFd: number;
}

export function allocateSerialState(): SharedArrayBuffer {
  const s = SharedWords.allocate(STATE, SERIAL_FIFO_SIZE);
  for (const [k, v] of Object.entries(RESET)) s.set(k as keyof typeof STATE, v);
  return s.sab;
}

export class Serial implements BusDevice {
  private readonly s: SharedWords<typeof STATE>;
  private readonly fifo: Uint8Array;
  private readonly outByte = Buffer.alloc(1);

  constructor(state: SharedArrayBuffer, private readonly options: SerialOptions) {
    this.s = new SharedWords(state, STATE);
    this.fifo = new Uint8Array(state, FIFO_OFFSET_BYTES, SERIAL_FIFO_SIZE);
  }

  read(offset: number, data: Uint8Array): void {
    let raise = false;
    data[0] = this.s.locked(() => {
      const s = this.s;
      const dlab = (s.get('lcr') & LCR_DLAB) !== 0;
      switch (offset) {
        case DATA: {
          if (dlab) return s.get('dll');
          const r = this.popInput();
          // More input waiting: a fresh edge so an edge-triggered guest handler comes back for it.
          raise = r.more && (s.get('ier') & IER_RDA) !== 0;
          return r.byte;
        }
        case IER: return dlab ? s.get('dlm') : s.get('ier');
        case IIR_FCR: {
          const iir = this.interruptId();
          if (iir === IIR_THRE) s.set('threPending', 0); // reading IIR acknowledges THRE
          return iir | IIR_FIFO_BITS;
        }
        case LCR: return s.get('lcr');
        case MCR: return s.get('mcr');
        case LSR: return (s.get('rxCount') > 0 ? LSR_DR : 0) | LSR_THRE | LSR_TEMT;
        case MSR: {
          const msr = s.get('msr');
          s.set('msr', msr & ~MSR_DELTA_MASK);
          return msr;
        }
        case SCR: return s.get('scr');
        default: return 0;
      }
    });
    data.fill(0, 1);
    if (raise) this.raise();
  }

  write(offset: number, data: Uint8Array): void {
    const value = data[0]!;
    let raise = false;
    let transmit = -1;
    this.s.locked(() => {
      const s = this.s;
      const dlab = (s.get('lcr') & LCR_DLAB) !== 0;
      switch (offset) {
        case DATA:
          if (dlab) {
            s.set('dll', value);
          } else if (s.get('mcr') & MCR_LOOP) {
            this.pushByte(value);
            raise = (s.get('ier') & IER_RDA) !== 0;
          } else {
            transmit = value;
            if (s.get('ier') & IER_THRE) {
              s.set('threPending', 1);
              raise = true;
            }
          }
          break;
        case IER:
          if (dlab) {
            s.set('dlm', value);
          } else {
            const old = s.get('ier');
            s.set('ier', value & IER_MASK);
            // Enabling THRE with the transmitter empty (always, here) signals at once.
            if (value & IER_THRE && !(old & IER_THRE)) {
              s.set('threPending', 1);
              raise = true;
            }
          }
          break;
        case IIR_FCR: break; // FCR: FIFOs are always on; clears are not needed with instant transmit
        case LCR: s.set('lcr', value); break;
        case MCR: this.writeMcr(value); break;
        case SCR: s.set('scr', value); break;
        default: break; // LSR and MSR are read-only
      }
    });
    if (transmit >= 0) this.transmit(transmit);
    if (raise) this.raise();
  }

  /**
   * Queues terminal input (main thread); returns how many bytes fit in the FIFO. The caller keeps the
   * rest and retries later.
   */
  pushInput(bytes: Uint8Array): number {
    let n = 0;
    let raise = false;
    this.s.locked(() => {
      while (n < bytes.length && this.s.get('rxCount') < SERIAL_FIFO_SIZE) this.pushByte(bytes[n++]!);
      raise = n > 0 && (this.s.get('ier') & IER_RDA) !== 0;
    });
    if (raise) this.raise();
    return n;
  }

  private writeMcr(value: number): void {
    const s = this.s;
    s.set('mcr', value & MCR_MASK);
    if (value & MCR_LOOP) {
      // Loopback: MCR DTR/RTS/OUT1/OUT2 drive MSR DSR/CTS/RI/DCD.
      const msr = ((value & 0x01) << 5) | ((value & 0x02) << 3) | ((value & 0x04) << 4) | ((value & 0x08) << 4);
      s.set('msr', (s.get('msr') & MSR_DELTA_MASK) | msr);
    } else {
      s.set('msr', (s.get('msr') & MSR_DELTA_MASK) | MSR_DSR | MSR_CTS | MSR_DCD);
    }
    void MSR_RI;
  }

  private interruptId(): number {
    const ier = this.s.get('ier');
    if (ier & IER_RDA && this.s.get('rxCount') > 0) return IIR_RDA;
    if (ier & IER_THRE && this.s.get('threPending')) return IIR_THRE;
    return IIR_NONE;
  }

  private pushByte(b: number): void {
    const count = this.s.get('rxCount');
    if (count >= SERIAL_FIFO_SIZE) return; // overrun: dropped
    this.fifo[(this.s.get('rxHead') + count) % SERIAL_FIFO_SIZE] = b;
    this.s.set('rxCount', count + 1);
  }

  private popInput(): { byte: number; more: boolean } {
    const count = this.s.get('rxCount');
    if (count === 0) return { byte: 0, more: false };
    const head = this.s.get('rxHead');
    const byte = this.fifo[head]!;
    this.s.set('rxHead', (head + 1) % SERIAL_FIFO_SIZE);
    this.s.set('rxCount', count - 1);
    return { byte, more: count > 1 };
  }

  private transmit(byte: number): void {
    if (this.options.outputFd < 0) return;
    this.outByte[0] = byte;
    libc.writeAll(this.options.outputFd, this.outByte);
  }

  private raise(): void {
    if (this.options.irqFd >= 0) libc.eventfdSignal(this.options.irqFd);
  }
}
