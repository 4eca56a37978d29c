import type { Command } from '../command.js';

// One line per command module; keep sorted by path.
export const commands: Command[] = [
];
