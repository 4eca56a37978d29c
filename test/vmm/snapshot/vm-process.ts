// A `lifeboat vm run` or `lifeboat vm restore` child process for the snapshot and tracking stories:
// console captured, commands typed, killed with -9 like a crash, control-socket commands sent.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { projectRoot } from '../../../src/util/project-root.js';
import { LIFEBOAT_MAIN, runLifeboat } from '../../helpers/vmm.js';

export class LifeboatVm {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly socket: string;

  /** `lifeboat vm run|restore|standby ARGS --api-sock DIR/NAME.sock`. */
  constructor(readonly subcommand: 'run' | 'restore' | 'standby', args: string[], dir: string, name = 'vm') {
    this.socket = join(dir, `${name}.sock`);
    this.child = spawn(process.execPath, [LIFEBOAT_MAIN, 'vm', subcommand, ...args, '--api-sock', this.socket], {
      cwd: projectRoot(), stdio: ['pipe', 'pipe', 'pipe'],
    });
    // The serial console ends lines with CR LF; the stories match on LF alone.
    this.child.stdout!.setEncoding('latin1').on('data', (s: string) => (this.stdout += s.replace(/\r/g, '')));
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => (this.stderr += s));
    this.child.stdin!.on('error', () => {});
    this.exited = new Promise((resolve) => this.child.once('close', (code, signal) => resolve({ code, signal })));
  }

  /** Waits for `re` in the console after offset `from`; fails with the console tail. */
  async waitFor(re: RegExp, timeoutMs = 30_000, from = 0): Promise<{ match: RegExpExecArray; end: number }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.stdout.slice(from));
      if (m) return { match: m, end: from + m.index + m[0].length };
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`the VMM exited (${this.child.exitCode ?? this.child.signalCode}) before printing ${re}; console tail:\n${this.stdout.slice(-1200)}\nstderr: ${this.stderr}`);
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${re}; console tail:\n${this.stdout.slice(-1200)}\nstderr: ${this.stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Waits until a match of `re` (a /g regexp with one numeric group) printed after `from` reaches `min`. */
  async waitForAtLeast(re: RegExp, min: number, timeoutMs = 60_000, from = 0): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const seen = this.numbers(re, from);
      const best = seen.length ? Math.max(...seen) : -Infinity;
      if (best >= min) return best;
      if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`the VMM exited before ${re} reached ${min}; console tail:\n${this.stdout.slice(-1200)}\nstderr: ${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${re} to reach ${min}; console tail:\n${this.stdout.slice(-1200)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Waits until `text` appeared `count` times in the console after offset `from`. */
  async waitForCount(text: string, count: number, timeoutMs = 60_000, from = 0): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.stdout.slice(from).split(text).length - 1 < count) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`the VMM exited before printing '${text}' ${count} times; console tail:\n${this.stdout.slice(-1200)}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for '${text}' ${count} times; console tail:\n${this.stdout.slice(-1200)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Waits for `re` on stderr (a standby's "ready" line). */
  async waitForStderr(re: RegExp, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!re.test(this.stderr)) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`the VMM exited before printing ${re} on stderr: ${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${re} on stderr: ${this.stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Every match of a /g regexp's first group, as numbers. */
  numbers(re: RegExp, from = 0): number[] {
    return [...this.stdout.slice(from).matchAll(re)].map((m) => Number(m[1]));
  }

  /** Types one command at the shell prompt (the serial FIFO holds 64 bytes: one line at a time) and returns its output. */
  async command(line: string, timeoutMs = 60_000): Promise<string> {
    const from = this.stdout.length;
    this.send(line + '\n');
    const { match, end } = await this.waitFor(/lifeboat> $/, timeoutMs, from);
    return this.stdout.slice(from, end - match[0].length);
  }

  send(text: string): void {
    this.child.stdin!.write(text);
  }

  /** The VMM process dies at once, like a host crash (no clean shutdown of anything). */
  async kill9(): Promise<void> {
    this.child.kill('SIGKILL');
    await this.exited;
  }

  async wait(timeoutMs = 60_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(t);
    }
  }

  /** `lifeboat ARGS --api-sock SOCKET --json`, parsed; fails with stderr when the command fails. */
  async cli(args: string[]): Promise<Record<string, unknown>> {
    const r = await runLifeboat([...args, '--api-sock', this.socket, '--json'], 120_000);
    if (r.code !== 0) throw new Error(`lifeboat ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
    return JSON.parse(r.stdout) as Record<string, unknown>;
  }
}

/** A raw control-socket request (the ops of vmm/snapshot/control-ops.ts), for what the CLI does not cover. */
export async function controlOp(socket: string, request: { op: string } & Record<string, unknown>): Promise<Record<string, unknown>> {
  const { controlRequest } = await import('../../../vmm/control-socket.js');
  const r = await controlRequest(socket, request as never, 60_000);
  if (!r.ok) throw new Error(`${request.op}: ${r.error}`);
  return r as Record<string, unknown>;
}
