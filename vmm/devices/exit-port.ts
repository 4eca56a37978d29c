// The exit-status port (EXIT_STATUS_PORT): a guest OUT of STATUS powers the machine off and the VMM
// exits with STATUS. Same port and width as QEMU's isa-debug-exit (which exits with STATUS*2+1).
import type { BusDevice } from './bus.js';
import type { MachineEvents } from './descriptor.js';

export class ExitPort implements BusDevice {
  constructor(private readonly events: MachineEvents) {}

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset !== 0) return;
    let status = 0;
    for (let i = data.length - 1; i >= 0; i--) status = status * 256 + data[i]!;
    this.events.poweroff(status >>> 0);
  }
}

/**
 * The FADT's hardware-reduced sleep registers (ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT): Linux's
 * ACPI poweroff writes SLP_TYP=S5 | SLP_EN to the control port; that is a poweroff with status 0.
 */
export class AcpiSleepControl implements BusDevice {
  constructor(private readonly events: MachineEvents, private readonly powerOffValue: number) {}

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset === 0 && data[0] === this.powerOffValue) this.events.poweroff(0);
  }
}
