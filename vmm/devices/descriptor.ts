// Device descriptors: plain, structured-cloneable descriptions of the machine's devices. The main
// thread builds the list once; every vCPU worker builds its own Bus from it (Contract B). A device's
// state is in the SharedArrayBuffer its descriptor carries, so all the buses drive one device.
import { ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, COM1_PORT, COM1_PORT_COUNT, EXIT_STATUS_PORT, EXIT_STATUS_PORT_COUNT } from '../layout.js';
import { Bus, type BusDevice } from './bus.js';
import { AcpiSleepControl, ExitPort } from './exit-port.js';
import { I8042, I8042_BASE, I8042_LENGTH } from './i8042.js';
import { Serial } from './serial.js';
// The transport module alone: vCPU workers load only what they run (worker start-up time is boot time).
import { createVirtioBusDevice, type VirtioMmioDescriptor } from './virtio/mmio.js';

/** Machine-wide events a device can raise from a vCPU worker (the worker forwards them to the VMM). */
export interface MachineEvents {
  /** The guest powered off with an exit status. */
  poweroff(status: number): void;
  /** The guest asked for a reset (reboot). */
  reset(): void;
}

interface BaseDescriptor {
  /** Which bus the device sits on and the address range it claims. */
  bus: 'pio' | 'mmio';
  base: number;
  length: number;
}

export interface SerialDescriptor extends BaseDescriptor {
  kind: 'serial';
  state: SharedArrayBuffer;
  outputFd: number;
  irqFd: number;
}

export interface I8042Descriptor extends BaseDescriptor {
  kind: 'i8042';
}

export interface ExitPortDescriptor extends BaseDescriptor {
  kind: 'exit-port';
}

export interface AcpiSleepDescriptor extends BaseDescriptor {
  kind: 'acpi-sleep';
  /** The byte that means "enter S5" (SLP_TYP from the DSDT's \_S5_ | SLP_EN). */
  powerOffValue: number;
}

export type DeviceDescriptor = SerialDescriptor | I8042Descriptor | ExitPortDescriptor | AcpiSleepDescriptor
  /** A virtio-mmio transport (vmm/devices/virtio builds it: kind 'virtio-mmio', base, length, SAB, eventfds). */
  | VirtioMmioDescriptor;

export function serialDescriptor(state: SharedArrayBuffer, outputFd: number, irqFd: number): SerialDescriptor {
  return { kind: 'serial', bus: 'pio', base: COM1_PORT, length: COM1_PORT_COUNT, state, outputFd, irqFd };
}

export function i8042Descriptor(): I8042Descriptor {
  return { kind: 'i8042', bus: 'pio', base: I8042_BASE, length: I8042_LENGTH };
}

export function exitPortDescriptor(): ExitPortDescriptor {
  return { kind: 'exit-port', bus: 'pio', base: EXIT_STATUS_PORT, length: EXIT_STATUS_PORT_COUNT };
}

export function acpiSleepDescriptor(powerOffValue: number): AcpiSleepDescriptor {
  return { kind: 'acpi-sleep', bus: 'pio', base: ACPI_SLEEP_CONTROL_PORT, length: ACPI_SLEEP_STATUS_PORT - ACPI_SLEEP_CONTROL_PORT + 1, powerOffValue };
}

/** The legacy platform devices every Lifeboat VM has (`acpiPowerOffValue` from vmm/acpi). */
export function platformDescriptors(serialState: SharedArrayBuffer, consoleFd: number, serialIrqFd: number, acpiPowerOffValue: number): DeviceDescriptor[] {
  return [serialDescriptor(serialState, consoleFd, serialIrqFd), i8042Descriptor(), exitPortDescriptor(), acpiSleepDescriptor(acpiPowerOffValue)];
}

function busOf(d: DeviceDescriptor): 'pio' | 'mmio' {
  return d.kind === 'virtio-mmio' ? 'mmio' : d.bus;
}

function createDevice(d: DeviceDescriptor, events: MachineEvents): BusDevice {
  switch (d.kind) {
    case 'serial': return new Serial(d.state, { outputFd: d.outputFd, irqFd: d.irqFd });
    case 'i8042': return new I8042(events);
    case 'exit-port': return new ExitPort(events);
    case 'acpi-sleep': return new AcpiSleepControl(events, d.powerOffValue);
    case 'virtio-mmio': return createVirtioBusDevice(d);
  }
}

/** The PIO and MMIO buses of one vCPU worker, built from the machine's descriptors. */
export interface Buses {
  pio: Bus;
  mmio: Bus;
}

export function buildBuses(descriptors: readonly DeviceDescriptor[], events: MachineEvents): Buses {
  const buses: Buses = { pio: new Bus('pio'), mmio: new Bus('mmio') };
  for (const d of descriptors) buses[busOf(d)].register(d.base, d.length, createDevice(d, events));
  return buses;
}
