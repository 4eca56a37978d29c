import { commands } from './commands/index.js';
import { UsageError, UserError, type Command } from './command.js';

function usage(): string {
  const width = Math.max(...commands.map((c) => c.path.join(' ').length), 10);
  const lines = commands.map((c) => `  ${c.path.join(' ').padEnd(width)}  ${c.summary}`);
  return ['Usage: lifeboat COMMAND [ARGS...]   (lifeboat COMMAND --help for details)', '', 'Commands:', ...lines].join('\n');
}

/** The command whose path is the longest prefix of argv. */
function findCommand(argv: string[]): { command: Command; rest: string[] } | undefined {
  let best: Command | undefined;
  for (const c of commands) {
    if (c.path.every((w, i) => argv[i] === w) && (!best || c.path.length > best.path.length)) best = c;
  }
  return best ? { command: best, rest: argv.slice(best.path.length) } : undefined;
}

export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes('--debug');
  const args = argv.filter((a) => a !== '--debug');
  if (args.length === 0 || args[0] === '--help' || args[0] === 'help') {
    process.stdout.write(usage() + '\n');
    return args.length === 0 ? 2 : 0;
  }
  const found = findCommand(args);
  if (!found) {
    process.stderr.write(`lifeboat: unknown command '${args.join(' ')}'; run 'lifeboat --help' for the list\n`);
    return 2;
  }
  if (found.rest.includes('--help') || found.rest.includes('-h')) {
    process.stdout.write(found.command.help.trimEnd() + '\n');
    return 0;
  }
  try {
    return await found.command.run(found.rest);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`lifeboat ${found.command.path.join(' ')}: ${err.message}\n`);
      return 2;
    }
    if (err instanceof UserError) {
      process.stderr.write(`lifeboat ${found.command.path.join(' ')}: ${err.message}\n`);
      return err.exitCode;
    }
    if (debug) throw err;
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`lifeboat ${found.command.path.join(' ')}: ${message} (run with --debug for details)\n`);
    return 1;
  }
}

const status = await main(process.argv.slice(2));
process.exitCode = status;
