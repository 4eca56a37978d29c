// The DSDT's AML: COM1, one LNRO0005 device per virtio-mmio transport (which Linux's virtio_mmio.ko and the
// Lifeboat guest both match), and the \_S5_ sleep type used for ACPI power-off.

import { COM1_GSI, COM1_PORT, COM1_PORT_COUNT } from '../layout.js';
import {
  device,
  dwordConst,
  byteConst,
  eisaId,
  extendedInterrupt,
  integer,
  io,
  memory32Fixed,
  name,
  pkg,
  resourceTemplate,
  scope,
  string,
  type Aml,
} from './aml.js';

export interface VirtioMmioDeviceInfo {
  /** Guest physical base of the transport's registers. */
  readonly base: number;
  /** Length of the register window (0x1000). */
  readonly size: number;
  /** The IOAPIC input (GSI) the device interrupts on. */
  readonly gsi: number;
}

/** The _HID virtio_mmio.ko matches in ACPI (drivers/virtio/virtio_mmio.c). */
export const VIRTIO_MMIO_HID = 'LNRO0005';
/** \_S5_ SLP_TYP: the value Linux shifts into bits 4:2 of the sleep control register to power off. */
export const S5_SLEEP_TYPE = 5;

/** Device(_SB_.COM1): the 8250 at 0x3F8, IRQ 4, declared so Linux does not auto-probe its IRQ. */
export function com1Device(): Aml {
  return device('_SB_.COM1', [
    name('_HID', eisaId('PNP0501')),
    name('_UID', byteConst(0)),
    name('_DDN', string('COM1')),
    name('_CRS', resourceTemplate([
      extendedInterrupt({ consumer: true, edge: true, activeLow: false, shared: false, gsi: COM1_GSI }),
      io({ min: COM1_PORT, max: COM1_PORT, alignment: 1, length: COM1_PORT_COUNT }),
    ])),
  ]);
}

/** Device(Vnnn) for virtio-mmio transport `index`: memory window and an edge, active-high interrupt. */
export function virtioMmioDevice(index: number, info: VirtioMmioDeviceInfo): Aml {
  if (index < 0 || index > 999) throw new Error(`virtio-mmio device index ${index} out of range`);
  return device(`V${index.toString().padStart(3, '0')}`, [
    name('_HID', string(VIRTIO_MMIO_HID)),
    name('_UID', dwordConst(index)),
    name('_CCA', integer(1)), // cache-coherent DMA
    name('_CRS', resourceTemplate([
      memory32Fixed({ readWrite: true, base: info.base, length: info.size }),
      extendedInterrupt({ consumer: true, edge: true, activeLow: false, shared: false, gsi: info.gsi }),
    ])),
  ]);
}

/** Name(\_S5_, Package(){5}) */
export function s5SleepState(): Aml {
  return name('\\_S5_', pkg([integer(S5_SLEEP_TYPE)]));
}

/** The DSDT body (after the 36-byte header). */
export function dsdtBody(virtioDevices: readonly VirtioMmioDeviceInfo[]): Aml {
  return [
    ...com1Device(),
    ...s5SleepState(),
    ...(virtioDevices.length ? scope('\\_SB_', virtioDevices.map((d, i) => virtioMmioDevice(i, d))) : []),
  ];
}
