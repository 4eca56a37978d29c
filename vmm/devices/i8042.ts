// The bit of the i8042 keyboard controller a guest uses: writing 0xFE to the command port resets the
// machine (Linux `reboot=k`). Everything else reads 0 and is ignored.
import { I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_RESET_COMMAND } from '../layout.js';
import type { BusDevice } from './bus.js';
import type { MachineEvents } from './descriptor.js';

export const I8042_BASE = I8042_DATA_PORT;
export const I8042_LENGTH = I8042_COMMAND_PORT - I8042_DATA_PORT + 1;

export class I8042 implements BusDevice {
  constructor(private readonly events: MachineEvents) {}

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset === I8042_COMMAND_PORT - I8042_BASE && data[0] === I8042_RESET_COMMAND) this.events.reset();
  }
}
