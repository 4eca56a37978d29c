import { prewarmForCommand } from '../../vmm/vcpu-prewarm.js';
import { commands } from './commands/index.js';
import { UsageError, UserError, type CommandEntry } from './command.js';

// `vm run` / `vm restore` spend most of their start-up in vCPU worker threads bootstrapping Node and
// loading code: those start first thing (this module's first statement, the prewarm module being a
// static import), before the command's own code loads, so that the two overlap.
prewarmForCommand(process.argv.slice(2));

async function usage(): Promise<string> {
  const loaded = await Promise.all(commands.map((c) => c.load()));
  const width = Math.max(...commands.map((c) => c.path.join(' ').length), 10);
  const lines = loaded.map((c) => `  ${c.path.join(' ').padEnd(width)}  ${c.summary}`);
  return ['Usage: lifeboat COMMAND [ARGS...]   (lifeboat COMMAND --help for details; lifeboat --version)', '', 'Commands:', ...lines].join('\n');
}

async function version(): Promise<string> {
  const [{ readFileSync }, { join }, { projectRoot }] = await Promise.all([import('node:fs'), import('node:path'), import('../util/project-root.js')]);
  return (JSON.parse(readFileSync(join(projectRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}

/** The entry whose path is the longest prefix of argv. */
function findCommand(argv: string[]): { entry: CommandEntry; rest: string[] } | undefined {
  let best: CommandEntry | undefined;
  for (const c of commands) {
    if (c.path.every((w, i) => argv[i] === w) && (!best || c.path.length > best.path.length)) best = c;
  }
  return best ? { entry: best, rest: argv.slice(best.path.length) } : undefined;
}

export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes('--debug');
  const args = argv.filter((a) => a !== '--debug');
  if (args.length === 0 || args[0] === '--help' || args[0] === 'help') {
    process.stdout.write((await usage()) + '\n');
    return args.length === 0 ? 2 : 0;
  }
  if (args[0] === '--version' || args[0] === 'version') {
    process.stdout.write(`lifeboat ${await version()}\n`);
    return 0;
  }
  const found = findCommand(args);
  if (!found) {
    process.stderr.write(`lifeboat: unknown command '${args.join(' ')}'; run 'lifeboat --help' for the list\n`);
    return 2;
  }
  const name = `lifeboat ${found.entry.path.join(' ')}`;
  const command = await found.entry.load();
  if (found.rest.includes('--help') || found.rest.includes('-h')) {
    process.stdout.write(command.help.trimEnd() + '\n');
    return 0;
  }
  try {
    return await command.run(found.rest);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`${name}: ${err.message}\n`);
      return 2;
    }
    if (err instanceof UserError) {
      process.stderr.write(`${name}: ${err.message}\n`);
      return err.exitCode;
    }
    if (debug) throw err;
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`${name}: ${message} (run with --debug for details)\n`);
    return 1;
  }
}

const status = await main(process.argv.slice(2));
process.exitCode = status;
