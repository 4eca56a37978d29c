// What every `lifeboat` command module exports. Commands live one per file in src/cli/commands/ and are
// listed, with a lazy loader, in src/cli/commands/index.ts; main.ts only dispatches.

export interface Command {
  /** Words after `lifeboat`, e.g. ['vm', 'run'] or ['backup']. */
  readonly path: readonly string[];
  /** One line for the command list. */
  readonly summary: string;
  /** Full help text printed for `--help`. */
  readonly help: string;
  /** Returns the process exit status. Throw UsageError for bad arguments. */
  run(argv: string[]): Promise<number>;
}

/** A command as the registry knows it before its module is loaded. */
export interface CommandEntry {
  readonly path: readonly string[];
  load(): Promise<Command>;
}

/** Bad input from the user: printed as one line `lifeboat: MESSAGE` (no stack), exit status 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** An expected failure (missing file, wrong key, corrupt data): one line, exit status 1 unless given. */
export class UserError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = 'UserError';
  }
}
