// Errors caused by what the user asked for (wrong image file, command line too long, too little memory):
// the message is one line naming the problem and the fix. The CLI turns them into its one-line UserError.

export class BootError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BootError';
  }
}
