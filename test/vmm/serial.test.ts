// The 8250 UART as a guest driver sees it: registers, divisor latch, FIFO, loopback, interrupts. The
// device runs over its SharedArrayBuffer exactly as on a vCPU thread; output goes to a real pipe and
// interrupts to a real eventfd (what KVM_IRQFD would inject).
import assert from 'node:assert/strict';
import { readSync } from 'node:fs';
import { allocateSerialState, Serial, SERIAL_FIFO_SIZE } from '../../vmm/devices/serial.js';
import * as libc from '../../vmm/sys/libc.js';

const THR = 0, RBR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;

describe('8250 serial console', () => {
  let serial: Serial;
  let out: [number, number];
  let irq: number;
  const fds: number[] = [];

  beforeEach(() => {
    out = libc.pipe(libc.O_CLOEXEC | libc.O_NONBLOCK);
    irq = libc.eventfd(libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
    fds.push(out[0], out[1], irq);
    serial = new Serial(allocateSerialState(), { outputFd: out[1], irqFd: irq });
  });
  afterEach(() => {
    for (const fd of fds.splice(0)) libc.close(fd);
  });

  const rd = (offset: number) => {
    const d = new Uint8Array(1);
    serial.read(offset, d);
    return d[0]!;
  };
  const wr = (offset: number, value: number) => serial.write(offset, Uint8Array.of(value));
  const interrupts = () => Number(libc.eventfdDrain(irq));
  const output = () => {
    const buf = Buffer.alloc(4096);
    try {
      return buf.subarray(0, readSync(out[0], buf)).toString('latin1');
    } catch {
      return '';
    }
  };

  it('comes out of reset like a 16550A: THR empty, no interrupt pending, FIFOs reported', () => {
    assert.equal(rd(LSR), 0x60);
    assert.equal(rd(IIR), 0xc1);
    assert.equal(rd(MSR) & 0xb0, 0xb0);
    assert.equal(rd(MCR), 0x08);
    assert.equal(rd(LCR), 0x03);
  });

  it('sends what the guest writes to THR to the console, byte for byte', () => {
    for (const c of Buffer.from('hello\n')) wr(THR, c);
    assert.equal(output(), 'hello\n');
  });

  it('keeps the divisor latch apart from data and IER while DLAB is set', () => {
    wr(LCR, 0x83);
    wr(DLL, 0x01);
    wr(DLM, 0x02);
    assert.equal(output(), '', 'a DLL write is not data');
    assert.equal(rd(DLL), 0x01);
    assert.equal(rd(DLM), 0x02);
    wr(LCR, 0x03);
    assert.equal(rd(IER), 0, 'IER untouched by DLM writes');
    wr(SCR, 0x5a);
    assert.equal(rd(SCR), 0x5a);
  });

  it('raises THRE interrupts when enabled and after each transmitted byte; reading IIR acknowledges', () => {
    wr(IER, 0x02);
    assert.equal(interrupts(), 1, 'enabling THRE with an empty transmitter interrupts at once');
    assert.equal(rd(IIR), 0xc2);
    assert.equal(rd(IIR), 0xc1, 'IIR read cleared the THRE condition');
    wr(THR, 0x41);
    assert.equal(interrupts(), 1);
    assert.equal(rd(IIR), 0xc2);
    assert.equal(output(), 'A');
    assert.equal(rd(IER), 0x02, 'IER keeps its low 4 bits');
  });

  it('queues input in a 64-byte FIFO, sets LSR.DR and raises the receive interrupt', () => {
    wr(IER, 0x01);
    interrupts();
    const typed = Buffer.alloc(SERIAL_FIFO_SIZE + 10, 0x61);
    typed.write('xyz');
    assert.equal(serial.pushInput(typed), SERIAL_FIFO_SIZE, 'the FIFO takes 64 bytes and no more');
    assert.ok(interrupts() >= 1);
    assert.equal(rd(LSR) & 0x01, 0x01);
    assert.equal(rd(IIR), 0xc4);
    let got = '';
    while (rd(LSR) & 0x01) got += String.fromCharCode(rd(RBR));
    assert.equal(got.length, SERIAL_FIFO_SIZE);
    assert.ok(got.startsWith('xyz'));
    assert.equal(rd(IIR), 0xc1, 'no interrupt once drained');
  });

  it('loops THR back to RBR and MCR to MSR in loopback mode, sending nothing out', () => {
    wr(MCR, 0x10 | 0x0b); // LOOP | OUT2 | RTS | DTR
    wr(THR, 0x55);
    assert.equal(output(), '');
    assert.equal(rd(LSR) & 0x01, 0x01);
    assert.equal(rd(RBR), 0x55);
    assert.equal(rd(MSR) & 0xf0, 0x10 | 0x20 | 0x80, 'RTS->CTS, DTR->DSR, OUT2->DCD');
    wr(MCR, 0x08);
    assert.equal(rd(MSR) & 0xb0, 0xb0);
  });

  it('is one device for every thread: a second view over the same state sees the same FIFO', () => {
    const state = allocateSerialState();
    const a = new Serial(state, { outputFd: -1, irqFd: -1 });
    const b = new Serial(state, { outputFd: -1, irqFd: -1 });
    a.pushInput(Buffer.from('q'));
    const d = new Uint8Array(1);
    b.read(RBR, d);
    assert.equal(String.fromCharCode(d[0]!), 'q');
  });
});
