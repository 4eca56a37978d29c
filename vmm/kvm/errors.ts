// An expected VMM failure: one line that names what is wrong and how to fix it. The CLI prints the
// message as is (no stack) and exits non-zero; anything else is a bug.
export class VmmError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = 'VmmError';
  }
}
